//! The states a process has seen for each task (`AsyncResult::history`),
//! for the stores that are read rather than listened to: a bounded map,
//! oldest tasks forgotten first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use celeriac_protocol::{ResultMeta, State};

/// How many tasks' state histories are remembered.
const MAX_REMEMBERED: usize = 100_000;

/// States seen per task, in order.
#[derive(Debug, Default)]
pub(crate) struct StateHistory {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    states: HashMap<String, Vec<State>>,
    order: VecDeque<String>,
}

impl StateHistory {
    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the state `meta` holds, unless it is the task's last one.
    pub(crate) fn record(&self, meta: &ResultMeta) {
        let mut seen = self.seen();
        if !seen.states.contains_key(&meta.task_id) {
            while seen.states.len() >= MAX_REMEMBERED {
                let Some(oldest) = seen.order.pop_front() else {
                    break;
                };
                seen.states.remove(&oldest);
            }
            seen.order.push_back(meta.task_id.clone());
        }
        let states = seen.states.entry(meta.task_id.clone()).or_default();
        if states.last() != Some(&meta.status) {
            states.push(meta.status.clone());
        }
    }

    /// Every state seen for `task_id`, in order.
    pub(crate) fn of(&self, task_id: &str) -> Vec<State> {
        self.seen().states.get(task_id).cloned().unwrap_or_default()
    }
}
