# Helpers for the driver and for scenarios (scenarios get them sourced: see `scenario`).
# shellcheck shell=bash
NESTED_STATE=/nested/state       # survives reboots (the io disk)
NESTED_RESULTS=/nested/results   # copied to the runner's --out DIR after power-off
export NESTED_STATE NESTED_RESULTS
[ -r /nested/run.env ] && . /nested/run.env   # NESTED_CTL_PORT, written by the runner
# The host (build-image): NX_HOST, XEN_SERIES, XEN_OLD/XEN_NEW (the installed build's package
# version, the update's), XEN_OLD_SHORT/XEN_NEW_SHORT (the version each reports, when the
# host pins it), XEN_HV_PKG, XEN_PATCHED (the packages the update replaces).
[ -r /boot/grub/nested-xen.env ] && . /boot/grub/nested-xen.env

# A marker line for the runner: straight to the console (Xen's serial port), once; a copy
# goes to results/markers.log. (Not to stdout: that reaches the console too, via the unit's
# StandardOutput=journal+console, and would duplicate it.)
nested_marker() {
  local event=$1; shift
  local line="@@NESTED-XEN@@ boot=${NESTED_BOOT:-0} event=$event $*"
  echo "$line" > /dev/console 2>/dev/null || echo "$line"
  printf "%(%T)T %s\n" -1 "$line" >> "$NESTED_RESULTS/markers.log" 2>/dev/null || true
}
nested_log() { echo "nested: $*"; }

# nested_wait SECONDS 'shell condition'
nested_wait() {
  local deadline=$(( SECONDS + $1 ))
  until eval "$2"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 1
  done
}

# phase NAME: start of a named phase (the runner prints the time between phases).
phase() { nested_marker phase "name=$1"; }

# nested_ctl REQUEST...: one request to the runner on this machine; prints the answer and
# returns its exit code. Goes over QEMU user networking to the runner's control port on the
# test machine's loopback, through the guestfwd address in run.env (QEMU's user network is
# restricted: nothing else leaves the VM). Requests: `outside BOOT PHASE` (below), `clock`
# (the runner's time, seconds since the epoch), `forwards` (the runner asks every guest
# through its forwarded port).
nested_ctl() {
  local line rc=99 fd
  if [ -z "${NESTED_CTL_PORT:-}" ]; then nested_log "no control port"; return 98; fi
  exec {fd}<>"/dev/tcp/${NESTED_CTL_ADDR:-10.0.2.100}/$NESTED_CTL_PORT" || return 97
  printf '%s\n' "$*" >&"$fd"
  while IFS= read -r -u "$fd" line; do
    case $line in
      @@rc=*) rc=${line#@@rc=} ;;
      *) printf '%s\n' "$line" ;;
    esac
  done
  exec {fd}>&-
  return "$rc"
}

# outside PHASE: ask the runner to run the --outside script now, with PHASE; returns its
# exit code and prints its output.
outside() {
  nested_ctl outside "$NESTED_BOOT" "$1" | sed -u "s/^/[outside $1] /"
  return "${PIPESTATUS[0]}"
}

# Tests: a scenario declares them in a header line "# nested-tests: a b c"; checks are
# attributed to a test; test_end prints the verdict marker. State lives in $NESTED_STATE so
# a test may span boots.
_tfile() { echo "$NESTED_STATE/tests/$1"; }
test_begin() { mkdir -p "$NESTED_STATE/tests"; [ -e "$(_tfile "$1")" ] || : > "$(_tfile "$1")"; nested_marker test-begin "name=$1"; }
# check TEST DESCRIPTION command...: runs the command; records a failure if it fails.
check() {
  local t=$1 desc=$2; shift 2
  if "$@"; then
    echo "  ok   [$t] $desc"
  else
    echo "  FAIL [$t] $desc (rc=$?)"
    echo "$desc" >> "$(_tfile "$t")"
  fi
}
# fail TEST DESCRIPTION: record a failure directly.
fail() { echo "  FAIL [$1] $2"; echo "$2" >> "$(_tfile "$1")"; }
test_failed() { [ -s "$(_tfile "$1")" ]; }
test_end() {
  local n; n=$(wc -l < "$(_tfile "$1")")
  if [ "$n" = 0 ]; then nested_marker test "name=$1 result=PASS"
  else nested_marker test "name=$1 result=FAIL failures=$n"; fi
  echo "$1 $([ "$n" = 0 ] && echo PASS || echo FAIL)" >> "$NESTED_RESULTS/tests.txt"
}

