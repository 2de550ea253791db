//! The cocoon-vmm command line, typed.
//!
//! The shim, the end-to-end tests and the bench all start cocoon-vmm; they
//! build its arguments here and nowhere else, so a test boots a VM exactly as
//! production does ([`VmmCommand::sandbox`]) and a renamed flag is one edit.
//! cocoon-vmm parses these arguments with clap (`cocoon_vmm::cli`), whose
//! tests check that every setting here survives the round trip.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the guest console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Console {
    /// The VMM's standard output (cocoon-vmm's default).
    Stdout,
    /// A file the VMM creates (and truncates).
    File(PathBuf),
    /// Nowhere.
    Discard,
}

/// A virtio-net device backed by a tap the caller opened (IFF_TAP |
/// IFF_NO_PI | IFF_VNET_HDR) and leaves open, without CLOEXEC, for the VMM
/// to inherit; cocoon-vmm sets the vnet header size and offloads itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetDevice {
    pub tap_fd: i32,
    /// The guest interface's MAC address.
    pub mac: [u8; 6],
}

impl NetDevice {
    /// The MAC in the usual `aa:bb:cc:dd:ee:ff` form.
    pub fn mac_text(&self) -> String {
        self.mac
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// A cocoon-vmm invocation. Settings left unset get cocoon-vmm's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmmCommand {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel arguments after the VMM's own base command line.
    pub cmdline: Vec<String>,
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    pub console: Option<Console>,
    /// virtio-fs shares: (tag, host directory).
    pub shares: Vec<(String, PathBuf)>,
    /// virtio-fs shares of what nothing changes while the VM runs, which the
    /// guest caches without revalidating: (tag, host directory).
    pub immutable_shares: Vec<(String, PathBuf)>,
    /// The hybrid vsock device's Unix socket.
    pub vsock_uds: Option<PathBuf>,
    pub vsock_cid: Option<u64>,
    pub shutdown_timeout_seconds: Option<u64>,
    /// Free page reporting (virtio-balloon).
    pub balloon: bool,
    /// Bytes of console output the console file may hold.
    pub console_limit_bytes: Option<u64>,
    /// An empty directory the VMM makes its root (its own mount namespace,
    /// pivot_root, capabilities dropped) before the guest runs.
    pub jail: Option<PathBuf>,
    /// The cgroup v2 directory the VMM moves itself into first.
    pub cgroup: Option<PathBuf>,
    /// The guest's network interface, if it has one.
    pub net: Option<NetDevice>,
    /// An inherited fd of the regular file behind the guest's disk.
    pub disk_fd: Option<i32>,
    /// A template boot: the VM is saved into this empty directory once its
    /// agent is ready, and the VMM exits.
    pub snapshot_to: Option<PathBuf>,
    /// Start from the snapshot in this directory instead of booting: the
    /// kernel, initramfs and kernel arguments are then not passed.
    pub restore_from: Option<PathBuf>,
}

/// What the shim gives every sandbox's VM; [`VmmCommand::sandbox`] turns it
/// into the one command line production uses.
#[derive(Clone, Debug)]
pub struct SandboxVm<'a> {
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The host side of the share the agent mounts at
    /// [`cocoon_protocol::GUEST_SHARE_DIR`].
    pub share: &'a Path,
    /// The host side of the immutable share of image layers the agent
    /// mounts at [`cocoon_protocol::GUEST_IMAGES_DIR`].
    pub images: &'a Path,
    pub vsock_uds: &'a Path,
    pub console: &'a Path,
    /// Verbose guest kernel and agent logs on the console.
    pub guest_debug: bool,
    /// The most the console file may hold.
    pub console_limit_bytes: u64,
    /// The empty directory the VMM jails itself in.
    pub jail: &'a Path,
    /// The cgroup (a cgroup v2 directory) the VM is charged to.
    pub cgroup: Option<&'a Path>,
    /// The pod's network interface, if the sandbox has a network.
    pub net: Option<NetDevice>,
    /// The inherited fd of the sandbox's scratch disk, if it has one.
    pub disk_fd: Option<i32>,
}

