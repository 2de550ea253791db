//! The containers of this guest and their processes: what the API's calls do.
//!
//! Creating a container or an exec runs the libcontainer helper (see
//! `helper.rs`); everything else (start, pause, resume, delete) calls
//! libcontainer in-process, on a blocking thread, since none of it forks.
//! Exits come from the reaper; each process has a task that waits for its
//! exit, notes whether the OOM killer struck, and publishes the event.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cocoon_protocol::api::agent::{event, Event, ProcessExit, Stdio};
use cocoon_protocol::stream::is_valid_id;
use libcontainer::container::Container as LibContainer;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::{watch, Notify};

use crate::cgroup::ContainerCgroup;
use crate::error::{AgentError, Result};
use crate::events::Events;
use crate::helper::{self, Job, Outcome, STATE_ROOT};
use crate::pty::ConsoleSocket;
use crate::reaper::Reaper;
use crate::spec::{self, Placement};
use crate::stdio::{ProcessStdio, StreamBroker};

/// Per-container files the agent writes (translated spec, exec processes,
/// console sockets).
const BUNDLES: &str = "/run/cocoon/bundles";
/// How long a container's init may take to hand over its terminal.
const TTY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long removal waits for killed processes to be gone.
const KILL_GRACE: Duration = Duration::from_secs(5);

struct Process {
    pid: i32,
    exit: watch::Receiver<Option<ProcessExit>>,
    /// A duplicate of the terminal master, for resizing.
    tty: Option<OwnedFd>,
    stdin_closer: Option<Arc<Notify>>,
}

struct Container {
    bundle: PathBuf,
    rootfs: PathBuf,
    /// Keyed by exec id; "" is the init process.
    processes: HashMap<String, Process>,
}

#[derive(Clone)]
pub struct Containers {
    table: Arc<Mutex<HashMap<String, Container>>>,
    reaper: Reaper,
    broker: StreamBroker,
    events: Events,
}

