//! A Kubernetes node's container side, private to one test: containerd with
//! its CRI plugin (runtimes `runc`, the default, `cocoon`, and `cocoon`
//! without a scratch disk), CNI from
//! Debian's containernetworking-plugins on a bridge of the test's own, and a
//! real registry (Debian's docker-registry) on loopback holding images built
//! offline by the project, which containerd reaches for the names the tests
//! and critest use (`registry.k8s.io`, `gcr.io`, `docker.io`). Plus `crictl`
//! and `critest` from cri-tools (`tests/tools/build-go-tools`, run by `make
//! deps`). Dropping a [`Cri`] removes every pod, containerd, the registry,
//! the bridge and whatever network namespaces its pods left.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::containerd::{text, Containerd, Extra, Version};
use crate::{build_output, output_within, release_dir, repo_root, tail, wait_or_kill};

/// The CRI runtime handler of Cocoon, as a RuntimeClass names it.
pub const COCOON_HANDLER: &str = "cocoon";
/// A second Cocoon handler whose shims read the node's cocoon config plus
/// `scratch_disk_gib = 0` (containerd's runtime options name that file):
/// pods with every writable layer on the host, for the bench to measure
/// what the scratch disk costs side by side.
pub const COCOON_WITHOUT_SCRATCH_DISK_HANDLER: &str = "cocoon-no-scratch-disk";
/// That handler's config file (`.toml`), in containerd's directory.
const WITHOUT_SCRATCH_DISK_CONFIG: &str = "cocoon-no-scratch-disk";
/// The image every crictl scenario runs: critest's default test image name,
/// served by the project's busybox.
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";
/// The project's pause image (`sandbox_image`), see `src/bin/cocoon-pause.rs`.
pub const PAUSE: &str = "docker.io/cocoon/pause:latest";
/// Registries whose names containerd resolves to the local registry.
const MIRRORED: [&str; 3] = ["registry.k8s.io", "gcr.io", "docker.io"];
/// Where containerd's CRI plugin keeps the pods' network namespaces (1.6, and
/// 2.x with its default `netns_mounts_under_state_dir = false`).
const NETNS_DIR: &str = "/var/run/netns";

/// One image the registry serves: how `tests/images/oci-image.sh` builds it
/// and every name (`registry/path:tag`) it is pushed under.
struct Image {
    names: &'static [&'static str],
    options: Vec<String>,
}

