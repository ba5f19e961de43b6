# Shared settings for the nested-Xen harness. Sourced by build-image, run and suite.
# shellcheck shell=bash

NX_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)   # scripts/nested-xen
NX_REPO=$(cd "$NX_DIR/../.." && pwd)                        # repository root
# The host under test, NESTED_XEN_HOST: a Debian release with the Xen series it ships. Each
# has its own cache (image, snapshot, runs).
#   debian12  Debian 12 (bookworm), Xen 4.17: installed at bookworm's 4.17.5, patched to
#             bookworm-security's 4.17.7 (every package of source "xen").
#   debian13  Debian 13 (trixie), Xen 4.20: trixie's tools, and two builds of the hypervisor
#             alone: Debian 13 ships one 4.20 build, so the other is forky's (or sid's),
#             whose tools need a newer libc than trixie's but whose hypervisor package
#             depends on nothing (../shared/PORT-4.20.md). The older of the two is
#             installed, the newer is the patch (nx_builds picks them from the suites as
#             they stand: forky moves). On 2026-12-04: forky's 4.20.4+39-gf1e1321c87-1,
#             patched to trixie's 4.20.4+63-g7abfd2bce2-0+deb13u1; both report 4.20.5-pre
#             and differ by build id.
# XEN_OLD/XEN_NEW: the package versions, fetched from XEN_OLD_SUITE/XEN_NEW_SUITE (apt
# configurations: a release's name covers its -security and -updates); XEN_*_SHORT: the
# version each build reports (xl info's xen_version), empty where it is not pinned.
NX_HOST=${NESTED_XEN_HOST:-debian12}
NX_CACHE=${NESTED_XEN_CACHE:-$NX_REPO/.cache/nested-xen}/$NX_HOST   # git-ignored
case $NX_HOST in
  debian12)
    NX_SUITE=bookworm XEN_SERIES=4.17
    XEN_OLD=4.17.5+72-g01140da4e8-1 XEN_OLD_SHORT=4.17.5 XEN_OLD_SUITE=bookworm
    XEN_NEW=4.17.7+13-g2445b30a44-0+deb12u1 XEN_NEW_SHORT=4.17.7 XEN_NEW_SUITE=bookworm
    XEN_BUILD_SUITES=()
    # Every binary package of source "xen" that a dom0 installs: all of them are installed
    # at XEN_OLD and all of them are in the update repository at XEN_NEW, so the upgrade
    # is a consistent `apt-get install` of one source version.
    XEN_PKGS=(
      xen-system-amd64 xen-hypervisor-4.17-amd64 xen-hypervisor-common
      xen-utils-4.17 xen-utils-common xenstore-utils
      libxencall1 libxendevicemodel1 libxenevtchn1 libxenforeignmemory1 libxengnttab1
      libxenhypfs1 libxenmisc4.17 libxenstore4 libxentoolcore1 libxentoollog1
    )
    XEN_BASE_PKGS=()
    ;;
  debian13)
    NX_SUITE=trixie XEN_SERIES=4.20
    XEN_OLD_SHORT='' XEN_NEW_SHORT=''
    XEN_BUILD_SUITES=(trixie forky sid)
    XEN_PKGS=(xen-hypervisor-4.20-amd64)
    # The rest of Xen, at trixie's own version.
    XEN_BASE_PKGS=(xen-system-amd64 xen-utils-4.20 xen-utils-common xenstore-utils libxenmisc4.20)
    ;;
  *) echo "nested-xen: unknown NESTED_XEN_HOST=$NX_HOST (debian12, debian13)" >&2; exit 2 ;;
esac
# Everything else the dom0 needs (the kernel floats with the release's apt sources).
DOM0_PKGS=(
  systemd-sysv udev dbus linux-image-amd64 initramfs-tools
  iproute2 bridge-utils iputils-ping kmod procps util-linux e2fsprogs
  grub-common python3 less
  openssh-server   # the fleet rollout (scripts/ansible) reaches dom0 as root, by a run's key
  # Instance storage as hosts keep it: LVM volumes, and qcow2 files served by QEMU's qdisk
  # backend (libxl starts a QEMU for a PV guest that has one; also HVM's device model).
  lvm2 qemu-system-xen qemu-utils
)

