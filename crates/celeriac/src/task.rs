//! The [`Task`] trait and task options.
//!
//! `#[celeriac::task]` only generates an implementation of this trait; you
//! can write one by hand:
//!
//! ```
//! use celeriac::{Arguments, Request, Task, TaskFuture};
//!
//! struct Add;
//!
//! impl Task for Add {
//!     fn name(&self) -> &str {
//!         "proj.tasks.add"
//!     }
//!
//!     fn call(&self, _request: Request, mut args: Arguments) -> TaskFuture {
//!         Box::pin(async move {
//!             let x: i64 = args.take(0, "x")?;
//!             let y: i64 = args.take(1, "y")?;
//!             args.finish()?;
//!             Ok(serde_json::json!(x + y))
//!         })
//!     }
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::{Arguments, Request, TaskError};

/// The future a task's [`Task::call`] returns: the JSON result, or why not.
pub type TaskFuture = Pin<Box<dyn Future<Output = Result<Value, TaskError>> + Send + 'static>>;

/// A task a worker can run and a producer can name.
pub trait Task: Send + Sync + 'static {
    /// The registered name, e.g. `images.resize` (what Python calls by).
    fn name(&self) -> &str;

    /// Per-task options; anything left `None` falls back to the app's settings.
    fn options(&self) -> TaskOptions {
        TaskOptions::default()
    }

    /// Parameter names, in order (shown by registry listings).
    fn parameters(&self) -> &[&'static str] {
        &[]
    }

    /// Whether the task's body runs on a blocking thread (a plain `fn`
    /// task): such a task cannot be terminated while it runs, only its
    /// future dropped; remote control says so.
    fn is_blocking(&self) -> bool {
        false
    }

    /// Binds `args`, runs the task and serializes its result.
    ///
    /// CPU-bound or blocking work belongs on `tokio::task::spawn_blocking`
    /// (the macro does that for plain `fn` tasks), never on the async runtime.
    fn call(&self, request: Request, args: Arguments) -> TaskFuture;
}

impl<T: Task + ?Sized> Task for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn options(&self) -> TaskOptions {
        (**self).options()
    }
    fn parameters(&self) -> &[&'static str] {
        (**self).parameters()
    }
    fn is_blocking(&self) -> bool {
        (**self).is_blocking()
    }
    fn call(&self, request: Request, args: Arguments) -> TaskFuture {
        (**self).call(request, args)
    }
}

/// Decides whether a failure is retried automatically (Celery's
/// `autoretry_for`); the macro builds these from
/// `autoretry_for = [std::io::Error, ...]`.
pub type RetryMatcher = fn(&TaskError) -> bool;

/// A task's options. `None` means "use the app's setting".
#[derive(Clone, Default)]
pub struct TaskOptions {
    /// Retries allowed before the task fails for good (Celery default 3).
    pub max_retries: Option<u32>,
    /// Delay before a retry when no backoff is set (Celery default 180 s).
    pub default_retry_delay: Option<Duration>,
    /// Exponential backoff factor in seconds: the n-th retry waits
    /// `factor × 2^n` (Celery's `retry_backoff`; `true` means 1).
    pub retry_backoff: Option<u32>,
    /// Upper bound of the backoff (Celery's `retry_backoff_max`, 600 s).
    pub retry_backoff_max: Option<Duration>,
    /// Full jitter on the backoff (Celery's `retry_jitter`, default true).
    pub retry_jitter: Option<bool>,
    /// Failures that are retried automatically.
    pub autoretry_for: Vec<RetryMatcher>,
    /// Hard time limit.
    pub time_limit: Option<Duration>,
    /// Soft time limit.
    pub soft_time_limit: Option<Duration>,
    /// Ack after the task finished (default true: a crashed worker loses nothing).
    pub acks_late: Option<bool>,
    /// Store no result.
    pub ignore_result: Option<bool>,
    /// Store `STARTED` when the task starts (Celery's `track_started`).
    pub track_started: Option<bool>,
    /// Queue to send this task to.
    pub queue: Option<String>,
    /// Default message priority.
    pub priority: Option<u8>,
    /// Default expiry, relative to sending.
    pub expires: Option<Duration>,
    /// Runs per worker at most, in Celery's syntax (`"10/s"`, `"100/m"`,
    /// `"1000/h"`); checked when a worker starts. A worker's
    /// `rate_limits` setting and the `rate_limit` control command override
    /// it.
    pub rate_limit: Option<String>,
    /// Before running a delivery, read its id's result, and ack it without
    /// running it again if that is already `SUCCESS` (so a message
    /// delivered again after its task finished does not repeat the task's
    /// side effects). Needs a result backend that keeps results by id.
    /// Default false.
    pub skip_succeeded: Option<bool>,
    /// While a task of this name with the same arguments is queued or
    /// running (for at most this long), sending another returns that
    /// task's id instead of enqueueing a duplicate. Needs a result backend
    /// that keeps locks (`redis://`). Default none.
    pub unique_for: Option<Duration>,
    /// At most this many runs of the task at once across every worker
    /// (per value of [`limit_key`](Self::limit_key) if set), held as
    /// leases in the result store (`redis://`). Default none.
    pub global_concurrency: Option<u32>,
    /// The parameter whose value the global limit is counted by (e.g.
    /// `account_id`: at most `global_concurrency` per account). Default:
    /// the task name alone.
    pub limit_key: Option<String>,
    /// Runs per second at most across every worker (per value of
    /// [`limit_key`](Self::limit_key) if set), in Celery's syntax
    /// (`"100/m"`), scheduled in the result store (`redis://`). Default
    /// none.
    pub global_rate_limit: Option<String>,
}

