//! The jailed VMM's open-file limit.
//!
//! The file server keeps an O_PATH descriptor for every inode the guest has
//! looked up and not yet forgotten, plus one per open file or directory.
//! A guest caches roughly one inode per KiB of its memory at most (a FUSE
//! inode and its dentry are about that size), so a guest that behaves never
//! needs more than that many descriptors. One that never sends FORGET could
//! pin a host descriptor (and its host dentry and inode) for every file it
//! can name; the limit caps that. At the limit the guest's LOOKUP, OPEN and
//! CREATE fail with EMFILE and the VMM keeps running (the vCPUs, vsock and
//! console hold their descriptors already; a vsock connection accepted at
//! the limit is refused).

use super::JailError;

/// Descriptors the VMM itself holds besides the file server's (KVM, vCPUs,
/// eventfds, sockets, console): a few dozen; this leaves room.
const VMM_OWN: u64 = 4096;
/// The floor: small guests still get the usual container-runtime limit.
const MIN: u64 = 65_536;
/// Linux's default fs.nr_open, the most a hard limit may be.
const MAX: u64 = 1 << 20;

/// RLIMIT_NOFILE (soft and hard) for a guest of `memory_mib` MiB: one
/// descriptor per KiB of guest memory plus the VMM's own, between 64 Ki and
/// 1 Mi.
pub fn open_file_limit(memory_mib: u64) -> u64 {
    memory_mib
        .saturating_mul(1024)
        .saturating_add(VMM_OWN)
        .clamp(MIN, MAX)
}

/// Sets RLIMIT_NOFILE's soft and hard limits to `limit`; where the host's
/// fs.nr_open is lower than `limit`, to the current hard limit instead.
pub(super) fn bound_open_files(limit: u64) -> Result<(), JailError> {
    let set = |value: u64| {
        let rlimit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        match unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    };
    let failed = JailError::step(format!("setting RLIMIT_NOFILE to {limit}"));
    match set(limit) {
        Ok(()) => Ok(()),
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => {
            let mut current = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes one rlimit into the struct we pass.
            if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) } != 0 {
                return Err(failed(std::io::Error::last_os_error()));
            }
            set(limit.min(current.rlim_max)).map_err(failed)
        }
        Err(error) => Err(failed(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_grows_with_guest_memory_between_bounds() {
        assert_eq!(open_file_limit(0), MIN);
        assert_eq!(open_file_limit(32), MIN);
        assert_eq!(open_file_limit(64), 64 * 1024 + VMM_OWN);
        assert_eq!(open_file_limit(256), 256 * 1024 + VMM_OWN);
        assert_eq!(open_file_limit(512), 512 * 1024 + VMM_OWN);
        assert_eq!(open_file_limit(4096), MAX);
        assert_eq!(open_file_limit(u64::MAX), MAX);
    }
}
