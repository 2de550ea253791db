//! VM templates: a sandbox starts from a snapshot of a VM whose agent is
//! ready, instead of booting a kernel, when a template of its shape exists.
//!
//! A template is made by a template boot (`cocoon-vmm --snapshot-to`) the
//! first time a shape is needed, and kept in
//! `<template_dir>/<key hash>/` (`memory`, `state.json`, `key`). The key
//! names everything the saved VM depends on: the shim's version, the
//! kernel, initramfs and VMM files (path, device, inode, size, mtime), the
//! vCPUs, the memory, the debug console and the device set. A template
//! whose key does not match is never used; making one removes the
//! templates other binaries made. A VM holds no secret of any workload at
//! the snapshot point: no share is mounted and no connection was ever open.

use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use std::os::fd::AsRawFd;

use cocoon_vmm_command::{NetDevice, SandboxVm, VmmCommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::network::tap;
use crate::sandbox::create_private_dir;
use crate::scratch_disk::{ScratchDisk, ScratchDiskError, VMM_DISK_FD};
use crate::vm_shape::VmShape;
use crate::vmm_process::{self, pass_fds, WatchedVmm, VMM_TAP_FD};

/// The file in a template naming its key.
const KEY_FILE: &str = "key";
/// Serialises the making of templates between shims.
const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a tap for the template boot: {0}")]
    Tap(#[from] crate::network::NetworkError),
    #[error("a disk for the template boot: {0}")]
    Disk(#[from] ScratchDiskError),
    #[error("the template boot failed: {reason}\n--- guest console (last lines) ---\n{console}")]
    Boot { reason: String, console: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError + '_ {
    move |source| TemplateError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What a sandbox needs of a VM, as far as a template is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateShape {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// A network device (a pod network).
    pub network: bool,
    /// A scratch disk of this many bytes.
    pub disk_bytes: Option<u64>,
}

impl TemplateShape {
    pub fn new(shape: &VmShape, network: bool, disk_bytes: Option<u64>) -> Self {
        Self {
            vcpus: shape.vcpus,
            memory_mib: shape.memory_mib.into(),
            network,
            disk_bytes,
        }
    }
}

/// A template to start a sandbox from.
#[derive(Debug, Clone)]
pub struct Template {
    pub dir: PathBuf,
}

impl Template {
    /// Removes a template that failed to start a VM, so the next sandbox
    /// makes a new one.
    pub fn discard(&self) {
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("removing the template {}: {error}", self.dir.display());
        }
    }
}

/// The template for a sandbox of `shape`, made now if there is none;
/// `None` (with a log line saying why) when the sandbox should boot.
pub async fn for_sandbox(config: &Config, shape: TemplateShape) -> Option<Template> {
    if !config.templates {
        return None;
    }
    let key = match key_text(config, shape) {
        Ok(key) => key,
        Err(error) => {
            tracing::warn!("no VM template: {error}; booting");
            return None;
        }
    };
    let dir = config.template_dir.join(hash(&key));
    if matches(&dir, &key) {
        return Some(Template { dir });
    }
    let started = std::time::Instant::now();
    match make(config, shape, &key, &dir).await {
        Ok(template) => {
            tracing::info!(
                "made the VM template {} in {:?}",
                template.dir.display(),
                started.elapsed()
            );
            Some(template)
        }
        Err(error) => {
            tracing::warn!("cannot make a VM template: {error}; booting");
            None
        }
    }
}

// One line per thing the saved VM depends on.
fn key_text(config: &Config, shape: TemplateShape) -> Result<String, TemplateError> {
    let mut key = format!("cocoon-shim {}\n", env!("CARGO_PKG_VERSION"));
    for (what, path) in [
        ("kernel", &config.kernel),
        ("initramfs", &config.initramfs),
        ("vmm", &config.vmm),
    ] {
        let meta = std::fs::metadata(path).map_err(io_error(path))?;
        let _ = writeln!(
            key,
            "{what} {} {}:{} {} {}.{}",
            path.display(),
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec()
        );
    }
    let _ = write!(
        key,
        "vcpus {}\nmemory_mib {}\nguest_debug {}\ndevices rng vsock fs{}{} balloon\n",
        shape.vcpus,
        shape.memory_mib,
        config.guest_debug,
        if shape.network { " net" } else { "" },
        match shape.disk_bytes {
            Some(bytes) => format!(" blk:{bytes}"),
            None => String::new(),
        }
    );
    Ok(key)
}

fn hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .take(12)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn matches(dir: &Path, key: &str) -> bool {
    std::fs::read_to_string(dir.join(KEY_FILE)).is_ok_and(|saved| saved == key)
}

// The key's lines about binaries: templates whose lines differ were made by
// other binaries and can never be used again.
fn binaries(key: &str) -> Vec<&str> {
    key.lines()
        .filter(|line| {
            ["cocoon-shim ", "kernel ", "initramfs ", "vmm "]
                .iter()
                .any(|p| line.starts_with(p))
        })
        .collect()
}

async fn make(
    config: &Config,
    shape: TemplateShape,
    key: &str,
    dir: &Path,
) -> Result<Template, TemplateError> {
    let root = &config.template_dir;
    create_private_dir(root).map_err(io_error(root))?;
    // One shim makes templates at a time; the others wait, then find it made.
    let lock_path = root.join(LOCK_FILE);
    let lock = std::fs::File::create(&lock_path).map_err(io_error(&lock_path))?;
    let lock = tokio::task::spawn_blocking(move || {
        nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e)
    })
    .await
    .map_err(|e| TemplateError::Io {
        path: lock_path.display().to_string(),
        source: std::io::Error::other(e),
    })?
    .map_err(|e| TemplateError::Io {
        path: lock_path.display().to_string(),
        source: e.into(),
    })?;
    if matches(dir, key) {
        return Ok(Template {
            dir: dir.to_path_buf(),
        });
    }
    let work = root.join(format!(".making-{}", std::process::id()));
    let made = boot_and_save(config, shape, &work).await;
    let result = made.and_then(|snapshot| {
        let key_path = snapshot.join(KEY_FILE);
        std::fs::write(&key_path, key).map_err(io_error(&key_path))?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&snapshot, dir).map_err(io_error(dir))
    });
    let _ = std::fs::remove_dir_all(&work);
    result?;
    remove_stale(root, key);
    drop(lock);
    Ok(Template {
        dir: dir.to_path_buf(),
    })
}

// Boots a template VM in `work` and waits until it saved itself; returns
// the snapshot directory.
async fn boot_and_save(
    config: &Config,
    shape: TemplateShape,
    work: &Path,
) -> Result<PathBuf, TemplateError> {
    let _ = std::fs::remove_dir_all(work);
    let [jail, share, images, snapshot] =
        ["jail", "share", "images", "snapshot"].map(|name| work.join(name));
    for dir in [&jail, &share, &images, &snapshot] {
        create_private_dir(dir).map_err(io_error(dir))?;
    }
    let console = work.join("console.log");
    let vmm_log_path = work.join("vmm.log");
    let vmm_log = std::fs::File::create(&vmm_log_path).map_err(io_error(&vmm_log_path))?;
    // A sandbox's MAC is set by its agent when its network is set up.
    let tap = if shape.network {
        Some(tap::open_unconnected("cocoon-template")?)
    } else {
        None
    };
    // The guest only reads the disk's size before the snapshot point; each
    // sandbox brings its own formatted disk of that size.
    let disk = match shape.disk_bytes {
        Some(bytes) => Some(ScratchDisk::zeroed(&config.scratch_dir, bytes)?),
        None => None,
    };
    let mut command = VmmCommand::sandbox(&SandboxVm {
        kernel: &config.kernel,
        initramfs: &config.initramfs,
        vcpus: shape.vcpus,
        memory_mib: shape.memory_mib,
        share: &share,
        images: &images,
        vsock_uds: &work.join("vsock.sock"),
        console: &console,
        guest_debug: config.guest_debug,
        console_limit_bytes: config.console_limit_mib << 20,
        jail: &jail,
        cgroup: None,
        net: tap.as_ref().map(|_| NetDevice {
            tap_fd: VMM_TAP_FD,
            mac: cocoon_protocol::TEMPLATE_MAC,
        }),
        disk_fd: disk.as_ref().map(|_| VMM_DISK_FD),
    })
    .snapshot_to(&snapshot)
    .command(&config.vmm);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(vmm_log);
    let fds: Vec<_> = tap
        .as_ref()
        .map(|tap| (tap.as_raw_fd(), VMM_TAP_FD))
        .into_iter()
        .chain(
            disk.as_ref()
                .map(|disk| (disk.file.as_raw_fd(), VMM_DISK_FD)),
        )
        .collect();
    if !fds.is_empty() {
        pass_fds(&mut command, fds);
    }
    let WatchedVmm { pid, mut exit } = vmm_process::spawn(&mut command)
        .await
        .map_err(io_error(&config.vmm))?;
    // The VMM has the tap and the disk now.
    drop(tap);
    drop(disk);
    // The boot, and the save (the touched guest memory written out).
    let limit = Duration::from_secs(config.boot_timeout_seconds * 3);
    let waited = tokio::time::timeout(limit, exit.wait_for(Option::is_some))
        .await
        .map(|code| code.map(|code| *code));
    let code = match waited {
        Ok(Ok(code)) => code,
        _ => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ =
                tokio::time::timeout(Duration::from_secs(2), exit.wait_for(Option::is_some)).await;
            return Err(failed(
                &format!("not saved within {limit:?}"),
                &vmm_log_path,
                &console,
            ));
        }
    };
    if code != Some(0) {
        let reason = format!("cocoon-vmm exited with {code:?}");
        return Err(failed(&reason, &vmm_log_path, &console));
    }
    Ok(snapshot)
}

