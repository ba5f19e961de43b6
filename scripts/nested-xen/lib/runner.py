#!/usr/bin/env python3
"""The host side of one nested-Xen run (called by scripts/nested-xen/run).

Boots the cached base image under QEMU (TCG) with a per-run copy-on-write overlay and a small
io disk (harness, scenario, xenmaint binary; results and state come back on it), watches the
serial console for the driver's marker lines, serves the scenario's `outside PHASE` requests
by running the --outside script against the forwarded guest ports, enforces a timeout, then
reads the io disk back with debugfs and prints per-phase timings. Exit 0 iff the scenario
finished with rc=0 and every test it declared reported PASS.
"""
import argparse, json, os, re, shlex, shutil, socket, subprocess, sys, tempfile, threading, time

# The runner's control channel as the VM sees it (a guestfwd address of QEMU's
# user network; see the -netdev line).
CTL_ADDR = "10.0.2.100"
CTL_GUEST_PORT = 7777
# dom0's address on its bridge (the driver waits for it).
DOM0_ADDR = "10.0.2.15"

MARK = re.compile(rb"@@NESTED-XEN@@ boot=(\d+) event=(\S+)(.*)")
T0 = time.monotonic()
# -smap/-smep: without them the PV dom0 dies at once under TCG (#PF in Xen's
# create_bounce_frame). Tried and dropped: -avx,-avx2 (and bootscrub=false, dom0 with 2
# vCPUs, thread=single): with them libxc failed to XZ-decompress the guest kernel
# ("Invalid kernel") in 2 of 3 runs. That was with XSAVE on; without it (below) dom0 with
# two vCPUs was tried again and dropped again (build-image).
# -xsave (no XSAVE, hence no AVX: Xen and dom0 switch FPU state with FXSAVE): with XSAVE,
# processes in dom0 died now and then at the same libc instruction (a pointer just moved
# through xmm0: systemd, a udev worker) and checksums of data that was intact came out
# wrong, as if xmm state were lost across context switches; without it, none in the whole
# suite. NESTED_XEN_CPU overrides.
CPU = os.environ.get("NESTED_XEN_CPU", "max,-smap,-smep,-xsave")
MEM = 3072   # MiB: Xen, dom0's 1024 and the guests


def ts():
    return f"{time.monotonic() - T0:7.1f}s"