# request_reboot: after the scenario exits 0 this boot, the driver reboots the host
# (through SeaBIOS and GRUB; set next_entry first to boot a given entry once).
request_reboot() { : > "$NESTED_STATE/reboot-requested"; }

have_xenmaint() { command -v xenmaint > /dev/null; }
# installed_by_dpkg: xenmaint came from its .deb (the suite's runs), not a bare binary.
installed_by_dpkg() { dpkg-query -W -f='${Status}' xenmaint 2>/dev/null | grep -q 'install ok installed'; }

# guest_status IP [REQUEST]: one request to a guest's service from dom0.
guest_request() {
  local ip=$1 req=${2:-STATUS}
  timeout 10 bash -c 'exec 3<>"/dev/tcp/$0/7000" && printf "%s\n" "$1" >&3 && cat <&3' "$ip" "$req"
}
# Guest table from the image: name ip mac uuid mem type (pv, pvh or hvm). The "extra" guests
# (the benchmark's fourth) only with NESTED_GUESTS_ALL=1, the "aside" ones (the guest-types
# scenario's) only with NESTED_GUESTS_ASIDE=1.
guests() {
  grep -v '^#' /etc/xen/guests/guests.list \
    | awk -v all="${NESTED_GUESTS_ALL:-0}" -v aside="${NESTED_GUESTS_ASIDE:-0}" 'NF >= 5 {
    take = 1; type = "pv"
    for (i = 6; i <= NF; i++) {
      if ($i == "extra" && all != 1) take = 0
      if ($i == "aside" && aside != 1) take = 0
      if ($i == "pvh" || $i == "hvm") type = $i
    }
    if (take) print $1, $2, $3, $4, $5, type }'
}

# ---- the image's guests (shared by scenarios) ---------------------------------------------
# start_guests: xl create every guest that does not run yet (on a host started from the
# snapshot they all run), one after the other, each once the one before answers, then wait
# until all answer. One at a time because, under TCG, dom0 work that overlapped guests
# booting failed now and then (libxc's XZ decompression of a kernel, a block hotplug
# script); the three at once came up in ~50 s rather than ~75 s, but the runs that tried it
# stalled later for a fault of the snapshot's own, since mended, so it is not proven. On a
# warm host the snapshot has started them. A failed create is retried once, loudly.
start_guests() {
  local name ip
  while read -r -u 7 name ip _; do
    xl domid "$name" > /dev/null 2>&1 && continue
    create_guest "$name" || return 1
    # (Not `guest_request | grep -q`: under pipefail grep's early exit SIGPIPEs the client
    # and the whole test fails although the guest answered.)
    nested_wait 120 "[[ \"\$(guest_request $ip STATUS 2>/dev/null)\" == *counter=* ]]" \
      || echo "WARNING: $name does not answer yet"
  done 7< <(guests)
  wait_guests
}
create_guest() {
  local name=$1 log=$NESTED_RESULTS/xl-create-$1.log t=$SECONDS
  xl create "/etc/xen/guests/$name.cfg" > "$log" 2>&1 && { echo "xl create $name: $((SECONDS - t)) s"; return 0; }
  echo "WARNING: xl create $name failed, retrying once:"; cat "$log"
  xl destroy "$name" 2> /dev/null
  xl create "/etc/xen/guests/$name.cfg" > "$log" 2>&1 && return 0
  echo "xl create $name failed:"; cat "$log"
  return 1
}

