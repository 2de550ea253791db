//! The main thread once the vCPUs run: it waits for the event that ends the
//! VM, may write the shutdown request to the guest's console input (which
//! raises the serial interrupt), prints why the VM ended and exits. In a
//! template boot it also saves the VM: it kicks the vCPUs out of KVM_RUN,
//! reads the VM's state and writes the snapshot files it opened at start.

use super::{runtime, Rules, KVM_GET_VM_STATE, KVM_IRQ_LINE};

pub(super) fn rules(saving: bool) -> Rules {
    let mut rules = Rules::default();
    runtime(&mut rules);
    let mut ioctls = vec![
        // The serial interrupt, raised when the shutdown request is queued.
        KVM_IRQ_LINE,
    ];
    if saving {
        ioctls.extend(KVM_GET_VM_STATE);
        rules.allow(&[
            // Kicking the vCPUs (pthread_kill).
            libc::SYS_tgkill,
            libc::SYS_getpid,
            libc::SYS_gettid,
            // Writing the snapshot's files.
            libc::SYS_ftruncate,
            libc::SYS_pwrite64,
            libc::SYS_fsync,
        ]);
        // Stopping the device workers drops their eventfds, which Rust's
        // debug builds check with F_GETFD before closing.
        rules.allow_arg(libc::SYS_fcntl, 1, &[libc::F_GETFD as u64]);
    }
    rules.allow_arg(libc::SYS_ioctl, 1, &ioctls);
    rules
}