def say(msg):
    print(f"[nested-xen {ts()}] {msg}", flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def read_guests(path):
    out = []
    for line in open(path):
        f = line.split()
        if len(f) >= 5 and not f[0].startswith("#"):
            out.append({"name": f[0], "ip": f[1], "mac": f[2], "uuid": f[3],
                        "extra": "extra" in f[5:], "aside": "aside" in f[5:]})
    return out


def qemu_cmd(mem, overlay, io_img, spare_img, fwd, ctl_port, qmp):
    """QEMU's command line. A snapshot is loaded with the command line it was made
    with, but for what is named here: files, ports and sockets on this machine's side,
    which the guest does not see. -nodefaults: no display, parallel port, CD-ROM or
    floppy, devices whose drivers dom0 loaded and udev walked at every boot under TCG."""
    return ["qemu-system-x86_64", "-machine", "q35", "-cpu", CPU,
            "-accel", f"tcg,thread={os.environ.get('NESTED_XEN_TCG_THREAD', 'multi')}",
            "-smp", "2", "-m", str(mem), "-nographic", "-nodefaults",
            "-monitor", "none", "-serial", "stdio", "-qmp", f"unix:{qmp},server=on,wait=off",
            "-drive", f"file={overlay},format=qcow2,if=ide,index=0,cache=unsafe",
            "-drive", f"file={io_img},format=raw,if=ide,index=1,cache=writeback",
            # A blank disk for scenarios' instance storage (an LVM volume group): named by
            # its serial (/dev/disk/by-id/ata-QEMU_HARDDISK_nested-spare), since dom0's
            # sdX names change between boots.
            "-drive", f"file={spare_img},format=raw,if=none,id=spare,cache=unsafe",
            "-device", "ide-hd,drive=spare,bus=ide.2,serial=nested-spare",
            # restrict=on: no packet from the VM is routed anywhere (a guest that
            # is down must not turn dom0's probes into traffic to a real 10.0.2.x
            # address); hostfwd still brings clients in, and the one way out is
            # guestfwd to the runner's control port through relay.py.
            "-netdev", f"user,id=n0,net=10.0.2.0/24,restrict=on,{fwd},"
                       f"guestfwd=tcp:{CTL_ADDR}:{CTL_GUEST_PORT}-cmd:python3 "
                       f"{os.path.join(os.path.dirname(os.path.abspath(__file__)), 'relay.py')} {ctl_port}",
            "-device", "e1000,netdev=n0"]


class Run:
    def __init__(self, a):
        self.a = a
        self.out = os.path.abspath(a.out)
        self.events = []          # (time, boot, event, rest)
        self.done_rc = None
        self.tests = {}           # name -> PASS/FAIL (from markers)
        self.lock = threading.Lock()
        self.outside_calls = 0
        self.outside_fail = 0
        self.panics = []          # Xen or dom0 panics seen on the serial console
        self.snapshotting = False   # --make-warm: the snapshot is being written
        self.snapshot_ok = False

    # ---- control server: the scenario's `outside PHASE` ------------------------------
    def serve(self, sock):
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn):
        with conn:
            f = conn.makefile("rwb")
            req = f.readline().decode(errors="replace").split()
            if req == ["clock"]:   # a host restored from a snapshot sets its clock from ours
                f.write(f"{time.time():.3f}\n@@rc=0\n".encode()); f.flush(); return
            if req == ["forwards"]:   # the port forwards reach every guest's service
                text, rc = self.check_forwards()
                f.write(text.encode() + f"@@rc={rc}\n".encode()); f.flush(); return
            if len(req) != 3 or req[0] != "outside":
                f.write(b"bad request\n@@rc=2\n"); f.flush(); return
            boot, phase = req[1], req[2]
            t = time.monotonic()
            if not self.a.outside:
                f.write(b"no --outside script given: nothing to do\n@@rc=0\n"); f.flush(); return
            env = dict(os.environ, NESTED_BOOT=boot, NESTED_PHASE=phase, NESTED_OUT=self.out,
                       NESTED_OUTSIDE_STATE=os.path.join(self.out, "outside-state"),
                       NESTED_GUESTS=" ".join(g["name"] for g in self.guests
                                              if not g["extra"] and not g["aside"]),
                       NESTED_GUESTS_ALL=" ".join(g["name"] for g in self.guests if not g["aside"]),
                       NESTED_GUESTS_ASIDE=" ".join(g["name"] for g in self.guests if g["aside"]),
                       NESTED_SSH_PORT=str(self.ssh_port), NESTED_SSH_KEY=self.ssh_key)
            os.makedirs(env["NESTED_OUTSIDE_STATE"], exist_ok=True)
            for g in self.guests:
                env[f"NESTED_PORT_{g['name']}"] = str(g["port"])
                env[f"NESTED_IP_{g['name']}"] = g["ip"]
            log = os.path.join(self.out, f"outside-boot{boot}-{phase}.log")
            try:
                p = subprocess.run([self.a.outside, phase], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, timeout=self.a.outside_timeout)
                rc, text = p.returncode, p.stdout
            except subprocess.TimeoutExpired as e:
                rc, text = 124, (e.stdout or b"") + b"\noutside script timed out\n"
            open(log, "wb").write(text)
            with self.lock:
                self.outside_calls += 1
                self.outside_fail += rc != 0
            say(f"outside boot={boot} phase={phase} rc={rc} ({time.monotonic() - t:.1f}s)")
            sys.stdout.buffer.write(b"".join(b"    | " + l + b"\n" for l in text.splitlines()))
            sys.stdout.flush()
            try:
                f.write(text + (b"" if text.endswith(b"\n") or not text else b"\n"))
                f.write(f"@@rc={rc}\n".encode()); f.flush()
            except OSError:
                pass

    def stop_background(self):
        """Outside scripts may leave a job running across calls (a rollout that outlives
        the boot it began in): each records its process group in NESTED_OUTSIDE_STATE/
        NAME.pgid. None outlives the host."""
        state = os.path.join(self.out, "outside-state")
        for n in os.listdir(state) if os.path.isdir(state) else []:
            if n.endswith(".pgid"):
                try:
                    os.killpg(int(open(os.path.join(state, n)).read()), 15)
                    say(f"stopped the outside job of {n}")
                except (ValueError, OSError):
                    pass

    def check_forwards(self):
        """Asks each guest's service for its STATUS through its forwarded port, as the
        outside scripts do: (report, 0 if every guest answered with its own name)."""
        lines, bad = [], 0
        for g in self.guests:
            if g["extra"] or g["aside"]:
                continue
            try:
                with socket.create_connection(("127.0.0.1", g["port"]), timeout=15) as c:
                    c.settimeout(15)
                    c.sendall(b"STATUS\n")
                    ans = b""
                    while chunk := c.recv(4096):
                        ans += chunk
                ok = f"name={g['name']}" in ans.decode(errors="replace").split()
            except OSError as e:
                ans, ok = str(e).encode(), False
            bad += not ok
            lines.append(f"{'ok' if ok else 'FAIL'} {g['name']} via 127.0.0.1:{g['port']}: "
                         + " ".join(ans.decode(errors="replace").split()[:4]))
        return "".join(l + "\n" for l in lines), int(bad > 0)

    # ---- the run ----------------------------------------------------------------------
    def main(self):
        a = self.a
        os.makedirs(self.out, exist_ok=True)
        work = os.path.join(self.out, "vm")
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        self.guests = read_guests(a.guests)
        for g in self.guests:
            g["port"] = free_port()

        ctl = socket.socket()
        ctl.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ctl.bind(("127.0.0.1", 0))   # reached from the VM only through guestfwd + relay.py
        ctl.listen(8)
        ctl_port = ctl.getsockname()[1]
        threading.Thread(target=self.serve, args=(ctl,), daemon=True).start()

        # The io disk: harness + scenario + xenmaint in, results + state out.
        io = os.path.join(work, "io")
        os.makedirs(os.path.join(io, "harness"))
        os.makedirs(os.path.join(io, "bin"))
        os.makedirs(os.path.join(io, "results"))
        os.makedirs(os.path.join(io, "state"))
        for n in os.listdir(a.harness):
            shutil.copy(os.path.join(a.harness, n), os.path.join(io, "harness", n))
        shutil.copy(a.scenario, os.path.join(io, "scenario"))
        if a.xenmaint:   # the package (installed by dpkg in the VM), or a bare binary
            shutil.copy(a.xenmaint, os.path.join(
                io, "bin", "xenmaint.deb" if a.xenmaint.endswith(".deb") else "xenmaint"))
        if a.files:   # inputs a scenario names (# nested-input): /nested/files in dom0
            shutil.copytree(a.files, os.path.join(io, "files"))
        if a.units:   # what ships with xenmaint besides the binary (the resume unit)
            shutil.copytree(a.units, os.path.join(io, "systemd"))
        with open(os.path.join(io, "run.env"), "w") as f:
            f.write(f"NESTED_CTL_ADDR={CTL_ADDR}\nNESTED_CTL_PORT={CTL_GUEST_PORT}\n")
            if a.make_warm:
                f.write("NESTED_WARM_MAKE=1\n")
        # dom0's sshd, for outside scripts that drive the host as an administrator's tools
        # do (Ansible): a key made for this run, root's authorized key in dom0 (the driver
        # installs it), and a forward of a free port to dom0's port 22.
        self.ssh_key = os.path.join(self.out, "ssh", "id_ed25519")
        os.makedirs(os.path.dirname(self.ssh_key), exist_ok=True)
        for f in (self.ssh_key, self.ssh_key + ".pub"):
            if os.path.exists(f):
                os.remove(f)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nested-xen-run",
                        "-f", self.ssh_key], check=True)
        os.makedirs(os.path.join(io, "ssh"))
        shutil.copy(self.ssh_key + ".pub", os.path.join(io, "ssh", "authorized_keys"))
        self.ssh_port = free_port()
        io_img = os.path.join(work, "io.img")
        subprocess.run(["truncate", "-s", "1G", io_img], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "nested-io", "-d", io, io_img], check=True)
        spare_img = os.path.join(work, "spare.img")   # blank (sparse) at every run
        subprocess.run(["truncate", "-s", "128M", spare_img], check=True)
        overlay = os.path.join(work, "root.qcow2")
        # A warm start runs on the snapshot's disk (itself an overlay over the base image).
        backing, fmt = (os.path.join(a.warm, "root.qcow2"), "qcow2") if a.warm else (a.image, "raw")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.abspath(backing),
                        "-F", fmt, overlay], check=True)
        qmp_dir = tempfile.mkdtemp(prefix="nested-xen-qmp.")   # a socket path short enough
        self.qmp_path = os.path.join(qmp_dir, "qmp")

        fwd = ",".join([f"hostfwd=tcp:127.0.0.1:{g['port']}-{g['ip']}:7000" for g in self.guests]
                       + [f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-{DOM0_ADDR}:22"])
        cmd = qemu_cmd(a.mem, overlay, io_img, spare_img, fwd, ctl_port, self.qmp_path)
        if a.warm:   # the snapshot's running host, memory and devices, goes on from there
            cmd += ["-incoming", f"exec:cat {shlex.quote(os.path.join(os.path.abspath(a.warm), 'ram.state'))}"]
        say("ports: " + " ".join(f"{g['name']}={g['ip']}:7000->127.0.0.1:{g['port']}" for g in self.guests)
            + f" ssh=127.0.0.1:{self.ssh_port} control=127.0.0.1:{ctl_port}")
        say("qemu: " + " ".join(cmd))
        serial = open(os.path.join(self.out, "serial.log"), "wb")
        # The same lines prefixed with the run's clock: where the time goes, for any stretch.
        serial_t = open(os.path.join(self.out, "serial-timed.log"), "wb")
        timeline = open(os.path.join(self.out, "timeline.txt"), "w")
        # The host's milestones with wall-clock times, for outside scripts (the benchmark
        # takes its reboot intervals from here): one JSON object per line.
        events = open(os.path.join(self.out, "events.jsonl"), "w")

        def log_event(what, **kw):
            events.write(json.dumps(dict(t=time.time(), event=what, **kw)) + "\n"); events.flush()
        slow = slow_cgroup(float(os.environ.get("NESTED_XEN_SLOW", "1")))
        qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT,
                                preexec_fn=slow and (lambda: open(slow[0], "w").write(str(os.getpid()))))
        timeout = int(header(a.scenario, "nested-timeout") or a.timeout)
        if a.timeout_cap is not None:   # the suite's time left
            timeout = max(1, min(timeout, a.timeout_cap))
        killer = threading.Timer(timeout, lambda: (say(f"TIMEOUT after {timeout}s: killing QEMU"),
                                                     setattr(self, "timed_out", True), qemu.kill()))
        self.timed_out = False
        killer.daemon = True   # a runner that fails must not wait for it
        killer.start()
        # A host that prints nothing for this long has hung (the longest quiet stretch of a
        # passing run so far: 5 minutes, a benchmark's drain with two dom0 vCPUs): stop it
        # now rather than at the timeout, which a retry would then pay twice.
        silence = int(header(a.scenario, "nested-silence") or a.silence)
        heard = {"t": time.monotonic()}

        def watch():
            while qemu.poll() is None:
                if time.monotonic() - heard["t"] > silence:
                    say(f"TIMEOUT: nothing on the serial console for {silence}s: killing QEMU")
                    self.timed_out = True
                    qemu.kill()
                    return
                time.sleep(5)
        threading.Thread(target=watch, daemon=True).start()
        last = {"t": time.monotonic(), "what": "qemu start"}
        boots = 0

        def mark(what):
            now = time.monotonic()
            line = f"{ts()}  +{now - last['t']:6.1f}s  {what}"
            timeline.write(line + "\n"); timeline.flush()
            say(f"{what}  (+{now - last['t']:.1f}s since {last['what']})")
            last["t"], last["what"] = now, what

        if a.warm:   # no GRUB on the way in: the host of the snapshot is in its first boot
            boots = 1
            log_event("warm-start", boot=boots)
            mark("boot 1: loading the snapshot of the running host")
            threading.Thread(target=self.continue_snapshot, args=(qemu, mark), daemon=True).start()
        for raw in iter(qemu.stdout.readline, b""):
            heard["t"] = time.monotonic()
            serial.write(raw); serial.flush()
            serial_t.write(f"{time.monotonic() - T0:8.2f} ".encode() + raw)
            serial_t.flush()
            if a.verbose:
                sys.stdout.buffer.write(raw); sys.stdout.flush()
            if b"nested-xen grub entry:" in raw and b"echo" not in raw:
                boots += 1
                log_event("grub", boot=boots)
                mark(f"boot {boots}: GRUB -> {raw.split(b'entry:')[1].strip().decode(errors='replace')}")
            elif b"Hardware Dom0 shutdown" in raw or b"Hardware Dom0 crashed" in raw:
                log_event("xen-reset", boot=boots)   # Xen hands the machine to the firmware
            elif b"Xen version" in raw and b"(XEN)" in raw and b"build-id" not in raw:
                mark(f"boot {boots}: Xen starting: {raw.decode(errors='replace').split('Xen version')[1].strip()[:40]}")
            if b"Panic on CPU" in raw or b"Kernel panic - not syncing" in raw:
                self.panics.append(raw.decode(errors="replace").strip())
                say(f"PANIC on the serial console: {self.panics[-1]}")
            m = MARK.search(raw)
            if not m:
                continue
            boot, event, rest = int(m.group(1)), m.group(2).decode(), m.group(3).decode(errors="replace").strip()
            log_event(event, boot=boots, marker_boot=boot, rest=rest)
            if event == "begin":
                mark(f"boot {boot}: dom0 up, driver started ({rest})")
            elif event == "ready":
                mark(f"boot {boot}: toolstack + bridge ready ({rest})")
            elif event == "phase":
                mark(f"boot {boot}: phase {rest.replace('name=', '')}")
            elif event == "test":
                kv = dict(x.split("=", 1) for x in rest.split() if "=" in x)
                self.tests[kv.get("name", "?")] = kv.get("result", "FAIL")
                say(f"TEST {kv.get('name')}: {kv.get('result')}")
            elif event == "warm-ready" and a.make_warm and not self.snapshotting:
                mark(f"boot {boot}: guests up, io disk released: saving the snapshot")
                self.snapshotting = True
                threading.Thread(target=self.save_snapshot, args=(qemu,), daemon=True).start()
            elif event in ("scenario-begin", "scenario-end", "reboot", "warm-resumed"):
                mark(f"boot {boot}: {event} {rest}".strip())
            elif event == "done":
                self.done_rc = int(rest.split("rc=")[1].split()[0]) if "rc=" in rest else 1
                mark(f"boot {boot}: done rc={self.done_rc}, powering off")
                # Results are synced to the io disk before the power-off: a power-off that
                # hangs (seen once, after systemd itself crashed) costs 2 minutes, not the
                # whole timeout.
                stuck = threading.Timer(120, lambda: qemu.poll() is None and (
                    say("power-off did not finish in 120 s: killing QEMU"), qemu.kill()))
                stuck.daemon = True   # must not keep the runner alive after QEMU exits
                stuck.start()
        qemu.wait()
        killer.cancel()
        self.stop_background()
        shutil.rmtree(os.path.dirname(self.qmp_path), ignore_errors=True)
        mark(f"qemu exited rc={qemu.returncode}")
        serial.close()
        serial_t.close()
        events.close()

        if a.make_warm:
            return self.keep_snapshot(overlay)

        # Results and state back from the io disk (no mounts: debugfs rdump).
        res = os.path.join(self.out, "results")
        shutil.rmtree(res, ignore_errors=True)
        os.makedirs(res)
        subprocess.run(["debugfs", "-R", f"rdump /results /state {res}", io_img],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if os.path.isdir(os.path.join(res, "results")):
            for n in os.listdir(os.path.join(res, "results")):
                shutil.move(os.path.join(res, "results", n), os.path.join(res, n))
            os.rmdir(os.path.join(res, "results"))

        for t in (header(a.scenario, "nested-tests") or "").split():
            self.tests.setdefault(t, "MISSING")
        # A scenario that makes Xen panic on purpose (a broken boot entry) says how often.
        expected_panics = int(header(a.scenario, "nested-expected-panics") or 0)
        if len(self.panics) != expected_panics:
            say(f"{len(self.panics)} panic(s) on the console, the scenario expects {expected_panics}")
        # complete: the scenario ran to its end cleanly; tests' own verdicts then count.
        complete = not self.timed_out and self.done_rc == 0 and len(self.panics) == expected_panics
        ok = complete and all(v == "PASS" for v in self.tests.values())
        with open(os.path.join(self.out, "run.txt"), "w") as f:
            f.write(f"complete={int(complete)} done_rc={self.done_rc} timeout={int(self.timed_out)} "
                    f"panics={len(self.panics)}\n")
        with open(os.path.join(self.out, "tests.txt"), "w") as f:
            for t, v in self.tests.items():
                f.write(f"{t} {v}\n")
        for t, v in self.tests.items():
            say(f"test {t}: {v}")
        say(f"run {'PASSED' if ok else 'FAILED'}: scenario rc={self.done_rc} timeout={self.timed_out} "
            f"outside calls={self.outside_calls} failed={self.outside_fail} panics={len(self.panics)}; "
            f"see {self.out}")
        if ok and not a.keep:
            os.remove(overlay)   # large; kept on failure for inspection (qemu-img convert)
        return 0 if ok else 1

    def save_snapshot(self, qemu):
        """--make-warm: stops the VM and writes its state (memory, devices) to a file
        beside its disk, then quits QEMU. The disk is the run's overlay as it stands."""
        state = os.path.join(self.out, "ram.state")
        try:
            time.sleep(2)   # the console line that announced it was the host's last act
            q = Qmp(self.qmp_path)
            q.call("stop")
            q.call("migrate", uri=f"exec:cat > {shlex.quote(state)}")
            while True:
                st = q.call("query-migrate").get("return", {})
                if st.get("status") in ("completed", "failed", "cancelled"):
                    break
                time.sleep(0.5)
            say(f"snapshot: migration {st.get('status')}, {os.path.getsize(state) >> 20} MiB of state"
                + (f": {st.get('error-desc')}" if st.get("error-desc") else ""))
            self.snapshot_ok = st.get("status") == "completed"
            q.call("quit")
        except (OSError, ValueError) as e:
            say(f"snapshot failed: {e}")
            qemu.kill()

    def continue_snapshot(self, qemu, mark):
        """--warm: the snapshot was saved from a stopped VM, so QEMU loads it stopped; once
        it is loaded, the host goes on."""
        try:
            for _ in range(100):   # QEMU makes its QMP socket as it starts
                if os.path.exists(self.qmp_path):
                    break
                time.sleep(0.1)
            q = Qmp(self.qmp_path)
            while (st := q.call("query-migrate").get("return", {}).get("status")) not in ("completed", "failed"):
                time.sleep(0.2)
            if st != "completed":
                raise OSError(f"loading the snapshot: migration {st}")
            q.call("cont")
            mark("boot 1: snapshot loaded, the host runs on")
        except (OSError, ValueError) as e:
            say(f"warm start failed: {e}")
            qemu.kill()

    def keep_snapshot(self, overlay):
        """--make-warm: the snapshot is the overlay (the host's disk) and the state file,
        kept in the run folder for `warm` to move into the cache; 0 if both are whole."""
        if not self.snapshot_ok or self.timed_out or self.panics:
            say(f"snapshot NOT made (saved={self.snapshot_ok} timeout={self.timed_out} "
                f"panics={len(self.panics)}); see {self.out}")
            return 1
        os.replace(overlay, os.path.join(self.out, "root.qcow2"))
        say(f"snapshot made: {self.out}/root.qcow2 + ram.state")
        return 0


class Qmp:
    """The least of a QMP client: one command at a time, events skipped."""
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.f = self.sock.makefile("rwb")
        json.loads(self.f.readline())   # the greeting
        self.call("qmp_capabilities")

    def call(self, cmd, **args):
        self.f.write(json.dumps({"execute": cmd, "arguments": args}).encode() + b"\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise OSError(f"QMP closed during {cmd}")
            r = json.loads(line)
            if "error" in r:
                raise OSError(f"QMP {cmd}: {r['error'].get('desc')}")
            if "return" in r:
                return r


def slow_cgroup(factor):
    """NESTED_XEN_SLOW=F: a CPU cgroup that gives QEMU 1/F of this machine's CPUs, to see
    the suite on a slow day (the same machine kind has run 1.5 to 3.5 times slower on some
    days). One cgroup for every nested VM of the machine: the suite's lanes share that
    third, as they would share a slow machine (left in place: a lane may be joining it).
    Returns (the cgroup's cgroup.procs file,
    its folder), or None for F <= 1."""
    if factor <= 1:
        return None
    period = 100000
    quota = int(os.cpu_count() * period / factor)
    name = "nested-xen-slow"
    v1 = "/sys/fs/cgroup/cpu"
    if os.path.exists(os.path.join(v1, "cpu.cfs_quota_us")):   # cgroup v1's cpu controller
        d = os.path.join(v1, name)
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "cpu.cfs_period_us"), "w").write(str(period))
        open(os.path.join(d, "cpu.cfs_quota_us"), "w").write(str(quota))
    else:   # cgroup v2
        root = "/sys/fs/cgroup"
        open(os.path.join(root, "cgroup.subtree_control"), "w").write("+cpu")
        d = os.path.join(root, name)
        os.makedirs(d, exist_ok=True)
        open(os.path.join(d, "cpu.max"), "w").write(f"{quota} {period}")
    say(f"NESTED_XEN_SLOW={factor}: QEMU gets {quota / period:.2f} of {os.cpu_count()} CPUs ({d})")
    return os.path.join(d, "cgroup.procs"), d


def header(scenario, key):
    """The value of a scenario's "# KEY: value" header line (all of them, joined), or None."""
    vals = [line.split(":", 1)[1].strip() for line in open(scenario, errors="replace")
            if line.startswith(f"# {key}:")]
    return " ".join(vals) if vals else None


def main():
    if sys.argv[1:] == ["--qemu-template"]:   # what a snapshot depends on (`warm`'s key)
        print(" ".join(qemu_cmd(MEM, "ROOT", "IO", "SPARE", "FWD", 0, "QMP")))
        return
    p = argparse.ArgumentParser()
    p.add_argument("--scenario", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--outside")
    p.add_argument("--image", required=True)
    p.add_argument("--xenmaint")
    p.add_argument("--units", help="directory of systemd units shipped with xenmaint")
    p.add_argument("--files", help="directory the scenario finds at /nested/files")
    p.add_argument("--harness", required=True)
    p.add_argument("--guests", required=True)
    p.add_argument("--timeout", type=int, default=1800)
    p.add_argument("--timeout-cap", type=int, help="at most this many seconds, whatever the scenario says")
    p.add_argument("--silence", type=int, default=int(os.environ.get("NESTED_XEN_SILENCE", 480)),
                   help="kill the VM after this many seconds without serial output")
    p.add_argument("--outside-timeout", type=int, default=120)
    p.add_argument("--mem", type=int, default=MEM)
    p.add_argument("--warm", metavar="DIR", help="start from the snapshot in DIR (root.qcow2, ram.state)")
    p.add_argument("--make-warm", action="store_true",
                   help="boot, start the guests, save a snapshot into --out, quit")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--verbose", action="store_true")
    sys.exit(Run(p.parse_args()).main())


if __name__ == "__main__":
    main()