impl Containers {
    pub fn new(reaper: Reaper, broker: StreamBroker, events: Events) -> Self {
        Containers {
            table: Arc::default(),
            reaper,
            broker,
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn create(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &str,
        writable_layer_on_scratch_disk: bool,
        stdio: &Stdio,
    ) -> Result<u32> {
        check_id("container id", id)?;
        let rootfs = PathBuf::from(rootfs);
        if !rootfs.is_absolute() {
            return Err(AgentError::InvalidArgument(format!(
                "rootfs {rootfs:?} must be an absolute guest path"
            )));
        }
        if !rootfs.is_dir() {
            return Err(AgentError::NotFound(format!(
                "rootfs {} does not exist in the guest (is the share mounted?)",
                rootfs.display()
            )));
        }
        let bundle = Path::new(BUNDLES).join(id);
        {
            let table = self.lock();
            if table.contains_key(id) || bundle.exists() {
                return Err(AgentError::AlreadyExists(format!(
                    "container {id} already exists"
                )));
            }
        }
        let rootfs = if writable_layer_on_scratch_disk {
            crate::writable_layer::stack(id, &rootfs)?
        } else {
            rootfs
        };
        let result = self.create_on(id, spec_json, rootfs, &bundle, stdio).await;
        if result.is_err() {
            crate::writable_layer::remove(id);
        }
        result
    }

    async fn create_on(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: PathBuf,
        bundle: &Path,
        stdio: &Stdio,
    ) -> Result<u32> {
        let pod_sandbox_pid =
            spec::pod_sandbox_id(spec_json, id).and_then(|sandbox| self.pid(&sandbox, "").ok());
        let placement = Placement {
            container_id: id,
            rootfs: &rootfs,
            terminal: stdio.terminal,
            pod_sandbox_pid,
        };
        let spec = spec::translate_spec(spec_json, &placement)?;
        crate::pod_tmpfs::prepare(spec_json)?;
        crate::sysctl::set_network(&spec.pod_network_sysctls)?;
        std::fs::create_dir_all(bundle)
            .map_err(|e| AgentError::internal("creating the bundle", e))?;
        let result = async {
            std::fs::write(bundle.join("config.json"), spec.json)
                .map_err(|e| AgentError::internal("writing config.json", e))?;
            let job = |console_socket| Job::Create {
                container_id: id.into(),
                bundle: bundle.to_path_buf(),
                console_socket,
            };
            self.spawn_process(id, "", bundle, stdio, job).await
        }
        .await;
        match result {
            Ok((pid, process)) => {
                self.lock().insert(
                    id.into(),
                    Container {
                        bundle: bundle.to_path_buf(),
                        rootfs,
                        processes: HashMap::from([(String::new(), process)]),
                    },
                );
                Ok(pid as u32)
            }
            Err(error) => {
                self.clean_up(id, bundle).await;
                Err(error)
            }
        }
    }

    pub async fn start(&self, id: &str) -> Result<u32> {
        let pid = self.pid(id, "")?;
        let id = id.to_owned();
        blocking(move || {
            let mut container = load(&id)?;
            container
                .start()
                .map_err(|e| AgentError::FailedPrecondition(format!("starting {id}: {e}")))
        })
        .await?;
        Ok(pid as u32)
    }

    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        stdio: &Stdio,
    ) -> Result<u32> {
        check_id("exec id", exec_id)?;
        let (bundle, rootfs) = {
            let table = self.lock();
            let container = table
                .get(id)
                .ok_or_else(|| AgentError::NotFound(format!("container {id} not found")))?;
            if container.processes.contains_key(exec_id) {
                return Err(AgentError::AlreadyExists(format!(
                    "exec {exec_id} already exists in {id}"
                )));
            }
            (container.bundle.clone(), container.rootfs.clone())
        };
        let placement = Placement {
            container_id: id,
            rootfs: &rootfs,
            terminal: stdio.terminal,
            pod_sandbox_pid: None,
        };
        let process = spec::translate_process(process_json, &placement)?;
        let process_path = bundle.join(format!("exec-{exec_id}.json"));
        std::fs::write(&process_path, process)
            .map_err(|e| AgentError::internal("writing the exec process", e))?;
        let job = |console_socket| Job::Exec {
            container_id: id.into(),
            process_json: process_path.clone(),
            console_socket,
        };
        let result = self.spawn_process(id, exec_id, &bundle, stdio, job).await;
        let _ = std::fs::remove_file(&process_path);
        let (pid, process) = result?;
        match self.lock().get_mut(id) {
            Some(container) => {
                container.processes.insert(exec_id.into(), process);
            }
            None => {
                // Removed while the exec started: the process is gone with it.
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                return Err(AgentError::NotFound(format!("container {id} was removed")));
            }
        }
        Ok(pid as u32)
    }

    /// Runs the helper for `job`, wires the process's stdio and starts
    /// watching for its exit.
    async fn spawn_process(
        &self,
        id: &str,
        exec_id: &str,
        bundle: &Path,
        wanted: &Stdio,
        job: impl FnOnce(Option<PathBuf>) -> Job,
    ) -> Result<(i32, Process)> {
        let mut stdio = ProcessStdio::new(wanted)
            .map_err(|e| AgentError::internal("creating stdio pipes", e))?;
        let name = if exec_id.is_empty() { "init" } else { exec_id };
        let console = if wanted.terminal {
            Some(
                ConsoleSocket::bind()
                    .map_err(|e| AgentError::internal("binding the console socket", e))?,
            )
        } else {
            None
        };
        let outcome_path = bundle.join(format!("{name}.outcome"));
        let job = job(console.as_ref().map(|console| console.path.clone()));
        let oom_kills_before = ContainerCgroup::of(id)
            .map(|cgroup| cgroup.oom_kills())
            .unwrap_or(0);

        let started = Instant::now();
        let outcome = self.run_helper(&job, &outcome_path, &mut stdio).await;
        let _ = std::fs::remove_file(&outcome_path);
        let pid = match outcome? {
            Outcome::Started { pid } => pid,
            Outcome::Failed { message } => {
                return Err(AgentError::FailedPrecondition(message));
            }
        };

        let mut tty = None;
        if let Some(console) = console {
            let received = tokio::task::spawn_blocking(move || {
                crate::pty::receive_master(&console.listener, TTY_TIMEOUT)
            })
            .await
            .map_err(|e| AgentError::internal("receiving the terminal", e))?;
            let master = received.map_err(|e| AgentError::internal("receiving the terminal", e))?;
            tty = Some(
                master
                    .try_clone()
                    .map_err(|e| AgentError::internal("duplicating the terminal", e))?,
            );
            stdio.attach_tty(master);
        }
        let stdin_closer = stdio.stdin_closer();
        self.broker.register(id, exec_id, &mut stdio);

        let (exit_sender, exit) = watch::channel(None);
        let claim = self.reaper.claim(pid, started);
        let events = self.events.clone();
        let (container_id, exec_id) = (id.to_owned(), exec_id.to_owned());
        tokio::spawn(async move {
            let Ok(code) = claim.await else { return };
            let oom_kills = ContainerCgroup::of(&container_id)
                .map(|c| c.oom_kills())
                .unwrap_or(0);
            let mut exit = ProcessExit::new();
            exit.pid = pid as u32;
            exit.exit_status = code.0;
            exit.exited_at_unix_nanos = unix_nanos();
            exit.oom_killed = oom_kills > oom_kills_before;
            if exit.oom_killed {
                events.publish(event_for(
                    event::Kind::OOM_KILLED,
                    &container_id,
                    &exec_id,
                    None,
                ));
            }
            events.publish(event_for(
                event::Kind::PROCESS_EXITED,
                &container_id,
                &exec_id,
                Some(exit.clone()),
            ));
            let _ = exit_sender.send(Some(exit));
        });
        Ok((
            pid,
            Process {
                pid,
                exit,
                tty,
                stdin_closer,
            },
        ))
    }

    /// Runs the libcontainer helper and reads what it reports.
    async fn run_helper(
        &self,
        job: &Job,
        outcome_path: &Path,
        stdio: &mut ProcessStdio,
    ) -> Result<Outcome> {
        let job_json =
            serde_json::to_string(job).map_err(|e| AgentError::internal("encoding the job", e))?;
        let started = Instant::now();
        let child = Command::new("/proc/self/exe")
            .arg(helper::HELPER_ARG)
            .arg(job_json)
            .arg(outcome_path)
            .env_clear()
            .env("HOME", "/")
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(std::mem::replace(
                &mut stdio.stdin,
                std::process::Stdio::null(),
            ))
            .stdout(std::mem::replace(
                &mut stdio.stdout,
                std::process::Stdio::null(),
            ))
            .stderr(std::mem::replace(
                &mut stdio.stderr,
                std::process::Stdio::null(),
            ))
            .spawn()
            .map_err(|e| AgentError::internal("starting the libcontainer helper", e))?;
        // The reaper collects the helper; std's Child never waits for it.
        let code = self
            .reaper
            .claim(child.id() as i32, started)
            .await
            .map_err(|_| AgentError::Internal("the reaper stopped".into()))?;
        match std::fs::read(outcome_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| AgentError::internal("reading the helper's outcome", e)),
            Err(_) => Err(AgentError::Internal(format!(
                "the libcontainer helper ended with status {} and no outcome",
                code.0
            ))),
        }
    }