# Wait until every guest's service answers from dom0 with its own name.
wait_guests() {
  local name ip mac uuid mem
  while read -r -u 7 name ip mac uuid mem; do
    nested_wait 180 "guest_request $ip STATUS > /tmp/answer.$name 2>&1; grep -qx name=$name /tmp/answer.$name" \
      || { echo "guest $name ($ip) does not answer; last answer:"; cat "/tmp/answer.$name"; return 1; }
    echo "guest $name answers at $ip"
  done 7< <(guests)
}

# libxl's stored config (xl list -l) holds every guest's vif ip.
xl_config_has_ips() {
  local name ip _
  while read -r -u 7 name ip _; do
    grep -q "\"ip\": \"$ip\"" "$1" || { echo "no ip $ip for $name in $1"; return 1; }
  done 7< <(guests)
}

# Check `xenmaint version --json` (one JSON object) against an expected Xen version.
check_xm_version() {
  local want=$1 out=$NESTED_RESULTS/boot-$NESTED_BOOT-xenmaint-version.json
  xenmaint version --json > "$out" 2> "$out.stderr" || { cat "$out.stderr"; return 1; }
  python3 - "$out" "$want" <<'PY'
import json, sys
v = json.loads(open(sys.argv[1]).read())
h = v["hypervisor"]
got = f"{h['major']}.{h['minor']}{h['extra']}"
print(f"xenmaint version: hypervisor {got}, xenmaint {v.get('xenmaint', v.get('version'))}")
sys.exit(0 if got.startswith(sys.argv[2]) else 1)
PY
}

# Check `xenmaint list --json` (JSON Lines) shows dom0 and every running guest with its
# uuid, MAC, IP, bridge and disk path and format.
check_xm_list() {
  local out=$NESTED_RESULTS/boot-$NESTED_BOOT-xenmaint-list.jsonl
  xenmaint list --json > "$out" 2> "$out.stderr" || { cat "$out.stderr"; return 1; }
  python3 - "$out" /etc/xen/guests/guests.list <<'PY'
import json, os, sys
doms = {}
for line in open(sys.argv[1]):
    if line.strip():
        d = json.loads(line)
        doms[d["name"]] = d
bad = []
if not any(d.get("domid") == 0 for d in doms.values()):
    bad.append("no domid 0 (dom0) in the list")
for line in open(sys.argv[2]):
    f = line.split()
    if len(f) < 5 or f[0].startswith("#"):
        continue
    if "extra" in f[5:] and os.environ.get("NESTED_GUESTS_ALL") != "1":
        continue
    if "aside" in f[5:] and os.environ.get("NESTED_GUESTS_ASIDE") != "1":
        continue
    name, ip, mac, uuid = f[:4]
    d = doms.get(name)
    if d is None:
        bad.append(f"{name}: missing"); continue
    if str(d.get("uuid", "")).lower() != uuid:
        bad.append(f"{name}: uuid {d.get('uuid')} != {uuid}")
    want = "pvh" if "pvh" in f[5:] else "hvm" if "hvm" in f[5:] else "pv"
    if d.get("type") != want:   # (libxl's domain info says hvm for a PVH guest)
        bad.append(f"{name}: type {d.get('type')} != {want}")
    nics = d.get("nics") or []
    if not any(str(n.get("mac", "")).lower() == mac and n.get("ip") == ip and n.get("bridge") == "xenbr0" for n in nics):
        bad.append(f"{name}: no nic with mac={mac} ip={ip} bridge=xenbr0 in {nics}")
    disks = d.get("disks") or []
    if not any(k.get("path") == f"/var/lib/xen-guests/{name}.img" and k.get("format") == "raw" for k in disks):
        bad.append(f"{name}: no raw disk /var/lib/xen-guests/{name}.img in {disks}")
    print(f"xenmaint list: {name} domid={d.get('domid')} type={d.get('type')} state={d.get('state')} nics={len(nics)} disks={len(disks)}")
for b in bad:
    print("xenmaint list:", b)
sys.exit(1 if bad else 0)
PY
}

