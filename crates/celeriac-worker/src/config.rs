//! The worker's runtime settings, with Celery's names and defaults where
//! Celery has them. (App-level settings, such as the broker, the result
//! backend, queues and routes, live on the `celeriac::AppBuilder`; the CLI
//! and the TOML file set both, see [`crate::cli`].)

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How the worker runs.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// Queues to consume (`-Q`). Default: `celery`.
    pub queues: Vec<String>,
    /// Tasks run at the same time (`-c`). Default: the number of CPUs.
    pub concurrency: usize,
    /// Prefetch = concurrency × this (`--prefetch-multiplier`). Default 4.
    pub prefetch_multiplier: u16,
    /// Node name (`-n`), e.g. `celeriac@host`.
    pub hostname: String,
    /// How long running tasks may take to finish on shutdown. Default 30 s.
    pub shutdown_timeout: Duration,
    /// ETAs further out than this leave the worker through the delay
    /// topology instead of being held unacked. Default 10 minutes (RabbitMQ's
    /// `consumer_timeout` is 30).
    pub eta_horizon: Duration,
    /// ETA tasks (due in a second or more) held unacked at once; the rest
    /// leave through the delay topology, so held ones never take the whole
    /// prefetch window from the tasks queued behind them
    /// (`--eta-hold-limit`). Default `None`: half the prefetch window.
    pub eta_hold_limit: Option<usize>,
    /// The window of the temporary consumer that moves a burst of ETA
    /// tasks to the delay topology (`--eta-burst-window`): deliveries
    /// moving at once, and the most of the tasks queued behind a burst this
    /// worker may take for itself as the burst ends. 0 opens no burst
    /// consumer. Default [`BURST_WINDOW`](crate::BURST_WINDOW).
    pub eta_burst_window: u16,
    /// Rate limits by task name, in Celery's syntax (`"10/s"`, `"100/m"`,
    /// `"1000/h"`; `"0"` removes a task's own), over the tasks' own
    /// `rate_limit` (`--rate-limit TASK=RATE`). Default none.
    pub rate_limits: BTreeMap<String, String>,
    /// How long a global concurrency limit's lease lasts unless renewed
    /// (it is renewed every third of this while its task runs): a worker
    /// killed while holding leases frees them after this
    /// (`--global-lease`). Default 60 s.
    pub global_lease: Duration,
    /// What a task under a global limit does while the lease store is
    /// unreachable (`--global-limits-outage`). Default: wait.
    pub global_limits_outage: LimitOutage,
    /// Deliveries of one message before it is dead-lettered as a crash loop.
    /// Default 10.
    pub redelivery_limit: u32,
    /// Dead-letter tasks that fail for good (after storing `FAILURE`).
    /// Default true.
    pub dead_letter_failures: bool,
    /// Finished deliveries acked together with one `multiple` ack (1: one
    /// ack per message). Default 32. A consumer's batch is at most half its
    /// prefetch window (see [`ack_policy_for`](Self::ack_policy_for)).
    pub ack_batch: u16,
    /// Longest wait before coalesced acks are sent. Default 5 ms.
    pub ack_flush: Duration,
    /// How long storing a task's result may keep retrying an unreachable
    /// result store before the delivery goes back to its queue (to run
    /// again). Default 60 s.
    pub result_store_timeout: Duration,
    /// Store `STARTED` (with the worker's pid and hostname) when a task
    /// starts, for tasks that do not say otherwise (Celery's
    /// `task_track_started`). Default false.
    pub track_started: bool,
    /// Send task events (`-E`, Celery's `worker_send_task_events`); remote
    /// control may turn them on and off. Default false, as in Celery.
    pub task_events: bool,
    /// Seconds between `worker-heartbeat` events; `None` sends none
    /// (`--without-heartbeat`). Default 2 s, as in Celery.
    pub heartbeat: Option<Duration>,
    /// Answer remote control (`inspect`, `control`) on the worker's pidbox
    /// queue. Default true (Celery's `worker_enable_remote_control`).
    pub remote_control: bool,
    /// Ask other workers for revoked ids at start-up. Default true
    /// (`--without-mingle` turns it off).
    pub mingle: bool,
    /// Keep revoked ids (and the clock) in this file across restarts
    /// (`--statedb`). Default none.
    pub statedb: Option<PathBuf>,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this address
    /// (`--metrics-addr`). Default none: no listener, no metrics recorded.
    pub metrics_addr: Option<SocketAddr>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            queues: vec!["celery".into()],
            concurrency: std::thread::available_parallelism().map_or(2, usize::from),
            prefetch_multiplier: 4,
            hostname: format!("celeriac@{}", gethostname::gethostname().to_string_lossy()),
            shutdown_timeout: Duration::from_secs(30),
            eta_horizon: Duration::from_secs(600),
            eta_hold_limit: None,
            eta_burst_window: crate::BURST_WINDOW,
            rate_limits: BTreeMap::new(),
            global_lease: Duration::from_secs(60),
            global_limits_outage: LimitOutage::Wait,
            redelivery_limit: 10,
            dead_letter_failures: true,
            ack_batch: 32,
            ack_flush: Duration::from_millis(5),
            result_store_timeout: Duration::from_secs(60),
            track_started: false,
            task_events: false,
            heartbeat: Some(Duration::from_secs(2)),
            remote_control: true,
            mingle: true,
            statedb: None,
            metrics_addr: None,
        }
    }
}