fn failed(reason: &str, vmm_log: &Path, console: &Path) -> TemplateError {
    let vmm = std::fs::read_to_string(vmm_log).unwrap_or_default();
    TemplateError::Boot {
        reason: format!("{reason}: {}", last_lines(&vmm, 3)),
        console: last_lines(&std::fs::read_to_string(console).unwrap_or_default(), 20),
    }
}

fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// Removes the templates of other binaries (a kernel or VMM since replaced).
fn remove_stale(root: &Path, key: &str) {
    let ours = binaries(key);
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let stale = std::fs::read_to_string(path.join(KEY_FILE))
            .map(|other| binaries(&other) != ours)
            .unwrap_or(true);
        if stale {
            tracing::info!("removing the stale VM template {}", path.display());
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> Config {
        for name in ["vmlinux", "initramfs.img", "cocoon-vmm"] {
            std::fs::write(dir.join(name), name).unwrap();
        }
        Config {
            kernel: dir.join("vmlinux"),
            initramfs: dir.join("initramfs.img"),
            vmm: dir.join("cocoon-vmm"),
            template_dir: dir.join("templates"),
            ..Config::default()
        }
    }

    const SHAPE: TemplateShape = TemplateShape {
        vcpus: 1,
        memory_mib: 256,
        network: false,
        disk_bytes: Some(10 << 30),
    };

    #[test]
    fn the_key_changes_with_the_binaries_and_the_shape() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let key = key_text(&config, SHAPE).unwrap();
        assert_eq!(key, key_text(&config, SHAPE).unwrap());
        let bigger = TemplateShape {
            memory_mib: 512,
            ..SHAPE
        };
        assert_ne!(hash(&key), hash(&key_text(&config, bigger).unwrap()));
        assert_eq!(
            binaries(&key),
            binaries(&key_text(&config, bigger).unwrap())
        );
        // A replaced VMM (a new inode) makes another key, and its binaries differ.
        std::fs::remove_file(&config.vmm).unwrap();
        std::fs::write(&config.vmm, "a newer cocoon-vmm").unwrap();
        let newer = key_text(&config, SHAPE).unwrap();
        assert_ne!(hash(&key), hash(&newer));
        assert_ne!(binaries(&key), binaries(&newer));
    }

    #[test]
    fn only_a_template_with_the_same_key_matches_and_stale_ones_go() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let key = key_text(&config, SHAPE).unwrap();
        let ours = config.template_dir.join(hash(&key));
        std::fs::create_dir_all(&ours).unwrap();
        assert!(
            !matches(&ours, &key),
            "a template without a key is not used"
        );
        std::fs::write(ours.join(KEY_FILE), &key).unwrap();
        assert!(matches(&ours, &key));
        let stale = config.template_dir.join("0123456789ab");
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join(KEY_FILE), key.replace("vmm ", "vmm /old")).unwrap();
        remove_stale(&config.template_dir, &key);
        assert!(ours.is_dir());
        assert!(!stale.exists());
    }

    #[tokio::test]
    async fn templates_off_means_booting() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config(dir.path());
        config.templates = false;
        assert!(for_sandbox(&config, SHAPE).await.is_none());
        assert!(!config.template_dir.exists());
    }
}
