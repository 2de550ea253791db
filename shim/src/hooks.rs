//! The spec's OCI hooks that run in the runtime's namespace: on the host,
//! as runc runs them. prestart and createRuntime run at Create, before the
//! sandbox's network namespace is scanned (for the first container: a hook
//! may wire it, as nerdctl's CNI hook does); poststart after Start;
//! poststop at Delete, after the VM is gone (or after the container left a
//! VM its pod still uses). createContainer and startContainer would run
//! in the container's namespaces, which are in the guest: not run (the
//! agent drops all hooks from the guest's spec), said in the shim log.
//!
//! Each hook gets the container's OCI state on stdin. A VM runtime has no
//! container pid on the host, so the state carries the pod's network
//! namespace in the `nerdctl/network-namespace` annotation, which nerdctl's
//! hook reads ahead of `/proc/<pid>/ns/net` (its documented way for VM
//! runtimes) and its pid is 0, so that a hook that wants a pid fails
//! instead of finding the host's namespaces.
//!
//! Hooks are host code the spec names: the same trust as runc gives them
//! (the spec comes from containerd's client). See docs/security/hooks.md.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::host_program;

/// The annotation nerdctl's hook takes the network namespace from.
pub const NETNS_ANNOTATION: &str = "nerdctl/network-namespace";
/// How long a hook without a `timeout` of its own may run (runc has no
/// limit; a hung hook would hang Create for good).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of a failed hook's output its error quotes.
const OUTPUT_QUOTED: usize = 2048;

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Hook {
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub timeout: Option<u64>,
}

/// The spec's hooks, by when they run.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    #[serde(default)]
    pub prestart: Vec<Hook>,
    #[serde(default)]
    pub create_runtime: Vec<Hook>,
    #[serde(default)]
    pub create_container: Vec<Hook>,
    #[serde(default)]
    pub start_container: Vec<Hook>,
    #[serde(default)]
    pub poststart: Vec<Hook>,
    #[serde(default)]
    pub poststop: Vec<Hook>,
}

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("the spec's hooks: {0}")]
    Spec(String),
    #[error("{stage} hook {path}: {reason}")]
    Failed {
        stage: &'static str,
        path: String,
        reason: String,
    },
}

impl Hooks {
    /// The hooks of `spec` (none when it has none).
    pub fn of_spec(spec: &Value) -> Result<Self, HookError> {
        let hooks = match spec.get("hooks") {
            None | Some(Value::Null) => Hooks::default(),
            Some(hooks) => Hooks::deserialize(hooks).map_err(|e| HookError::Spec(e.to_string()))?,
        };
        for hook in hooks.all() {
            if !hook.path.starts_with('/') {
                return Err(HookError::Spec(format!(
                    "a hook's path must be absolute, not {:?}",
                    hook.path
                )));
            }
        }
        if !hooks.create_container.is_empty() || !hooks.start_container.is_empty() {
            tracing::warn!(
                "createContainer/startContainer hooks are not run: they would run in the \
                 container's namespaces, which are in the VM"
            );
        }
        Ok(hooks)
    }

    fn all(&self) -> impl Iterator<Item = &Hook> {
        self.prestart
            .iter()
            .chain(&self.create_runtime)
            .chain(&self.create_container)
            .chain(&self.start_container)
            .chain(&self.poststart)
            .chain(&self.poststop)
    }

    /// Whether hooks run before the network is scanned (so that a sandbox
    /// whose spec asks for a new network namespace gets one the hooks can
    /// wire).
    pub fn wire_network(&self) -> bool {
        !self.prestart.is_empty() || !self.create_runtime.is_empty()
    }

    /// prestart, then createRuntime hooks (runc's order); the first that
    /// fails fails Create.
    pub async fn run_create(&self, state: &State) -> Result<(), HookError> {
        for hook in &self.prestart {
            run("prestart", hook, &state.json("creating")).await?;
        }
        for hook in &self.create_runtime {
            run("createRuntime", hook, &state.json("creating")).await?;
        }
        Ok(())
    }

    /// poststart hooks: a failure is logged, the container runs on.
    pub async fn run_poststart(&self, state: &State) {
        for hook in &self.poststart {
            if let Err(error) = run("poststart", hook, &state.json("running")).await {
                tracing::warn!("{error}");
            }
        }
    }

    /// poststop hooks: a failure is logged, the delete goes on.
    pub async fn run_poststop(&self, state: &State) {
        for hook in &self.poststop {
            if let Err(error) = run("poststop", hook, &state.json("stopped")).await {
                tracing::warn!("{error}");
            }
        }
    }
}

/// What a hook is told about its container (the OCI state, less status).
#[derive(Debug, Clone)]
pub struct State {
    pub id: String,
    pub bundle: String,
    /// The spec's `ociVersion` and `annotations`.
    pub oci_version: String,
    pub annotations: serde_json::Map<String, Value>,
}

impl State {
    /// The state of container `id` from its bundle and spec; `netns` (the
    /// sandbox's network namespace) goes into [`NETNS_ANNOTATION`].
    pub fn new(id: &str, bundle: &str, spec: &Value, netns: Option<&Path>) -> Self {
        let mut annotations = spec
            .get("annotations")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if let Some(netns) = netns {
            annotations.insert(
                NETNS_ANNOTATION.into(),
                Value::String(netns.display().to_string()),
            );
        }
        State {
            id: id.into(),
            bundle: bundle.into(),
            oci_version: spec
                .get("ociVersion")
                .and_then(Value::as_str)
                .unwrap_or("1.0.2")
                .into(),
            annotations,
        }
    }

