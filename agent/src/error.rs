//! Errors the agent returns over ttrpc: a status code for the shim to map to
//! containerd's error kinds, and a message for the user.

use ttrpc::Code;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    pub fn internal(context: &str, error: impl std::fmt::Display) -> Self {
        AgentError::Internal(format!("{context}: {error}"))
    }

    fn code(&self) -> Code {
        match self {
            AgentError::NotFound(_) => Code::NOT_FOUND,
            AgentError::AlreadyExists(_) => Code::ALREADY_EXISTS,
            AgentError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            AgentError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            AgentError::Internal(_) => Code::INTERNAL,
        }
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(error: AgentError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(error.code(), error.to_string()))
    }
}

impl From<crate::spec::SpecError> for AgentError {
    fn from(error: crate::spec::SpecError) -> Self {
        AgentError::InvalidArgument(error.to_string())
    }
}

impl From<crate::cgroup::CgroupError> for AgentError {
    fn from(error: crate::cgroup::CgroupError) -> Self {
        match error {
            crate::cgroup::CgroupError::InvalidResources(_) => {
                AgentError::InvalidArgument(error.to_string())
            }
            crate::cgroup::CgroupError::Manager { .. } => AgentError::Internal(error.to_string()),
        }
    }
}

pub type Result<T> = std::result::Result<T, AgentError>;