# fail_every_test WHY: each test the scenario's "# nested-tests:" line names fails with WHY
# (a scenario that cannot run at all, e.g. without xenmaint, still reports every test).
fail_every_test() {
  local t
  for t in $(sed -n 's/^# nested-tests: *//p' /nested/scenario | head -n1); do
    test_begin "$t"; fail "$t" "$1"; test_end "$t"
  done
}
xm_check() {   # xm_check TEST DESC fn args...: a xenmaint check; skipped without the binary
  local t=$1 d=$2; shift 2
  if have_xenmaint; then check "$t" "$d" "$@"
  else echo "  SKIP [$t] $d (no xenmaint binary in this run)"; echo "$d" >> "$NESTED_STATE/skipped"; fi
}

# warm_check: a host started from the snapshot behaves: its wall clock is set from the
# runner's (the snapshot's stood still meanwhile) and agrees with it; every guest runs on from
# where the snapshot left it (same boot id, its counter advanced) and answers through its
# port forward; Xen's timers run at dom0's pace (a guest's counter, one tick per second of
# the guest's timer, advances by about as many seconds as dom0's clock does: at least a
# quarter, since each tick is a loop with a fork that a starved host (two nested VMs in a
# third of the machine) runs late, seen at 0.58; a timer stopped or 50 times slow is far
# below that).
warm_check() {
  local now ok=0 name ip before after c0 c1 t0 t1 first_ip
  now=$(nested_ctl clock) && date -s "@$now" > /dev/null || { echo "FAIL clock: no time from the runner"; ok=1; }
  now=$(nested_ctl clock)
  if awk -v a="$now" -v b="$EPOCHREALTIME" 'BEGIN { d = a - b; exit !(d < 5 && d > -5) }'; then
    echo "ok   dom0's clock $(date -u +%FT%TZ) agrees with the runner's (within 5 s)"
  else echo "FAIL dom0's clock $EPOCHREALTIME, the runner's $now"; ok=1; fi
  while read -r -u 7 name ip _; do
    first_ip=${first_ip:-$ip}
    before=$(cat "/var/lib/nested-warm/$name" 2>/dev/null) after=$(guest_request "$ip" STATUS 2>&1)
    c0=$(sed -n 's/^counter=//p' <<<"$before") c1=$(sed -n 's/^counter=//p' <<<"$after")
    if [ "$(sed -n 's/^boot_id=//p' <<<"$after")" = "$(sed -n 's/^boot_id=//p' <<<"$before")" ] \
       && [ -n "$c1" ] && [ "$c1" -gt "${c0:-0}" ]; then
      echo "ok   $name runs on: same boot id, counter $c0 -> $c1"
    else echo "FAIL $name: before [$(tr '\n' ' ' <<<"$before")] now [$(tr '\n' ' ' <<<"$after")]"; ok=1; fi
  done 7< <(guests)
  t0=$EPOCHREALTIME c0=$(guest_request "$first_ip" STATUS | sed -n 's/^counter=//p')
  sleep 5
  t1=$EPOCHREALTIME c1=$(guest_request "$first_ip" STATUS | sed -n 's/^counter=//p')
  if awk -v n="$((${c1:-0} - ${c0:-0}))" -v t="$t0" -v u="$t1" 'BEGIN { d = u - t; exit !(n >= d * 0.25 && n <= d * 1.4 + 1) }'; then
    echo "ok   a guest's timer keeps dom0's pace: $((c1 - c0)) ticks in $(awk -v t="$t0" -v u="$t1" 'BEGIN { printf "%.1f", u - t }') s"
  else echo "FAIL a guest's counter went ${c0:-?} -> ${c1:-?} in $t0 .. $t1"; ok=1; fi
  nested_ctl forwards | sed 's/^/     forward: /' || { echo "FAIL port forwards"; ok=1; }
  return "$ok"
}

