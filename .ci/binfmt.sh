#!/usr/bin/env bash
# Registers qemu-user's aarch64 handler in binfmt_misc with the F
# (fix-binary) flag, which ibuild's RUN steps for linux/arm64 need, and
# checks that the kernel shows F. Idempotent. Needs root and Debian's
# qemu-user-static and binfmt-support.
set -euo pipefail
dir=/proc/sys/fs/binfmt_misc
entry=$dir/qemu-aarch64
if [ ! -e "$dir/status" ]; then
  mount -t binfmt_misc binfmt_misc "$dir"
fi
# update-binfmts registers from /usr/share/binfmts/qemu-aarch64
# (fix_binary yes); it warns and succeeds when already enabled.
update-binfmts --enable qemu-aarch64 || true
if [ ! -e "$entry" ]; then
  # No update-binfmts result (e.g. it could not mount): register directly.
  echo ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:FP' >"$dir/register"
fi
if ! grep -q '^enabled' "$entry" || ! grep -Eq '^flags: .*F' "$entry"; then
  echo "binfmt_misc qemu-aarch64 is not enabled with the F flag:" >&2
  cat "$entry" >&2
  exit 1
fi
grep -E '^(enabled|interpreter|flags)' "$entry"
