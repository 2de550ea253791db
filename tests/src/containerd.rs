//! A private containerd for end-to-end tests, Debian's 1.6 or the 1.7 or
//! 2.x that `make deps` builds ([`Version`]): its own config, root, state and socket
//! in a temporary directory, never the system's; the cocoon shim from this
//! checkout on its PATH, configured to boot the built guest.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{build_output, release_dir, repo_root, tail};

/// The image [`Containerd::import_busybox`] imports.
pub const BUSYBOX: &str = "docker.io/cocoon/busybox:latest";
pub const RUNTIME: &str = "io.containerd.cocoon.v1";

/// Which containerd a test runs. Everything that differs between them is a
/// method here; the tests and harness are one code path for both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Version {
    /// Debian's containerd 1.6 and its ctr, on PATH.
    #[default]
    V1_6,
    /// containerd 1.7 (and its ctr and runc shim) from the Go module proxy,
    /// built by `make deps` (`tests/tools/build-go-tools containerd17`).
    V1_7,
    /// containerd 2.x (and its ctr and runc shim) from the Go module proxy,
    /// built by `make deps` (`tests/tools/build-go-tools containerd2`).
    V2,
}

impl Version {
    /// Where this version's containerd, ctr and runc shim are; `None`: on
    /// PATH (Debian's).
    pub fn bin_dir(self) -> Option<PathBuf> {
        match self {
            Version::V1_6 => None,
            Version::V1_7 => Some(crate::cri::prepared_path(
                "build-go-tools",
                &["--bin-dir", "containerd17"],
                "containerd 1.7 is not built",
            )),
            Version::V2 => Some(crate::cri::prepared_path(
                "build-go-tools",
                &["--bin-dir", "containerd2"],
                "containerd 2.x is not built",
            )),
        }
    }

    /// The `version` of its config file: 2 for 1.x; 3 for 2.x, whose CRI
    /// plugin ids changed (`io.containerd.cri.v1.runtime`/`.images`).
    pub fn config_version(self) -> u32 {
        match self {
            Version::V1_6 | Version::V1_7 => 2,
            Version::V2 => 3,
        }
    }

    /// The plugins a containerd without CRI disables: 2.x split the CRI
    /// into the gRPC service and its runtime and image plugins.
    fn cri_plugins(self) -> &'static [&'static str] {
        match self {
            Version::V1_6 | Version::V1_7 => &["io.containerd.grpc.v1.cri"],
            Version::V2 => &[
                "io.containerd.grpc.v1.cri",
                "io.containerd.cri.v1.runtime",
                "io.containerd.cri.v1.images",
            ],
        }
    }
}

/// The cocoon config file in a containerd's directory.
const COCOON_CONFIG: &str = "cocoon.toml";

/// What [`Containerd::start_with`] adds to the plain test containerd.
#[derive(Debug, Default)]
pub struct Extra {
    /// Which containerd.
    pub version: Version,
    /// The CRI plugins' configuration (TOML tables for [`Extra::version`]'s
    /// config format, see `cri::cri_config`); `None` disables them.
    pub cri: Option<String>,
    /// containerd's root and state on a tmpfs of their own (any snapshotter
    /// works there; the host VM's root is an overlay), removed with it.
    pub tmpfs: bool,
    /// More lines for the cocoon config (TOML keys).
    pub cocoon_config: String,
}

pub struct Containerd {
    dir: tempfile::TempDir,
    child: Child,
    pub version: Version,
    /// This version's ctr.
    ctr: PathBuf,
    pub socket: PathBuf,
    /// The shim's state directory (`state_dir` in the cocoon config).
    pub cocoon_state: PathBuf,
}

impl Containerd {
    /// Debian's containerd 1.6 with the checkout's cocoon runtime.
    pub fn start() -> Self {
        Self::start_version(Version::V1_6)
    }

    /// [`Containerd::start`] on containerd `version`.
    pub fn start_version(version: Version) -> Self {
        Self::start_with_kernel(version, &build_output("vmlinux"))
    }

