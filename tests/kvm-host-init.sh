#!/bin/busybox sh
# /init of the KVM host VM that tests/kvm-host boots under QEMU's software
# emulation. It loads the few modules needed to reach the machine's files,
# builds a root from them (the machine's / read-only over 9p, made writable by
# an overlay on tmpfs; the project checkout and the run directory shared
# read-write), and hands over to /kvm-host/inner, which tests/kvm-host wrote.
#
# Its stdout is the serial console, which tests/kvm-host logs and watches:
# "kvm-host: ready" means /dev/kvm works, "kvm-host: alive" is the heartbeat
# that tells a busy host VM from a hung one.

/bin/busybox mkdir -p /bin /proc /sys /dev
/bin/busybox --install -s /bin
export PATH=/bin

say() { echo "kvm-host: $*"; }
fail() {
  say "host VM setup failed: $*"
  poweroff -f
  sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

while read -r module; do
  insmod "/modules/$module" || fail "insmod $module"
done </modules/order

p9="trans=virtio,version=9p2000.L,msize=512000"
mkdir -p /lower /scratch /root
mount -t 9p -o "$p9,ro,cache=loose" hostroot /lower || fail "mounting the machine's root over 9p"
mount -t tmpfs -o mode=0755 scratch /scratch
mkdir -p /scratch/upper /scratch/work
mount -t overlay -o lowerdir=/lower,upperdir=/scratch/upper,workdir=/scratch/work,redirect_dir=off,index=off,metacopy=off \
  overlay /root || fail "mounting the copy-on-write root"

mount -t proc proc /root/proc
mount -t sysfs sysfs /root/sys
mount -t cgroup2 cgroup2 /root/sys/fs/cgroup || fail "mounting cgroup2"
mount -t devtmpfs devtmpfs /root/dev
mkdir -p /root/dev/pts /root/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /root/dev/pts
ln -sf pts/ptmx /root/dev/ptmx
mount -t tmpfs -o mode=1777 shm /root/dev/shm
mount -t tmpfs -o mode=1777 tmp /root/tmp
mount -t tmpfs -o mode=0755 run /root/run

# Shares go on top of the fresh /tmp and /run: the checkout may live there.
mkdir -p /root/kvm-host
mount -t 9p -o "$p9" run /root/kvm-host || fail "mounting the run directory"
# CHECKOUT (the project's path) and MODULES (where this kernel's modules were
# unpacked on the machine) come from the launcher.
. /root/kvm-host/config
mkdir -p "/root$CHECKOUT"
mount -t 9p -o "$p9,cache=mmap" checkout "/root$CHECKOUT" || fail "mounting the checkout $CHECKOUT"
kernel=$(uname -r)
mkdir -p "/root/lib/modules/$kernel"
mount -o bind "/lower$MODULES" "/root/lib/modules/$kernel" || fail "mounting the modules of $kernel"

# The new root becomes the mount namespace's root, as switch_root makes it,
# not only a chroot: setns(2) into a mount namespace puts a process at that
# namespace's root, so under a chroot every `runc exec` landed in this
# initramfs instead of its container (no /etc/resolv.conf, no volumes, no
# /dev/ptmx, another /proc). From here on this script reaches the new root
# as `.` (its working directory) and /proc/1/cwd; its own / stays the
# initramfs, so busybox keeps working for it.
cd /root || fail "entering the new root"
mount --move . / || fail "moving the new root onto /"

# The kernel's own module requests (a bridge, netfilter tables, veth for CNI)
# run /proc/sys/kernel/modprobe in this initramfs's root, which has none of
# the modules: hand them to the machine's modprobe in the new root.
printf '#!/bin/sh\nexec chroot /proc/1/cwd /sbin/modprobe "$@"\n' >/bin/modprobe-in-root
chmod 0755 /bin/modprobe-in-root
echo /bin/modprobe-in-root >/proc/sys/kernel/modprobe
# /dev/net/tun exists on any node (systemd-tmpfiles makes kmod's static
# nodes, which load the module on first open); here the module makes it.
/bin/modprobe-in-root tun || fail "loading tun"

# The command's output goes to the virtio console, which the launcher streams.
for _ in $(seq 100); do [ -c ./dev/hvc0 ] && break; sleep 0.1; done
[ -c ./dev/hvc0 ] || fail "no /dev/hvc0 for the command's output"

# Page faults still get huge pages, but khugepaged never collapses pages of a
# running nested guest's memory behind KVM's back: the emulated host VM was
# seen to lock up some 25-35 s after boot, when khugepaged starts its scans.
echo 86400000 >/sys/kernel/mm/transparent_hugepage/khugepaged/scan_sleep_millisecs 2>/dev/null

# Loopback up, as on any machine: tests serve on 127.0.0.1 (the CRI tests'
# registry, containerd's stream server, critest's port mappings).
ip link set lo up || fail "bringing up the loopback interface"

(while sleep 10; do say "alive $(cut -d' ' -f1 /proc/uptime)"; done) &

chroot . /bin/bash /kvm-host/inner </dev/null >./dev/hvc0 2>&1
sync
poweroff -f
sleep 60