    fn json(&self, status: &str) -> Vec<u8> {
        json!({
            "ociVersion": self.oci_version,
            "id": self.id,
            "status": status,
            "pid": 0,
            "bundle": self.bundle,
            "annotations": self.annotations,
        })
        .to_string()
        .into_bytes()
    }
}

/// The hooks and state of container `id` from the spec in `bundle` (at
/// Start and Delete); no hooks when it cannot be read, which is logged.
pub fn of_bundle(id: &str, bundle: &str, netns: Option<&Path>) -> (Hooks, State) {
    let spec: Result<Value, String> = std::fs::read(Path::new(bundle).join("config.json"))
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
    let hooks = spec
        .as_ref()
        .map_err(String::clone)
        .and_then(|spec| Hooks::of_spec(spec).map_err(|e| e.to_string()))
        .unwrap_or_else(|error| {
            tracing::warn!("the hooks of {bundle}: {error}");
            Hooks::default()
        });
    let spec = spec.unwrap_or(Value::Null);
    (hooks, State::new(id, bundle, &spec, netns))
}

/// Runs `hook` with `state` on its stdin and waits for it (at most its
/// timeout); a non-zero exit is an error quoting its output.
async fn run(stage: &'static str, hook: &Hook, state: &[u8]) -> Result<(), HookError> {
    let failed = |reason: String| HookError::Failed {
        stage,
        path: hook.path.clone(),
        reason,
    };
    let mut command = Command::new(&hook.path);
    if let Some((arg0, args)) = hook.args.split_first() {
        command.arg0(arg0).args(args);
    }
    command
        .env_clear()
        .envs(hook.env.iter().filter_map(|pair| pair.split_once('=')))
        .current_dir("/");
    let limit = hook.timeout.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let finished = host_program::run(command, state.to_vec(), limit, OUTPUT_QUOTED)
        .await
        .map_err(|e| failed(e.to_string()))?;
    if finished.status.success() {
        return Ok(());
    }
    Err(failed(format!(
        "{}: {}",
        finished.status, finished.output_tail
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(dir: &Path, name: &str, body: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path.display().to_string()
    }

    #[test]
    fn hooks_are_read_by_stage_and_relative_paths_refused() {
        let spec = json!({ "hooks": {
            "createRuntime": [{ "path": "/usr/bin/nerdctl", "args": ["nerdctl", "internal"] }],
            "poststop": [{ "path": "/usr/bin/nerdctl", "env": ["A=b"], "timeout": 5 }]
        } });
        let hooks = Hooks::of_spec(&spec).unwrap();
        assert!(hooks.wire_network());
        assert_eq!(hooks.create_runtime[0].args, ["nerdctl", "internal"]);
        assert_eq!(hooks.poststop[0].timeout, Some(5));
        assert!(!Hooks::of_spec(&json!({})).unwrap().wire_network());
        let relative = json!({ "hooks": { "prestart": [{ "path": "nerdctl" }] } });
        assert!(Hooks::of_spec(&relative).is_err());
    }

    #[test]
    fn the_state_carries_the_network_namespace_and_the_spec_annotations() {
        let spec = json!({ "ociVersion": "1.1.0", "annotations": { "nerdctl/name": "web" } });
        let state = State::new("c1", "/b", &spec, Some(Path::new("/run/netns/x")));
        let said: Value = serde_json::from_slice(&state.json("creating")).unwrap();
        assert_eq!(said["id"], "c1");
        assert_eq!(said["status"], "creating");
        assert_eq!(said["pid"], 0);
        assert_eq!(said["bundle"], "/b");
        assert_eq!(said["ociVersion"], "1.1.0");
        assert_eq!(said["annotations"]["nerdctl/name"], "web");
        assert_eq!(said["annotations"][NETNS_ANNOTATION], "/run/netns/x");
    }

    #[tokio::test]
    async fn a_hook_gets_the_state_args_and_env_and_its_failure_is_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let path = script(
            dir.path(),
            "hook",
            // (A script's $0 is its path, whatever argv[0] says.)
            &format!("echo \"$1 $HOOK_VAR\" >{0}; cat >>{0}", out.display()),
        );
        let hooks = Hooks {
            create_runtime: vec![Hook {
                path: path.clone(),
                args: vec!["my-hook".into(), "createRuntime".into()],
                env: vec!["HOOK_VAR=set".into()],
                timeout: None,
            }],
            ..Default::default()
        };
        let state = State::new("c1", "/b", &json!({}), Some(Path::new("/ns")));
        hooks.run_create(&state).await.unwrap();
        let said = std::fs::read_to_string(&out).unwrap();
        let (first, state_json) = said.split_once('\n').unwrap();
        assert_eq!(first, "createRuntime set");
        let state_json: Value = serde_json::from_str(state_json).unwrap();
        assert_eq!(state_json["annotations"][NETNS_ANNOTATION], "/ns");

        let failing = Hooks {
            prestart: vec![Hook {
                path: script(dir.path(), "fails", "echo no network for you >&2; exit 3"),
                ..Default::default()
            }],
            ..Default::default()
        };
        let error = failing.run_create(&state).await.unwrap_err().to_string();
        assert!(error.contains("prestart hook"), "{error}");
        assert!(error.contains("no network for you"), "{error}");
        assert!(error.contains('3'), "{error}");
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = Hooks {
            create_runtime: vec![Hook {
                path: script(dir.path(), "hangs", "exec sleep 60"),
                timeout: Some(1),
                ..Default::default()
            }],
            ..Default::default()
        };
        let state = State::new("c1", "/b", &json!({}), None);
        let started = std::time::Instant::now();
        let error = hooks.run_create(&state).await.unwrap_err().to_string();
        assert!(error.contains("killed"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(30));
    }
}
