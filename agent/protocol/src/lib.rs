//! The contract between the shim (host) and cocoon-agent (guest).
//!
//! Both sides depend on this crate and nothing else defines the wire format:
//! the ttrpc API generated from `proto/agent.proto` ([`api`]), the header of
//! stdio stream connections ([`stream`]), the ports, the console banner and
//! the shutdown request. The host-side client lives here too ([`client`]).

pub mod client;
pub mod hybrid_vsock;
pub mod stream;

/// The agent API generated from `proto/agent.proto` (generated code: our
/// lints do not apply to it).
#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    missing_docs,
    unused,
    nonstandard_style
)]
pub mod api {
    pub mod agent {
        include!(concat!(env!("OUT_DIR"), "/agent.rs"));
    }
    pub mod agent_ttrpc {
        include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
    }
}

/// Guest vsock port of the agent's ttrpc server.
pub const AGENT_RPC_PORT: u32 = 1024;

/// Guest vsock port on which process stdio streams are accepted.
pub const AGENT_STDIO_PORT: u32 = 1025;

/// The virtio-fs tag of a sandbox's share (the shim's per-sandbox directory
/// holding every container's root file system).
pub const SHARE_TAG: &str = "cocoon";

/// Where the agent mounts the share [`SHARE_TAG`] in the guest.
pub const GUEST_SHARE_DIR: &str = "/run/cocoon/share";

/// The virtio-fs tag of a sandbox's image share: the image layers of
/// containers whose writable layer is on the scratch disk, which nothing
/// changes while they run and the guest so caches as immutable.
pub const IMAGES_TAG: &str = "cocoon-images";

/// Where the agent mounts the image share [`IMAGES_TAG`] in the guest.
pub const GUEST_IMAGES_DIR: &str = "/run/cocoon/images";

/// Where the pod's guest-local file systems live: a bind mount whose source
/// is `<GUEST_POD_DIR>/<name>` gets a tmpfs the agent makes on first use and
/// every container of the pod shares (`/dev/shm`, memory-backed emptyDir
/// volumes). Names are [`POD_SHM`] or `empty-dir/<volume>`.
pub const GUEST_POD_DIR: &str = "/run/cocoon/pod";

/// The pod's `/dev/shm` under [`GUEST_POD_DIR`].
pub const POD_SHM: &str = "shm";

/// Memory-backed emptyDir volumes under [`GUEST_POD_DIR`].
pub const POD_EMPTY_DIRS: &str = "empty-dir";

/// The kernel argument that makes the agent log verbosely on the console.
pub const GUEST_DEBUG_ARG: &str = "cocoon.debug";

/// The serial of the sandbox's scratch disk (virtio-blk GET_ID), by which
/// the agent finds it among the guest's block devices.
pub const SCRATCH_DISK_SERIAL: &str = "cocoon-scratch";

/// The kernel argument of a template boot: the VM will be snapshotted once
/// the agent is ready, and sandboxes restored from the snapshot share it. The
/// agent then reports [`SNAPSHOT_POINT_PORT`] and, after a restore, runs
/// nothing before the host's `SetIdentity` call.
pub const TEMPLATE_ARG: &str = "cocoon.template";

/// The MAC of a template boot's network interface. A sandbox started from
/// the template has it until the agent's SetupNetwork gives the interface
/// the pod's MAC (the one the VMM's device reports is only read at boot).
pub const TEMPLATE_MAC: [u8; 6] = [0x02, 0xc0, 0xc0, 0x00, 0x00, 0x01];

/// The I/O port the agent of a template boot writes [`SNAPSHOT_POINT`] to
/// once it serves its API and before any connection or share exists:
/// cocoon-vmm pauses the VM there and saves it. Outside a template boot the
/// port is not decoded.
pub const SNAPSHOT_POINT_PORT: u16 = 0x05c0;

/// The byte written to [`SNAPSHOT_POINT_PORT`].
pub const SNAPSHOT_POINT: u8 = 0x5a;

/// What cocoon-vmm writes to the guest's console input (the agent's stdin)
/// to ask for an orderly shutdown, e.g. on SIGTERM. An escape sequence no
/// keyboard produces, ended by a newline so a line-buffered reader sees it.
pub const GUEST_SHUTDOWN_REQUEST: &[u8] = b"\x1b]cocoon;shutdown\x07\n";

/// The first line the agent prints on the guest console once it runs as PID 1.
/// Tests and the shim's boot diagnostics look for it.
pub fn version_banner(version: &str) -> String {
    format!("cocoon-agent {version} started")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_names_agent_and_version() {
        assert_eq!(version_banner("1.2.3"), "cocoon-agent 1.2.3 started");
    }
}
