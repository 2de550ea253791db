//! The libcontainer helper: a short-lived copy of the agent that creates a
//! container or starts an exec, then exits.
//!
//! libcontainer forks with raw clone(2), which is only safe in a process with
//! one thread, and clones siblings with CLONE_PARENT, which PID 1 may not do.
//! The agent is both multi-threaded and PID 1, so it runs this helper as a
//! fresh process instead (`/proc/self/exe __libcontainer JOB OUTCOME`). The
//! helper's stdin, stdout and stderr are handed to the container process;
//! the new process ends up a child of the agent, which reaps it.

use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

/// The argument that selects helper mode.
pub const HELPER_ARG: &str = "__libcontainer";

/// Where libcontainer keeps container state in the guest.
pub const STATE_ROOT: &str = "/run/cocoon/state";

#[derive(Debug, Serialize, Deserialize)]
pub enum Job {
    /// Create the container from `bundle/config.json`; its init waits for
    /// start.
    Create {
        container_id: String,
        bundle: PathBuf,
        console_socket: Option<PathBuf>,
    },
    /// Run the process in `process_json` in the running container.
    Exec {
        container_id: String,
        process_json: PathBuf,
        console_socket: Option<PathBuf>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Outcome {
    Started { pid: i32 },
    Failed { message: String },
}

/// Helper mode's main: runs the job in `args[0]` and writes the outcome to
/// the file `args[1]`. Returns the process exit status.
pub fn main(args: &[String]) -> i32 {
    let [job, outcome_path] = args else {
        eprintln!("usage: cocoon-agent {HELPER_ARG} JOB_JSON OUTCOME_FILE");
        return 2;
    };
    log_to_console_when_debugging();
    let outcome = match serde_json::from_str::<Job>(job) {
        Ok(job) => run(job),
        Err(error) => Outcome::Failed {
            message: format!("bad helper job: {error}"),
        },
    };
    let failed = matches!(outcome, Outcome::Failed { .. });
    let written = serde_json::to_vec(&outcome)
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(outcome_path, bytes));
    if let Err(error) = written {
        eprintln!("cocoon-agent helper: writing {outcome_path}: {error}");
        return 1;
    }
    i32::from(failed)
}

/// The helper's stdio belongs to the container; with `cocoon.debug` its
/// logs (and libcontainer's) go to the guest console instead.
fn log_to_console_when_debugging() {
    if !crate::init::debug_requested() {
        return;
    }
    if let Ok(console) = std::fs::OpenOptions::new().write(true).open("/dev/console") {
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(std::sync::Mutex::new(console))
            .with_target(false)
            .without_time()
            .init();
    }
}

fn run(job: Job) -> Outcome {
    let result = match job {
        Job::Create {
            container_id,
            bundle,
            console_socket,
        } => create(container_id, &bundle, console_socket),
        Job::Exec {
            container_id,
            process_json,
            console_socket,
        } => exec(container_id, process_json, console_socket),
    };
    match result {
        Ok(pid) => Outcome::Started { pid },
        Err(message) => Outcome::Failed { message },
    }
}

fn create(id: String, bundle: &Path, console_socket: Option<PathBuf>) -> Result<i32, String> {
    let container = ContainerBuilder::new(id, SyscallType::Linux)
        .with_root_path(STATE_ROOT)
        .map_err(describe)?
        .with_console_socket(console_socket)
        .validate_id()
        .map_err(describe)?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(describe)?;
    container
        .pid()
        .map(|pid| pid.as_raw())
        .ok_or_else(|| "libcontainer created the container but reported no pid".into())
}

/// `process_json` lies in the container's bundle, beside its config.json
/// (`containers.rs`), whose seccomp filter the exec gets too.
fn exec(id: String, process_json: PathBuf, console_socket: Option<PathBuf>) -> Result<i32, String> {
    let config_json = process_json.with_file_name("config.json");
    let seccomp = crate::exec_seccomp::prepare(&config_json, &process_json)?;
    let mut builder = ContainerBuilder::new(id, SyscallType::Linux)
        .with_root_path(STATE_ROOT)
        .map_err(describe)?
        .with_console_socket(console_socket);
    if let Some(executor) = seccomp {
        builder = builder.with_executor(executor);
    }
    builder
        .as_tenant()
        .with_process(Some(process_json))
        .with_detach(true)
        .build()
        .map(|pid| pid.as_raw())
        .map_err(describe)
}

/// libcontainer's errors, with their causes: the cause is usually the part a
/// user can act on ("executable file not found").
fn describe(error: libcontainer::error::LibcontainerError) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