    /// [`Containerd::start_version`] with another guest kernel in the
    /// cocoon config.
    pub fn start_with_kernel(version: Version, kernel: &Path) -> Self {
        Self::start_from(
            version,
            &release_dir(),
            kernel,
            &build_output("initramfs.img"),
        )
    }

    /// A containerd whose cocoon runtime comes from `bin` (the shim and
    /// cocoon-vmm) and boots `kernel` with `initramfs`.
    pub fn start_from(version: Version, bin: &Path, kernel: &Path, initramfs: &Path) -> Self {
        Self::start_with(bin, kernel, initramfs, |_| Extra {
            version,
            ..Extra::default()
        })
    }

    /// [`Containerd::start_with`] the checkout's runtime and guest.
    pub fn start_with_extra(extra: impl FnOnce(&Path) -> Extra) -> Self {
        Self::start_with(
            &release_dir(),
            &build_output("vmlinux"),
            &build_output("initramfs.img"),
            extra,
        )
    }

    /// [`Containerd::start_from`] with more: `extra` gets the containerd's
    /// own directory (to put files for its config there) before it starts.
    pub fn start_with(
        bin: &Path,
        kernel: &Path,
        initramfs: &Path,
        extra: impl FnOnce(&Path) -> Extra,
    ) -> Self {
        for binary in ["containerd-shim-cocoon-v1", "cocoon-vmm"] {
            assert!(
                bin.join(binary).is_file(),
                "{} is missing: run `make` first",
                bin.join(binary).display()
            );
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let extra = extra(dir.path());
        let socket = dir.path().join("containerd.sock");
        let cocoon_state = dir.path().join("cocoon");
        let cocoon_config = dir.path().join(COCOON_CONFIG);
        std::fs::write(
            &cocoon_config,
            format!(
                "kernel = {:?}\ninitramfs = {:?}\nvmm = {:?}\nstate_dir = {:?}\n\
                 # The host VM is emulated: boots take seconds, not milliseconds.\n\
                 boot_timeout_seconds = 60\nguest_debug = {}\n{}",
                kernel,
                initramfs,
                bin.join("cocoon-vmm"),
                cocoon_state,
                std::env::var_os("COCOON_TEST_GUEST_DEBUG").is_some(),
                extra.cocoon_config,
            ),
        )
        .expect("cocoon config");
        // containerd's root and state, on a tmpfs of their own when asked.
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("containerd data directory");
        if extra.tmpfs {
            let mounted = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "mode=0700,size=2g", "tmpfs"])
                .arg(&data)
                .status()
                .expect("mount runs");
            assert!(mounted.success(), "mounting a tmpfs on {}", data.display());
        }
        let version = extra.version;
        // `disabled_plugins` is a top-level key: it goes before the first
        // table (after `[ttrpc]` it was ttrpc's, ignored, and the CRI ran).
        let (disabled, plugins) = match &extra.cri {
            Some(cri) => (String::new(), cri.clone()),
            None => (
                format!("disabled_plugins = {:?}\n", version.cri_plugins()),
                String::new(),
            ),
        };
        let config = dir.path().join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = {}\nroot = {:?}\nstate = {:?}\n{disabled}\
                 [grpc]\n  address = {:?}\n[ttrpc]\n  address = {:?}\n{plugins}",
                version.config_version(),
                data.join("root"),
                data.join("state"),
                socket,
                dir.path().join("containerd.sock.ttrpc"),
            ),
        )
        .expect("containerd config");
        // The cocoon shim first; then the version's own runc shim, before
        // Debian's on PATH.
        let version_bin = version.bin_dir();
        let mut path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .collect::<Vec<_>>();
        path.splice(
            0..0,
            [bin.to_path_buf()].into_iter().chain(version_bin.clone()),
        );
        let path = std::env::join_paths(path).expect("PATH without colons in its parts");
        let binary = |name: &str| match &version_bin {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        };
        let child = Command::new(binary("containerd"))
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("COCOON_CONFIG", &cocoon_config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("containerd.log")).expect("log file"))
            .spawn()
            .expect("containerd (Debian's: package containerd; 1.7, 2.x: make deps builds it)");
        let containerd = Containerd {
            dir,
            child,
            version,
            ctr: binary("ctr"),
            socket,
            cocoon_state,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !containerd.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                containerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        containerd
    }

    /// Runs `ctr` against this containerd.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr runs")
    }

    /// `ctr --address SOCKET`, this version's ctr, to add arguments to.
    pub fn ctr_command(&self) -> Command {
        let mut command = Command::new(&self.ctr);
        command.arg("--address").arg(&self.socket);
        command
    }

    /// The path of this version's ctr (Debian's: `ctr`, from PATH).
    pub fn ctr_path(&self) -> &Path {
        &self.ctr
    }

    /// `ctr run FLAGS --runtime RUNTIME --snapshotter native BUSYBOX ID ARGS...`:
    /// the busybox image with `runtime` (cocoon's [`RUNTIME`] or runc's) on
    /// the native snapshotter, which works on any file system (the host VM's
    /// root is an overlay, on which overlayfs cannot stack).
    pub fn run(&self, runtime: &str, flags: &[&str], id: &str, args: &[&str]) -> Output {
        self.run_on_snapshotter("native", runtime, flags, id, args)
    }

    /// [`Containerd::run`] on another snapshotter (`overlayfs` needs
    /// [`Extra::tmpfs`]).
    pub fn run_on_snapshotter(
        &self,
        snapshotter: &str,
        runtime: &str,
        flags: &[&str],
        id: &str,
        args: &[&str],
    ) -> Output {
        self.run_image(snapshotter, BUSYBOX, runtime, flags, id, args)
    }

    /// [`Containerd::run_on_snapshotter`] of another image.
    pub fn run_image(
        &self,
        snapshotter: &str,
        image: &str,
        runtime: &str,
        flags: &[&str],
        id: &str,
        args: &[&str],
    ) -> Output {
        let mut command = vec!["run"];
        command.extend_from_slice(flags);
        command.extend_from_slice(&[
            "--runtime",
            runtime,
            "--snapshotter",
            snapshotter,
            image,
            id,
        ]);
        command.extend_from_slice(args);
        self.ctr(&command)
    }

    /// `ctr run -d FLAGS ... BUSYBOX ID sleep 600`, which must succeed, and
    /// waits until the task runs.
    pub fn start_sleeping(&self, flags: &[&str], id: &str) {
        let flags: Vec<&str> = ["-d"].iter().chain(flags).copied().collect();
        ok(
            self.run(RUNTIME, &flags, id, &["sleep", "600"]),
            &format!("ctr run -d {id}"),
        );
        self.wait_for_status(id, "RUNNING");
    }

    /// `ctr run FLAGS --runtime cocoon --env PATH=/bin --rootfs ROOTFS ID
    /// ARGS...`: a container on a root file system directory of the test's
    /// own, no image (ctr then sets no PATH).
    pub fn run_on_rootfs(&self, flags: &[&str], rootfs: &Path, id: &str, args: &[&str]) -> Output {
        let rootfs = rootfs.display().to_string();
        let mut command = vec!["run"];
        command.extend_from_slice(flags);
        command.extend_from_slice(&["--runtime", RUNTIME, "--env", "PATH=/bin", "--rootfs"]);
        command.extend_from_slice(&[&rootfs, id]);
        command.extend_from_slice(args);
        self.ctr(&command)
    }

    /// ctr's default OCI spec running `args` on the root file system
    /// directory `rootfs`, with PATH=/bin.
    pub fn spec_on_rootfs(&self, rootfs: &Path, args: &[&str]) -> serde_json::Value {
        let mut spec: serde_json::Value =
            serde_json::from_str(&ok(self.ctr(&["oci", "spec"]), "ctr oci spec"))
                .expect("ctr oci spec prints JSON");
        spec["root"] = serde_json::json!({ "path": rootfs });
        spec["process"]["args"] = serde_json::json!(args);
        spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
        spec
    }

    /// `ctr task exec --exec-id EXEC_ID ID sh -c SCRIPT`: what it printed,
    /// stdout then stderr.
    pub fn exec(&self, id: &str, exec_id: &str, script: &str) -> String {
        let out = self.ctr(&["task", "exec", "--exec-id", exec_id, id, "sh", "-c", script]);
        format!("{}{}", text(&out.stdout), text(&out.stderr))
    }

    /// `ctr run FLAGS --runtime cocoon --config SPEC ID`: container `id`
    /// from a whole spec (FLAGS: `--rm`, or `-d`).
    pub fn run_spec(&self, flags: &[&str], spec: &serde_json::Value, id: &str) -> Output {
        let path = self.dir.path().join(format!("{id}.json"));
        std::fs::write(&path, spec.to_string()).expect("writing the spec");
        let path = path.display().to_string();
        let mut command = vec!["run"];
        command.extend_from_slice(flags);
        command.extend_from_slice(&["--runtime", RUNTIME, "--config", &path, id]);
        self.ctr(&command)
    }

    /// Deletes task and container `id`, retrying the task delete while its
    /// exit lands; returns what `ctr task delete` said (it names a non-zero
    /// exit status there).
    pub fn delete(&self, id: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let said = loop {
            let deleted = self.ctr(&["task", "delete", id]);
            if deleted.status.success() {
                break text(&deleted.stderr);
            }
            assert!(
                Instant::now() < deadline,
                "task delete {id}: {}",
                text(&deleted.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        ok(
            self.ctr(&["container", "delete", id]),
            "ctr container delete",
        );
        said
    }

    /// SIGKILL, then [`Containerd::delete`].
    pub fn kill_and_delete(&self, id: &str) {
        ok(
            self.ctr(&["task", "kill", "-s", "KILL", id]),
            "ctr task kill -s KILL",
        );
        self.delete(id);
    }

    /// Builds the busybox image offline and imports it as [`BUSYBOX`].
    pub fn import_busybox(&self) {
        self.import_image(BUSYBOX, &[]);
    }

    /// Builds image `name` offline (`tests/images/oci-image.sh` with
    /// `options`: busybox and what they add) and imports it.
    pub fn import_image(&self, name: &str, options: &[&str]) {
        let archive = self.dir.path().join("image.tar");
        let built = Command::new(repo_root().join("tests/images/oci-image.sh"))
            .args(options)
            .arg(&archive)
            .arg(name)
            .status()
            .expect("oci-image.sh runs");
        assert!(built.success(), "building the image {name} failed");
        let imported = self.ctr(&["image", "import", archive.to_str().expect("utf-8 path")]);
        assert!(
            imported.status.success(),
            "ctr image import: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
    }

    pub fn log(&self) -> String {
        tail(
            &std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default(),
            40,
        )
    }

    /// How many sandboxes started from a VM template, as the shims logged.
    pub fn sandboxes_from_templates(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("containerd.log"))
            .unwrap_or_default()
            .matches("after launch (from a template)")
            .count()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `NAME.toml` beside this containerd's cocoon config: the same
    /// config plus the lines `more`, for a shim that containerd's runtime
    /// options point at it. Returns its path.
    pub fn write_cocoon_config(&self, name: &str, more: &str) -> PathBuf {
        let base = std::fs::read_to_string(self.dir().join(COCOON_CONFIG))
            .expect("this containerd's cocoon config");
        let path = self.dir().join(format!("{name}.toml"));
        std::fs::write(&path, format!("{base}{more}")).expect("writing a cocoon config");
        path
    }

    /// Waits until `ctr task ls` shows task `id` as `status`.
    pub fn wait_for_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let listed = ok(self.ctr(&["task", "ls"]), "ctr task ls");
            if listed
                .lines()
                .any(|line| line.split_whitespace().next() == Some(id) && line.contains(status))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never became {status}:\n{listed}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The pid of the cocoon-vmm of sandbox `id` (the container's, or for
    /// a CRI pod the pod sandbox's id) in containerd namespace `namespace`
    /// (`default` for ctr, `k8s.io` for CRI), as its shim recorded it.
    pub fn vmm_pid(&self, namespace: &str, id: &str) -> u32 {
        let pid_file = self.cocoon_state.join(namespace).join(id).join("vmm.pid");
        std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or_else(|| panic!("no VMM pid in {}", pid_file.display()))
    }

    /// The host pid `ctr task ls` shows for task `id`.
    pub fn task_pid(&self, id: &str) -> u32 {
        let listed = ok(self.ctr(&["task", "ls"]), "ctr task ls");
        listed
            .lines()
            .find(|line| line.split_whitespace().next() == Some(id))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("no pid for task {id} in:\n{listed}"))
    }

    /// Crashes the shim of running task `id` (SIGKILL; its VMM lives on),
    /// waits until containerd, having run `containerd-shim-cocoon-v1 delete`
    /// for the dead shim, no longer lists the task, and deletes the container.
    pub fn crash_shim_and_delete(&self, id: &str) {
        let pid_file = self.cocoon_state.join(format!("default/{id}/vmm.pid"));
        let vmm_pid = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
        let status = std::fs::read_to_string(format!("/proc/{}/status", vmm_pid.trim()))
            .unwrap_or_else(|e| panic!("status of the VMM {}: {e}", vmm_pid.trim()));
        let shim_pid = status
            .lines()
            .find_map(|line| line.strip_prefix("PPid:"))
            .map(|pid| pid.trim().to_owned())
            .expect("the VMM's parent, the shim");

        assert!(Command::new("kill")
            .args(["-9", &shim_pid])
            .status()
            .expect("kill runs")
            .success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while ok(self.ctr(&["task", "ls"]), "ctr task ls").contains(id) {
            assert!(
                Instant::now() < deadline,
                "containerd still lists the task of a dead shim:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        ok(
            self.ctr(&["container", "delete", id]),
            "ctr container delete",
        );
    }

    /// Nothing of a sandbox may outlive it: no VMM, no mount, no state, no
    /// cgroup.
    pub fn assert_nothing_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let vmms = Command::new("pgrep")
                .args(["-f", "cocoon-vmm"])
                .output()
                .expect("pgrep (procps)");
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let leftover_mounts: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| Path::new(p).starts_with(&self.cocoon_state))
                .collect();
            let leftover_state = sandbox_dirs(&self.cocoon_state);
            let leftover_cgroups = child_dirs(Path::new(SANDBOX_CGROUPS));
            if vmms.stdout.is_empty()
                && leftover_mounts.is_empty()
                && leftover_state.is_empty()
                && leftover_cgroups.is_empty()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "left behind: vmm pids {:?}, mounts {leftover_mounts:?}, state \
                 {leftover_state:?}, cgroups {leftover_cgroups:?}",
                text(&vmms.stdout)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Where the VMMs of sandboxes `ctr` starts in the default namespace are
/// charged: ctr gives containers the cgroup `/<namespace>/<id>`.
pub const SANDBOX_CGROUPS: &str = "/sys/fs/cgroup/default";

/// The directories directly under `dir`.
fn child_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect()
}

/// Sandbox state directories under the shim's state dir (namespace
/// directories may stay).
fn sandbox_dirs(state: &Path) -> Vec<PathBuf> {
    child_dirs(state)
        .iter()
        .flat_map(|namespace| child_dirs(namespace))
        .collect()
}

/// A command's stdout, after asserting it succeeded (`what` and its output
/// name the failure).
pub fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if crate::wait_or_kill(&mut self.child, Duration::from_secs(10)).is_err() {
            eprintln!("containerd did not stop on SIGTERM; killed");
        }
        // containerd's own mounts (snapshots, shm) must go before the files.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|point| Path::new(point).starts_with(self.dir.path()))
            .collect();
        ours.sort_by_key(|point| std::cmp::Reverse(point.len()));
        for point in ours {
            let _ = Command::new("umount").arg("-l").arg(point).status();
        }
    }
}
