//! A one-node Kubernetes cluster private to one test, run as a node runs it:
//! etcd, kube-apiserver and a kubelet (built by `make deps`,
//! `tests/tools/build-go-tools`) on a [`Cri`] node (containerd 2.x with the
//! `cocoon` handler, CNI and the local registry), every certificate made by
//! the test. No scheduler and no controller manager: pods name their node
//! (`spec.nodeName`), and the test makes the one object those would have
//! made for it (the `default` service account). Dropping a [`Cluster`] stops
//! the kubelet first (it would start the pods again), removes every pod, then
//! stops the API server and etcd, and undoes what the kubelet did to the
//! host: its root directory's bind mount, its cgroups, its kernel settings.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::containerd::{text, Version};
use crate::cri::{free_port, prepared_path, Cri};
use crate::{output_within, repo_root, tail, wait_or_kill};

/// The node's name; pods name it in `spec.nodeName`.
pub const NODE: &str = "cocoon-node";

/// What the kubelet sets on the host (container_manager_linux.go
/// `setupKernelTunables`), put back when the cluster goes: the host VM runs
/// other tests after this one.
const KUBELET_SYSCTLS: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Where the kubelet (cgroupfs driver, `cgroupsPerQOS`) puts pods.
const KUBEPODS_CGROUP: &str = "/sys/fs/cgroup/kubepods";

