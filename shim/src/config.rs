//! `/etc/cocoon/config.toml`: where the guest kernel, initramfs and VMM are,
//! and what a sandbox gets by default. Every key is optional; a missing file
//! means all defaults.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The config file unless `COCOON_CONFIG` names another.
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
    /// How long the guest may take to answer before Create fails (seconds).
    pub boot_timeout_seconds: u64,
    /// Where sandboxes keep their state (`<state_dir>/<namespace>/<id>`).
    pub state_dir: PathBuf,
    /// Shim log level: error, warn, info, debug, trace (`-debug` forces debug).
    pub log_level: String,
    /// Verbose agent logs on the guest console (`cocoon.debug`).
    pub guest_debug: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kernel: "/usr/local/share/cocoon/vmlinux".into(),
            initramfs: "/usr/local/share/cocoon/initramfs.img".into(),
            vmm: "/usr/local/bin/cocoon-vmm".into(),
            vcpus: 1,
            memory_mib: 256,
            boot_timeout_seconds: 10,
            state_dir: "/run/cocoon".into(),
            log_level: "info".into(),
            guest_debug: false,
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
    /// Loads the config from `COCOON_CONFIG` or the default path.
    pub fn load() -> Result<Self, ConfigError> {
        let path = std::env::var_os(PATH_VARIABLE)
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_PATH.into());
        Self::load_from(&path)
    }

    pub fn load_from(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        let config: Config = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        if config.vcpus == 0 || config.memory_mib < 64 {
            return Err(ConfigError::Invalid {
                path: path.display().to_string(),
                message: "vcpus must be at least 1 and memory_mib at least 64".into(),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        Config::load_from(&path)
    }

    #[test]
    fn a_missing_file_means_defaults() {
        let config = Config::load_from(Path::new("/no/such/config.toml")).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn keys_override_defaults() {
        let config = load("kernel = \"/k\"\nmemory_mib = 512\nguest_debug = true\n").unwrap();
        assert_eq!(config.kernel, PathBuf::from("/k"));
        assert_eq!(config.memory_mib, 512);
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
    }
}
