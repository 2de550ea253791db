//! How big a sandbox's VM is: annotations first, then the first
//! container's CPU and memory limits, then the config's defaults.

use crate::config::Config;

/// Annotations that size the VM.
const VCPUS_ANNOTATION: &str = "io.cocoon.vcpus";
const MEMORY_ANNOTATION: &str = "io.cocoon.memory-mib";
/// Guest kernel and agent need room beside the container.
const GUEST_OVERHEAD_MIB: u32 = 64;

/// Size of a sandbox's VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmShape {
    pub vcpus: u32,
    pub memory_mib: u32,
}

impl VmShape {
    /// The shape for the OCI `spec` of the sandbox's first container.
    pub fn for_spec(config: &Config, spec: &serde_json::Value) -> Self {
        let annotation = |key: &str| {
            spec.get("annotations")
                .and_then(|a| a.get(key))
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|v| *v > 0)
        };
        let resources = spec.get("linux").and_then(|l| l.get("resources"));
        let cpu_limit = resources.and_then(|r| r.get("cpu")).and_then(|cpu| {
            let quota = cpu.get("quota")?.as_i64()?;
            let period = cpu.get("period")?.as_u64()?;
            (quota > 0 && period > 0).then(|| (quota as u64).div_ceil(period) as u32)
        });
        let memory_limit = resources
            .and_then(|r| r.get("memory"))
            .and_then(|m| m.get("limit"))
            .and_then(|l| l.as_i64())
            .filter(|l| *l > 0)
            .map(|l| ((l as u64) >> 20) as u32 + GUEST_OVERHEAD_MIB);
        VmShape {
            vcpus: annotation(VCPUS_ANNOTATION)
                .or(cpu_limit)
                .unwrap_or(config.vcpus)
                .max(1),
            memory_mib: annotation(MEMORY_ANNOTATION)
                .or(memory_limit)
                .unwrap_or(config.memory_mib)
                .max(config.memory_mib.min(128)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape(config: &Config, spec: &serde_json::Value) -> (u32, u32) {
        let shape = VmShape::for_spec(config, spec);
        (shape.vcpus, shape.memory_mib)
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

        annotated["annotations"] =
            json!({ "io.cocoon.vcpus": "zero", "io.cocoon.memory-mib": "0" });
        assert_eq!(shape(&config, &annotated), (2, 576));
    }
}
