//! Errors of the task service, and the one place that decides which ttrpc
//! status code containerd gets for each.

use cocoon_protocol::client::CallError;
use ttrpc::Code;

use crate::config::ConfigError;
use crate::io::IoError;
use crate::network::NetworkError;
use crate::rootfs::RootfsError;
use crate::runtime_options::OptionsError;
use crate::sandbox::SandboxError;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("container {0} already exists")]
    ContainerExists(String),
    #[error("exec {0} already exists")]
    ExecExists(String),
    #[error("exec {0} already started")]
    ExecStarted(String),
    #[error("exec {0} is still running")]
    ExecRunning(String),
    #[error("process {0} has already exited")]
    AlreadyExited(String),
    #[error("the process was deleted while waiting")]
    DeletedWhileWaiting,
    #[error("the sandbox VM is not running")]
    NoSandbox,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unsupported(&'static str),
    #[error(transparent)]
    RuntimeOptions(#[from] OptionsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Shape(#[from] crate::vm_shape::ShapeError),
    #[error(transparent)]
    Volume(#[from] crate::volumes::VolumeError),
    #[error(transparent)]
    HostNamespace(#[from] crate::host_namespaces::HostNamespaceError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error(transparent)]
    Stdio(#[from] IoError),
    #[error("encoding metrics: {0}")]
    Metrics(#[from] protobuf::Error),
    /// The agent refused a call or did not answer.
    #[error(transparent)]
    Agent(#[from] CallError),
}

impl ShimError {
    fn code(&self) -> Code {
        match self {
            ShimError::NotFound(_) | ShimError::AlreadyExited(_) => Code::NOT_FOUND,
            ShimError::ContainerExists(_) | ShimError::ExecExists(_) => Code::ALREADY_EXISTS,
            ShimError::BadRequest(_)
            | ShimError::RuntimeOptions(_)
            | ShimError::Config(_)
            | ShimError::Shape(_)
            | ShimError::Volume(_)
            | ShimError::HostNamespace(_) => Code::INVALID_ARGUMENT,
            ShimError::ExecStarted(_)
            | ShimError::ExecRunning(_)
            | ShimError::NoSandbox
            | ShimError::Sandbox(_)
            | ShimError::Rootfs(_)
            | ShimError::Stdio(_) => Code::FAILED_PRECONDITION,
            ShimError::Network(error) if error.is_invalid_request() => Code::INVALID_ARGUMENT,
            ShimError::Hook(crate::hooks::HookError::Spec(_)) => Code::INVALID_ARGUMENT,
            ShimError::Hook(_) => Code::FAILED_PRECONDITION,
            ShimError::Network(_) => Code::FAILED_PRECONDITION,
            ShimError::Unsupported(_) => Code::UNIMPLEMENTED,
            ShimError::DeletedWhileWaiting | ShimError::Metrics(_) => Code::INTERNAL,
            ShimError::Agent(CallError::Refused { code, .. }) => agent_code(*code),
            // What ttrpc itself answers for an error without a status.
            ShimError::Agent(CallError::NoAnswer(_)) => Code::UNKNOWN,
        }
    }
}

/// The codes the agent documents pass through; anything else a guest
/// claims is an internal error.
fn agent_code(code: Code) -> Code {
    match code {
        Code::NOT_FOUND
        | Code::ALREADY_EXISTS
        | Code::INVALID_ARGUMENT
        | Code::FAILED_PRECONDITION
        | Code::UNIMPLEMENTED
        | Code::INTERNAL => code,
        _ => Code::INTERNAL,
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(error: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(error.code(), error.to_string()))
    }
}

pub type Result<T> = std::result::Result<T, ShimError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn status(error: ShimError) -> (Code, String) {
        match ttrpc::Error::from(error) {
            ttrpc::Error::RpcStatus(status) => (status.code(), status.message),
            other => panic!("not a status: {other}"),
        }
    }

    #[test]
    fn agent_refusals_keep_their_words_and_documented_codes_only() {
        let refused = |code| {
            ShimError::Agent(CallError::Refused {
                code,
                message: "executable file not found in $PATH: nope".into(),
            })
        };
        assert_eq!(
            status(refused(Code::NOT_FOUND)),
            (
                Code::NOT_FOUND,
                "executable file not found in $PATH: nope".into()
            )
        );
        assert_eq!(status(refused(Code::PERMISSION_DENIED)).0, Code::INTERNAL);
        assert_eq!(status(refused(Code::OK)).0, Code::INTERNAL);
    }

    #[test]
    fn shim_errors_say_what_containerd_matches() {
        assert_eq!(
            status(ShimError::NotFound("container web".into())),
            (Code::NOT_FOUND, "container web not found".into())
        );
        let host = status(ShimError::Network(NetworkError::HostNetwork));
        assert_eq!(host.0, Code::INVALID_ARGUMENT);
        assert!(
            host.1.contains("host networking is not supported") && host.1.contains("--net=host"),
            "{}",
            host.1
        );
        assert_eq!(
            status(ShimError::AlreadyExited("web".into())),
            (Code::NOT_FOUND, "process web has already exited".into())
        );
    }
}
