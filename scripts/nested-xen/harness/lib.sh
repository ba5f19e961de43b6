# Helpers for the driver and for scenarios (scenarios get them sourced: see `scenario`).
# shellcheck shell=bash
NESTED_STATE=/nested/state       # survives reboots (the io disk)
NESTED_RESULTS=/nested/results   # copied to the runner's --out DIR after power-off
export NESTED_STATE NESTED_RESULTS
[ -r /nested/run.env ] && . /nested/run.env   # NESTED_CTL_PORT, written by the runner

# A marker line for the runner: straight to the console (Xen's serial port), once; a copy
# goes to results/markers.log. (Not to stdout: that reaches the console too, via the unit's
# StandardOutput=journal+console, and would duplicate it.)
nested_marker() {
  local event=$1; shift
  local line="@@NESTED-XEN@@ boot=${NESTED_BOOT:-0} event=$event $*"
  echo "$line" > /dev/console 2>/dev/null || echo "$line"
  echo "$(date +%T) $line" >> "$NESTED_RESULTS/markers.log" 2>/dev/null || true
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

# outside PHASE: ask the runner to run the --outside script now, with PHASE; returns its
# exit code and prints its output. Goes over QEMU user networking to the runner's control
# port on the test machine's loopback, through the guestfwd address in run.env (QEMU's
# user network is restricted: nothing else leaves the VM).
outside() {
  local ph=$1 line rc=99
  if [ -z "${NESTED_CTL_PORT:-}" ]; then nested_log "outside: no control port"; return 98; fi
  exec {fd}<>"/dev/tcp/${NESTED_CTL_ADDR:-10.0.2.100}/$NESTED_CTL_PORT" || return 97
  printf 'outside %s %s\n' "$NESTED_BOOT" "$ph" >&"$fd"
  while IFS= read -r -u "$fd" line; do
    case $line in
      @@rc=*) rc=${line#@@rc=} ;;
      *) printf '[outside %s] %s\n' "$ph" "$line" ;;
    esac
  done
  exec {fd}>&-
  return "$rc"
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

have_xenmaint() { [ -x /usr/local/bin/xenmaint ]; }

# guest_status IP [REQUEST]: one request to a guest's service from dom0.
guest_request() {
  local ip=$1 req=${2:-STATUS}
  timeout 10 bash -c 'exec 3<>"/dev/tcp/$0/7000" && printf "%s\n" "$1" >&3 && cat <&3' "$ip" "$req"
}
# Guest table from the image: name ip mac uuid mem. The "extra" guests (the benchmark's
# fourth) only with NESTED_GUESTS_ALL=1.
guests() {
  grep -v '^#' /etc/xen/guests/guests.list \
    | awk -v all="${NESTED_GUESTS_ALL:-0}" 'NF>=5 && (all == 1 || $6 != "extra") {print $1, $2, $3, $4, $5}'
}

# ---- the image's guests (shared by scenarios) ---------------------------------------------
# start_guests: xl create every guest, one after the other, each only once the previous
# one answers, then wait until all answer. Why so careful: under TCG, dom0 work that
# overlaps guests booting has failed now and then for no reason of its own (libxc's XZ
# decompression of a kernel, a block hotplug script, once bash itself), always on the
# third create. A failed create is retried once, loudly.
start_guests() {
  local name ip rc=0
  while read -r -u 7 name ip _; do
    if ! xl create "/etc/xen/guests/$name.cfg" > "$NESTED_RESULTS/xl-create-$name.log" 2>&1; then
      echo "WARNING: xl create $name failed, retrying once:"; cat "$NESTED_RESULTS/xl-create-$name.log"
      xl destroy "$name" 2>/dev/null
      xl create "/etc/xen/guests/$name.cfg" > "$NESTED_RESULTS/xl-create-$name.log" 2>&1 \
        || { rc=1; echo "xl create $name failed:"; cat "$NESTED_RESULTS/xl-create-$name.log"; continue; }
    fi
    # (Not `guest_request | grep -q`: under pipefail grep's early exit SIGPIPEs the client
    # and the whole test fails although the guest answered.)
    nested_wait 120 "[[ \"\$(guest_request $ip STATUS 2>/dev/null)\" == *counter=* ]]" \
      || echo "WARNING: $name does not answer yet"
  done 7< <(guests)
  [ "$rc" = 0 ] || return 1
  wait_guests
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
    if len(f) > 5 and f[5] == "extra" and os.environ.get("NESTED_GUESTS_ALL") != "1":
        continue
    name, ip, mac, uuid = f[:4]
    d = doms.get(name)
    if d is None:
        bad.append(f"{name}: missing"); continue
    if str(d.get("uuid", "")).lower() != uuid:
        bad.append(f"{name}: uuid {d.get('uuid')} != {uuid}")
    nics = d.get("nics") or []
    if not any(str(n.get("mac", "")).lower() == mac and n.get("ip") == ip and n.get("bridge") == "xenbr0" for n in nics):
        bad.append(f"{name}: no nic with mac={mac} ip={ip} bridge=xenbr0 in {nics}")
    disks = d.get("disks") or []
    if not any(k.get("path") == f"/var/lib/xen-guests/{name}.img" and k.get("format") == "raw" for k in disks):
        bad.append(f"{name}: no raw disk /var/lib/xen-guests/{name}.img in {disks}")
    print(f"xenmaint list: {name} domid={d.get('domid')} state={d.get('state')} nics={len(nics)} disks={len(disks)}")
for b in bad:
    print("xenmaint list:", b)
sys.exit(1 if bad else 0)
PY
}

xm_check() {   # xm_check TEST DESC fn args...: a xenmaint check; skipped without the binary
  local t=$1 d=$2; shift 2
  if have_xenmaint; then check "$t" "$d" "$@"
  else echo "  SKIP [$t] $d (no xenmaint binary in this run)"; echo "$d" >> "$NESTED_STATE/skipped"; fi
}
