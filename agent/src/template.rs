//! Template boots (kernel argument `cocoon.template`): the VM is snapshotted
//! once the agent serves, and every sandbox restored from the snapshot goes
//! on from that point, a copy of the same guest.
//!
//! The agent reports the point by writing [`SNAPSHOT_POINT`] to the I/O port
//! [`SNAPSHOT_POINT_PORT`]; cocoon-vmm pauses the VM on that instruction and
//! saves it, so what follows the write runs once in each restored VM. Until
//! the host's SetIdentity call those VMs share their random number
//! generator's state (`identity.rs`).
//!
//! The boot id rule: nothing may read `/proc/sys/kernel/random/boot_id`
//! before SetIdentity. Linux makes the boot id on its first read, from the
//! random number generator, so a read before the snapshot point would put
//! one boot id in every restored VM, and a read after the restore but before
//! the reseed could give them all the same one. The agent never reads it, and
//! libcontainer 0.7 and libcgroups 0.7 do not either (only the set-up of
//! containers could, and that waits for SetIdentity).

use cocoon_protocol::{SNAPSHOT_POINT, SNAPSHOT_POINT_PORT, TEMPLATE_ARG};

/// Whether this guest was booted to be a template.
pub fn is_template_boot() -> bool {
    crate::init::kernel_arg_given(TEMPLATE_ARG)
}

/// Tells cocoon-vmm the snapshot point has come. Returns in the template VM
/// if the VMM does not stop it, and in every VM restored from its snapshot.
///
/// Needs `CONFIG_X86_IOPL_IOPERM` in the guest kernel (rootfs/kernel); the
/// guest has no PCI, hence no /dev/port. The permission is this thread's
/// alone and is dropped again at once.
#[cfg(target_arch = "x86_64")]
pub fn report_snapshot_point() -> std::io::Result<()> {
    let port = libc::c_ulong::from(SNAPSHOT_POINT_PORT);
    // SAFETY: ioperm only changes the calling thread's I/O permission
    // bitmap; no memory is involved.
    if unsafe { libc::ioperm(port, 1, 1) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the port was granted to this thread above (ioperm is per
    // thread, and nothing between the two can move us to another thread). An
    // `out` touches no memory of ours; cocoon-vmm decodes this port only in a
    // template boot. Without `nomem` the compiler keeps every memory access
    // on its side of the write.
    unsafe {
        core::arch::asm!(
            "out dx, al",
            in("dx") SNAPSHOT_POINT_PORT,
            in("al") SNAPSHOT_POINT,
            options(nostack, preserves_flags),
        );
    }
    // SAFETY: as above; dropping the permission cannot fail in a way that
    // matters (the thread keeps at most this one port).
    unsafe { libc::ioperm(port, 1, 0) };
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
pub fn report_snapshot_point() -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "snapshot points are reported through an x86 I/O port",
    ))
}
