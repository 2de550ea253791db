//! The Mount call: a file system (the sandbox's virtio-fs share, a block
//! device) mounted at a guest path.

use std::path::Path;

use cocoon_protocol::api::agent::MountRequest;
use nix::mount::{mount as mount_syscall, MsFlags};

use crate::error::{AgentError, Result};

pub fn mount(request: &MountRequest) -> Result<()> {
    let target = Path::new(&request.target);
    if !target.is_absolute()
        || target
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(AgentError::InvalidArgument(format!(
            "mount target {:?} must be an absolute path without ..",
            request.target
        )));
    }
    if request.fstype.is_empty() || request.source.is_empty() {
        return Err(AgentError::InvalidArgument(
            "mount needs a source and a file-system type".into(),
        ));
    }
    let (flags, data) = parse_options(&request.options);
    std::fs::create_dir_all(target)
        .map_err(|e| AgentError::internal(&format!("creating {}", target.display()), e))?;
    mount_syscall(
        Some(request.source.as_str()),
        target,
        Some(request.fstype.as_str()),
        flags,
        (!data.is_empty()).then_some(data.as_str()),
    )
    .map_err(|e| {
        AgentError::FailedPrecondition(format!(
            "mounting {} ({}) on {}: {e}",
            request.source,
            request.fstype,
            target.display()
        ))
    })
}

/// Splits mount(8)-style options into flags and the file system's own data.
fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        let flag = match option.as_str() {
            "ro" => MsFlags::MS_RDONLY,
            "rw" => MsFlags::empty(),
            "nosuid" => MsFlags::MS_NOSUID,
            "nodev" => MsFlags::MS_NODEV,
            "noexec" => MsFlags::MS_NOEXEC,
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "sync" => MsFlags::MS_SYNCHRONOUS,
            "dirsync" => MsFlags::MS_DIRSYNC,
            other => {
                data.push(other);
                continue;
            }
        };
        flags |= flag;
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_data_are_told_apart() {
        let options = ["ro", "nosuid", "dax=never", "rw", "mode=755"].map(String::from);
        let (flags, data) = parse_options(&options);
        assert_eq!(flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(data, "dax=never,mode=755");
    }

    #[test]
    fn relative_or_escaping_targets_are_refused() {
        for target in ["run/x", "/run/../etc", ""] {
            let mut request = MountRequest::new();
            request.source = "share".into();
            request.fstype = "virtiofs".into();
            request.target = target.into();
            assert!(
                matches!(mount(&request), Err(AgentError::InvalidArgument(_))),
                "{target}"
            );
        }
    }
}
