//! The main thread once the vCPUs run: it waits for the event that ends the
//! VM, may write the shutdown request to the guest's console input (which
//! raises the serial interrupt), prints why the VM ended and exits.

use super::{runtime, Rules, KVM_IRQ_LINE};

pub(super) fn rules() -> Rules {
    let mut rules = Rules::default();
    runtime(&mut rules);
    // The serial interrupt, raised when the shutdown request is queued.
    rules.allow_arg(libc::SYS_ioctl, 1, &[KVM_IRQ_LINE]);
    rules
}
