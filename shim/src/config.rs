//! `/etc/cocoon/config.toml`: where the guest kernel, initramfs and VMM are,
//! and what a sandbox gets by default. Every key is optional; a missing file
//! means all defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::runtime_options::ConfigSource;

/// The config file unless `COCOON_CONFIG` or containerd's runtime options
/// name another.
pub const DEFAULT_PATH: &str = "/etc/cocoon/config.toml";
pub const PATH_VARIABLE: &str = "COCOON_CONFIG";

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Guest kernel (vmlinux or bzImage).
    pub kernel: PathBuf,
    /// Guest initramfs holding cocoon-agent.
    pub initramfs: PathBuf,
    /// The cocoon-vmm binary.
    pub vmm: PathBuf,
    /// vCPUs of a sandbox without `io.cocoon.vcpus` or a CPU limit.
    pub vcpus: u32,
    /// Guest RAM (MiB) of a sandbox without `io.cocoon.memory-mib` or a
    /// memory limit.
    pub memory_mib: u32,
    /// Guest RAM (MiB) added to a pod's memory limit: room for the guest's
    /// kernel and agent beside the pod's containers, whose own page cache
    /// counts against their limits. The RuntimeClass's overhead covers it.
    pub pod_headroom_mib: u32,
    /// How long the guest may take to answer before Create fails (seconds).
    pub boot_timeout_seconds: u64,
    /// Where sandboxes keep their state (`<state_dir>/<namespace>/<id>`).
    pub state_dir: PathBuf,
    /// Shim log level: error, warn, info, debug, trace (`-debug` forces debug).
    pub log_level: String,
    /// Verbose agent logs on the guest console (`cocoon.debug`).
    pub guest_debug: bool,
    /// The most a sandbox's console.log holds (MiB); later output is dropped.
    pub console_limit_mib: u64,
    /// Size of a sandbox's host-only mount directory (a tmpfs, MiB): all the
    /// share can ever hold outside the container file systems mounted in it.
    pub share_size_mib: u64,
    /// The most guest RAM (MiB) a sandbox may ask for; 0 means the host's
    /// total memory.
    pub max_memory_mib: u64,
    /// Start sandboxes from VM templates (snapshots of a booted guest, made
    /// on first use), not by booting the kernel.
    pub templates: bool,
    /// Where the templates are kept (one directory per VM shape).
    pub template_dir: PathBuf,
    /// Size of a sandbox's scratch disk (GiB, a sparse file), which holds
    /// its containers' writable layers; 0: no disk, containers write in
    /// their root file systems through the share.
    pub scratch_disk_gib: u64,
    /// Where scratch disks are (a directory on a disk, not a tmpfs: the
    /// files are unlinked at once, and go with their VM).
    pub scratch_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kernel: "/usr/local/share/cocoon/vmlinux".into(),
            initramfs: "/usr/local/share/cocoon/initramfs.img".into(),
            vmm: "/usr/local/bin/cocoon-vmm".into(),
            vcpus: 1,
            // Large enough for the guest to cache a file of 256 MiB; RAM the
            // guest never touches costs the host nothing (docs/performance.md).
            memory_mib: 512,
            pod_headroom_mib: 128,
            boot_timeout_seconds: 10,
            state_dir: "/run/cocoon".into(),
            log_level: "info".into(),
            guest_debug: false,
            console_limit_mib: 1,
            share_size_mib: 16,
            max_memory_mib: 0,
            templates: true,
            template_dir: "/run/cocoon/templates".into(),
            scratch_disk_gib: 10,
            scratch_dir: "/var/lib/cocoon/scratch".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the cocoon config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the cocoon config {path} is invalid: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// The config for a sandbox: the one containerd's runtime options name
    /// (a path, or the text inline), else `COCOON_CONFIG`'s, else the
    /// default path's. A file named explicitly must exist; a missing default
    /// file means all defaults.
    pub fn resolve(source: Option<ConfigSource>) -> Result<Self, ConfigError> {
        match source {
            Some(ConfigSource::Inline(text)) => Self::parse(&text, "in the runtime options"),
            Some(ConfigSource::Path(path)) => Self::read(Path::new(&path), true),
            None => match std::env::var_os(PATH_VARIABLE) {
                Some(path) => Self::read(Path::new(&path), true),
                None => Self::read(Path::new(DEFAULT_PATH), false),
            },
        }
    }

    fn read(path: &Path, required: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, &path.display().to_string()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Config::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// `origin` says where the text came from, for errors.
    fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.into(),
            message,
        };
        let config: Config = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if config.vcpus == 0 || config.memory_mib < 64 || config.pod_headroom_mib < 64 {
            return Err(invalid(
                "vcpus must be at least 1, memory_mib and pod_headroom_mib at least 64".into(),
            ));
        }
        if config.log_level.parse::<log::LevelFilter>().is_err() {
            return Err(invalid(format!(
                "log_level {:?} is not one of off, error, warn, info, debug, trace",
                config.log_level
            )));
        }
        Ok(config)
    }

    /// The shim's log level: `log_level`, raised to debug by `-debug`.
    pub fn log_filter(&self, debug: bool) -> log::LevelFilter {
        let level = self.log_level.parse().unwrap_or(log::LevelFilter::Info);
        if debug {
            level.max(log::LevelFilter::Debug)
        } else {
            level
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        Config::resolve(Some(ConfigSource::Path(path.display().to_string())))
    }

    #[test]
    fn a_missing_default_file_means_defaults_a_missing_named_file_is_an_error() {
        let config = Config::read(Path::new("/no/such/config.toml"), false).unwrap();
        assert_eq!(config, Config::default());
        let error = Config::resolve(Some(ConfigSource::Path("/no/such/config.toml".into())))
            .unwrap_err()
            .to_string();
        assert!(error.contains("/no/such/config.toml"), "{error}");
    }

    #[test]
    fn an_inline_config_is_read() {
        let config = Config::resolve(Some(ConfigSource::Inline("vcpus = 2\n".into()))).unwrap();
        assert_eq!(config.vcpus, 2);
        let error = Config::resolve(Some(ConfigSource::Inline("vcpus = \"two\"\n".into())))
            .unwrap_err()
            .to_string();
        assert!(error.contains("in the runtime options"), "{error}");
    }

    #[test]
    fn keys_override_defaults() {
        let config = load("kernel = \"/k\"\nmemory_mib = 1024\nguest_debug = true\n").unwrap();
        assert_eq!(config.kernel, PathBuf::from("/k"));
        assert_eq!(config.memory_mib, 1024);
        assert_eq!(config.pod_headroom_mib, 128);
        assert!(config.guest_debug);
        assert_eq!(config.vcpus, 1);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file() {
        let error = load("kernal = \"/k\"\n").unwrap_err().to_string();
        assert!(
            error.contains("config.toml is invalid") && error.contains("kernal"),
            "{error}"
        );
        let error = load("vcpus = 0\n").unwrap_err().to_string();
        assert!(error.contains("vcpus must be at least 1"), "{error}");
        let error = load("pod_headroom_mib = 16\n").unwrap_err().to_string();
        assert!(error.contains("pod_headroom_mib at least 64"), "{error}");
        let error = load("log_level = \"loud\"\n").unwrap_err().to_string();
        assert!(error.contains("loud"), "{error}");
    }

    #[test]
    fn debug_raises_the_log_level_but_never_lowers_it() {
        let mut config = Config::default();
        assert_eq!(config.log_filter(false), log::LevelFilter::Info);
        assert_eq!(config.log_filter(true), log::LevelFilter::Debug);
        config.log_level = "trace".into();
        assert_eq!(config.log_filter(true), log::LevelFilter::Trace);
    }
}
