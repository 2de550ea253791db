//! Capabilities the jailed VMM keeps, no_new_privs, and not being dumpable.
//!
//! After the jail is entered the VMM only runs KVM ioctls, I/O on file
//! descriptors it already holds, and the virtio-fs file server. The file
//! server (fuse-backend-rs's PassthroughFs) acts on the guest's behalf on
//! files the guest owns under any uid, so it keeps what that takes and
//! nothing else (CAP_SYS_ADMIN and CAP_MKNOD above all are gone):
//!
//! Everything is dropped from the bounding set (the VMM never executes
//! anything), the inheritable and ambient sets; the permitted and effective
//! sets hold exactly [`KEPT`]. The permitted set matters: fuse-backend-rs
//! switches a worker's effective uid to the guest caller's for creating
//! calls, which empties that thread's effective set, and switching back to
//! uid 0 refills it from the permitted set.

use std::collections::HashSet;

use caps::{CapSet, Capability};

use super::JailError;

/// What the file server needs, each with the reason.
pub const KEPT: &[(Capability, &str)] = &[
    (
        Capability::CAP_CHOWN,
        "SETATTR with a uid or gid: the guest's chown of its files",
    ),
    (
        Capability::CAP_DAC_OVERRIDE,
        "the guest kernel checks permissions itself (virtio-fs mounts with \
         default_permissions); the server must then read, write and search \
         files whatever their mode, as the guest's root may",
    ),
    (
        Capability::CAP_FOWNER,
        "chmod, utimes and xattrs on files owned by other uids than the \
         VMM's, and deleting in sticky directories, for the guest's root",
    ),
    (
        Capability::CAP_FSETID,
        "keeps setuid/setgid bits a guest sets on files whose group the \
         VMM is not in (fuse-backend-rs drops it per write when the guest \
         asks for the bits to be cleared)",
    ),
    (
        Capability::CAP_SETUID,
        "fuse-backend-rs creates files as the calling guest uid (per-thread \
         setresuid), so they get the right owner",
    ),
    (
        Capability::CAP_SETGID,
        "the same for the calling guest gid (per-thread setresgid)",
    ),
    (
        Capability::CAP_SETFCAP,
        "setting security.capability xattrs, as setcap and package installs \
         in a container do",
    ),
];

/// The bit mask of [`KEPT`], as /proc/PID/status shows CapEff and CapPrm.
pub fn kept_mask() -> u64 {
    KEPT.iter().fold(0, |mask, (cap, _)| mask | cap.bitmask())
}

fn kept_set() -> HashSet<Capability> {
    KEPT.iter().map(|(cap, _)| *cap).collect()
}

/// PR_SET_NO_NEW_PRIVS: nothing this thread (or a thread it starts) executes
/// can gain privileges through setuid bits or file capabilities.
pub(super) fn set_no_new_privs() -> Result<(), JailError> {
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(JailError::step("setting no_new_privs")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// PR_SET_DUMPABLE 0: other processes of the VMM's uid (root: the other
/// VMMs) need CAP_SYS_PTRACE to reach its /proc files and memory, which no
/// jailed VMM has. (fuse-backend-rs's uid switches leave it at the host's
/// fs.suid_dumpable, which is 0 or 2, never 1 on a sane host.)
pub(super) fn set_not_dumpable() -> Result<(), JailError> {
    // SAFETY: prctl with PR_SET_DUMPABLE takes integers only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(JailError::step("clearing the dumpable flag")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Empties the bounding, ambient and inheritable sets and leaves exactly
/// [`KEPT`] in the permitted and effective sets; checks the result.
pub(super) fn drop_all_but_kept() -> Result<(), JailError> {
    drop_bounding_set()?;
    let failed = |step: &str| {
        let step = step.to_string();
        move |source| JailError::Capabilities { step, source }
    };
    caps::clear(None, CapSet::Ambient).map_err(failed("clearing the ambient capabilities"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(failed("clearing the inheritable capabilities"))?;
    // Effective first: it must stay a subset of the permitted set.
    caps::set(None, CapSet::Effective, &kept_set())
        .map_err(failed("setting the effective capabilities"))?;
    caps::set(None, CapSet::Permitted, &kept_set())
        .map_err(failed("setting the permitted capabilities"))?;
    let found = caps::read(None, CapSet::Effective)
        .map_err(failed("reading the effective capabilities back"))?
        .iter()
        .fold(0, |mask, cap| mask | cap.bitmask());
    if found != kept_mask() {
        return Err(JailError::CapabilitiesLeft {
            found,
            expected: kept_mask(),
        });
    }
    Ok(())
}

/// Drops every capability the kernel knows from the bounding set, by number
/// (the kernel may know capabilities newer than the `caps` crate): PR_CAPBSET_DROP
/// answers EINVAL past the last one.
fn drop_bounding_set() -> Result<(), JailError> {
    for cap in 0..64 {
        // SAFETY: prctl with PR_CAPBSET_DROP takes integers only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                return Ok(());
            }
            return Err(JailError::step(format!(
                "dropping capability {cap} from the bounding set"
            ))(error));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_set_is_the_file_servers_and_nothing_that_escapes() {
        let mask = kept_mask();
        for (cap, why) in KEPT {
            assert!(!why.is_empty(), "{cap} kept without a reason");
        }
        // CAP_CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, SETGID 6,
        // SETUID 7, SETFCAP 31.
        assert_eq!(mask, 0b1101_1011 | 1 << 31);
        for refused in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_MKNOD,
            Capability::CAP_DAC_READ_SEARCH,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_SYS_MODULE,
            Capability::CAP_NET_ADMIN,
            Capability::CAP_SETPCAP,
            Capability::CAP_SYS_RESOURCE,
            Capability::CAP_SYS_CHROOT,
            Capability::CAP_LINUX_IMMUTABLE,
        ] {
            assert_eq!(mask & refused.bitmask(), 0, "{refused} must be dropped");
        }
    }
}
