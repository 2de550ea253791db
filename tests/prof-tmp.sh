#!/usr/bin/env bash
# `make demo`: a private containerd (its own config, root, state and socket in
# a temporary directory; the system's containerd is never touched) runs a
# busybox image, built offline, in a Cocoon microVM:
#
#   ctr run --rm --runtime io.containerd.cocoon.v1 docker.io/cocoon/busybox:latest demo uname -a
#
# Needs hardware KVM: `make demo` runs it through tests/kvm-host.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
image=docker.io/cocoon/busybox:latest
dir=$(mktemp -d /tmp/cocoon-demo.XXXXXX)
containerd_pid=

cleanup() {
  if [ -n "$containerd_pid" ]; then
    kill "$containerd_pid" 2>/dev/null || true
    wait "$containerd_pid" 2>/dev/null || true
  fi
  # Mounts first (deepest first), then the files.
  grep -o " $dir[^ ]*" /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

cat >"$dir/cocoon.toml" <<TOML
kernel = "$repo/build/guest/vmlinux"
initramfs = "$repo/build/guest/initramfs.img"
vmm = "$repo/target/x86_64-unknown-linux-gnu/release/cocoon-vmm"
state_dir = "$dir/cocoon"
boot_timeout_seconds = 60
log_level = "debug"
TOML
cat >"$dir/containerd.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[debug]
  level = "debug"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
TOML

PATH="$repo/target/x86_64-unknown-linux-gnu/release:$PATH" COCOON_CONFIG="$dir/cocoon.toml" \
  containerd --config "$dir/containerd.toml" >"$dir/containerd.log" 2>&1 &
containerd_pid=$!
ctr() { command ctr --address "$dir/containerd.sock" "$@"; }
for _ in $(seq 300); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
ctr version >/dev/null || { echo "demo: containerd did not start:" >&2; tail "$dir/containerd.log" >&2; exit 1; }

"$repo/tests/images/busybox-oci.sh" "$dir/busybox.tar" "$image"
ctr image import "$dir/busybox.tar" >/dev/null
echo "host kernel:  $(uname -r)"
echo "+ ctr run --rm --runtime io.containerd.cocoon.v1 $image demo uname -a"
# The native snapshotter works on any file system (the emulated host VM's
# root is an overlay, on which overlayfs cannot stack).
for i in 1; do s=$(date +%s.%N); echo "=== run $i start $s"; ctr run --rm --runtime io.containerd.cocoon.v1 --snapshotter native "$image" demo$i /bin/true; echo "=== run $i end $(date +%s.%N)"; done; for i in; do s=$(date +%s.%N); echo "=== runc $i start $s"; ctr run --rm --runtime io.containerd.runc.v2 --snapshotter native "$image" runc$i /bin/true; echo "=== runc $i end $(date +%s.%N)"; done; cp "$dir/containerd.log" /work/main/target/prof-containerd.log; ctr run -d --runtime io.containerd.cocoon.v1 --snapshotter native "$image" demo9 sleep 100; cat $dir/cocoon/default/demo9/console.log; cat $dir/cocoon/default/demo9/vmm.log; grep -E "demo9" $dir/containerd.log | tail -5; true