pub struct Cluster {
    kubelet: Daemon,
    pub cri: Cri,
    apiserver: Daemon,
    // How the API server is started, to start it again (`wait_for_api_server`).
    apiserver_command: Command,
    etcd: Daemon,
    bin: PathBuf,
    /// The node's address: on a dummy link of its own (the host VM has no
    /// network; the kubelet wants a non-loopback address, and the API server
    /// reaches the kubelet on it for logs and exec).
    pub node_ip: String,
    node_link: String,
    kubelet_root: PathBuf,
    sysctls: Vec<(PathBuf, String)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the node's containerd (2.x), etcd, the API server and the
    /// kubelet, and returns once the node is Ready and the `cocoon`
    /// RuntimeClass (deploy/kubernetes/runtimeclass.yaml) exists.
    pub fn start() -> Self {
        let bin = prepared_path(
            "build-go-tools",
            &["--bin-dir", "kubernetes"],
            "kube-apiserver, kubelet and kubectl are not built",
        );
        let etcd_bin = prepared_path(
            "build-go-tools",
            &["--bin-dir", "etcd"],
            "etcd is not built",
        );
        let started = Instant::now();
        let cri = Cri::start_version(Version::V2);
        let dir = tempfile::tempdir().expect("temporary directory");
        let unique = std::process::id() % 200 + 20;
        let node_ip = format!("10.98.{unique}.1");
        let node_link = format!("cocoon-node{unique}");
        run_ok("ip", &["link", "add", &node_link, "type", "dummy"]);
        run_ok(
            "ip",
            &[
                "address",
                "add",
                &format!("{node_ip}/32"),
                "dev",
                &node_link,
            ],
        );
        run_ok("ip", &["link", "set", &node_link, "up"]);
        let sysctls = KUBELET_SYSCTLS
            .iter()
            .filter_map(|name| {
                let path = Path::new("/proc/sys").join(name);
                let value = std::fs::read_to_string(&path).ok()?;
                Some((path, value))
            })
            .collect();
        let pki = dir.path().join("pki");
        make_certificates(&pki, &node_ip);

        let etcd_port = free_port();
        let clients = format!("http://127.0.0.1:{etcd_port}");
        // A cluster of one member, whose peer port only it uses.
        let peers = format!("http://127.0.0.1:{}", free_port());
        let etcd = Daemon::start(
            "etcd",
            Command::new(etcd_bin.join("etcd"))
                .arg("--data-dir")
                .arg(dir.path().join("etcd"))
                .args(["--name", "cocoon-test"])
                .args(["--listen-client-urls", &clients])
                .args(["--advertise-client-urls", &clients])
                .args(["--listen-peer-urls", &peers])
                .args(["--initial-advertise-peer-urls", &peers])
                .args(["--initial-cluster", &format!("cocoon-test={peers}")])
                .args(["--log-level", "warn"]),
            dir.path(),
        );
        let api_port = free_port();
        let file = |name: &str| pki.join(name).display().to_string();
        let mut apiserver_command = Command::new(bin.join("kube-apiserver"));
        apiserver_command
            .args(["--etcd-servers", &format!("http://127.0.0.1:{etcd_port}")])
            .args(["--bind-address", "127.0.0.1"])
            .args(["--secure-port", &api_port.to_string()])
            .args(["--advertise-address", &node_ip])
            .args(["--tls-cert-file", &file("apiserver.crt")])
            .args(["--tls-private-key-file", &file("apiserver.key")])
            .args(["--client-ca-file", &file("ca.crt")])
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .args(["--service-account-key-file", &file("service-account.key")])
            .args([
                "--service-account-signing-key-file",
                &file("service-account.key"),
            ])
            .args(["--service-cluster-ip-range", "10.96.0.0/24"])
            // As a kubeadm node: the kubelet may touch only its node and
            // its pods.
            .args(["--authorization-mode", "Node,RBAC"])
            .args(["--enable-admission-plugins", "NodeRestriction"])
            .args([
                "--kubelet-client-certificate",
                &file("apiserver-kubelet.crt"),
            ])
            .args(["--kubelet-client-key", &file("apiserver-kubelet.key")])
            .args(["--kubelet-certificate-authority", &file("ca.crt")])
            .args(["--kubelet-preferred-address-types", "InternalIP"])
            // No kube-proxy and no service network behind it: the
            // `kubernetes` service's endpoints are never used.
            .args(["--endpoint-reconciler-type", "none"]);
        let apiserver = Daemon::start("kube-apiserver", &mut apiserver_command, dir.path());
        let admin = dir.path().join("admin.kubeconfig");
        let server = format!("https://127.0.0.1:{api_port}");
        write_kubeconfig(&admin, &server, &pki, "admin");
        let mut cluster = Cluster {
            kubelet: Daemon::none("kubelet"),
            cri,
            apiserver,
            apiserver_command,
            etcd,
            bin,
            node_ip,
            node_link,
            kubelet_root: dir.path().join("kubelet"),
            sysctls,
            dir,
        };
        cluster.wait_for_api_server();
        eprintln!("kubernetes: API server ready in {:.1?}", started.elapsed());

        let kubeconfig = cluster.dir().join("kubelet.kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &pki, "kubelet");
        let config = cluster.dir().join("kubelet.json");
        std::fs::write(&config, cluster.kubelet_config(&pki).to_string()).expect("kubelet config");
        cluster.kubelet = Daemon::start(
            "kubelet",
            Command::new(cluster.bin.join("kubelet"))
                .arg("--config")
                .arg(&config)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .arg("--root-dir")
                .arg(&cluster.kubelet_root)
                .args(["--hostname-override", NODE])
                .args(["--node-ip", &cluster.node_ip]),
            cluster.dir.path(),
        );
        // What a controller manager would have made.
        cluster.kubectl_ok(&["create", "serviceaccount", "default"]);
        let runtime_class = repo_root().join("deploy/kubernetes/runtimeclass.yaml");
        cluster.kubectl_ok(&["apply", "-f", &runtime_class.display().to_string()]);
        cluster.wait_until(Duration::from_secs(300), "the node to register", |c| {
            c.kubectl(&["get", "node", NODE]).status.success()
        });
        cluster.kubectl_ok(&[
            "wait",
            "--for=condition=Ready",
            &format!("node/{NODE}"),
            "--timeout=300s",
        ]);
        eprintln!("kubernetes: node Ready in {:.1?}", started.elapsed());
        cluster
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kubectl ARGS` as the cluster's admin, killed after 5 minutes.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        output_within(
            Command::new(self.bin.join("kubectl"))
                .arg("--kubeconfig")
                .arg(self.dir().join("admin.kubeconfig"))
                .args(args),
            self.dir(),
            "kubectl",
            Duration::from_secs(300),
        )
    }

    /// [`Cluster::kubectl`], which must succeed; its stdout, trimmed. A
    /// failure shows the kubelet's log tail.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}{}\nkubelet log:\n{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr),
            tail(&self.kubelet.log(), 40)
        );
        text(&out.stdout).trim().to_string()
    }

    /// `kubectl apply` of `objects` (a JSON list or object), written to
    /// `NAME.json` in the test's directory.
    pub fn apply(&self, name: &str, objects: &serde_json::Value) {
        let path = self.dir().join(format!("{name}.json"));
        std::fs::write(&path, objects.to_string()).expect("writing a manifest");
        self.kubectl_ok(&["apply", "-f", &path.display().to_string()]);
    }

    /// Polls `done` every second until it holds; panics after `limit`,
    /// naming what was awaited, or as soon as a daemon of the cluster died.
    pub fn wait_until(&self, limit: Duration, what: &str, mut done: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !done(self) {
            for daemon in [&self.etcd, &self.apiserver, &self.kubelet] {
                daemon.assert_running();
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for {what}; kubelet log:\n{}",
                tail(&self.kubelet.log(), 40)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The kubelet's log, for failure messages.
    pub fn kubelet_log(&self) -> String {
        self.kubelet.log()
    }

    // Under emulation the API server takes minutes to start (it builds its
    // OpenAPI documents and bootstraps RBAC and priority levels). Some of its
    // post-start hooks give up after fixed deadlines (the service IP repair:
    // one minute) that a loaded, emulated machine can miss, and the API
    // server then exits; as a control plane's supervisor (systemd, or the
    // kubelet of a static pod) would, we start it again, at most twice: etcd
    // keeps what it bootstrapped.
    fn wait_for_api_server(&mut self) {
        let limit = Duration::from_secs(900);
        let deadline = Instant::now() + limit;
        let mut restarts = 0;
        while !self.kubectl(&["get", "--raw", "/readyz"]).status.success() {
            if self.apiserver.exited() && restarts < 2 {
                restarts += 1;
                eprintln!(
                    "kubernetes: kube-apiserver exited while starting, starting it again; its log:\n{}",
                    tail(&self.apiserver.log(), 5)
                );
                self.apiserver = Daemon::start(
                    "kube-apiserver",
                    &mut self.apiserver_command,
                    self.dir.path(),
                );
                continue;
            }
            self.etcd.assert_running();
            self.apiserver.assert_running();
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for the API server's /readyz; its log:\n{}",
                tail(&self.apiserver.log(), 40)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The kubelet as a kubeadm node has it, minus what the host VM lacks
    /// (systemd, swap accounting) and what would evict or garbage-collect
    /// behind the test's back on a small disk.
    fn kubelet_config(&self, pki: &Path) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.node_ip,
            "tlsCertFile": pki.join("kubelet.crt"),
            "tlsPrivateKeyFile": pki.join("kubelet.key"),
            // Only the API server (its kubelet client certificate) gets in,
            // authorized by the API server as any client.
            "authentication": {
                "anonymous": { "enabled": false },
                "webhook": { "enabled": true },
                "x509": { "clientCAFile": pki.join("ca.crt") }
            },
            "authorization": { "mode": "Webhook" },
            "containerRuntimeEndpoint": self.cri.socket(),
            // Under emulation a microVM pod's RunPodSandbox takes seconds,
            // not the 2 minutes of the default.
            "runtimeRequestTimeout": "10m",
            "cgroupDriver": "cgroupfs",
            "failSwapOn": false,
            "resolvConf": "",
            "podLogsDir": self.dir().join("pod-logs"),
            "healthzPort": 0,
            "readOnlyPort": 0,
            "evictionHard": {
                "memory.available": "1Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%"
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "localStorageCapacityIsolation": false,
            "serializeImagePulls": false,
            "maxPods": 10
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kubelet.stop();
        // While containerd runs (the Cri drops after this body).
        let removed = self.cri.crictl(&["rmp", "--all", "--force"]);
        if !removed.status.success() {
            eprintln!("kubernetes: crictl rmp --all: {}", text(&removed.stderr));
        }
        remove_cgroups(Path::new(KUBEPODS_CGROUP));
        // The kubelet bind-mounts its root directory onto itself (rshared)
        // and its pods' volumes below it.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(&self.kubelet_root)
            .stderr(Stdio::null())
            .status();
        for (path, value) in &self.sysctls {
            let _ = std::fs::write(path, value);
        }
        let _ = Command::new("ip")
            .args(["link", "delete", &self.node_link])
            .stderr(Stdio::null())
            .status();
    }
}

/// A server of the cluster: its output in `NAME.log`; stopped (SIGTERM,
/// then SIGKILL after 10 s) when dropped.
struct Daemon {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(name: &'static str, command: &mut Command, dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("daemon log");
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("daemon log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("{name} does not start: {e}"));
        Daemon {
            name,
            child: Some(child),
            log,
        }
    }

    /// A daemon not started yet.
    fn none(name: &'static str) -> Self {
        Daemon {
            name,
            child: None,
            log: PathBuf::new(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the daemon was started and has exited since.
    fn exited(&self) -> bool {
        let Some(child) = &self.child else {
            return false;
        };
        let running = Path::new("/proc").join(child.id().to_string()).join("stat");
        let state = std::fs::read_to_string(running).unwrap_or_default();
        // A zombie (state Z, after the command name's closing parenthesis)
        // has exited.
        state
            .rsplit_once(')')
            .is_none_or(|(_, rest)| rest.trim_start().starts_with('Z'))
    }

    fn assert_running(&self) {
        assert!(
            !self.exited(),
            "{} exited; its log:\n{}",
            self.name,
            tail(&self.log(), 40)
        );
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid, which we have not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        if wait_or_kill(&mut child, Duration::from_secs(10)).is_err() {
            eprintln!("kubernetes: {} did not stop on SIGTERM", self.name);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The cluster's certificates, in `pki`, all signed by one CA the test
/// makes (openssl, P-256 keys, valid for a day): the API server's serving
/// certificate, the admin's and the kubelet's client certificates (their
/// user and groups are the subject's CN and O), the API server's client
/// certificate towards the kubelet, the kubelet's serving certificate, and
/// the service account signing key.
fn make_certificates(pki: &Path, node_ip: &str) {
    std::fs::create_dir_all(pki).expect("pki directory");
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(pki)
            .stdin(Stdio::null())
            .output()
            .expect("openssl runs (make deps installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            text(&out.stderr)
        );
    };
    // SEC1 ("EC PRIVATE KEY"): the API server reads the service account
    // key in that form, not PKCS#8.
    let key = |name: &str| {
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            &format!("{name}.key"),
        ])
    };
    key("ca");
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=cocoon-test-ca",
        "-days",
        "1",
        "-out",
        "ca.crt",
    ]);
    let certificates = [
        (
            "apiserver",
            "/CN=kube-apiserver",
            "serverAuth",
            "IP:127.0.0.1,DNS:localhost".to_string(),
        ),
        (
            "admin",
            "/CN=cocoon-test-admin/O=system:masters",
            "clientAuth",
            String::new(),
        ),
        (
            "kubelet-client",
            &format!("/CN=system:node:{NODE}/O=system:nodes"),
            "clientAuth",
            String::new(),
        ),
        (
            "apiserver-kubelet",
            "/CN=kube-apiserver-kubelet-client/O=system:masters",
            "clientAuth",
            String::new(),
        ),
        (
            "kubelet",
            &format!("/CN={NODE}"),
            "serverAuth",
            format!("IP:{node_ip},DNS:{NODE}"),
        ),
    ];
    for (name, subject, usage, names) in certificates {
        key(name);
        openssl(&[
            "req",
            "-new",
            "-key",
            &format!("{name}.key"),
            "-subj",
            subject,
            "-out",
            &format!("{name}.csr"),
        ]);
        let mut extensions = format!(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
        );
        if !names.is_empty() {
            extensions.push_str(&format!("subjectAltName={names}\n"));
        }
        std::fs::write(pki.join(format!("{name}.ext")), extensions).expect("extensions file");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.crt"),
        ]);
    }
    key("service-account");
}

/// A kubeconfig for `user` (`admin` or `kubelet`: its certificate and key
/// in `pki`) of the API server at `server`.
fn write_kubeconfig(path: &Path, server: &str, pki: &Path, user: &str) {
    let cert = if user == "kubelet" {
        "kubelet-client"
    } else {
        user
    };
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "cocoon-test", "cluster": {
            "server": server,
            "certificate-authority": pki.join("ca.crt")
        }}],
        "users": [{ "name": user, "user": {
            "client-certificate": pki.join(format!("{cert}.crt")),
            "client-key": pki.join(format!("{cert}.key"))
        }}],
        "contexts": [{ "name": "cocoon-test", "context": { "cluster": "cocoon-test", "user": user }}],
        "current-context": "cocoon-test"
    });
    std::fs::write(path, config.to_string()).expect("kubeconfig");
}

/// Removes the cgroup tree at `dir`, deepest first (every process in it
/// must be gone).
fn remove_cgroups(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().is_dir() {
            remove_cgroups(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

fn run_ok(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} does not run: {e}"));
    assert!(
        out.status.success(),
        "{program} {}: {}",
        args.join(" "),
        text(&out.stderr)
    );
}
