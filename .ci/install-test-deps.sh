#!/usr/bin/env bash
# Installs the Debian packages ibuild's tests use, when any is missing, and
# readies the multi-arch tests (the arm64 package architecture, for
# busybox-static:arm64, and qemu-aarch64 in binfmt_misc with the F flag).
# Runs apt-get only as root; otherwise says what to do and fails.
set -euo pipefail

# command -> package
declare -A need=(
  [skopeo]=skopeo
  [umoci]=umoci
  [zstd]=zstd
  [xz]=xz-utils
  [bzip2]=bzip2
  [busybox]=busybox-static
  [gcc]=gcc
  [git]=git
  [newuidmap]=uidmap
  [setpriv]=util-linux
  [useradd]=passwd
  [podman]=podman
  [crun]=crun
  [buildah]=buildah
  [docker-registry]=docker-registry
  [qemu-aarch64-static]=qemu-user-static
  [update-binfmts]=binfmt-support
  [runc]=runc
  [debootstrap]=debootstrap
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
arm64_ready() {
  dpkg --print-foreign-architectures | grep -qx arm64 &&
    grep -qs '^flags: .*F' /proc/sys/fs/binfmt_misc/qemu-aarch64
}
if [ ${#missing[@]} -eq 0 ] && arm64_ready; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  if [ ${#missing[@]} -gt 0 ]; then
    echo "missing test dependencies: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  fi
  arm64_ready || echo "for the multi-arch tests, as root: dpkg --add-architecture arm64 && apt-get update && bash .ci/binfmt.sh" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
  apt-get install -y -qq "${missing[@]}" >/dev/null
  echo "installed: ${missing[*]}"
fi
bash "$(dirname "$0")/binfmt.sh" >/dev/null