impl std::fmt::Debug for TaskOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskOptions")
            .field("max_retries", &self.max_retries)
            .field("default_retry_delay", &self.default_retry_delay)
            .field("retry_backoff", &self.retry_backoff)
            .field("retry_backoff_max", &self.retry_backoff_max)
            .field("retry_jitter", &self.retry_jitter)
            .field("autoretry_for", &self.autoretry_for.len())
            .field("time_limit", &self.time_limit)
            .field("soft_time_limit", &self.soft_time_limit)
            .field("acks_late", &self.acks_late)
            .field("ignore_result", &self.ignore_result)
            .field("track_started", &self.track_started)
            .field("queue", &self.queue)
            .field("priority", &self.priority)
            .field("expires", &self.expires)
            .field("rate_limit", &self.rate_limit)
            .field("skip_succeeded", &self.skip_succeeded)
            .field("unique_for", &self.unique_for)
            .field("global_concurrency", &self.global_concurrency)
            .field("limit_key", &self.limit_key)
            .field("global_rate_limit", &self.global_rate_limit)
            .finish()
    }
}

impl TaskOptions {
    /// Whether `error` matches one of `autoretry_for`.
    pub fn should_autoretry(&self, error: &TaskError) -> bool {
        self.autoretry_for.iter().any(|matches| matches(error))
    }

    /// The delay before retry number `retries + 1`, per Celery's rules:
    /// with a backoff factor, `factor × 2^retries` capped at
    /// `retry_backoff_max`, then full jitter (a random delay between 0 and
    /// that) unless `retry_jitter` is false; without one,
    /// `default_retry_delay`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use celeriac::TaskOptions;
    /// let options = TaskOptions { retry_backoff: Some(2), retry_jitter: Some(false), ..TaskOptions::default() };
    /// assert_eq!(options.retry_delay(3), Duration::from_secs(16));
    /// ```
    pub fn retry_delay(&self, retries: u32) -> Duration {
        let Some(factor) = self.retry_backoff.filter(|f| *f > 0) else {
            return self.default_retry_delay.unwrap_or(Duration::from_secs(180));
        };
        let max = self.retry_backoff_max.unwrap_or(Duration::from_secs(600));
        let exponential = Duration::from_secs(u64::from(factor))
            .saturating_mul(2u32.saturating_pow(retries.min(31)))
            .min(max);
        if self.retry_jitter.unwrap_or(true) {
            exponential.mul_f64(fastrand::f64())
        } else {
            exponential
        }
    }

    /// These options with every unset field taken from `defaults`.
    pub fn or(mut self, defaults: &TaskOptions) -> TaskOptions {
        macro_rules! inherit {
            ($($field:ident),*) => { $( if self.$field.is_none() { self.$field = defaults.$field.clone(); } )* };
        }
        inherit!(
            max_retries,
            default_retry_delay,
            retry_backoff,
            retry_backoff_max,
            retry_jitter,
            time_limit,
            soft_time_limit,
            acks_late,
            ignore_result,
            track_started,
            queue,
            priority,
            expires,
            rate_limit,
            skip_succeeded,
            unique_for,
            global_concurrency,
            limit_key,
            global_rate_limit
        );
        if self.autoretry_for.is_empty() {
            self.autoretry_for = defaults.autoretry_for.clone();
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_jitters_below_it() {
        let options = TaskOptions {
            retry_backoff: Some(1),
            retry_backoff_max: Some(Duration::from_secs(10)),
            retry_jitter: Some(false),
            ..TaskOptions::default()
        };
        let delays: Vec<u64> = (0..6).map(|n| options.retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 10, 10]);
        let jittered = TaskOptions {
            retry_jitter: None,
            ..options
        };
        assert!((0..50).all(|n| jittered.retry_delay(n) <= Duration::from_secs(10)));
        assert_eq!(
            TaskOptions::default().retry_delay(0),
            Duration::from_secs(180)
        );
    }

    #[test]
    fn unset_options_inherit() {
        let task = TaskOptions {
            max_retries: Some(5),
            ..TaskOptions::default()
        };
        let app = TaskOptions {
            max_retries: Some(3),
            acks_late: Some(true),
            ..TaskOptions::default()
        };
        let merged = task.or(&app);
        assert_eq!(
            (merged.max_retries, merged.acks_late),
            (Some(5), Some(true))
        );
    }
}
