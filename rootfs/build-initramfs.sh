#!/usr/bin/env bash
# Packs the guest initramfs: the statically linked cocoon-agent as /init and
# the empty mount points it uses, nothing else. /dev/console comes from the
# kernel's built-in initramfs, which is unpacked before this one.
#
# usage: rootfs/build-initramfs.sh AGENT_BINARY OUT_IMAGE
set -euo pipefail

agent=${1:?usage: build-initramfs.sh AGENT_BINARY OUT_IMAGE}
out=${2:?usage: build-initramfs.sh AGENT_BINARY OUT_IMAGE}

# A dynamically linked /init would fail in the guest with a bare "No such file
# or directory" from the kernel; refuse it here, with a reason.
if ! file -b "$agent" | grep -q 'statically linked\|static-pie linked'; then
  echo "initramfs: $agent is not statically linked: $(file -b "$agent")" >&2
  exit 1
fi

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
mkdir -p "$staging"/{dev,proc,sys,run,tmp}
install -m 0755 "$agent" "$staging/init"
# Fixed timestamps and owners: the same agent gives the same image.
find "$staging" -exec touch -h -d @0 {} +
mkdir -p "$(dirname "$out")"
(cd "$staging" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) >"$out.tmp"
mv "$out.tmp" "$out"
