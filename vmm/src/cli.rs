//! cocoon-vmm's command line (clap). `cocoon-vmm-command` builds it for the
//! shim, the tests and the bench; the tests below check that every setting
//! the builder writes is parsed back unchanged.

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "cocoon-vmm", version, about = "Boot a Linux guest in a KVM microVM", long_about = None)]
pub struct Args {
    /// Guest kernel: an ELF vmlinux or a bzImage.
    #[arg(long, required_unless_present = "restore_from")]
    pub kernel: Option<PathBuf>,
    /// Initramfs (cpio, optionally compressed).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Extra kernel arguments, appended to "console=ttyS0 reboot=k panic=-1".
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory_mib: u64,
    /// Where the guest console goes: a file path, "-" for stdout, or "none".
    #[arg(long, default_value = "-")]
    pub console: String,
    /// Share a host directory with the guest over virtio-fs
    /// (guest: mount -t virtiofs TAG /mnt). Repeatable.
    #[arg(long = "share", value_name = "TAG=DIR", value_parser = parse_share)]
    pub shares: Vec<(String, PathBuf)>,
    /// Share a host directory that nothing changes while the VM runs
    /// (container image layers): the guest keeps its data, listings, entries
    /// and attributes cached, and opens files without asking. Repeatable;
    /// these devices come after those of --share.
    #[arg(long = "immutable-share", value_name = "TAG=DIR", value_parser = parse_share)]
    pub immutable_shares: Vec<(String, PathBuf)>,
    /// Unix socket of the hybrid vsock device: connect and write
    /// "CONNECT <port>\n" to reach a guest port; guest connections to host
    /// port P go to "<PATH>_P".
    #[arg(long, value_name = "PATH")]
    pub vsock_uds: Option<PathBuf>,
    /// Seconds the guest gets to shut down after SIGTERM/SIGINT before the
    /// VM is stopped anyway.
    #[arg(long, default_value_t = 5)]
    pub shutdown_timeout: u64,
    /// The guest's vsock CID (with --vsock-uds).
    #[arg(long, default_value_t = 3, requires = "vsock_uds")]
    pub vsock_cid: u64,
    /// Attach a virtio-balloon device offering only free page reporting:
    /// memory the guest frees is dropped from the VMM's resident memory
    /// (the guest kernel needs CONFIG_VIRTIO_BALLOON).
    #[arg(long)]
    pub balloon: bool,
    /// The most bytes of guest output the console file gets; later output
    /// is dropped (the last lines stay in memory for error messages).
    #[arg(long, value_name = "BYTES")]
    pub console_limit: Option<u64>,
    /// Jail the VMM before the guest runs: its own mount namespace whose root
    /// (pivot_root) is a tmpfs on this empty directory holding only the
    /// shares, every capability but the file server's dropped, no new
    /// privileges, a bounded number of open files.
    #[arg(long, value_name = "DIR")]
    pub jail: Option<PathBuf>,
    /// A cgroup v2 directory the VMM moves itself into before it allocates
    /// guest memory, so that the VM is charged to it.
    #[arg(long, value_name = "DIR")]
    pub cgroup: Option<PathBuf>,
    /// Give the guest a virtio-net interface backed by this inherited,
    /// open tap fd (opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR; the VMM
    /// sets the header size and offloads). Needs --net-mac.
    #[arg(long, value_name = "FD", requires = "net_mac")]
    pub net_fd: Option<i32>,
    /// The guest interface's MAC address, aa:bb:cc:dd:ee:ff (unicast, not
    /// all zeros). Needs --net-fd.
    #[arg(long, value_name = "MAC", value_parser = parse_mac, requires = "net_fd")]
    pub net_mac: Option<[u8; 6]>,
    /// Give the guest a virtio-blk disk backed by this inherited, open
    /// regular file (O_RDWR; its size, a whole number of 512-byte sectors,
    /// is the disk's).
    #[arg(long, value_name = "FD")]
    pub disk_fd: Option<i32>,
    /// A template boot: when the guest's agent is ready, save the VM into
    /// this empty directory and exit (the kernel gets "cocoon.template").
    #[arg(long, value_name = "DIR", conflicts_with = "restore_from")]
    pub snapshot_to: Option<PathBuf>,
    /// Start the VM a template boot saved in this directory instead of
    /// booting a kernel; --vcpus, --memory-mib and the devices must be those
    /// of the template boot, the host resources (sockets, shares, tap,
    /// console) are this VM's own.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["kernel", "initrd", "cmdline"])]
    pub restore_from: Option<PathBuf>,
}

