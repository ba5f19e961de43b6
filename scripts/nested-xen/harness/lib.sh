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
# port on the test machine's loopback (10.0.2.2 is the host side of slirp).
outside() {
  local ph=$1 line rc=99
  if [ -z "${NESTED_CTL_PORT:-}" ]; then nested_log "outside: no control port"; return 98; fi
  exec {fd}<>"/dev/tcp/10.0.2.2/$NESTED_CTL_PORT" || return 97
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
# Guest table from the image: name ip mac uuid mem
guests() { grep -v '^#' /etc/xen/guests/guests.list | awk 'NF>=5'; }