impl WorkerConfig {
    /// How the worker's main consumer acks: [`ack_policy_for`](Self::ack_policy_for)
    /// its prefetch window.
    pub fn ack_policy(&self) -> celeriac::broker::AckPolicy {
        self.ack_policy_for(self.prefetch())
    }

    /// How a consumer with a window of `prefetch` deliveries acks:
    /// coalesced in batches of `ack_batch`, but at most half the window,
    /// or one ack per message if that leaves a batch of 1 (or `ack_batch`
    /// is 1 or 0). A batch as large as the window could only ever be sent
    /// by the `ack_flush` timer: the broker delivers nothing more until
    /// acks come, so at `-c 2` (a window of 8) a batch of 32 capped the
    /// worker at 8 tasks per flush interval. With half the window, one half
    /// is being acked while the other is delivered. A `prefetch` of 0
    /// (unlimited) keeps `ack_batch`.
    pub fn ack_policy_for(&self, prefetch: u16) -> celeriac::broker::AckPolicy {
        let batch = match prefetch {
            0 => self.ack_batch,
            window => self.ack_batch.min(window / 2),
        };
        if batch <= 1 {
            celeriac::broker::AckPolicy::EachMessage
        } else {
            celeriac::broker::AckPolicy::Coalesce {
                max_batch: batch,
                max_delay: self.ack_flush,
            }
        }
    }

    /// How many ETA tasks may be held at once: `eta_hold_limit`, else half
    /// the prefetch window.
    pub fn eta_holds(&self) -> usize {
        self.eta_hold_limit
            .unwrap_or(usize::from(self.prefetch()) / 2)
    }

    /// The prefetch count: concurrency × multiplier, capped at 65535
    /// (`0`, unlimited, if the multiplier is 0, as in Celery).
    pub fn prefetch(&self) -> u16 {
        let prefetch = self
            .concurrency
            .saturating_mul(usize::from(self.prefetch_multiplier));
        u16::try_from(prefetch).unwrap_or(u16::MAX)
    }
}

/// What a task under a global limit does while the store holding the
/// limit's leases (the result backend) is unreachable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LimitOutage {
    /// Wait: the delivery is deferred (5 s at a time) until the store
    /// answers; the limit is never exceeded.
    #[default]
    Wait,
    /// Run without the limit (logged), rather than stop the work.
    Run,
}

impl std::str::FromStr for LimitOutage {
    type Err = String;

    fn from_str(text: &str) -> Result<LimitOutage, String> {
        match text {
            "wait" => Ok(LimitOutage::Wait),
            "run" => Ok(LimitOutage::Run),
            other => Err(format!(
                "global_limits_outage {other:?}: use wait (never exceed a limit) or run \
                 (run unlimited while the store is unreachable)"
            )),
        }
    }
}

/// Expands Celery's `%h` (host name) and `%n` (short host name) in a node
/// name, as `-n` does.
///
/// ```
/// let node = celeriac_worker::expand_hostname("reports@%h");
/// assert!(node.starts_with("reports@") && !node.contains('%'));
/// ```
pub fn expand_hostname(name: &str) -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let short = host.split('.').next().unwrap_or(&host).to_owned();
    name.replace("%h", &host).replace("%n", &short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_batch_is_at_most_half_the_prefetch_window() {
        use celeriac::broker::AckPolicy;
        let batch = |config: &WorkerConfig, prefetch| match config.ack_policy_for(prefetch) {
            AckPolicy::Coalesce { max_batch, .. } => max_batch,
            AckPolicy::EachMessage => 1,
        };
        let default = WorkerConfig::default();
        assert_eq!(batch(&default, 400), 32, "a wide window keeps ack_batch");
        assert_eq!(batch(&default, 8), 4, "-c 2: half of 8");
        assert_eq!(batch(&default, 3), 1, "a window of 3 acks each message");
        assert_eq!(
            batch(&default, 0),
            32,
            "an unlimited window keeps ack_batch"
        );
        let each = WorkerConfig {
            ack_batch: 1,
            ..WorkerConfig::default()
        };
        assert_eq!(each.ack_policy_for(400), AckPolicy::EachMessage);
        let two = WorkerConfig {
            concurrency: 2,
            prefetch_multiplier: 4,
            ..WorkerConfig::default()
        };
        assert_eq!(batch(&two, two.prefetch()), batch(&two, 8));
    }

    #[test]
    fn prefetch_is_concurrency_times_multiplier() {
        let config = WorkerConfig {
            concurrency: 8,
            prefetch_multiplier: 4,
            ..WorkerConfig::default()
        };
        assert_eq!(config.prefetch(), 32);
        let huge = WorkerConfig {
            concurrency: 100_000,
            ..config
        };
        assert_eq!(huge.prefetch(), u16::MAX);
    }

    #[test]
    fn hostname_placeholders_expand() {
        assert!(!expand_hostname("w@%h").contains("%h"));
    }
}
