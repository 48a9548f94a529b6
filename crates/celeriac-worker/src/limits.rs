//! What remote control changes while the worker runs: per-task time limits
//! (`time_limit`) and the number of tasks run at once (`pool_grow`,
//! `pool_shrink`, `autoscale`). Rate limits are in [`crate::rate_limits`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;

/// Time limits set at run time, shared by every delivery's handler.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    times: Mutex<HashMap<String, TimeLimits>>,
}

/// Soft and hard time limits set with `time_limit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TimeLimits {
    pub(crate) soft: Option<Duration>,
    pub(crate) hard: Option<Duration>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Limits {
    /// Sets `task`'s time limits.
    pub(crate) fn set_time_limits(&self, task: &str, limits: TimeLimits) {
        lock(&self.times).insert(task.to_owned(), limits);
    }

    /// `task`'s time limits set at run time, if any.
    pub(crate) fn time_limits(&self, task: &str) -> Option<TimeLimits> {
        lock(&self.times).get(task).copied()
    }
}

/// The slots tasks run in: a semaphore whose size remote control changes.
#[derive(Debug)]
pub(crate) struct Pool {
    permits: Arc<Semaphore>,
    size: AtomicUsize,
}

impl Pool {
    /// A pool of `size` slots.
    pub(crate) fn new(size: usize) -> Pool {
        Pool {
            permits: Arc::new(Semaphore::new(size)),
            size: AtomicUsize::new(size),
        }
    }

    /// The slots' semaphore.
    pub(crate) fn permits(&self) -> &Arc<Semaphore> {
        &self.permits
    }

    /// Tasks allowed to run at once.
    pub(crate) fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// Adds `n` slots.
    pub(crate) fn grow(&self, n: usize) {
        self.permits.add_permits(n);
        self.size.fetch_add(n, Ordering::Relaxed);
    }

    /// Removes `n` slots, keeping at least one: free slots go at once,
    /// busy ones when their tasks finish. Returns the new size.
    pub(crate) fn shrink(&self, n: usize) -> Result<usize, String> {
        let size = self.size();
        if n >= size {
            return Err(format!(
                "cannot shrink the pool by {n}: it has {size} slots and keeps at least one"
            ));
        }
        self.size.fetch_sub(n, Ordering::Relaxed);
        let permits = self.permits.clone();
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            if let Ok(taken) = permits.acquire_many_owned(n).await {
                taken.forget();
            }
        });
        Ok(size - usize::try_from(n).unwrap_or(0))
    }

    /// Sets the size to `target` (at least one).
    pub(crate) fn resize(&self, target: usize) -> Result<usize, String> {
        let size = self.size();
        let target = target.max(1);
        if target > size {
            self.grow(target - size);
            Ok(target)
        } else if target < size {
            self.shrink(size - target)
        } else {
            Ok(size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pool_grows_and_shrinks_but_keeps_a_slot() {
        let pool = Pool::new(2);
        pool.grow(3);
        assert_eq!(pool.size(), 5);
        assert_eq!(pool.shrink(4), Ok(1));
        assert!(pool.shrink(1).is_err());
        assert_eq!(pool.resize(3), Ok(3));
        tokio::task::yield_now().await;
        assert_eq!(pool.permits().available_permits(), 3);
    }
}