impl VmmCommand {
    /// A VM booting `kernel`, everything else cocoon-vmm's default.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmmCommand {
            kernel: kernel.into(),
            initrd: None,
            cmdline: Vec::new(),
            vcpus: None,
            memory_mib: None,
            console: None,
            shares: Vec::new(),
            immutable_shares: Vec::new(),
            vsock_uds: None,
            vsock_cid: None,
            shutdown_timeout_seconds: None,
            balloon: false,
            console_limit_bytes: None,
            jail: None,
            cgroup: None,
            net: None,
            disk_fd: None,
            snapshot_to: None,
            restore_from: None,
        }
    }

    /// A sandbox VM as the shim starts it: the agent's initramfs, the share
    /// under [`cocoon_protocol::SHARE_TAG`] and the image layers under
    /// [`cocoon_protocol::IMAGES_TAG`], the agent's vsock socket, the
    /// console in a file and free page reporting.
    pub fn sandbox(vm: &SandboxVm) -> Self {
        let command = VmmCommand::new(vm.kernel)
            .initrd(vm.initramfs)
            .vcpus(vm.vcpus)
            .memory_mib(vm.memory_mib)
            .share(cocoon_protocol::SHARE_TAG, vm.share)
            .immutable_share(cocoon_protocol::IMAGES_TAG, vm.images)
            .vsock(vm.vsock_uds)
            .console(Console::File(vm.console.to_path_buf()))
            .console_limit_bytes(vm.console_limit_bytes)
            .jail(vm.jail)
            // What the guest frees goes back to the host.
            .balloon(true)
            // Every console byte is a trap to the VMM: a quiet kernel boots
            // much faster (warnings, oopses and panics are still printed).
            // The debug console gets everything, the agent's logs included.
            .kernel_arg(if vm.guest_debug {
                cocoon_protocol::GUEST_DEBUG_ARG
            } else {
                "quiet"
            });
        let command = match vm.cgroup {
            Some(cgroup) => command.cgroup(cgroup),
            None => command,
        };
        let command = match vm.net {
            Some(net) => command.net(net),
            None => command,
        };
        match vm.disk_fd {
            Some(fd) => command.disk_fd(fd),
            None => command,
        }
    }

    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }

    /// Appends one kernel argument.
    pub fn kernel_arg(mut self, arg: impl Into<String>) -> Self {
        self.cmdline.push(arg.into());
        self
    }

    pub fn vcpus(mut self, vcpus: u32) -> Self {
        self.vcpus = Some(vcpus);
        self
    }

    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_mib = Some(mib);
        self
    }

    pub fn console(mut self, console: Console) -> Self {
        self.console = Some(console);
        self
    }

    pub fn share(mut self, tag: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        self.shares.push((tag.into(), dir.into()));
        self
    }

    /// A share the guest caches as immutable (`--immutable-share`).
    pub fn immutable_share(mut self, tag: impl Into<String>, dir: impl Into<PathBuf>) -> Self {
        self.immutable_shares.push((tag.into(), dir.into()));
        self
    }

    pub fn vsock(mut self, uds: impl Into<PathBuf>) -> Self {
        self.vsock_uds = Some(uds.into());
        self
    }

    pub fn vsock_cid(mut self, cid: u64) -> Self {
        self.vsock_cid = Some(cid);
        self
    }

    pub fn shutdown_timeout_seconds(mut self, seconds: u64) -> Self {
        self.shutdown_timeout_seconds = Some(seconds);
        self
    }

    pub fn balloon(mut self, on: bool) -> Self {
        self.balloon = on;
        self
    }

    pub fn console_limit_bytes(mut self, bytes: u64) -> Self {
        self.console_limit_bytes = Some(bytes);
        self
    }

    pub fn jail(mut self, dir: impl Into<PathBuf>) -> Self {
        self.jail = Some(dir.into());
        self
    }

    pub fn cgroup(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cgroup = Some(dir.into());
        self
    }

    pub fn net(mut self, net: NetDevice) -> Self {
        self.net = Some(net);
        self
    }

    /// A virtio-blk disk on the inherited fd `fd` (a regular file, O_RDWR,
    /// without CLOEXEC in the child).
    pub fn disk_fd(mut self, fd: i32) -> Self {
        self.disk_fd = Some(fd);
        self
    }

    pub fn snapshot_to(mut self, dir: impl Into<PathBuf>) -> Self {
        self.snapshot_to = Some(dir.into());
        self
    }

    pub fn restore_from(mut self, dir: impl Into<PathBuf>) -> Self {
        self.restore_from = Some(dir.into());
        self
    }

    /// The arguments, without the program name.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        if let Some(dir) = &self.restore_from {
            // The snapshot holds the booted kernel.
            push("--restore-from", dir.into());
        } else {
            push("--kernel", self.kernel.clone().into());
            if let Some(initrd) = &self.initrd {
                push("--initrd", initrd.into());
            }
            if !self.cmdline.is_empty() {
                push("--cmdline", self.cmdline.join(" ").into());
            }
        }
        if let Some(dir) = &self.snapshot_to {
            push("--snapshot-to", dir.into());
        }
        if let Some(vcpus) = self.vcpus {
            push("--vcpus", vcpus.to_string().into());
        }
        if let Some(mib) = self.memory_mib {
            push("--memory-mib", mib.to_string().into());
        }
        match &self.console {
            None => {}
            Some(Console::Stdout) => push("--console", "-".into()),
            Some(Console::Discard) => push("--console", "none".into()),
            Some(Console::File(path)) => push("--console", path.into()),
        }
        for (flag, shares) in [
            ("--share", &self.shares),
            ("--immutable-share", &self.immutable_shares),
        ] {
            for (tag, dir) in shares {
                let mut share = OsString::from(format!("{tag}="));
                share.push(dir);
                push(flag, share);
            }
        }
        if let Some(uds) = &self.vsock_uds {
            push("--vsock-uds", uds.into());
        }
        if let Some(cid) = self.vsock_cid {
            push("--vsock-cid", cid.to_string().into());
        }
        if let Some(seconds) = self.shutdown_timeout_seconds {
            push("--shutdown-timeout", seconds.to_string().into());
        }
        if let Some(bytes) = self.console_limit_bytes {
            push("--console-limit", bytes.to_string().into());
        }
        if let Some(jail) = &self.jail {
            push("--jail", jail.into());
        }
        if let Some(cgroup) = &self.cgroup {
            push("--cgroup", cgroup.into());
        }
        if let Some(net) = &self.net {
            push("--net-fd", net.tap_fd.to_string().into());
            push("--net-mac", net.mac_text().into());
        }
        if let Some(fd) = self.disk_fd {
            push("--disk-fd", fd.to_string().into());
        }
        if self.balloon {
            args.push("--balloon".into());
        }
        args
    }

    /// A [`Command`] running the cocoon-vmm binary at `vmm` with these
    /// arguments; stdio and the rest are the caller's.
    pub fn command(&self, vmm: &Path) -> Command {
        let mut command = Command::new(vmm);
        command.args(self.args());
        command
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_command_names_only_the_kernel() {
        assert_eq!(
            VmmCommand::new("/k").args(),
            vec![OsString::from("--kernel"), "/k".into()]
        );
    }

    #[test]
    fn kernel_arguments_are_joined_into_one_cmdline() {
        let args = VmmCommand::new("/k")
            .kernel_arg("quiet")
            .kernel_arg("cocoon.debug")
            .args();
        assert_eq!(
            &args[2..],
            &[OsString::from("--cmdline"), "quiet cocoon.debug".into()]
        );
    }

    #[test]
    fn a_sandbox_has_the_share_vsock_console_and_balloon() {
        let args = VmmCommand::sandbox(&SandboxVm {
            kernel: Path::new("/k"),
            initramfs: Path::new("/i"),
            vcpus: 2,
            memory_mib: 300,
            share: Path::new("/state/share"),
            images: Path::new("/state/images"),
            vsock_uds: Path::new("/state/vsock.sock"),
            console: Path::new("/state/console.log"),
            guest_debug: false,
            console_limit_bytes: 1024,
            jail: Path::new("/state/jail"),
            cgroup: Some(Path::new("/sys/fs/cgroup/pod")),
            net: None,
            disk_fd: None,
        })
        .args();
        let line: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        let line = line.join(" ");
        assert_eq!(
            line,
            format!(
                "--kernel /k --initrd /i --cmdline quiet --vcpus 2 --memory-mib 300 \
                 --console /state/console.log --share {}=/state/share \
                 --immutable-share {}=/state/images --vsock-uds /state/vsock.sock --console-limit 1024 --jail /state/jail \
                 --cgroup /sys/fs/cgroup/pod --balloon",
                cocoon_protocol::SHARE_TAG,
                cocoon_protocol::IMAGES_TAG
            )
        );
    }

    #[test]
    fn a_net_device_passes_its_fd_and_mac() {
        let args = VmmCommand::new("/k")
            .net(NetDevice {
                tap_fd: 7,
                mac: [0x02, 0x42, 0x0a, 0x58, 0x00, 0xff],
            })
            .args();
        assert_eq!(
            &args[2..],
            &[
                OsString::from("--net-fd"),
                "7".into(),
                "--net-mac".into(),
                "02:42:0a:58:00:ff".into()
            ]
        );
    }
}
