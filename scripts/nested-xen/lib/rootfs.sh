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

# The update: the XEN_NEW build of every pinned package, fetched with the machine's own
# apt sources (no mirror is named anywhere in the repository).
nx_log "downloading the Xen $XEN_NEW_SHORT update packages"
mkdir -p "$work/update"
(cd "$work/update" && apt-get download -q "${XEN_PKGS[@]/%/=$XEN_NEW}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
n=$(ls "$work/update"/*.deb | wc -l)
[ "$n" -eq "${#XEN_PKGS[@]}" ] || nx_die "expected ${#XEN_PKGS[@]} update packages, got $n"
# A flat repository: Packages + Release. It is marked [trusted=yes] in the image: the
# packages are Debian's own, fetched and verified by apt on the build machine.
(cd "$work/update" && dpkg-scanpackages --multiversion . /dev/null > Packages 2>/dev/null \
   && gzip -9nk Packages && apt-ftparchive release . > Release)

include=$(IFS=,; echo "${DOM0_PKGS[*]},${XEN_PKGS[*]/%/=$XEN_OLD}")
nx_log "mmdebstrap (minbase, Xen pinned to $XEN_OLD)"
# No mirror argument: mmdebstrap uses the build machine's apt sources.
# The customize hooks run inside the new root (mmdebstrap mounts /proc, /dev for them):
#  - the image's apt knows only the local update repository (the VM has no route to an
#    archive), and its lists are fetched now (and kept: --skip=cleanup/apt/lists) so `apt-get install`
#    works offline;
#  - dom0's initramfs holds only what mounts its root (the q35 machine's AHCI disk, ext4),
#    not MODULES=most: 35 MB that GRUB read, the kernel unpacked and udev walked at each
#    boot under TCG;
#  - xendomains is disabled: it would save/restore guests on its own at shutdown/boot and
#    race the procedure under test (a scenario may enable it explicitly).
mmdebstrap --variant=minbase --include="$include" --skip=cleanup/apt/lists \
  --customize-hook="mkdir -p \"\$1/var/local/xen-update\" && cp -a '$work/update/.' \"\$1/var/local/xen-update/\"" \
  --customize-hook='rm -f "$1/etc/apt/sources.list" "$1"/etc/apt/sources.list.d/*' \
  --customize-hook='echo "deb [trusted=yes] file:/var/local/xen-update ./" > "$1/etc/apt/sources.list.d/xen-update.list"' \
  --customize-hook='chroot "$1" apt-get update -q' \
  --customize-hook='echo MODULES=list > "$1/etc/initramfs-tools/conf.d/nested-xen"' \
  --customize-hook='printf "ahci\nsd_mod\next4\ncrc32c_generic\n" >> "$1/etc/initramfs-tools/modules"' \
  --customize-hook='chroot "$1" update-initramfs -u -k all' \
  --customize-hook='chroot "$1" systemctl disable xendomains.service 2>/dev/null || true' \
  --customize-hook='chroot "$1" dpkg-query -W -f="\${Package} \${Version}\n" > "$1/var/local/xen-update/installed-at-build.txt"' \
  bookworm "$work/rootfs.tar"
mv "$work/rootfs.tar" "$out"
nx_log "rootfs: $(du -h "$out" | cut -f1)"
