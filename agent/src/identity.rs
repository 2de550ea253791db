//! The guest's own identity (SetIdentity): host entropy for its random
//! number generator and the host's clock.
//!
//! VMs restored from one template snapshot (`template.rs`) start with the
//! same generator state, so they would hand out the same "random" bytes
//! until the kernel reseeds by itself. SetIdentity credits fresh host
//! entropy to the input pool and forces a reseed, which every later read
//! (getrandom, /dev/urandom, the boot id, AT_RANDOM of new processes) sees;
//! and it sets CLOCK_REALTIME, which a restored guest has from the time of
//! the snapshot. On a freshly booted guest it only adds entropy and sets the
//! clock to what it already is.
//!
//! In a template boot the calls that prepare or run workloads are refused
//! until SetIdentity succeeded once ([`IdentityGate`]).

use std::fs::OpenOptions;
use std::ops::RangeInclusive;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cocoon_protocol::api::agent::IdentityRequest;
use nix::sys::time::TimeSpec;
use nix::time::{clock_settime, ClockId};

use crate::error::{AgentError, Result};

/// What a call refused before SetIdentity gets.
pub const NOT_GIVEN: &str =
    "restored from a template and not given its identity yet: call SetIdentity first";

/// How much entropy a request may carry (the shim sends 64 bytes). Less than
/// 32 bytes (256 bits, a full reseed's worth) would not make the restored
/// VMs' streams unguessable; more than 512 only costs time.
pub const ENTROPY_BYTES: RangeInclusive<usize> = 32..=512;

/// The clock a request may set: 2020-01-01 to 2200-01-01 (UTC). Anything
/// outside is a host bug (e.g. an unset field), not a time to run under.
const EARLIEST_UNIX_SECONDS: u64 = 1_577_836_800;
const LATEST_UNIX_SECONDS: u64 = 7_258_118_400;

/// Where the entropy is added: both random devices feed the same pool.
const RANDOM_DEVICE: &str = "/dev/urandom";

/// `struct rand_pool_info` of linux/random.h, with room for the largest
/// request; the kernel reads `buf_size` bytes of `buf`.
#[repr(C)]
struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; *ENTROPY_BYTES.end()],
}

// linux/random.h: RNDADDENTROPY is _IOW('R', 0x03, int[2]) (the size of the
// header only), RNDRESEEDCRNG is _IO('R', 0x07).
nix::ioctl_write_ptr_bad!(
    rnd_add_entropy,
    nix::request_code_write!(b'R', 0x03, 2 * std::mem::size_of::<libc::c_int>()),
    RandPoolInfo
);
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

/// A checked SetIdentity request.
pub struct Identity {
    entropy: Vec<u8>,
    realtime: Duration,
}

/// Never the entropy itself, which seeds the guest's keys.
impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("entropy_bytes", &self.entropy.len())
            .field("realtime", &self.realtime)
            .finish()
    }
}

impl Identity {
    pub fn from_request(request: &IdentityRequest) -> Result<Self> {
        let length = request.entropy.len();
        if !ENTROPY_BYTES.contains(&length) {
            return Err(AgentError::InvalidArgument(format!(
                "SetIdentity: {length} bytes of entropy; {} to {} wanted",
                ENTROPY_BYTES.start(),
                ENTROPY_BYTES.end()
            )));
        }
        let realtime = Duration::from_nanos(request.realtime_unix_nanos);
        if !(EARLIEST_UNIX_SECONDS..LATEST_UNIX_SECONDS).contains(&realtime.as_secs()) {
            return Err(AgentError::InvalidArgument(format!(
                "SetIdentity: realtime_unix_nanos {} is not a time between 2020 and 2200 \
                 (Unix time in nanoseconds wanted)",
                request.realtime_unix_nanos
            )));
        }
        Ok(Identity {
            entropy: request.entropy.clone(),
            realtime,
        })
    }

    /// Reseeds the guest's random number generator from the entropy, then
    /// sets the clock.
    pub fn apply(&self) -> Result<()> {
        self.reseed()?;
        clock_settime(
            ClockId::CLOCK_REALTIME,
            TimeSpec::from_duration(self.realtime),
        )
        .map_err(|error| AgentError::internal("setting the guest's clock", error))
    }

