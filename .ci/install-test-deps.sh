#!/usr/bin/env bash
# Installs the Debian packages ibuild's tests use, when any is missing.
# Runs apt-get only as root; otherwise says what to install and fails.
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
  [newuidmap]=uidmap
  [setpriv]=util-linux
  [useradd]=passwd
  [podman]=podman
  [crun]=crun
  [buildah]=buildah
  [docker-registry]=docker-registry
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing test dependencies: ${missing[*]}" >&2
  echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
