//! What remote control changes while the worker runs: per-task rate limits
//! (`rate_limit`, Celery's syntax, per worker as in Celery), per-task time
//! limits (`time_limit`), and the number of tasks run at once
//! (`pool_grow`, `pool_shrink`, `autoscale`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Runtime overrides, shared by every delivery's handler.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    rates: Mutex<HashMap<String, Bucket>>,
    times: Mutex<HashMap<String, TimeLimits>>,
}

/// Soft and hard time limits set with `time_limit`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TimeLimits {
    pub(crate) soft: Option<Duration>,
    pub(crate) hard: Option<Duration>,
}

/// A token bucket of capacity 1 (Celery's), refilled at `per_second`.
#[derive(Debug, Clone)]
struct Bucket {
    /// The rate as it was given (`10/m`), for `inspect registered`.
    text: String,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, now: Instant) -> Option<Duration> {
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(1.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Limits {
    /// Sets `task`'s rate to `text` (see [`parse_rate`]); `Ok(false)` if
    /// that removed the limit.
    pub(crate) fn set_rate(&self, task: &str, text: &str) -> Result<bool, String> {
        let per_second = parse_rate(text)?;
        let mut rates = lock(&self.rates);
        match per_second {
            Some(per_second) => {
                rates.insert(
                    task.to_owned(),
                    Bucket {
                        text: text.trim().to_owned(),
                        per_second,
                        tokens: 1.0,
                        last: Instant::now(),
                    },
                );
            }
            None => {
                rates.remove(task);
            }
        }
        Ok(per_second.is_some())
    }

    /// `task`'s rate limit as it was given, if it has one.
    pub(crate) fn rate(&self, task: &str) -> Option<String> {
        lock(&self.rates).get(task).map(|b| b.text.clone())
    }

    /// Waits until `task` may run under its rate limit (at once if it has
    /// none).
    pub(crate) async fn admit(&self, task: &str) {
        loop {
            let wait = match lock(&self.rates).get_mut(task) {
                Some(bucket) => bucket.take(Instant::now()),
                None => None,
            };
            match wait {
                Some(wait) => tokio::time::sleep(wait).await,
                None => return,
            }
        }
    }

    /// Sets `task`'s time limits.
    pub(crate) fn set_time_limits(&self, task: &str, limits: TimeLimits) {
        lock(&self.times).insert(task.to_owned(), limits);
    }

    /// `task`'s time limits set at run time, if any.
    pub(crate) fn time_limits(&self, task: &str) -> Option<TimeLimits> {
        lock(&self.times).get(task).copied()
    }
}

/// Parses a rate as Celery writes it: `"10/s"`, `"100/m"`, `"1000/h"`, or a
/// number (per second). `0` or empty removes the limit (`Ok(None)`).
pub(crate) fn parse_rate(text: &str) -> Result<Option<f64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let (count, per) = match text.split_once('/') {
        Some((count, unit)) => {
            let seconds = match unit.trim() {
                "s" | "" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                other => return Err(format!("Invalid rate limit string: unknown unit {other:?}")),
            };
            (count, seconds)
        }
        None => (text, 1.0),
    };
    let count: f64 = count
        .trim()
        .parse()
        .map_err(|_| format!("Invalid rate limit string: {text:?}"))?;
    if !count.is_finite() || count < 0.0 {
        return Err(format!("Invalid rate limit string: {text:?}"));
    }
    Ok((count > 0.0).then_some(count / per))
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

    #[test]
    fn rates_parse_as_celery_writes_them() {
        assert_eq!(parse_rate("10/s"), Ok(Some(10.0)));
        assert_eq!(parse_rate("120/m"), Ok(Some(2.0)));
        assert_eq!(parse_rate("3600/h"), Ok(Some(1.0)));
        assert_eq!(parse_rate("5"), Ok(Some(5.0)));
        assert_eq!(parse_rate("0"), Ok(None));
        assert_eq!(parse_rate(""), Ok(None));
        assert!(parse_rate("ten/s").is_err());
        assert!(parse_rate("10/d").is_err());
    }

    #[test]
    fn a_bucket_lets_one_through_then_spaces_them() {
        let start = Instant::now();
        let mut bucket = Bucket {
            text: "2/s".into(),
            per_second: 2.0,
            tokens: 1.0,
            last: start,
        };
        assert_eq!(bucket.take(start), None);
        let wait = bucket.take(start).unwrap();
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9, "{wait:?}");
        assert_eq!(bucket.take(start + Duration::from_millis(500)), None);
    }

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
