//! How big a sandbox's VM is: Cocoon's annotations first, then the pod's
//! limits (the annotations containerd's CRI puts on a pod's sandbox: the
//! config's headroom plus the pod's), then the first container's CPU and memory
//! limits, then the config's defaults.

use crate::config::Config;

/// Annotations that size the VM.
const VCPUS_ANNOTATION: &str = "io.cocoon.vcpus";
const MEMORY_ANNOTATION: &str = "io.cocoon.memory-mib";
/// The pod's limits (the sum of its containers'; kubelet leaves the
/// RuntimeClass's overhead out), as containerd's CRI annotates the sandbox
/// container: CFS quota and period, memory in bytes. 0 or less means
/// unlimited.
const POD_CPU_QUOTA_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-quota";
const POD_CPU_PERIOD_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-period";
const POD_MEMORY_ANNOTATION: &str = "io.kubernetes.cri.sandbox-memory";
/// Guest kernel and agent need room beside the container.
const GUEST_OVERHEAD_MIB: u32 = 64;

/// Size of a sandbox's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmShape {
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// The most a VM may have on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    pub cpus: u32,
    pub memory_mib: u64,
}

impl HostLimits {
    /// The host's online CPUs, and the config's `max_memory_mib` or else
    /// the host's total memory.
    pub fn of_host(config: &Config) -> Self {
        let cpus = nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
            .ok()
            .flatten()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(1);
        let total_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| mem_total_kib(&text))
            .map_or(u64::MAX, |kib| kib >> 10);
        let memory_mib = match config.max_memory_mib {
            0 => total_mib,
            max => max,
        };
        HostLimits { cpus, memory_mib }
    }
}

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// A size the host cannot give; the message names where it came from.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error(
        "{source_name} asks for {asked} vCPUs; this host has {max} (the most a sandbox may have)"
    )]
    TooManyVcpus {
        source_name: &'static str,
        asked: u64,
        max: u32,
    },
    #[error(
        "{source_name} asks for {asked} MiB of guest memory; at most {max} MiB are allowed \
         (`max_memory_mib` in the cocoon config, else the host's memory)"
    )]
    TooMuchMemory {
        source_name: &'static str,
        asked: u64,
        max: u64,
    },
    #[error("annotation {key}={value:?} is not a positive whole number")]
    BadAnnotation { key: &'static str, value: String },
}

