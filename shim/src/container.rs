//! The shim's table of containers and their processes (the init under exec
//! id "", execs under theirs). Never held across an await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::error::{Result, ShimError};
use crate::process::Process;

pub struct Container {
    pub bundle: String,
    pub processes: HashMap<String, Process>,
}

#[derive(Default)]
pub struct Containers {
    containers: HashMap<String, Container>,
}

impl Containers {
    pub fn container(&self, id: &str) -> Result<&Container> {
        self.containers
            .get(id)
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }

    pub fn container_mut(&mut self, id: &str) -> Result<&mut Container> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }

    pub fn process_mut(&mut self, id: &str, exec: &str) -> Result<&mut Process> {
        self.container_mut(id)?
            .processes
            .get_mut(exec)
            .ok_or_else(|| ShimError::NotFound(format!("process {exec} of {id}")))
    }

    pub fn contains(&self, id: &str) -> bool {
        self.containers.contains_key(id)
    }

    pub fn insert(&mut self, id: &str, container: Container) {
        self.containers.insert(id.to_owned(), container);
    }

    /// Removes container `id`; says whether it was the last one.
    pub fn remove(&mut self, id: &str) -> bool {
        self.containers.remove(id);
        self.containers.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }

    pub fn processes(&self) -> impl Iterator<Item = &Process> {
        self.containers.values().flat_map(|c| c.processes.values())
    }
}

/// The table, shared by the task service and its exit watchers.
#[derive(Clone, Default)]
pub struct ContainerTable(Arc<Mutex<Containers>>);

impl ContainerTable {
    pub fn lock(&self) -> MutexGuard<'_, Containers> {
        // A panic elsewhere must not wedge every later call.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn with_process<T>(
        &self,
        id: &str,
        exec: &str,
        f: impl FnOnce(&mut Process) -> T,
    ) -> Result<T> {
        Ok(f(self.lock().process_mut(id, exec)?))
    }
}