# ---- for the scenarios' checks ------------------------------------------------------------
# expect_rc WANT cmd...: the command exits with status WANT.
expect_rc() { local want=$1 rc=0; shift; "$@" || rc=$?; [ "$rc" = "$want" ] || { echo "exit $rc, want $want: $*"; return 1; }; }
grubenv_get() { grub-editenv /boot/grub/grubenv list | sed -n "s/^$1=//p"; }
booted_entry() { sed -n 's/.*nested.grub_entry=\([^ ]*\).*/\1/p' /proc/cmdline; }
# ip_of NAME: a guest's IP (the extra and aside guests too).
ip_of() { NESTED_GUESTS_ALL=1 NESTED_GUESTS_ASIDE=1 guests | awk -v g="$1" '$1 == g {print $2}'; }
# Guests on the host (dom0 aside), whatever their state.
guest_count() { xl list | tail -n +2 | awk '$1 != "Domain-0"' | wc -l; }
# ask NAME: the guest's answer in /tmp/answer.NAME (a file first: grep -q on a pipe could
# close it before the guest's service has written everything, and pipefail would count that
# as a failure).
ask() { guest_request "$(ip_of "$1")" STATUS > "/tmp/answer.$1" 2>&1; }
boot_id_of() { ask "$1"; sed -n 's/^boot_id=//p' "/tmp/answer.$1"; }
# status_json FILE: `xenmaint status --json` (one object: {"event":..., "run":..., "state":{...}}).
status_json() { xenmaint status --json > "$1" 2> "$1.stderr"; }
jq_py() {   # jq_py FILE PYTHON-EXPR: true if the expression holds for the last object `s` (st: its state)
  python3 - "$1" "$2" <<'PY'
import json, sys
s = json.loads(open(sys.argv[1]).read().splitlines()[-1])
ok = eval(sys.argv[2], {"s": s, "st": s.get("state") or {}})
print(f"  {sys.argv[2]} -> {bool(ok)}")
sys.exit(0 if ok else 1)
PY
}
unit_result() { systemctl show -p Result --value xenmaint-resume.service; }
# The unit that finishes a run at boot: the .deb enabled it; from a bare binary, installed
# as the README tells an administrator to (once per host).
resume_unit_enabled() {
  if installed_by_dpkg; then
    systemctl is-enabled xenmaint-resume.service && systemctl cat xenmaint-resume.service | grep -qx "ExecStart=/usr/sbin/xenmaint resume"
  else
    install -m 0644 /nested/systemd/xenmaint-resume.service /etc/systemd/system/ && systemctl daemon-reload && systemctl enable xenmaint-resume.service
  fi
}
# After a boot: wait for xenmaint-resume.service to finish the run, as a script would; its
# status in results/boot-N-status.json, its journal in results/boot-N-resume-unit.txt.
# guest_identity NAME: what makes the guest the same one, as libxl keeps it: its UUID, each
# NIC's MAC, bridge and IP, each disk's backend and format, a logical volume by its path and
# LV UUID, a file by its file system's UUID and inode (the same file, not a copy; not
# st_dev: the root disk was sda in one boot and sdb in another).
guest_identity() {
  xl list -l "$1" | python3 -c '
import json, os, subprocess, sys
c = json.load(sys.stdin)[0]["config"]
print("uuid", c["c_info"]["uuid"])
for n in c.get("nics", []):
    print("nic", n["mac"], n["bridge"], n.get("ip"))
def out(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip() or "?"
for d in c.get("disks", []):
    p = d["pdev_path"]
    if p.startswith("/dev/"):
        what = ("lv", out("lvs", "--noheadings", "-o", "lv_uuid", p))
    else:
        what = ("file", out("findmnt", "-no", "UUID", "-T", p), os.stat(p).st_ino)
    print("disk", d["vdev"], p, d.get("backend"), d.get("format"), *what)'
}
# ---- g5: a guest made by the scenarios that use it -------------------------------------
# g5: a guest with two NICs on two bridges and two disks as hosts keep instance storage:
# xvda a logical volume (a volume group on the host's spare disk), xvdb a qcow2 file served
# by QEMU's qdisk backend. Its config is written here.
G5_UUID=8a5c0b1e-6e3a-4c5e-9f21-00000000a025
G5_IP=10.0.2.25 G5_IP2=10.0.3.25
G5_LV=/dev/xenguests/g5 G5_QCOW=/var/lib/xen-guests/g5-b.qcow2
SPARE=/dev/disk/by-id/ata-QEMU_HARDDISK_nested-spare
make_g5() {
  udevadm settle
  [ -b "$SPARE" ] || { echo "no spare disk $SPARE"; return 1; }
  pvcreate -q -y "$SPARE" && vgcreate -q xenguests "$SPARE" && lvcreate -q -y -L 16M -n g5 xenguests || return 1
  qemu-img create -q -f qcow2 "$G5_QCOW" 16M || return 1
  cat > /etc/xen/guests/g5.cfg <<CFG
name = "g5"
uuid = "$G5_UUID"
type = "pv"
kernel = "/var/lib/xen-guests/vmlinux"
ramdisk = "/var/lib/xen-guests/initrd.gz"
extra = "console=hvc0 clocksource=xen tsc=unstable guest_name=g5 guest_ip=$G5_IP guest_ip2=$G5_IP2 guest_gw=10.0.2.2"
memory = 128
maxmem = 128
vcpus = 1
vif = [ "mac=00:16:3e:58:4d:25,bridge=xenbr0,ip=$G5_IP", "mac=00:16:3e:58:4d:35,bridge=xenbr1,ip=$G5_IP2" ]
disk = [ "format=raw,vdev=xvda,access=rw,backendtype=phy,target=$G5_LV",
         "format=qcow2,vdev=xvdb,access=rw,backendtype=qdisk,target=$G5_QCOW" ]
on_poweroff = "destroy"
on_reboot = "restart"
on_crash = "destroy"
CFG
  create_guest g5 || return 1
  # Up once it answers through its second NIC.
  nested_wait 120 "guest_request $G5_IP2 STATUS > /tmp/answer.g5 2>&1; grep -qx name=g5 /tmp/answer.g5"
}
# g5_answers [BOOT_ID]: g5 answers at each of its IPs with its name, both IPs, the token
# /root/g5-token on both disks, and (given) that boot id; its answer in /tmp/answer.g5.
g5_answers() {
  local ip a
  for ip in $G5_IP $G5_IP2; do
    nested_wait 60 "guest_request $ip STATUS > /tmp/answer.g5 2>&1; grep -qx name=g5 /tmp/answer.g5" || { echo "g5: no answer at $ip"; return 1; }
    a=$(tr '\n' ' ' < /tmp/answer.g5)
    echo "g5 at $ip: $a"
    [[ " $a " == *" ip=$G5_IP "* && " $a " == *" ip2=$G5_IP2 "* ]] || { echo "g5: not both IPs"; return 1; }
    [[ " $a " == *" disk=$(cat /root/g5-token) "* && " $a " == *" disk2=$(cat /root/g5-token) "* ]] || { echo "g5: a disk lost its token"; return 1; }
    [ -z "${1:-}" ] || [[ " $a " == *" boot_id=$1 "* ]] || { echo "g5: boot id is not $1"; return 1; }
  done
}
# g5_identity: its UUID, MACs, bridges, IPs and disks (guest_identity: the LV by its UUID,
# the qcow2 file by its inode).
g5_identity() { guest_identity g5; }
# g5_manifest_lv MANIFEST: xenmaint's manifest knows xvda by its device-mapper UUID, the
# one LVM gives the volume ("LVM-", the VG's UUID and the LV's, without dashes).
g5_manifest_lv() {
  local vg lv
  vg=$(vgs --noheadings -o vg_uuid xenguests | tr -d ' -') lv=$(lvs --noheadings -o lv_uuid "$G5_LV" | tr -d ' -')
  python3 -c '
import json, sys
d = [x for x in json.load(open(sys.argv[1]))["disks"] if x["vdev"] == "xvda"][0]
print("  xvda:", d.get("dm_uuid"), "LVM says:", sys.argv[2])
sys.exit(0 if d.get("dm_uuid") == sys.argv[2] else 1)' "$1" "LVM-$vg$lv"
}
g5_same() { g5_identity > "$1"; diff /root/g5-identity "$1"; }
g5_write() {
  guest_request "$G5_IP2" "WRITE $(cat /root/g5-token)" > /tmp/write.g5 2>&1
  cat /tmp/write.g5
  grep -qx "disk2=$(cat /root/g5-token)" /tmp/write.g5
}
# g5_listed: `xenmaint list --json` shows g5 with both NICs (MAC, IP, bridge) and both disks.
g5_listed() {
  xenmaint list --json | python3 -c '
import json, sys
g = [d for d in map(json.loads, sys.stdin) if d.get("name") == "g5"][0]
nics = sorted((n["mac"].lower(), n.get("ip"), n.get("bridge")) for n in g["nics"])
disks = sorted(d["path"] for d in g["disks"])
print("xenmaint list: g5", nics, disks)
sys.exit(0 if nics == [("00:16:3e:58:4d:25", "'"$G5_IP"'", "xenbr0"), ("00:16:3e:58:4d:35", "'"$G5_IP2"'", "xenbr1")]
         and disks == ["'"$G5_LV"'", "'"$G5_QCOW"'"] else 1)'
}
# g5_setup TEST: g5 made and started, a token on both its disks; its boot id and identity
# kept in /root (g5-boot-id, g5-identity) for the checks after.
g5_setup() {
  local t=$1
  check "$t" "g5 created: two vifs (xenbr0, xenbr1), an LVM and a qcow2 disk" make_g5
  echo "g5-$(date +%s)-$RANDOM" > /root/g5-token
  check "$t" "g5 takes a token on both disks, through its second NIC" g5_write
  check "$t" "g5 answers at both IPs; both disks hold the token" g5_answers
  sed -n 's/^boot_id=//p' /tmp/answer.g5 > /root/g5-boot-id
  g5_identity > /root/g5-identity; cat /root/g5-identity
  check "$t" "libxl has both NICs and both disks of g5" \
    test "$(grep -c '^nic' /root/g5-identity)-$(grep -c '^disk' /root/g5-identity)" = 2-2
  check "$t" "xvda on the logical volume (phy, its LV UUID), xvdb qcow2 through qdisk" \
    bash -c "grep -Eq '^disk xvda $G5_LV phy raw lv [A-Za-z0-9-]{38}\$' /root/g5-identity && grep -q '^disk xvdb $G5_QCOW qdisk qcow2 file ' /root/g5-identity"
}
# g5_interop TEST DIR: `xenmaint save --out` -> `xl restore`, `xl save` -> `xenmaint
# restore` of g5 (images in DIR); after each it answers with the memory it had, and its
# identity is the one g5_setup kept.
g5_interop() {
  local t=$1 d=$2
  check "$t" "xenmaint save --out g5" xenmaint save g5 --out "$d/g5.xm"
  check "$t" "its manifest knows xvda by the LV's device-mapper UUID" g5_manifest_lv "$d/g5.xm.manifest.json"
  check "$t" "xl restore of it" xl restore "$d/g5.xm"
  check "$t" "g5 again at both IPs, same memory, both disks" g5_answers "$(cat /root/g5-boot-id)"
  check "$t" "xl save g5" xl save g5 "$d/g5.xl"
  check "$t" "xenmaint restore of xl's image" xenmaint restore "$d/g5.xl"
  check "$t" "g5 again at both IPs, same memory, both disks" g5_answers "$(cat /root/g5-boot-id)"
  check "$t" "same MACs, bridges, IPs and disks (LV UUID; qcow2 file's inode) after both" \
    g5_same /root/g5-identity-after
}
wait_resume() {
  local rc=0 r=$NESTED_RESULTS
  xenmaint status --wait --timeout 900 --json > "$r/boot-$NESTED_BOOT-status.json" 2> "$r/boot-$NESTED_BOOT-status.err" || rc=$?
  cat "$r/boot-$NESTED_BOOT-status.err"
  journalctl -b -u xenmaint-resume.service --no-pager > "$r/boot-$NESTED_BOOT-resume-unit.txt" 2>&1
  sed 's/^/  unit| /' "$r/boot-$NESTED_BOOT-resume-unit.txt" | tail -n 30
  echo "status --wait exit $rc"
  return 0
}
# all_back STATUS [dumped]: every planned guest (the scenario's, guests) is back in the status (or, given "dumped",
# one more dumped as planned), and runs exactly once.
all_back() {
  local dumped=${2:-} n
  n=$(guests | wc -l)
  jq_py "$1" 'sorted(g["state"] for g in st["guests"].values()) == sorted(["back"] * '"$n"' + ['"${dumped:+\"dumped\"}"'])' \
    && test "$(guest_count)" = "$n" \
    && test "$(xl list | awk 'NR > 1 {print $1}' | sort | uniq -d | wc -l)" = 0
}
# Every guest runs with the UUID and MAC of the image's table.
same_uuids() {
  local name ip mac uuid _
  while read -r -u 7 name ip mac uuid _; do
    xl list -l "$name" > "/tmp/xl-l.$name" 2>&1 || { echo "$name not running"; return 1; }
    grep -qi "\"uuid\": \"$uuid\"" "/tmp/xl-l.$name" || { echo "$name: uuid is not $uuid"; return 1; }
    grep -qi "\"mac\": \"$mac\"" "/tmp/xl-l.$name" || { echo "$name: mac is not $mac"; return 1; }
  done 7< <(guests)
}
# device_findings: a guest whose config holds settings a save loses, I/O ports passed through
# and nomigrate, created paused (it never runs); `xenmaint plan` must name both for it, read
# from the config libxl keeps, as warnings (and exit 7: the guest is paused). The guest is
# destroyed again. (Not vNUMA, the one setting libxl refuses to save: libxl refuses it for a
# PV guest at creation, "PV vNUMA is not yet supported", and a PVH guest with it failed to
# build on both hosts, Xen 4.17 and 4.20: xc_domain_getvnuma ENOBUFS in libxl's ACPI setup.)
device_findings() {
  local cfg=/root/gx.cfg out=$NESTED_RESULTS/plan-devices.json rc=0
  cat > "$cfg" <<'CFG'
name = "gx"
type = "pv"
kernel = "/var/lib/xen-guests/vmlinux"
ramdisk = "/var/lib/xen-guests/initrd.gz"
memory = 128
maxmem = 128
vcpus = 1
nomigrate = 1
ioports = [ "2f8-2ff" ]
CFG
  xl create -p "$cfg" > "$NESTED_RESULTS/xl-create-gx.log" 2>&1 || { cat "$NESTED_RESULTS/xl-create-gx.log"; return 1; }
  xl list -l gx | grep -E -A3 '"ioports"|"disable_migrate"'
  xenmaint plan --json > "$out" 2> "$out.stderr" || rc=$?
  xl destroy gx
  echo "plan exit $rc"
  [ "$rc" = 7 ] && python3 - "$out" <<'PY'
import json, sys
p = json.loads(open(sys.argv[1]).readline())
f = [(x["severity"], x["message"]) for x in p["findings"] if x.get("guest") == "gx"]
for s, m in f:
    print(f"  gx {s}: {m}")
sys.exit(0 if any(s == "warning" and "I/O ports" in m for s, m in f)
         and any(s == "warning" and "nomigrate" in m for s, m in f) else 1)
PY
}
