//! The `rpc://` reply queues a result waited for in vain, remembered for a
//! while: a client that sent many tasks and exited must not make each of
//! its results wait again (the worker would slow down by that wait per
//! task).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Reply queues taken to be gone, each with when it was found missing.
#[derive(Debug)]
pub(crate) struct GoneReplyQueues {
    /// How long a queue found missing is taken to be gone.
    memory: Duration,
    since: Mutex<HashMap<String, Instant>>,
}

impl GoneReplyQueues {
    /// Remembers each gone queue for `memory`.
    pub(crate) fn new(memory: Duration) -> GoneReplyQueues {
        GoneReplyQueues {
            memory,
            since: Mutex::default(),
        }
    }

    /// `name` stayed missing through a result's whole wait, up to `now`.
    pub(crate) fn remember(&self, name: &str, now: Instant) {
        self.lock().insert(name.to_owned(), now);
    }

    /// A result reached `name`: its client is back.
    pub(crate) fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Whether `name` was found missing less than the memory ago; older
    /// entries are dropped.
    pub(crate) fn is_gone(&self, name: &str, now: Instant) -> bool {
        let mut since = self.lock();
        since.retain(|_, found| now.saturating_duration_since(*found) < self.memory);
        since.contains_key(name)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.since.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMORY: Duration = Duration::from_secs(300);

    #[test]
    fn a_gone_queue_is_remembered_for_the_memory_and_no_longer() {
        let gone = GoneReplyQueues::new(MEMORY);
        let found = Instant::now();
        gone.remember("reply-a", found);
        assert!(gone.is_gone("reply-a", found));
        assert!(gone.is_gone("reply-a", found + MEMORY - Duration::from_millis(1)));
        assert!(!gone.is_gone("reply-b", found));
        assert!(!gone.is_gone("reply-a", found + MEMORY));
        // Dropped, not just hidden: earlier times do not bring it back.
        assert!(!gone.is_gone("reply-a", found));
    }

    #[test]
    fn a_queue_that_takes_a_result_is_forgotten() {
        let gone = GoneReplyQueues::new(MEMORY);
        let found = Instant::now();
        gone.remember("reply-a", found);
        gone.forget("reply-a");
        assert!(!gone.is_gone("reply-a", found));
    }
}
