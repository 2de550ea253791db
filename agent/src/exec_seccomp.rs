//! The container's seccomp filter for its exec'd processes.
//!
//! libcontainer 0.7 builds an exec's (a "tenant's") spec from the
//! container's namespaces and cgroup only: its processes ran without the
//! container's seccomp filter, where runc applies it to every exec (critest's
//! seccomp specs check it through ExecSync). Installing a filter needs
//! CAP_SYS_ADMIN or no_new_privs, and libcontainer drops the process's
//! capabilities before the workload runs. So the exec's process keeps
//! CAP_SYS_ADMIN and CAP_SETPCAP through libcontainer's set-up, and the
//! executor here installs the filter, then drops to the process's own
//! capabilities and execs: the order runc uses when no_new_privileges is
//! off (filter first, capabilities after).

use std::path::Path;

use libcontainer::oci_spec::runtime::{Capability, LinuxCapabilities, LinuxSeccomp, Process, Spec};
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};

/// Capabilities the exec keeps until the filter is in: installing it
/// (without no_new_privs), and dropping the bounding set afterwards.
const KEPT_FOR_SET_UP: [Capability; 2] = [Capability::SysAdmin, Capability::Setpcap];

/// Installs `seccomp`, drops to `capabilities`, then runs the process as
/// libcontainer's default executor does.
#[derive(Clone)]
pub struct SeccompExecutor {
    seccomp: LinuxSeccomp,
    /// The process's own capabilities; None: it keeps all it has.
    capabilities: Option<LinuxCapabilities>,
}

/// When the container (`config_json`) has a seccomp filter: the executor
/// for an exec of it, with the exec's `process_json` rewritten to keep
/// [`KEPT_FOR_SET_UP`] until the executor runs. None without a filter.
pub fn prepare(config_json: &Path, process_json: &Path) -> Result<Option<SeccompExecutor>, String> {
    let spec = Spec::load(config_json).map_err(|e| {
        format!(
            "reading the container's spec {}: {e}",
            config_json.display()
        )
    })?;
    let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().clone()) else {
        return Ok(None);
    };
    let text = std::fs::read(process_json)
        .map_err(|e| format!("reading {}: {e}", process_json.display()))?;
    let mut process: Process = serde_json::from_slice(&text)
        .map_err(|e| format!("parsing {}: {e}", process_json.display()))?;
    let capabilities = process.capabilities().clone();
    if let Some(own) = &capabilities {
        process.set_capabilities(Some(widened(own)));
        let text =
            serde_json::to_vec(&process).map_err(|e| format!("encoding the process: {e}"))?;
        std::fs::write(process_json, text)
            .map_err(|e| format!("writing {}: {e}", process_json.display()))?;
    }
    Ok(Some(SeccompExecutor {
        seccomp,
        capabilities,
    }))
}

/// `own` plus [`KEPT_FOR_SET_UP`] in the bounding, effective and permitted
/// sets (never inheritable nor ambient: nothing past execve gets them).
fn widened(own: &LinuxCapabilities) -> LinuxCapabilities {
    let add = |set: &Option<std::collections::HashSet<Capability>>| {
        let mut set = set.clone().unwrap_or_default();
        set.extend(KEPT_FOR_SET_UP);
        Some(set)
    };
    let mut wide = own.clone();
    wide.set_bounding(add(own.bounding()))
        .set_effective(add(own.effective()))
        .set_permitted(add(own.permitted()));
    wide
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        match libcontainer::seccomp::initialize_seccomp(&self.seccomp) {
            Ok(None) => {}
            Ok(Some(_)) => {
                return Err(ExecutorError::Other(
                    "a seccomp notify listener is not supported for exec".into(),
                ))
            }
            Err(error) => {
                return Err(ExecutorError::Other(format!(
                    "installing the container's seccomp filter: {error}"
                )))
            }
        }
        if let Some(own) = &self.capabilities {
            let syscall = libcontainer::syscall::syscall::create_syscall();
            libcontainer::capabilities::drop_privileges(own, syscall.as_ref()).map_err(
                |error| {
                    ExecutorError::Other(format!("dropping to the exec's capabilities: {error}"))
                },
            )?;
        }
        libcontainer::workload::default::get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        libcontainer::workload::default::get_executor().validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libcontainer::oci_spec::runtime::LinuxCapabilitiesBuilder;

    #[test]
    fn the_exec_keeps_only_what_installing_the_filter_needs() {
        let own = LinuxCapabilitiesBuilder::default()
            .bounding(
                [Capability::Chown]
                    .into_iter()
                    .collect::<std::collections::HashSet<_>>(),
            )
            .effective(
                [Capability::Chown]
                    .into_iter()
                    .collect::<std::collections::HashSet<_>>(),
            )
            .inheritable(std::collections::HashSet::new())
            .build()
            .unwrap();
        let wide = widened(&own);
        for set in [wide.bounding(), wide.effective(), wide.permitted()] {
            let set = set.as_ref().unwrap();
            assert!(set.contains(&Capability::SysAdmin) && set.contains(&Capability::Setpcap));
        }
        assert!(wide
            .bounding()
            .as_ref()
            .unwrap()
            .contains(&Capability::Chown));
        assert!(wide.inheritable().as_ref().unwrap().is_empty());
    }

    #[test]
    fn a_container_without_a_filter_needs_no_executor() {
        let dir = std::env::temp_dir().join(format!("cocoon-exec-seccomp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.json");
        let process = dir.join("exec.json");
        let spec = Spec::default();
        assert!(spec.linux().as_ref().unwrap().seccomp().is_none());
        spec.save(&config).unwrap();
        std::fs::write(&process, b"{}").unwrap();
        assert!(prepare(&config, &process).unwrap().is_none());
        assert_eq!(std::fs::read(&process).unwrap(), b"{}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
