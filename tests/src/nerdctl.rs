//! nerdctl (built by `make deps`, `tests/tools/build-go-tools`) against the
//! test's private containerd ([`Containerd`], Debian's 1.6 or 2.x: a
//! [`Version`]): every path nerdctl keeps
//! (`--data-root`, the CNI configuration in `--cni-netconfpath`, its TOML)
//! in the containerd's directory, never the system's; CNI plugins from
//! Debian's containernetworking-plugins (`/usr/lib/cni`). Containers run
//! with `--runtime io.containerd.cocoon.v1` on the native snapshotter, or
//! on overlayfs ([`Nerdctl::on_overlayfs`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::containerd::{text, Containerd, Extra, Version, RUNTIME};
use crate::repo_root;

/// The image the tests run, built offline and `nerdctl load`ed.
pub const IMAGE: &str = "docker.io/cocoon/busybox:latest";
/// containerd's namespace: `default`, whose cgroups
/// [`Containerd::assert_nothing_left`] checks.
pub const NAMESPACE: &str = "default";
/// Debian's CNI plugins.
pub const CNI_PATH: &str = "/usr/lib/cni";
/// The bridge nerdctl makes for its default network, `bridge`.
pub const BRIDGE: &str = "nerdctl0";

pub struct Nerdctl {
    pub containerd: Containerd,
    bin: PathBuf,
    data_root: PathBuf,
    netconf: PathBuf,
    snapshotter: &'static str,
    /// Whether nerdctl's bridge was there before: if not, it goes with us
    /// (the next test's nerdctl would find its subnet taken).
    bridge_was_there: bool,
}

impl Nerdctl {
    /// A private containerd `version` and nerdctl's directories beside it.
    pub fn start(version: Version) -> Self {
        Self::with(Containerd::start_version(version), "native")
    }

    /// nerdctl on Debian's containerd, its root on a tmpfs of its own, on
    /// the overlayfs snapshotter (containerd's default, where the guest
    /// keeps a container's writable layer on its scratch disk), with the
    /// busybox image loaded.
    pub fn on_overlayfs() -> Self {
        let containerd = Containerd::start_with_extra(|_| Extra {
            tmpfs: true,
            ..Extra::default()
        });
        let nerdctl = Self::with(containerd, "overlayfs");
        nerdctl.load_busybox();
        nerdctl
    }

    fn with(containerd: Containerd, snapshotter: &'static str) -> Self {
        let bin = nerdctl_bin();
        let data_root = containerd.dir().join("nerdctl");
        let netconf = containerd.dir().join("cni");
        for dir in [&data_root, &netconf] {
            std::fs::create_dir_all(dir).expect("nerdctl's directories");
        }
        Nerdctl {
            containerd,
            bin,
            data_root,
            netconf,
            snapshotter,
            bridge_was_there: Path::new("/sys/class/net").join(BRIDGE).exists(),
        }
    }

