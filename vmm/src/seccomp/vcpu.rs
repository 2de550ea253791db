//! The vCPU threads: KVM_RUN, and the device emulation its exits run on the
//! same thread (port I/O and MMIO to the serial console, the i8042 and the
//! virtio-mmio transports, whose DRIVER_OK activates a device and whose reset
//! stops one).

use super::{runtime, Rules, KVM_GET_VCPU_STATE, KVM_IRQ_LINE, KVM_RUN};

/// `saving`: a template boot's vCPU, which reads its own state when paused.
pub(super) fn rules(saving: bool) -> Rules {
    let mut rules = Rules::default();
    runtime(&mut rules);
    let mut ioctls = vec![KVM_RUN, KVM_IRQ_LINE];
    if saving {
        ioctls.extend(KVM_GET_VCPU_STATE);
    }
    rules
        // Running the guest, and pulsing IOAPIC pins (serial, virtio).
        .allow_arg(libc::SYS_ioctl, 1, &ioctls)
        .allow(&[
            // Device activation: a worker's epoll set, stop eventfd, fd copies
            // (dup through fcntl), queue notification kicks.
            libc::SYS_epoll_create1,
            libc::SYS_epoll_ctl,
            libc::SYS_eventfd2,
            libc::SYS_fcntl,
            libc::SYS_read,
        ])
        // A virtio-fs reset forgets the old driver's inodes and re-imports
        // the share's root (an O_PATH open, statx, umask kept as it was).
        .allow_masked(
            libc::SYS_openat,
            2,
            libc::O_PATH as u64,
            &[libc::O_PATH as u64],
        )
        .allow(&[libc::SYS_statx, libc::SYS_umask]);
    rules
}
