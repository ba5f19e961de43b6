#!/bin/bash
# Stage 1 of the image build: the dom0 root file system from Debian packages, plus the
# local apt repository holding the Xen security update. Output: a tarball (cached by the
# caller under a key over this file, common.sh and the apt candidate versions).
# Usage: rootfs.sh OUT.tar
# Needs root (mmdebstrap in root mode, so files get their real owners).
set -euo pipefail
. "$(dirname "$0")/common.sh"

out=$1
work=$(mktemp -d "${NX_CACHE}/rootfs.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The update: the XEN_NEW build of each patched package, from XEN_NEW_SUITE; the base:
# their XEN_OLD build, from XEN_OLD_SUITE. Fetched with this machine's own apt
# sources, the suite renamed (no mirror is named anywhere in the repository).
# fetch SUITE DIR PKG=VERSION...: `apt-get download` into DIR, every one of them or fail.
fetch() {
  local suite=$1 dir=$2; shift 2
  nx_apt "$suite"
  mkdir -p "$dir"
  (cd "$dir" && apt-get "${APT_RELEASE[@]}" download -q "$@" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  [ "$(ls "$dir"/*.deb 2>/dev/null | wc -l)" -eq $# ] || nx_die "expected $# packages from $suite in $dir, got: $(ls "$dir")"
}
nx_log "downloading Xen $XEN_OLD ($XEN_OLD_SUITE) and the $XEN_NEW update ($NX_SUITE)"
[ -n "${XEN_NEW_SUITE:-}" ] || nx_builds   # (build-image resolves and exports them)
fetch "$XEN_NEW_SUITE" "$work/update" "${XEN_PKGS[@]/%/=$XEN_NEW}"
fetch "$XEN_OLD_SUITE" "$work/base" "${XEN_PKGS[@]/%/=$XEN_OLD}"
chmod -R a+rX "$work"
# A flat repository: Packages + Release. It is marked [trusted=yes] in the image: the
# packages are Debian's own, fetched and verified by apt on the build machine.
(cd "$work/update" && dpkg-scanpackages --multiversion . /dev/null > Packages 2>/dev/null \
   && gzip -9nk Packages && apt-ftparchive release . > Release)

nx_apt "$NX_SUITE"
include=$(IFS=,; echo "${DOM0_PKGS[*]}${XEN_BASE_PKGS[*]:+,${XEN_BASE_PKGS[*]}}")
base_debs=()
for f in "$work"/base/*.deb; do base_debs+=(--include="$f"); done
nx_log "mmdebstrap $NX_SUITE (minbase, Xen's ${XEN_PKGS[*]} at $XEN_OLD)"
# The machine's apt sources for the suite (nx_apt). The XEN_OLD packages are given as
# files (mmdebstrap's file-mirror-automount hook makes them visible inside).
# The customize hooks run inside the new root (mmdebstrap mounts /proc, /dev for them):
#  - the image's apt knows only the local update repository (the VM has no route to an
#    archive), and its lists are fetched now (and kept: --skip=cleanup/apt/lists) so `apt-get install`
#    works offline;
#  - dom0's initramfs holds only what mounts its root (the q35 machine's AHCI disk, ext4),
#    not MODULES=most: 35 MB that GRUB read, the kernel unpacked and udev walked at each
#    boot under TCG;
#  - xendomains is disabled: it would save/restore guests on its own at shutdown/boot and
#    race the procedure under test (a scenario may enable it explicitly).
mmdebstrap --variant=minbase --include="$include" "${base_debs[@]}" --skip=cleanup/apt/lists \
  --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount \
  --customize-hook="mkdir -p \"\$1/var/local/xen-update\" && cp -a '$work/update/.' \"\$1/var/local/xen-update/\"" \
  --customize-hook='rm -f "$1/etc/apt/sources.list" "$1"/etc/apt/sources.list.d/*' \
  --customize-hook='echo "deb [trusted=yes] file:/var/local/xen-update ./" > "$1/etc/apt/sources.list.d/xen-update.list"' \
  --customize-hook='chroot "$1" apt-get update -q' \
  --customize-hook='echo MODULES=list > "$1/etc/initramfs-tools/conf.d/nested-xen"' \
  --customize-hook='printf "ahci\nsd_mod\next4\ncrc32c_generic\n" >> "$1/etc/initramfs-tools/modules"' \
  --customize-hook='chroot "$1" update-initramfs -u -k all' \
  --customize-hook='chroot "$1" systemctl disable xendomains.service 2>/dev/null || true' \
  --customize-hook='chroot "$1" dpkg-query -W -f="\${Package} \${Version}\n" > "$1/var/local/xen-update/installed-at-build.txt"' \
  "$NX_SUITE" "$work/rootfs.tar" "$NX_CACHE/apt-$NX_SUITE/sources.list"
mv "$work/rootfs.tar" "$out"
nx_log "rootfs: $(du -h "$out" | cut -f1)"