# nx_apt SUITE: APT_RELEASE set to apt options for SUITE from this machine's own sources
# (scripts/lib/apt-release.sh; nothing of the machine's apt state is touched), its lists
# fetched when they are missing or six hours old (a stamp: apt keeps the archive's times on
# the lists), so that the image a suite checked is the one its runs get.
nx_apt() {
  local dir=$NX_CACHE/apt-$1
  . "$NX_REPO/scripts/lib/apt-release.sh"
  apt_release_setup "$dir" "$1" || return 1
  if [ -z "$(find "$dir/updated" -mmin -360 2>/dev/null)" ]; then
    apt-get "${APT_RELEASE[@]}" update -q >&2 || return 1
    touch "$dir/updated"
  fi
}

# nx_builds: XEN_OLD, XEN_NEW and their suites, exported (build-image, lib/rootfs.sh): the
# pinned ones, or for a host with XEN_BUILD_SUITES the candidate of XEN_PKGS[0] in the
# first of them and the first other build in the rest, the older one installed.
nx_builds() {
  local suite v first='' other='' first_suite='' other_suite=''
  for suite in "${XEN_BUILD_SUITES[@]}"; do
    nx_apt "$suite" || return 1
    v=$(apt-cache "${APT_RELEASE[@]}" policy "${XEN_PKGS[0]}" 2>/dev/null | awk '/Candidate:/ {print $2}')
    case $v in ''|'(none)') continue ;; esac
    if [ -z "$first" ]; then first=$v first_suite=$suite
    elif [ "$v" != "$first" ]; then other=$v other_suite=$suite; break
    fi
  done
  if ((${#XEN_BUILD_SUITES[@]})); then
    [ -n "$other" ] || { nx_log "ERROR: $NX_HOST: one build of ${XEN_PKGS[0]} only (${first:-none}) in ${XEN_BUILD_SUITES[*]}: no patch to make"; return 1; }
    if dpkg --compare-versions "$first" lt "$other"; then
      XEN_OLD=$first XEN_OLD_SUITE=$first_suite XEN_NEW=$other XEN_NEW_SUITE=$other_suite
    else
      XEN_OLD=$other XEN_OLD_SUITE=$other_suite XEN_NEW=$first XEN_NEW_SUITE=$first_suite
    fi
  fi
  export XEN_OLD XEN_OLD_SUITE XEN_NEW XEN_NEW_SUITE
}

# nx_package HOST: builds xenmaint's .deb for HOST's Debian release, by that release (this
# checkout's scripts/package when it is this machine's, else scripts/in-debian), and prints
# its path as the last line.
nx_package() {
  local rel=${1#debian}
  if [ "$rel" = "$(. /etc/os-release && echo "${VERSION_ID%%.*}")" ]; then
    "$NX_REPO/scripts/package"
  else
    "$NX_REPO/scripts/in-debian" "$rel" scripts/package
  fi
}

# nx_scenario_hosts SC: the hosts SC runs on (its "# nested-hosts:" line; debian12 without).
nx_scenario_hosts() { sed -n 's/^# nested-hosts: *//p' "$1" | head -n1 | grep . || echo debian12; }

nx_log() { printf '[nested-xen %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
nx_die() { nx_log "ERROR: $*"; exit 1; }

# nx_image_path TEXT: TEXT, build-image's standard output, is one line naming an existing file.
nx_image_path() { [ -n "$1" ] && [ "$(printf '%s\n' "$1" | wc -l)" = 1 ] && [ -f "$1" ]; }

# nx_vm_lock: take one of the NESTED_XEN_JOBS (default 1) nested-VM slots of this machine
# on fd 8 (held until the process and its children are gone), waiting for one if it must.
nx_vm_lock() {
  local base=/run/lock/xenmaint-nested-xen.lock n=${NESTED_XEN_JOBS:-1} k t=$SECONDS waited=0
  [ -w /run/lock ] || base=$NX_CACHE/run.lock
  while :; do
    for ((k = 0; k < n; k++)); do
      exec 8>>"$base.$k"
      if flock -n 8; then
        [ "$waited" = 0 ] || nx_log "timing: waited $((SECONDS - t)) s for a nested-VM slot"
        return 0
      fi
      exec 8>&-
    done
    [ "$waited" = 1 ] || nx_log "all $n nested-VM slot(s) of this machine are taken ($base.*): waiting"
    waited=1
    sleep 2
  done
}

# nx_cpu_capacity: the CPUs the nested VMs may use, as "CPUS WHY" (CPUS with two decimals):
# this machine's CPUs, less what a CPU quota allows them (NESTED_XEN_SLOW's cgroup, which
# QEMU joins, or the quota of a cgroup this runs in and of each above it, v1 or v2). A quota
# is a pool the lanes share; a machine that is merely slow per CPU still runs two VMs side
# by side, so steal time does not count here.
nx_cpu_capacity() {
  local n cap why="" rel d q p f
  n=$(nproc); cap=$n
  if awk -v f="${NESTED_XEN_SLOW:-1}" 'BEGIN { exit !(f > 1) }'; then
    cap=$(awk -v n="$n" -v f="$NESTED_XEN_SLOW" 'BEGIN { printf "%.2f", n / f }')
    why="NESTED_XEN_SLOW=$NESTED_XEN_SLOW"
  else
    # cgroup v2 (the "0::" line) or v1's cpu controller ("N:cpu,cpuacct:" or "N:cpu:").
    if rel=$(sed -n 's/^0:://p' /proc/self/cgroup) && [ -n "$rel" ] && [ -r /sys/fs/cgroup/cgroup.controllers ]; then
      d=/sys/fs/cgroup$rel
      while [[ "$d" == /sys/fs/cgroup* ]]; do
        if [ -r "$d/cpu.max" ] && read -r q p < "$d/cpu.max" && [ "$q" != max ]; then
          f=$(awk -v q="$q" -v p="$p" 'BEGIN { printf "%.2f", q / p }')
          if awk -v a="$f" -v b="$cap" 'BEGIN { exit !(a < b) }'; then cap=$f; why="quota of $d"; fi
        fi
        [ "$d" = /sys/fs/cgroup ] && break
        d=${d%/*}
      done
    elif rel=$(sed -n 's/^[0-9]*:\([^:]*,\)\{0,1\}cpu\(,[^:]*\)\{0,1\}://p' /proc/self/cgroup | head -n1) && [ -n "$rel" ]; then
      for base in /sys/fs/cgroup/cpu /sys/fs/cgroup/cpu,cpuacct; do [ -r "$base/cpu.cfs_quota_us" ] && break; done
      d=$base${rel%/}
      while [[ "$d" == "$base"* ]]; do
        if [ -r "$d/cpu.cfs_quota_us" ] && q=$(cat "$d/cpu.cfs_quota_us") && [ "$q" -gt 0 ]; then
          p=$(cat "$d/cpu.cfs_period_us")
          f=$(awk -v q="$q" -v p="$p" 'BEGIN { printf "%.2f", q / p }')
          if awk -v a="$f" -v b="$cap" 'BEGIN { exit !(a < b) }'; then cap=$f; why="quota of $d"; fi
        fi
        [ "$d" = "$base" ] && break
        d=${d%/*}
      done
    fi
  fi
  echo "$cap ${why:-no CPU quota}"
}

# nx_lanes CPUS: how many nested VMs run at once when they may use CPUS (NESTED_XEN_JOBS
# overrides): two from 1.3 CPUs, else one (the suite's "Lanes" comment says why).
nx_lanes() { echo "${NESTED_XEN_JOBS:-$(awk -v c="$1" 'BEGIN { print (c >= 1.3 ? 2 : 1) }')}"; }

# nx_spare_cpus: the CPUs the suite's VMs leave idle, as "CPUS WHY": a quota on QEMU alone
# (NESTED_XEN_SLOW) leaves the rest of the machine to other work; a quota of the whole run,
# or none, is a pool the VMs share with it. One VM keeps about 1.1 CPUs busy.
nx_spare_cpus() {
  local cap why lanes pool
  read -r cap why < <(nx_cpu_capacity)
  lanes=$(nx_lanes "$cap")
  pool=$cap
  [[ $why != NESTED_XEN_SLOW=* ]] || pool=$(nproc)
  awk -v p="$pool" -v c="$cap" -v l="$lanes" 'BEGIN { u = l * 1.1; if (u > c) u = c; s = p - u; printf "%.2f", (s > 0 ? s : 0) }'
  echo " ($lanes VM(s) at once, on $cap of $(nproc) CPUs: $why)"
}