impl VmShape {
    /// The shape for the OCI `spec` of the sandbox's first container, within
    /// what `host` allows.
    pub fn for_spec(
        config: &Config,
        spec: &serde_json::Value,
        host: &HostLimits,
    ) -> Result<Self, ShapeError> {
        let annotation = |key: &'static str| -> Result<Option<u64>, ShapeError> {
            let Some(value) = spec
                .get("annotations")
                .and_then(|a| a.get(key))
                .and_then(|v| v.as_str())
            else {
                return Ok(None);
            };
            match value.trim().parse::<u64>() {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(ShapeError::BadAnnotation {
                    key,
                    value: value.into(),
                }),
            }
        };
        let number = |key: &'static str| -> Result<Option<i64>, ShapeError> {
            let Some(value) = spec["annotations"][key].as_str() else {
                return Ok(None);
            };
            match value.trim().parse::<i64>() {
                Ok(n) => Ok((n > 0).then_some(n)),
                Err(_) => Err(ShapeError::BadAnnotation {
                    key,
                    value: value.into(),
                }),
            }
        };
        let pod_cpus = match (
            number(POD_CPU_QUOTA_ANNOTATION)?,
            number(POD_CPU_PERIOD_ANNOTATION)?,
        ) {
            (Some(quota), Some(period)) => {
                Some(u64::from(config.vcpus) + (quota as u64).div_ceil(period as u64))
            }
            _ => None,
        };
        let pod_memory = number(POD_MEMORY_ANNOTATION)?
            .map(|bytes| u64::from(config.pod_headroom_mib) + ((bytes as u64) >> 20));
        let resources = spec.get("linux").and_then(|l| l.get("resources"));
        let cpu_limit = resources.and_then(|r| r.get("cpu")).and_then(|cpu| {
            let quota = cpu.get("quota")?.as_i64()?;
            let period = cpu.get("period")?.as_u64()?;
            (quota > 0 && period > 0).then(|| (quota as u64).div_ceil(period))
        });
        let memory_limit = resources
            .and_then(|r| r.get("memory"))
            .and_then(|m| m.get("limit"))
            .and_then(|l| l.as_i64())
            .filter(|l| *l > 0)
            .map(|l| ((l as u64) >> 20) + u64::from(GUEST_OVERHEAD_MIB));

        // (source, vCPUs, whether it is a limit)
        let (vcpus_from, vcpus, is_limit) =
            match (annotation(VCPUS_ANNOTATION)?, pod_cpus, cpu_limit) {
                (Some(n), _, _) => (VCPUS_ANNOTATION, n, false),
                (None, Some(n), _) => (
                    "the pod's CPU limit (io.kubernetes.cri.sandbox-cpu-quota / -period, \
                     plus `vcpus` in the cocoon config)",
                    n,
                    true,
                ),
                (None, None, Some(n)) => {
                    ("the container's CPU limit (linux.resources.cpu)", n, true)
                }
                (None, None, None) => (
                    "`vcpus` in the cocoon config",
                    u64::from(config.vcpus),
                    false,
                ),
            };
        // A CPU limit is a cap, not a request: a VM with every online CPU
        // is all the host can give (as runc lets a limit exceed the host).
        let vcpus = if is_limit {
            vcpus.min(u64::from(host.cpus))
        } else {
            vcpus
        };
        if vcpus > u64::from(host.cpus) {
            return Err(ShapeError::TooManyVcpus {
                source_name: vcpus_from,
                asked: vcpus,
                max: host.cpus,
            });
        }
        let (memory_from, memory_mib) = match (
            annotation(MEMORY_ANNOTATION)?,
            pod_memory.or(memory_limit),
        ) {
            (Some(n), _) => (MEMORY_ANNOTATION, n),
            (None, Some(n)) if pod_memory.is_some() => (
                "the pod's memory limit (io.kubernetes.cri.sandbox-memory, plus \
                 `pod_headroom_mib` in the cocoon config)",
                n,
            ),
            (None, Some(n)) => (
                "the container's memory limit (linux.resources.memory.limit, plus 64 MiB for the guest)",
                n,
            ),
            (None, None) => ("`memory_mib` in the cocoon config", u64::from(config.memory_mib)),
        };
        if memory_mib > host.memory_mib {
            return Err(ShapeError::TooMuchMemory {
                source_name: memory_from,
                asked: memory_mib,
                max: host.memory_mib,
            });
        }
        Ok(VmShape {
            // Both fit in u32: they are at most the host's.
            vcpus: (vcpus as u32).max(1),
            memory_mib: (memory_mib as u32).max(config.memory_mib.min(128)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOST: HostLimits = HostLimits {
        cpus: 8,
        memory_mib: 16384,
    };

    fn shape(config: &Config, spec: &serde_json::Value) -> (u32, u32) {
        let shape = VmShape::for_spec(config, spec, &HOST).unwrap();
        (shape.vcpus, shape.memory_mib)
    }

    fn refusal(spec: &serde_json::Value) -> String {
        VmShape::for_spec(&Config::default(), spec, &HOST)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn vm_size_comes_from_annotations_then_limits_then_config() {
        let config = Config::default();
        assert_eq!(
            shape(&config, &json!({})),
            (config.vcpus, config.memory_mib)
        );

        let limited = json!({ "linux": { "resources": {
            "cpu": { "quota": 150000, "period": 100000 },
            "memory": { "limit": 512i64 << 20 }
        } } });
        assert_eq!(shape(&config, &limited), (2, 576));

        let mut annotated = limited.clone();
        annotated["annotations"] =
            json!({ "io.cocoon.vcpus": "4", "io.cocoon.memory-mib": "1024" });
        assert_eq!(shape(&config, &annotated), (4, 1024));
    }

    #[test]
    fn a_pods_limits_are_added_to_the_configured_base() {
        let config = Config::default();
        let pod = json!({ "annotations": {
            "io.kubernetes.cri.sandbox-cpu-quota": "250000",
            "io.kubernetes.cri.sandbox-cpu-period": "100000",
            "io.kubernetes.cri.sandbox-memory": (512u64 << 20).to_string(),
        } });
        assert_eq!(
            shape(&config, &pod),
            (config.vcpus + 3, config.pod_headroom_mib + 512)
        );
        // A CPU limit above the host's CPUs gets them all.
        let big = json!({ "annotations": {
            "io.kubernetes.cri.sandbox-cpu-quota": "6400000",
            "io.kubernetes.cri.sandbox-cpu-period": "100000",
        } });
        assert_eq!(shape(&config, &big).0, HOST.cpus);
        // Unlimited pods (0, -1) get the configured size.
        let unlimited = json!({ "annotations": {
            "io.kubernetes.cri.sandbox-cpu-quota": "-1",
            "io.kubernetes.cri.sandbox-cpu-period": "100000",
            "io.kubernetes.cri.sandbox-memory": "0",
        } });
        assert_eq!(
            shape(&config, &unlimited),
            (config.vcpus, config.memory_mib)
        );
        let said = refusal(&json!({ "annotations": {
            "io.kubernetes.cri.sandbox-memory": (64u64 << 30).to_string(),
        } }));
        assert!(said.contains("sandbox-memory"), "{said}");
        let said = refusal(&json!({ "annotations": {
            "io.kubernetes.cri.sandbox-memory": "lots",
        } }));
        assert!(said.contains("lots"), "{said}");
    }

    #[test]
    fn sizes_beyond_the_host_are_refused_naming_their_source() {
        let said = refusal(&json!({ "annotations": { "io.cocoon.memory-mib": "999999999" } }));
        assert!(
            said.contains("io.cocoon.memory-mib") && said.contains("16384"),
            "{said}"
        );
        let said = refusal(&json!({ "annotations": { "io.cocoon.vcpus": "9" } }));
        assert!(
            said.contains("io.cocoon.vcpus") && said.contains('8'),
            "{said}"
        );
        let said =
            refusal(&json!({ "linux": { "resources": { "memory": { "limit": 64i64 << 30 } } } }));
        assert!(said.contains("memory limit"), "{said}");
        let said = refusal(&json!({ "annotations": { "io.cocoon.vcpus": "zero" } }));
        assert!(
            said.contains("io.cocoon.vcpus") && said.contains("zero"),
            "{said}"
        );
        let config = Config {
            memory_mib: 20000,
            ..Config::default()
        };
        let said = VmShape::for_spec(&config, &json!({}), &HOST)
            .unwrap_err()
            .to_string();
        assert!(said.contains("`memory_mib`"), "{said}");
    }

    #[test]
    fn the_host_limits_read_meminfo() {
        assert_eq!(
            mem_total_kib("MemTotal:       8048576 kB\nMemFree: 1 kB\n"),
            Some(8048576)
        );
        assert_eq!(mem_total_kib("nothing"), None);
        let config = Config {
            max_memory_mib: 1024,
            ..Config::default()
        };
        assert_eq!(HostLimits::of_host(&config).memory_mib, 1024);
        assert!(HostLimits::of_host(&Config::default()).cpus >= 1);
    }
}