    /// `nerdctl GLOBAL-FLAGS ARGS...`, its stdin closed.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(self.global_flags())
            .args(args)
            .env("NERDCTL_TOML", self.containerd.dir().join("nerdctl.toml"))
            .stdin(Stdio::null());
        command
    }

    fn global_flags(&self) -> Vec<String> {
        vec![
            format!("--address={}", self.containerd.socket.display()),
            format!("--namespace={NAMESPACE}"),
            format!("--data-root={}", self.data_root.display()),
            format!("--cni-path={CNI_PATH}"),
            format!("--cni-netconfpath={}", self.netconf.display()),
            format!("--snapshotter={}", self.snapshotter),
            "--cgroup-manager=cgroupfs".into(),
        ]
    }

    /// Runs `nerdctl ARGS...` and returns its output.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("nerdctl runs")
    }

    /// `nerdctl ARGS...`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "nerdctl {}: {}{}\ncontainerd log:\n{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr),
            self.containerd.log()
        );
        text(&out.stdout)
    }

    /// `nerdctl run --runtime cocoon FLAGS IMAGE ARGS...`.
    pub fn run(&self, flags: &[&str], args: &[&str]) -> Output {
        let mut command = vec!["run", "--runtime", RUNTIME];
        command.extend_from_slice(flags);
        command.push(IMAGE);
        command.extend_from_slice(args);
        self.output(&command)
    }

    /// `nerdctl ARGS` with a terminal of its own (script(1)), as `-it`
    /// needs; returns its exit code and what it printed.
    pub fn in_terminal(&self, args: &str) -> (Option<i32>, String) {
        let command = format!(
            "NERDCTL_TOML={} {} {} {args}",
            self.containerd.dir().join("nerdctl.toml").display(),
            self.bin.display(),
            self.global_flags().join(" ")
        );
        let out = Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .expect("script(1) from util-linux");
        (
            out.status.code(),
            format!("{}{}", text(&out.stdout), text(&out.stderr)),
        )
    }

    /// [`Nerdctl::start`] with the busybox image loaded; says how long that took.
    pub fn start_with_busybox(version: Version) -> Self {
        let started = std::time::Instant::now();
        let nerdctl = Self::start(version);
        nerdctl.load_busybox();
        eprintln!(
            "containerd {version:?} up, image loaded: {:?}",
            started.elapsed()
        );
        nerdctl
    }

    /// Loads the busybox image ([`busybox_archive`]) with `nerdctl load`.
    pub fn load_busybox(&self) {
        let archive = busybox_archive();
        self.ok(&["load", "-i", archive.to_str().expect("utf-8 path")]);
    }

    /// Polls `nerdctl ARGS` until its stdout contains `wanted` (at most
    /// `limit`); returns the last stdout.
    pub fn wait_for(&self, args: &[&str], wanted: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let said = text(&self.output(args).stdout);
            if said.contains(wanted) || Instant::now() > deadline {
                return said;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    /// Nothing of nerdctl's containers may outlive them: what
    /// [`Containerd::assert_nothing_left`] checks (VMM, mounts (the shim's
    /// network namespaces among them), shim state, cgroups), no shim
    /// process, and no port (veth) on nerdctl's bridge.
    pub fn assert_nothing_left(&self) {
        self.containerd.assert_nothing_left();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // This containerd's shims (their command line names its socket).
            let shims = Command::new("pgrep")
                .arg("-f")
                .arg(format!(
                    "containerd-shim-cocoon-v1 .*{}",
                    self.containerd.socket.display()
                ))
                .output()
                .expect("pgrep (procps)");
            let ports = Command::new("ip")
                .args(["-o", "link", "show", "master", BRIDGE])
                .output()
                .expect("ip (iproute2)");
            let (shims, ports) = (text(&shims.stdout), text(&ports.stdout));
            if shims.is_empty() && ports.trim().is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: shims {shims:?}, ports of {BRIDGE} {ports:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Nerdctl {
    fn drop(&mut self) {
        if !self.bridge_was_there && Path::new("/sys/class/net").join(BRIDGE).exists() {
            let _ = Command::new("ip").args(["link", "del", BRIDGE]).status();
        }
    }
}

/// The busybox image, built offline (`tests/images/oci-image.sh`) once per
/// machine boot: kept in the temporary directory under a name keyed by the
/// script and the busybox it packs (linking its applets takes a minute
/// under emulation; the host VM's /tmp is new each run).
pub fn busybox_archive() -> PathBuf {
    use std::hash::{Hash, Hasher};
    let script = repo_root().join("tests/images/oci-image.sh");
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in [script.as_path(), Path::new("/bin/busybox")] {
        std::fs::read(file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .hash(&mut hasher);
    }
    let archive = std::env::temp_dir().join(format!(
        "cocoon-nerdctl-busybox-{:016x}.tar",
        hasher.finish()
    ));
    if archive.is_file() {
        return archive;
    }
    let partial = archive.with_extension(format!("{}.partial", std::process::id()));
    let built = Command::new(&script)
        .arg(&partial)
        .arg(IMAGE)
        .status()
        .expect("oci-image.sh runs");
    assert!(built.success(), "building the busybox image failed");
    std::fs::rename(&partial, &archive).expect("the image archive into place");
    archive
}

/// nerdctl's binary from the cache, or a panic saying to run `make deps`.
pub fn nerdctl_bin() -> PathBuf {
    let out = Command::new(repo_root().join("tests/tools/build-go-tools"))
        .args(["--bin-dir", "nerdctl"])
        .output()
        .expect("build-go-tools runs");
    assert!(
        out.status.success(),
        "nerdctl is not built: {}",
        text(&out.stderr)
    );
    PathBuf::from(text(&out.stdout).trim()).join("nerdctl")
}