/// Parses `aa:bb:cc:dd:ee:ff` strictly: six groups of exactly two hex
/// digits; a multicast or all-zero address is refused (the guest's own
/// address must be a unicast one).
pub fn parse_mac(value: &str) -> Result<[u8; 6], String> {
    let bad = || format!("expected a MAC address like 02:00:00:00:00:01, got {value:?}");
    let mut mac = [0u8; 6];
    let mut groups = value.split(':');
    for byte in &mut mac {
        let group = groups.next().ok_or_else(bad)?;
        if group.len() != 2 || !group.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(group, 16).map_err(|_| bad())?;
    }
    if groups.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{value} is a multicast address; the guest needs a unicast one"
        ));
    }
    if mac == [0; 6] {
        return Err("00:00:00:00:00:00 is not a usable MAC address".into());
    }
    Ok(mac)
}

fn parse_share(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((tag, dir)) if !tag.is_empty() && !dir.is_empty() => Ok((tag.to_string(), dir.into())),
        _ => Err(format!("expected TAG=DIR, got {value:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_vmm_command::{Console, NetDevice, SandboxVm, VmmCommand};
    use std::path::Path;

    fn parse(command: &VmmCommand) -> Args {
        let mut argv = vec![std::ffi::OsString::from("cocoon-vmm")];
        argv.extend(command.args());
        Args::try_parse_from(argv).expect("cocoon-vmm parses what the builder writes")
    }

    #[test]
    fn every_builder_setting_survives_the_round_trip() {
        let command = VmmCommand::new("/boot/vmlinux")
            .initrd("/boot/initramfs.img")
            .kernel_arg("quiet")
            .kernel_arg("cocoon.debug")
            .vcpus(3)
            .memory_mib(384)
            .console(Console::File("/state/console.log".into()))
            .share("one", "/srv/one")
            .share("two", "/srv/two=with-equals")
            .immutable_share("images", "/srv/images")
            .vsock("/state/vsock.sock")
            .vsock_cid(7)
            .shutdown_timeout_seconds(9)
            .console_limit_bytes(4096)
            .jail("/state/jail")
            .cgroup("/sys/fs/cgroup/pod")
            .balloon(true)
            .net(NetDevice {
                tap_fd: 9,
                mac: [0x02, 0x42, 0xac, 0x11, 0x00, 0xfe],
            })
            .disk_fd(11);
        let args = parse(&command);
        assert_eq!(args.kernel.as_deref(), Some(Path::new("/boot/vmlinux")));
        assert_eq!(
            args.initrd.as_deref(),
            Some(Path::new("/boot/initramfs.img"))
        );
        assert_eq!(args.cmdline, "quiet cocoon.debug");
        assert_eq!(args.vcpus, 3);
        assert_eq!(args.memory_mib, 384);
        assert_eq!(args.console, "/state/console.log");
        assert_eq!(
            args.shares,
            vec![
                ("one".to_string(), PathBuf::from("/srv/one")),
                ("two".to_string(), PathBuf::from("/srv/two=with-equals")),
            ]
        );
        assert_eq!(
            args.immutable_shares,
            vec![("images".to_string(), PathBuf::from("/srv/images"))]
        );
        assert_eq!(
            args.vsock_uds.as_deref(),
            Some(Path::new("/state/vsock.sock"))
        );
        assert_eq!(args.vsock_cid, 7);
        assert_eq!(args.shutdown_timeout, 9);
        assert_eq!(args.console_limit, Some(4096));
        assert_eq!(args.jail.as_deref(), Some(Path::new("/state/jail")));
        assert_eq!(
            args.cgroup.as_deref(),
            Some(Path::new("/sys/fs/cgroup/pod"))
        );
        assert!(args.balloon);
        assert_eq!(args.net_fd, Some(9));
        assert_eq!(args.net_mac, Some([0x02, 0x42, 0xac, 0x11, 0x00, 0xfe]));
        assert_eq!(args.disk_fd, Some(11));
    }

    #[test]
    fn a_restore_names_the_snapshot_instead_of_a_kernel() {
        let args = parse(
            &VmmCommand::new("/k")
                .initrd("/i")
                .kernel_arg("quiet")
                .restore_from("/templates/one"),
        );
        assert_eq!(
            args.restore_from.as_deref(),
            Some(Path::new("/templates/one"))
        );
        assert_eq!(args.kernel, None);
        assert_eq!(args.initrd, None);
        let args = parse(&VmmCommand::new("/k").snapshot_to("/templates/new"));
        assert_eq!(
            args.snapshot_to.as_deref(),
            Some(Path::new("/templates/new"))
        );
        assert_eq!(args.kernel.as_deref(), Some(Path::new("/k")));
        let both = ["cocoon-vmm", "--kernel", "/k", "--restore-from", "/t"];
        assert!(Args::try_parse_from(both).is_err());
        assert!(Args::try_parse_from(["cocoon-vmm"]).is_err());
    }

    #[test]
    fn net_flags_come_together_and_macs_are_strict() {
        let try_parse = |extra: &[&str]| {
            let argv = ["cocoon-vmm", "--kernel", "/k"].iter().chain(extra);
            Args::try_parse_from(argv)
        };
        assert!(try_parse(&["--net-fd", "5"]).is_err());
        assert!(try_parse(&["--net-mac", "02:00:00:00:00:01"]).is_err());
        let args = try_parse(&["--net-fd", "5", "--net-mac", "02:AB:cd:00:00:01"]).expect("valid");
        assert_eq!(args.net_mac, Some([0x02, 0xab, 0xcd, 0, 0, 1]));
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02:00:00:00:00:1",
            "02:00:00:00:00:001",
            "02-00-00-00-00-01",
            "02:00:00:00:00:0g",
            "02:00:00:00:00:+1",
            "02:00:00:00:00:01:",
            "01:00:5e:00:00:01",
            "ff:ff:ff:ff:ff:ff",
            "00:00:00:00:00:00",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad:?} accepted");
        }
        assert!(try_parse(&["--net-fd", "x", "--net-mac", "02:00:00:00:00:01"]).is_err());
    }

    #[test]
    fn unset_settings_get_the_vmm_defaults() {
        let args = parse(&VmmCommand::new("/k"));
        assert_eq!(args.initrd, None);
        assert_eq!(args.cmdline, "");
        assert_eq!((args.vcpus, args.memory_mib), (1, 128));
        assert_eq!(args.console, "-");
        assert!(args.shares.is_empty() && args.immutable_shares.is_empty());
        assert!(args.vsock_uds.is_none() && !args.balloon);
        assert!(args.net_fd.is_none() && args.net_mac.is_none());
        for (console, expected) in [(Console::Stdout, "-"), (Console::Discard, "none")] {
            assert_eq!(
                parse(&VmmCommand::new("/k").console(console)).console,
                expected
            );
        }
    }

    #[test]
    fn a_sandbox_vm_parses() {
        let args = parse(&VmmCommand::sandbox(&SandboxVm {
            kernel: Path::new("/k"),
            initramfs: Path::new("/i"),
            vcpus: 1,
            memory_mib: 256,
            share: Path::new("/state/share"),
            images: Path::new("/state/images"),
            vsock_uds: Path::new("/state/vsock.sock"),
            console: Path::new("/state/console.log"),
            guest_debug: true,
            console_limit_bytes: 1 << 20,
            jail: Path::new("/state/jail"),
            cgroup: None,
            net: None,
            disk_fd: None,
        }));
        assert_eq!(args.cmdline, cocoon_protocol::GUEST_DEBUG_ARG);
        assert_eq!(args.shares[0].0, cocoon_protocol::SHARE_TAG);
        assert_eq!(args.immutable_shares[0].0, cocoon_protocol::IMAGES_TAG);
        assert!(args.balloon);
    }
}