/// Every image the crictl scenarios and critest's specs pull (names from
/// cri-tools' pkg/validate/consts.go and pkg/framework/util.go), built from
/// busybox-static and the project's own small static programs. Not served:
/// `test-image-digest@sha256:...` (the digest of an upstream manifest, which
/// no offline build can reproduce) and `hostnet-nginx` (host network specs
/// are skipped); see tests/cri/critest-skip.txt.
fn images() -> Vec<Image> {
    let bin = release_dir();
    let file = |name: &str, path: &str, mode: &str| {
        vec![
            "--add".to_string(),
            format!("{}:{path}:{mode}", bin.join(name).display()),
        ]
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mut nnp = file("cocoon-nonewprivs", "/usr/local/bin/nnp", "4755");
    nnp.extend(args(&["--entrypoint", r#"["/usr/local/bin/nnp"]"#]));
    let mut pause = file("cocoon-pause", "/pause", "0755");
    pause.extend(args(&["--bare", "--entrypoint", r#"["/pause"]"#]));
    let www_data = [
        "--passwd",
        "www-data:x:33:33:www-data:/var/www:/bin/false",
        "--group",
        "www-data:x:33:",
    ];
    let user = |user: &str| {
        let mut options = args(&["--user", user]);
        options.extend(args(&www_data));
        options
    };
    vec![
        // As registry.k8s.io's busybox behaves, with the machine's programs
        // (and their libraries): see [`host_tools`].
        Image {
            names: &[
                "registry.k8s.io/e2e-test-images/busybox:1.29-2",
                "docker.io/cocoon/busybox:latest",
            ],
            options: host_tools()
                .into_iter()
                .flat_map(|(tool, path)| {
                    [
                        "--host-tool".to_string(),
                        format!("{}:{path}", tool.display()),
                    ]
                })
                .collect(),
        },
        // critest checks each of these has only its own names (repo tags):
        // each is a different image (a file naming it).
        Image {
            names: &["gcr.io/k8s-staging-cri-tools/test-image-latest:latest"],
            options: args(&["--text", "/test-image=latest"]),
        },
        Image {
            names: &["gcr.io/k8s-staging-cri-tools/test-image-tag:test"],
            options: args(&["--text", "/test-image=tag:test"]),
        },
        Image {
            names: &["gcr.io/k8s-staging-cri-tools/test-image-tag:all"],
            options: args(&["--text", "/test-image=tag:all"]),
        },
        // One image under three tags.
        Image {
            names: &[
                "gcr.io/k8s-staging-cri-tools/test-image-tags:1",
                "gcr.io/k8s-staging-cri-tools/test-image-tags:2",
                "gcr.io/k8s-staging-cri-tools/test-image-tags:3",
            ],
            options: args(&["--text", "/test-image=tags"]),
        },
        Image {
            names: &[PAUSE],
            options: pause,
        },
        // Three different images (listImage counts image ids).
        Image {
            names: &["gcr.io/k8s-staging-cri-tools/test-image-1:latest"],
            options: args(&["--text", "/test-image=1"]),
        },
        Image {
            names: &["gcr.io/k8s-staging-cri-tools/test-image-2:latest"],
            options: args(&["--text", "/test-image=2"]),
        },
        Image {
            names: &["gcr.io/k8s-staging-cri-tools/test-image-3:latest"],
            options: args(&["--text", "/test-image=3"]),
        },
        Image {
            names: &["gcr.io/k8s-staging-cri-tools/test-image-user-uid:latest"],
            options: user("1002"),
        },
        Image {
            names: &["gcr.io/k8s-staging-cri-tools/test-image-user-username:latest"],
            options: user("www-data"),
        },
        Image {
            names: &["gcr.io/k8s-staging-cri-tools/test-image-user-uid-group:latest"],
            options: user("1003:33"),
        },
        Image {
            names: &["gcr.io/k8s-staging-cri-tools/test-image-user-username-group:latest"],
            options: user("www-data:www-data"),
        },
        // User 1000 in a group the image defines (critest's
        // SupplementalGroupsPolicy specs).
        Image {
            names: &["gcr.io/k8s-staging-cri-tools/test-image-predefined-group:latest"],
            options: args(&[
                "--user",
                "1000",
                "--passwd",
                "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh",
                "--group",
                "default-user:x:1000:",
                "--group",
                "group-defined-in-image:x:50000:default-user",
            ]),
        },
        // The web servers critest fetches a page from: busybox httpd on port
        // 80. The "httpd" one says its name in its log, as Apache does.
        Image {
            names: &["registry.k8s.io/e2e-test-images/nginx:1.14-2"],
            options: args(&[
                "--text",
                "/usr/share/nginx/html/index.html=<p>cocoon test web server</p>",
                // PID 1's command line says "master process", as nginx's
                // does (critest's ContainerPID spec waits for it); it ends
                // on SIGTERM like nginx, not after the stop timeout.
                "--cmd",
                r#"["sh","-c","trap 'exit 0' TERM INT; httpd -f -v -p 80 -h /usr/share/nginx/html & wait","nginx: master process"]"#,
            ]),
        },
        Image {
            names: &["registry.k8s.io/e2e-test-images/httpd:2.4.39-4"],
            options: args(&[
                "--text",
                "/usr/local/apache2/htdocs/index.html=<p>It works!</p>",
                "--entrypoint",
                r#"["sh","-c","echo httpd: serving on port 80; exec httpd -f -v -p 80 -h /usr/local/apache2/htdocs"]"#,
            ]),
        },
        Image {
            names: &["registry.k8s.io/e2e-test-images/nonewprivs:1.3"],
            options: nnp,
        },
    ]
}

/// What [`Cri::start_pod`] started, and how long each step took.
pub struct StartedPod {
    pub pod: String,
    pub container: String,
    pub runp: Duration,
    pub create: Duration,
    pub start: Duration,
}

/// A container config for `crictl create`: [`BUSYBOX`] named `name`,
/// running `sh -c script`, with `mounts` (CRI `Mount`s), its log next to
/// the pod's.
pub fn busybox_container(name: &str, script: &str, mounts: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "metadata": { "name": name },
        "image": { "image": BUSYBOX },
        "command": ["sh", "-c", script],
        "log_path": format!("{name}.log"),
        "mounts": mounts,
        "linux": {}
    })
}

/// The machine's programs in the busybox image, and where: what Debian's
/// busybox-static lacks or does otherwise than registry.k8s.io's busybox,
/// where critest relies on it. `ipcs -m` (HostIpc is false) and `pgrep`
/// (execSync with timeout) are not among its applets; and its sh runs
/// applets in-process, so `sh -c ls` never execs a masked /bin/ls
/// (MaskedPaths): /bin/sh is Debian's dynamically linked busybox, which
/// searches PATH and execs (`tests/tools/fetch-busybox-shell`, `make deps`).
fn host_tools() -> Vec<(PathBuf, &'static str)> {
    vec![
        (
            prepared_path("fetch-busybox-shell", &["--path"], "no busybox for /bin/sh"),
            "/bin/sh",
        ),
        (PathBuf::from("/usr/bin/ipcs"), "/usr/bin/ipcs"),
        (PathBuf::from("/usr/bin/pgrep"), "/usr/bin/pgrep"),
    ]
}

/// Debian's docker-registry on 127.0.0.1, its storage in `dir`.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`
    pub address: String,
    log: PathBuf,
}

impl Registry {
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("registry directory");
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {address}\n",
                dir.join("storage").display()
            ),
        )
        .expect("registry config");
        let log = dir.join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("registry log"))
            .stderr(
                std::fs::File::options()
                    .append(true)
                    .open(&log)
                    .expect("registry log"),
            )
            .spawn()
            .expect("docker-registry (Debian package docker-registry; make deps installs it)");
        let registry = Registry {
            child,
            address,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !registry.answers() {
            assert!(
                Instant::now() < deadline,
                "the registry did not come up on {}:\n{}",
                registry.address,
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        registry
    }

    /// Whether `GET /v2/` answers 200.
    fn answers(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(&self.address) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.address);
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = [0u8; 12];
        stream.read_exact(&mut answer).is_ok() && answer.ends_with(b" 200")
    }

    /// Pushes the OCI archive `archive` as `name` (`registry/path:tag`; the
    /// registry part is dropped: every mirrored registry is this one).
    pub fn push(&self, archive: &Path, name: &str) {
        let path = name.split_once('/').map_or(name, |(_, path)| path);
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
            ])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{}/{path}", self.address))
            .stdin(Stdio::null())
            .output()
            .expect("skopeo (Debian package skopeo; make deps installs it)");
        assert!(
            out.status.success(),
            "skopeo copy {} to {path}: {}{}",
            archive.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    /// Makes image `from` (pushed before) also `name`, through the registry
    /// API: its blobs mounted into the new repository, its manifest put
    /// under the new tag. One skopeo run per name took seconds each under
    /// emulation; this is a few small requests.
    pub fn tag(&self, from: &str, name: &str) {
        let (from_repo, from_tag) = repo_and_tag(from);
        let (repo, tag) = repo_and_tag(name);
        let (status, manifest) = self.request(
            "GET",
            &format!("/v2/{from_repo}/manifests/{from_tag}"),
            &[("Accept", OCI_MANIFEST)],
            &[],
        );
        assert_eq!(status, 200, "GET manifest of {from}");
        let parsed: serde_json::Value =
            serde_json::from_slice(&manifest).expect("the registry's manifest is JSON");
        let config = std::iter::once(&parsed["config"]);
        let layers = parsed["layers"].as_array().into_iter().flatten();
        for blob in config.chain(layers) {
            let digest = blob["digest"].as_str().expect("a blob digest");
            let (status, _) = self.request(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from_repo}"),
                &[],
                &[],
            );
            assert_eq!(
                status, 201,
                "mounting {digest} from {from_repo} into {repo}"
            );
        }
        let (status, body) = self.request(
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Content-Type", OCI_MANIFEST)],
            &manifest,
        );
        assert_eq!(status, 201, "PUT manifest {name}: {}", text(&body));
    }

    /// The manifest the registry serves for `name` (`registry/path:tag`).
    pub fn manifest(&self, name: &str) -> Option<serde_json::Value> {
        let (repo, tag) = repo_and_tag(name);
        let (status, body) = self.request(
            "GET",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Accept", OCI_MANIFEST)],
            &[],
        );
        (status == 200)
            .then(|| serde_json::from_slice(&body).ok())
            .flatten()
    }

    /// One HTTP/1.0 request to the registry: (status, body).
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.address).expect("registry connection");
        let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
        let mut head = format!(
            "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.address,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("registry request");
        stream.write_all(body).expect("registry request body");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("registry answer");
        let split = answer
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(answer.len(), |at| at + 4);
        let status = text(&answer[..split])
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        (status, answer[split..].to_vec())
    }

    pub fn log(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 20)
    }
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `registry/path:tag` as (path, tag); the registry part is dropped (every
/// mirrored registry is the local one).
fn repo_and_tag(name: &str) -> (&str, &str) {
    let path = name.split_once('/').map_or(name, |(_, path)| path);
    path.rsplit_once(':').unwrap_or((path, "latest"))
}

impl Drop for Registry {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        if wait_or_kill(&mut self.child, Duration::from_secs(10)).is_err() {
            eprintln!("docker-registry did not stop on SIGTERM; killed");
        }
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on 127.0.0.1")
}

/// Where `make deps` put crictl and critest.
pub fn cri_tools_dir() -> PathBuf {
    prepared_path(
        "build-go-tools",
        &["--bin-dir", "cri-tools"],
        "crictl and critest are not built",
    )
}

/// The path `tests/tools/<script> ARGS` prints: where `make deps` put
/// something; `missing` (and the script's reason) when it is not there.
pub(crate) fn prepared_path(script: &str, args: &[&str], missing: &str) -> PathBuf {
    let out = Command::new(repo_root().join("tests/tools").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("tests/tools/{script} does not run: {e}"));
    assert!(out.status.success(), "{missing}: {}", text(&out.stderr));
    PathBuf::from(text(&out.stdout).trim())
}

/// The private CRI node. Fields drop in order: pods first (in `Drop`), then
/// containerd, then the registry.
pub struct Cri {
    pub containerd: Containerd,
    pub registry: Registry,
    /// The CNI bridge of this node.
    pub bridge: String,
    /// The pods' subnet.
    pub subnet: String,
    dir: tempfile::TempDir,
    tools: PathBuf,
    netns_before: BTreeSet<String>,
}

impl Cri {
    /// Registry with every image pushed, then Debian's containerd 1.6 with
    /// the CRI plugin.
    pub fn start() -> Self {
        Self::start_version(Version::V1_6)
    }

    /// [`Cri::start`] on containerd `version`.
    pub fn start_version(version: Version) -> Self {
        Self::start_from(
            version,
            &release_dir(),
            &build_output("vmlinux"),
            &build_output("initramfs.img"),
        )
    }

    /// [`Cri::start`] with the cocoon runtime's shim and cocoon-vmm from
    /// `bin`, booting `kernel` with `initramfs` (the bench copies them to
    /// local storage first).
    pub fn start_from(version: Version, bin: &Path, kernel: &Path, initramfs: &Path) -> Self {
        let tools = cri_tools_dir();
        let dir = tempfile::tempdir().expect("temporary directory");
        let started = Instant::now();
        let registry_dir = dir.path().join("registry");
        let cache = registry_cache();
        let cached = cache.is_dir();
        if cached {
            std::fs::create_dir_all(&registry_dir).expect("registry directory");
            copy_dir(&cache, &registry_dir.join("storage"));
        }
        let registry = Registry::start(&registry_dir);
        if !cached {
            push_images(&registry, dir.path());
            let partial = cache.with_extension(format!("partial-{}", std::process::id()));
            copy_dir(&registry_dir.join("storage"), &partial);
            // Whole or not at all: a later test copies only a finished one.
            if std::fs::rename(&partial, &cache).is_err() {
                let _ = std::fs::remove_dir_all(&partial);
            }
        }
        eprintln!(
            "cri: {} images in {} ({}) in {:.1?}",
            images()
                .iter()
                .map(|image| image.names.len())
                .sum::<usize>(),
            registry.address,
            if cached {
                "cached storage"
            } else {
                "built and pushed"
            },
            started.elapsed()
        );
        // Unique per process: a bridge name has at most 15 bytes.
        let unique = std::process::id() % 200 + 20;
        let bridge = format!("cocoon-cri{unique}");
        let subnet = format!("10.99.{unique}.0/24");
        let netns_before = netns_names();
        let containerd = Containerd::start_with(bin, kernel, initramfs, |containerd_dir| Extra {
            version,
            cri: Some(cri_config(
                version,
                containerd_dir,
                &registry.address,
                &bridge,
                &subnet,
            )),
            tmpfs: true,
            // Templates of this node's own, nothing shared with other runs.
            cocoon_config: format!("template_dir = {:?}\n", containerd_dir.join("templates")),
        });
        // Read by the handler's shims, not by containerd: written once the
        // node's own config is.
        containerd.write_cocoon_config(WITHOUT_SCRATCH_DISK_CONFIG, "scratch_disk_gib = 0\n");
        let cri = Cri {
            containerd,
            registry,
            bridge,
            subnet,
            dir,
            tools,
            netns_before,
        };
        // The CRI plugin starts after containerd's own API answers.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let info = cri.crictl(&["info"]);
            if info.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the CRI plugin did not come up: {}\n{}",
                text(&info.stderr),
                cri.containerd.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        cri
    }

    pub fn socket(&self) -> String {
        format!("unix://{}", self.containerd.socket.display())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn crictl_path(&self) -> PathBuf {
        self.tools.join("crictl")
    }

    pub fn critest_path(&self) -> PathBuf {
        self.tools.join("critest")
    }

    /// `crictl ARGS` against this containerd, killed after 5 minutes (each
    /// call also has crictl's own 2-minute RPC timeout).
    pub fn crictl(&self, args: &[&str]) -> Output {
        output_within(
            Command::new(self.crictl_path())
                .args(["--runtime-endpoint", &self.socket()])
                .args(["--image-endpoint", &self.socket()])
                .args(["--timeout", "120s"])
                // No /etc/crictl.yaml: this node only.
                .args(["--config", "/dev/null"])
                .args(args),
            self.dir(),
            "crictl",
            Duration::from_secs(300),
        )
    }

    /// [`Cri::crictl`], which must succeed; its stdout, trimmed.
    pub fn crictl_ok(&self, args: &[&str]) -> String {
        let out = self.crictl(args);
        assert!(
            out.status.success(),
            "crictl {}: {}{}\ncontainerd log:\n{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr),
            self.containerd.log()
        );
        text(&out.stdout).trim().to_string()
    }

    /// Writes `value` as `NAME.json` in the test's directory (for `crictl
    /// runp`/`create`), returning its path.
    pub fn write_json(&self, name: &str, value: &serde_json::Value) -> String {
        let path = self.dir().join(format!("{name}.json"));
        std::fs::write(&path, value.to_string()).expect("writing a CRI config");
        path.display().to_string()
    }

    /// A pod sandbox config named `name`, its logs in the test's directory.
    pub fn pod_config(&self, name: &str) -> serde_json::Value {
        let logs = self.dir().join("logs").join(name);
        std::fs::create_dir_all(&logs).expect("pod log directory");
        serde_json::json!({
            "metadata": { "name": name, "namespace": "cocoon-test", "uid": format!("uid-{name}"), "attempt": 0 },
            "hostname": name,
            "log_directory": logs,
            "linux": {}
        })
    }

    /// A pod with one container as a kubelet starts it: `crictl runp
    /// --runtime HANDLER`, `create`, `start` (the image must be pulled),
    /// each step timed.
    pub fn start_pod(
        &self,
        handler: &str,
        pod: &serde_json::Value,
        container: &serde_json::Value,
    ) -> StartedPod {
        let name = pod["metadata"]["name"].as_str().expect("a named pod");
        let pod_config = self.write_json(name, pod);
        let container_config = self.write_json(&format!("{name}-container"), container);
        let started = Instant::now();
        let pod = self.crictl_ok(&["runp", "--runtime", handler, &pod_config]);
        let runp = started.elapsed();
        let started = Instant::now();
        let container = self.crictl_ok(&["create", &pod, &container_config, &pod_config]);
        let create = started.elapsed();
        let started = Instant::now();
        self.crictl_ok(&["start", &container]);
        let start = started.elapsed();
        StartedPod {
            pod,
            container,
            runp,
            create,
            start,
        }
    }

    /// `crictl stopp` and `rmp`, which must succeed.
    pub fn remove_pod(&self, pod: &str) {
        self.crictl_ok(&["stopp", pod]);
        self.crictl_ok(&["rmp", pod]);
    }

    /// The IP address CNI gave pod `pod` (`crictl inspectp`).
    pub fn pod_ip(&self, pod: &str) -> String {
        let inspect: serde_json::Value =
            serde_json::from_str(&self.crictl_ok(&["inspectp", pod])).expect("inspectp JSON");
        inspect["status"]["network"]["ip"]
            .as_str()
            .unwrap_or_else(|| panic!("no IP for pod {pod}: {inspect}"))
            .to_owned()
    }

    /// The pid of Cocoon pod `pod`'s cocoon-vmm (CRI's containerd
    /// namespace is `k8s.io`; the pod's VM is its sandbox's).
    pub fn vmm_pid(&self, pod: &str) -> u32 {
        self.containerd.vmm_pid("k8s.io", pod)
    }

    /// What is left of this node's pods in the host: network namespaces
    /// that were not there before it started, and the bridge's addresses.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left: Vec<String> = netns_names()
            .difference(&self.netns_before)
            .map(|name| format!("netns {name}"))
            .collect();
        let pods = self.crictl(&["pods", "-q"]);
        if !text(&pods.stdout).trim().is_empty() {
            left.push(format!("pods {}", text(&pods.stdout).trim()));
        }
        left
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        // Pods first, while containerd runs: that removes their containers,
        // network namespaces, CNI attachments (veths, IPAM leases, port maps).
        let removed = self.crictl(&["rmp", "--all", "--force"]);
        if !removed.status.success() {
            eprintln!("cri: crictl rmp --all --force: {}", text(&removed.stderr));
        }
        // Then containerd (the field drops after this body) ... but what
        // only the pods' removal would have cleaned goes here, in any case:
        for name in netns_names().difference(&self.netns_before) {
            let path = Path::new(NETNS_DIR).join(name);
            let _ = Command::new("umount").arg("-l").arg(&path).status();
            let _ = std::fs::remove_file(&path);
        }
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .stderr(Stdio::null())
            .status();
    }
}

/// The network namespaces containerd's CRI names in /var/run/netns.
fn netns_names() -> BTreeSet<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Where the registry's storage with every image is kept for the next
/// test: in the temporary directory (in the KVM host VM, its tmpfs: shared by
/// the tests of one run), keyed by everything the images are made of.
/// Building and pushing them takes about two minutes under emulation.
fn registry_cache() -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for image in images() {
        image.names.hash(&mut hasher);
        image.options.hash(&mut hasher);
    }
    let bin = release_dir();
    for file in [
        repo_root().join("tests/images/oci-image.sh"),
        PathBuf::from("/bin/busybox"),
        bin.join("cocoon-pause"),
        bin.join("cocoon-nonewprivs"),
    ]
    .into_iter()
    .chain(host_tools().into_iter().map(|(tool, _)| tool))
    {
        std::fs::read(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (run `make` first)", file.display()))
            .hash(&mut hasher);
    }
    std::env::temp_dir().join(format!("cocoon-cri-registry-{:016x}", hasher.finish()))
}

/// `cp -a FROM TO` (TO must not exist).
fn copy_dir(from: &Path, to: &Path) {
    let copied = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(
        copied.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Builds every image of [`images`] and pushes it under all its names.
fn push_images(registry: &Registry, dir: &Path) {
    let script = repo_root().join("tests/images/oci-image.sh");
    let layers = dir.join("image-layers");
    for (index, image) in images().iter().enumerate() {
        let archive = dir.join(format!("image-{index}.tar"));
        let built = Command::new(&script)
            .arg("--layer-cache")
            .arg(&layers)
            .args(&image.options)
            .arg(&archive)
            .arg(image.names[0])
            .stdin(Stdio::null())
            .output()
            .expect("oci-image.sh runs");
        assert!(
            built.status.success(),
            "building {}: {}",
            image.names[0],
            text(&built.stderr)
        );
        let (first, others) = image.names.split_first().expect("an image has a name");
        registry.push(&archive, first);
        for name in others {
            registry.tag(first, name);
        }
        let _ = std::fs::remove_file(&archive);
    }
}

/// The CRI plugins' configuration for containerd `version`'s config format,
/// with its CNI and registry hosts files written under `dir`.
fn cri_config(version: Version, dir: &Path, registry: &str, bridge: &str, subnet: &str) -> String {
    // CNI: one conflist; containerd adds the loopback plugin itself
    // (go-cni's WithLoNetwork, from the same bin_dir).
    let cni = dir.join("cni");
    std::fs::create_dir_all(&cni).expect("CNI conf dir");
    let conflist = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": bridge,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                // Pods talk to each other and to this host only.
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": dir.join("cni-ipam"),
                }
            },
            { "type": "portmap", "capabilities": { "portMappings": true } }
        ]
    });
    std::fs::write(cni.join("10-cocoon-test.conflist"), conflist.to_string())
        .expect("CNI conflist");
    // Registry hosts: every mirrored name is this local registry, over
    // plain HTTP, and nothing else (`server` replaces the upstream, so a
    // missing image is a 404 here, never a request elsewhere).
    let hosts = dir.join("certs.d");
    for name in MIRRORED.iter().copied().chain([registry]) {
        let host_dir = hosts.join(name);
        std::fs::create_dir_all(&host_dir).expect("registry hosts dir");
        std::fs::write(
            host_dir.join("hosts.toml"),
            format!(
                "server = \"http://{registry}\"\n\
                 [host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .expect("hosts.toml");
    }
    let without_scratch_disk = dir.join(format!("{WITHOUT_SCRATCH_DISK_CONFIG}.toml"));
    // The same settings in both formats: the pause image, the overlayfs
    // snapshotter (a kubelet's default; containerd is on a tmpfs of its
    // own, where overlayfs works), runtimes `runc` (default), `cocoon` and
    // `cocoon` without a scratch disk, CNI, the registry hosts, a loopback
    // stream server, no SELinux or AppArmor.
    match version {
        // containerd 1.x, config version 2: one plugin, `io.containerd.grpc.v1.cri`.
        // 1.7 takes 1.6's settings as they are: its CRI pulls through the
        // client as 1.6's does (not the transfer service: no unpack_config),
        // and its sandbox API server stays off unless ENABLE_CRI_SANDBOXES
        // is set, so `podsandbox` (the pause container) is the pod.
        Version::V1_6 | Version::V1_7 => {
            let cri = r#"[plugins."io.containerd.grpc.v1.cri""#;
            format!(
                "{cri}]\n\
                 \x20 sandbox_image = \"{PAUSE}\"\n\
                 \x20 stream_server_address = \"127.0.0.1\"\n\
                 \x20 stream_server_port = \"0\"\n\
                 \x20 enable_selinux = false\n\
                 \x20 disable_apparmor = true\n\
                 {cri}.containerd]\n\
                 \x20 default_runtime_name = \"runc\"\n\
                 \x20 snapshotter = \"overlayfs\"\n\
                 {cri}.containerd.runtimes.runc]\n\
                 \x20 runtime_type = \"io.containerd.runc.v2\"\n\
                 {cri}.containerd.runtimes.cocoon]\n\
                 \x20 runtime_type = \"io.containerd.cocoon.v1\"\n\
                 {cri}.containerd.runtimes.{COCOON_WITHOUT_SCRATCH_DISK_HANDLER}]\n\
                 \x20 runtime_type = \"io.containerd.cocoon.v1\"\n\
                 {cri}.containerd.runtimes.{COCOON_WITHOUT_SCRATCH_DISK_HANDLER}.options]\n\
                 \x20 ConfigPath = {without_scratch_disk:?}\n\
                 {cri}.cni]\n\
                 \x20 bin_dir = \"/usr/lib/cni\"\n\
                 \x20 conf_dir = {cni:?}\n\
                 \x20 max_conf_num = 1\n\
                 {cri}.registry]\n\
                 \x20 config_path = {hosts:?}\n"
            )
        }
        // containerd 2.x, config version 3 (its docs/cri/config.md): images
        // (snapshotter, the pause image as the pinned sandbox image, the
        // registry) and runtime (runtimes, CNI) are plugins of their own; the
        // gRPC service keeps the stream server. 2.x's CRI pulls through the
        // transfer service, which unpacks only into the snapshotters of its
        // `unpack_config`.
        Version::V2 => {
            let images = r#"[plugins."io.containerd.cri.v1.images""#;
            let runtime = r#"[plugins."io.containerd.cri.v1.runtime""#;
            format!(
                "[[plugins.\"io.containerd.transfer.v1.local\".unpack_config]]\n\
                 \x20 platform = \"linux/amd64\"\n\
                 \x20 snapshotter = \"overlayfs\"\n\
                 {images}]\n\
                 \x20 snapshotter = \"overlayfs\"\n\
                 {images}.pinned_images]\n\
                 \x20 sandbox = \"{PAUSE}\"\n\
                 {images}.registry]\n\
                 \x20 config_path = {hosts:?}\n\
                 {runtime}]\n\
                 \x20 enable_selinux = false\n\
                 \x20 disable_apparmor = true\n\
                 {runtime}.containerd]\n\
                 \x20 default_runtime_name = \"runc\"\n\
                 {runtime}.containerd.runtimes.runc]\n\
                 \x20 runtime_type = \"io.containerd.runc.v2\"\n\
                 {runtime}.containerd.runtimes.cocoon]\n\
                 \x20 runtime_type = \"io.containerd.cocoon.v1\"\n\
                 {runtime}.containerd.runtimes.{COCOON_WITHOUT_SCRATCH_DISK_HANDLER}]\n\
                 \x20 runtime_type = \"io.containerd.cocoon.v1\"\n\
                 {runtime}.containerd.runtimes.{COCOON_WITHOUT_SCRATCH_DISK_HANDLER}.options]\n\
                 \x20 ConfigPath = {without_scratch_disk:?}\n\
                 {runtime}.cni]\n\
                 \x20 bin_dirs = [\"/usr/lib/cni\"]\n\
                 \x20 conf_dir = {cni:?}\n\
                 \x20 max_conf_num = 1\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n\
                 \x20 stream_server_address = \"127.0.0.1\"\n\
                 \x20 stream_server_port = \"0\"\n"
            )
        }
    }
}