    fn reseed(&self) -> Result<()> {
        let device = OpenOptions::new()
            .write(true)
            .open(RANDOM_DEVICE)
            .map_err(|error| AgentError::internal(RANDOM_DEVICE, error))?;
        let mut info = RandPoolInfo {
            // Credited in full: the host's getrandom output is full
            // entropy, and on a guest whose generator is not initialised
            // yet the credit is what makes it ready (RNDRESEEDCRNG refuses
            // until then).
            entropy_count: int(self.entropy.len() * 8),
            buf_size: int(self.entropy.len()),
            buf: [0; *ENTROPY_BYTES.end()],
        };
        info.buf[..self.entropy.len()].copy_from_slice(&self.entropy);
        // SAFETY: `info` is a valid rand_pool_info whose buf_size bytes of
        // buf are initialised (the length was checked against buf's size in
        // from_request); the kernel only reads it during the call.
        unsafe { rnd_add_entropy(device.as_raw_fd(), &info) }.map_err(|error| {
            AgentError::internal("adding the host's entropy (RNDADDENTROPY)", error)
        })?;
        // SAFETY: RNDRESEEDCRNG takes no argument; the fd is open.
        unsafe { rnd_reseed_crng(device.as_raw_fd()) }.map_err(|error| {
            AgentError::internal("reseeding the guest's random number generator", error)
        })?;
        Ok(())
    }
}

/// A size as the kernel's int (ours are at most 4096: checked in
/// from_request).
fn int(size: usize) -> libc::c_int {
    libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX)
}

/// Whether the guest may run workloads: always, except in a template boot
/// before the first successful SetIdentity.
#[derive(Debug)]
pub struct IdentityGate {
    pending: AtomicBool,
}

impl IdentityGate {
    pub fn new(template_boot: bool) -> Self {
        IdentityGate {
            pending: AtomicBool::new(template_boot),
        }
    }

    /// Ok once the guest has its identity (or never needed one).
    pub fn check(&self) -> Result<()> {
        if self.pending.load(Ordering::Acquire) {
            return Err(AgentError::FailedPrecondition(NOT_GIVEN.into()));
        }
        Ok(())
    }

    /// Checks and applies a SetIdentity request; opens the gate once it
    /// succeeded.
    pub fn set(&self, request: &IdentityRequest) -> Result<()> {
        Identity::from_request(request)?.apply()?;
        if self.pending.swap(false, Ordering::AcqRel) {
            tracing::info!("given its identity: the guest may run workloads");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_796_000_000_000_000_000; // 2026-11

    fn request(entropy: usize, realtime_unix_nanos: u64) -> IdentityRequest {
        let mut request = IdentityRequest::new();
        request.entropy = vec![7; entropy];
        request.realtime_unix_nanos = realtime_unix_nanos;
        request
    }

    fn refusal(request: &IdentityRequest) -> String {
        match Identity::from_request(request) {
            Err(AgentError::InvalidArgument(message)) => message,
            other => panic!("not refused as an invalid argument: {other:?}"),
        }
    }

    #[test]
    fn entropy_and_time_within_bounds_are_taken() {
        for length in [32, 64, 512] {
            let identity = Identity::from_request(&request(length, NOW)).unwrap();
            assert_eq!(identity.entropy.len(), length);
            assert_eq!(identity.realtime, Duration::from_nanos(NOW));
        }
        Identity::from_request(&request(64, EARLIEST_UNIX_SECONDS * 1_000_000_000)).unwrap();
    }

    #[test]
    fn too_little_or_too_much_entropy_is_refused() {
        for length in [0, 1, 31, 513, 4096] {
            let message = refusal(&request(length, NOW));
            assert!(
                message.contains(&format!("{length} bytes of entropy")),
                "{message}"
            );
            assert!(message.contains("32 to 512"), "{message}");
        }
    }

    #[test]
    fn an_unset_or_absurd_time_is_refused() {
        for nanos in [
            0,
            1_700_000_000,                               // seconds, not nanoseconds
            (EARLIEST_UNIX_SECONDS - 1) * 1_000_000_000, // 2019
            LATEST_UNIX_SECONDS * 1_000_000_000,         // 2200
            u64::MAX,
        ] {
            let message = refusal(&request(64, nanos));
            assert!(message.contains("between 2020 and 2200"), "{message}");
        }
    }

    #[test]
    fn the_pool_header_is_the_kernels() {
        assert_eq!(std::mem::offset_of!(RandPoolInfo, buf), 8);
        // _IOW('R', 0x03, int[2]) and _IO('R', 0x07) as the C headers have them.
        assert_eq!(
            nix::request_code_write!(b'R', 0x03, 2 * std::mem::size_of::<libc::c_int>()),
            0x4008_5203
        );
        assert_eq!(nix::request_code_none!(b'R', 0x07), 0x5207);
    }

    #[test]
    fn only_a_template_boot_waits_for_its_identity() {
        IdentityGate::new(false).check().unwrap();
        let gate = IdentityGate::new(true);
        match gate.check() {
            Err(AgentError::FailedPrecondition(message)) => assert_eq!(message, NOT_GIVEN),
            other => panic!("{other:?}"),
        }
        // A bad request leaves it closed.
        assert!(gate.set(&request(1, NOW)).is_err());
        assert!(gate.check().is_err());
    }
}