    fn process<T>(&self, id: &str, exec_id: &str, f: impl FnOnce(&Process) -> T) -> Result<T> {
        let table = self.lock();
        let container = table
            .get(id)
            .ok_or_else(|| AgentError::NotFound(format!("container {id} not found")))?;
        let process = container.processes.get(exec_id).ok_or_else(|| {
            AgentError::NotFound(format!("process {exec_id:?} not found in container {id}"))
        })?;
        Ok(f(process))
    }

    fn pid(&self, id: &str, exec_id: &str) -> Result<i32> {
        self.process(id, exec_id, |process| process.pid)
    }

    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let signal = i32::try_from(signal)
            .ok()
            .and_then(|n| Signal::try_from(n).ok())
            .ok_or_else(|| AgentError::InvalidArgument(format!("invalid signal {signal}")))?;
        let (pid, exited) = self.process(id, exec_id, |p| (p.pid, p.exit.borrow().is_some()))?;
        if all {
            let cgroup = ContainerCgroup::of(id)?;
            if signal == Signal::SIGKILL {
                return cgroup.kill_all().map_err(AgentError::from);
            }
            for pid in cgroup.pids()? {
                let _ = kill(Pid::from_raw(pid), signal);
            }
            return Ok(());
        }
        if exited {
            return Err(AgentError::NotFound(format!(
                "process {pid} has already exited"
            )));
        }
        kill(Pid::from_raw(pid), signal)
            .map_err(|e| AgentError::internal(&format!("signalling {pid}"), e))
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ProcessExit> {
        let mut exit = self.process(id, exec_id, |p| p.exit.clone())?;
        let exit = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| AgentError::Internal("the exit watcher stopped".into()))?;
        exit.clone()
            .ok_or_else(|| AgentError::Internal("no exit".into()))
    }

    pub fn resize(&self, id: &str, exec_id: &str, rows: u32, columns: u32) -> Result<()> {
        let tty = self.process(id, exec_id, |p| p.tty.as_ref().map(OwnedFd::try_clone))?;
        let tty = tty
            .ok_or_else(|| {
                AgentError::FailedPrecondition(format!(
                    "process {exec_id:?} of {id} has no terminal"
                ))
            })?
            .map_err(|e| AgentError::internal("duplicating the terminal", e))?;
        let clamp = |n: u32| u16::try_from(n).unwrap_or(u16::MAX);
        crate::pty::resize(&tty, clamp(rows), clamp(columns))
            .map_err(|e| AgentError::internal("resizing the terminal", e))
    }

    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let closer = self.process(id, exec_id, |p| p.stdin_closer.clone())?;
        self.broker.close_unattached_stdin(id, exec_id);
        if let Some(closer) = closer {
            closer.notify_one();
        }
        Ok(())
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        self.pid(id, "")?;
        let id = id.to_owned();
        blocking(move || {
            load(&id)?
                .pause()
                .map_err(|e| AgentError::FailedPrecondition(format!("pausing {id}: {e}")))
        })
        .await
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        self.pid(id, "")?;
        let id = id.to_owned();
        blocking(move || {
            load(&id)?
                .resume()
                .map_err(|e| AgentError::FailedPrecondition(format!("resuming {id}: {e}")))
        })
        .await
    }

    pub fn cgroup(&self, id: &str) -> Result<ContainerCgroup> {
        self.pid(id, "")?;
        Ok(ContainerCgroup::of(id)?)
    }

    /// (pid, exec id) of every process in the container's cgroup.
    pub fn processes(&self, id: &str) -> Result<Vec<(i32, String)>> {
        let pids = self.cgroup(id)?.pids()?;
        let table = self.lock();
        let started: HashMap<i32, &str> = table
            .get(id)
            .map(|c| {
                c.processes
                    .iter()
                    .map(|(exec, p)| (p.pid, exec.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        Ok(pids
            .into_iter()
            .map(|pid| (pid, started.get(&pid).copied().unwrap_or("").to_owned()))
            .collect())
    }

    pub async fn remove(&self, id: &str, force: bool) -> Result<()> {
        let (init_exit, bundle) = {
            let table = self.lock();
            let container = table
                .get(id)
                .ok_or_else(|| AgentError::NotFound(format!("container {id} not found")))?;
            let init = container.processes.get("").map(|p| p.exit.clone());
            (init, container.bundle.clone())
        };
        let running = init_exit
            .as_ref()
            .is_some_and(|exit| exit.borrow().is_none());
        if running && !force {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id} is still running: kill it first, or remove it with force"
            )));
        }
        if running {
            if let Ok(cgroup) = ContainerCgroup::of(id) {
                let _ = cgroup.kill_all();
            }
            // A frozen cgroup would keep the killed processes from dying.
            let thaw_id = id.to_owned();
            let _ = blocking(move || {
                load(&thaw_id)?
                    .resume()
                    .map_err(|e| AgentError::internal("thawing", e))
            })
            .await;
            if let Some(mut exit) = init_exit {
                let _ = tokio::time::timeout(KILL_GRACE, exit.wait_for(Option::is_some)).await;
            }
        }
        self.lock().remove(id);
        self.clean_up(id, &bundle).await;
        Ok(())
    }

    /// Removes what a container leaves: libcontainer state and cgroup,
    /// the bundle, unattached streams. Never fails: it is what runs on error
    /// paths.
    async fn clean_up(&self, id: &str, bundle: &Path) {
        self.broker.forget_container(id);
        let state_id = id.to_owned();
        let deleted = blocking(move || {
            if Path::new(STATE_ROOT).join(&state_id).exists() {
                load(&state_id)?
                    .delete(true)
                    .map_err(|e| AgentError::internal(&format!("deleting {state_id}"), e))?;
            }
            Ok(())
        })
        .await;
        if let Err(error) = deleted {
            tracing::warn!("{error}");
        }
        let _ = std::fs::remove_dir_all(bundle);
        crate::writable_layer::remove(id);
    }

    /// Every container id, for shutdown.
    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }
}

fn check_id(what: &str, id: &str) -> Result<()> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(AgentError::InvalidArgument(format!(
            "invalid {what} {id:?}: use 1-76 of A-Z a-z 0-9 . _ -"
        )))
    }
}

fn load(id: &str) -> Result<LibContainer> {
    LibContainer::load(Path::new(STATE_ROOT).join(id))
        .map_err(|e| AgentError::NotFound(format!("container {id} has no runtime state: {e}")))
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| AgentError::internal("runtime task", e))?
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn event_for(
    kind: event::Kind,
    container_id: &str,
    exec_id: &str,
    exit: Option<ProcessExit>,
) -> Event {
    let mut event = Event::new();
    event.kind = kind.into();
    event.container_id = container_id.into();
    event.exec_id = exec_id.into();
    event.exit = exit.into();
    event
}
