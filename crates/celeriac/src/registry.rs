//! The tasks an app knows, by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::Task;

/// Registered tasks, by name. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry {
    tasks: BTreeMap<String, Arc<dyn Task>>,
}

impl Registry {
    /// Registers `task` under its name, replacing any task of that name.
    pub fn register(&mut self, task: Arc<dyn Task>) {
        self.tasks.insert(task.name().to_owned(), task);
    }

    /// The task registered as `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Task>> {
        self.tasks.get(name)
    }

    /// Every registered name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tasks.keys().map(String::as_str)
    }

    /// Every registered task, sorted by name.
    pub fn tasks(&self) -> impl Iterator<Item = &Arc<dyn Task>> {
        self.tasks.values()
    }

    /// How many tasks are registered.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}
