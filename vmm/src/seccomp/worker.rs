//! Device worker threads: the epoll loop every device runs, then what each
//! kind of device does on top (entropy, Unix sockets, files, freeing memory).

use crate::virtio::{
    VIRTIO_ID_BALLOON, VIRTIO_ID_BLOCK, VIRTIO_ID_FS, VIRTIO_ID_NET, VIRTIO_ID_RNG, VIRTIO_ID_VSOCK,
};

use super::{runtime, Rules, KVM_IRQ_LINE};

pub(super) fn rules(device_type: u32) -> Rules {
    let mut rules = Rules::default();
    runtime(&mut rules);
    rules
        // The epoll loop over queue eventfds and the stop eventfd; used-ring
        // interrupts pulse the device's IOAPIC pin.
        .allow(&[
            libc::SYS_epoll_wait,
            libc::SYS_epoll_pwait,
            libc::SYS_epoll_ctl,
            libc::SYS_read,
            // fd flags.
            libc::SYS_fcntl,
        ])
        .allow_arg(libc::SYS_ioctl, 1, &[KVM_IRQ_LINE]);
    match device_type {
        VIRTIO_ID_RNG => rng(&mut rules),
        VIRTIO_ID_VSOCK => vsock(&mut rules),
        VIRTIO_ID_FS => fs(&mut rules),
        VIRTIO_ID_BALLOON => balloon(&mut rules),
        VIRTIO_ID_NET => net(&mut rules),
        VIRTIO_ID_BLOCK => block(&mut rules),
        _ => {}
    }
    rules
}

// Entropy for the guest: getrandom, already in the runtime set.
fn rng(_rules: &mut Rules) {}

// The disk: positional vectored reads and writes of its file, straight
// between the file and guest memory.
fn block(rules: &mut Rules) {
    rules.allow(&[libc::SYS_preadv, libc::SYS_pwritev]);
}

fn vsock(rules: &mut Rules) {
    rules
        // Host connections: accepted on the VMM's socket, made to `<uds>_P`
        // (Unix sockets only).
        .allow(&[
            libc::SYS_accept4,
            libc::SYS_connect,
            libc::SYS_recvfrom,
            libc::SYS_sendto,
            libc::SYS_shutdown,
            libc::SYS_fcntl,
        ])
        .allow_arg(libc::SYS_socket, 0, &[libc::AF_UNIX as u64])
        // set_nonblocking on accepted streams.
        .allow_arg(libc::SYS_ioctl, 1, &[libc::FIONBIO]);
}

fn fs(rules: &mut Rules) {
    rules.allow(&[
        // Looking up, opening and reading inodes and directories.
        libc::SYS_openat,
        libc::SYS_newfstatat,
        libc::SYS_fstat,
        libc::SYS_statx,
        libc::SYS_getdents64,
        libc::SYS_lseek,
        libc::SYS_readlinkat,
        libc::SYS_fstatfs,
        libc::SYS_fcntl,
        libc::SYS_dup,
        // File data.
        libc::SYS_pread64,
        libc::SYS_preadv,
        libc::SYS_pwrite64,
        libc::SYS_pwritev,
        libc::SYS_readv,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_fallocate,
        libc::SYS_ftruncate,
        // Creating, linking, renaming and removing.
        libc::SYS_mkdirat,
        libc::SYS_mknodat,
        libc::SYS_symlinkat,
        libc::SYS_linkat,
        libc::SYS_unlinkat,
        libc::SYS_renameat2,
        // Attributes, owners, modes, times, extended attributes (through
        // /proc/self/fd paths).
        libc::SYS_fchmod,
        libc::SYS_fchmodat,
        libc::SYS_fchownat,
        libc::SYS_utimensat,
        libc::SYS_getxattr,
        libc::SYS_setxattr,
        libc::SYS_listxattr,
        libc::SYS_removexattr,
        // Acting as the guest's caller: per-thread credentials (raw
        // syscalls, so only this thread switches) and umask.
        libc::SYS_setresuid,
        libc::SYS_setresgid,
        libc::SYS_umask,
        libc::SYS_getuid,
        libc::SYS_getgid,
        libc::SYS_getpid,
    ]);
}

fn balloon(rules: &mut Rules) {
    // Reported free pages leave the resident set; guest RAM the guest has
    // touched (mincore tells) switches to small pages at the first report.
    rules
        .allow_arg(libc::SYS_madvise, 2, &[libc::MADV_NOHUGEPAGE as u64])
        .allow(&[libc::SYS_mincore]);
}

// The ioctl number is a c_ulong with glibc but a c_int with musl.
#[allow(clippy::unnecessary_cast)]
fn net(rules: &mut Rules) {
    rules
        // Frames from and to the tap, one read or writev each.
        .allow(&[libc::SYS_read, libc::SYS_write, libc::SYS_writev])
        // At activation: the tap's offloads, as the driver negotiated them.
        .allow_arg(libc::SYS_ioctl, 1, &[libc::TUNSETOFFLOAD as u64]);
}
