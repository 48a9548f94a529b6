//! Worker settings, with Celery's names and defaults where Celery has them.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

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
    /// Deliveries of one message before it is dead-lettered as a crash loop.
    /// Default 10.
    pub redelivery_limit: u32,
    /// Dead-letter tasks that fail for good (after storing `FAILURE`).
    /// Default true.
    pub dead_letter_failures: bool,
    /// `x-queue-type` of the delay queues: `quorum` (Celery's default) or
    /// `classic`.
    pub delay_queue_type: String,
    /// Finished deliveries acked together with one `multiple` ack (1: one
    /// ack per message). Default 32.
    pub ack_batch: u16,
    /// Longest wait before coalesced acks are sent. Default 5 ms.
    pub ack_flush: Duration,
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
            redelivery_limit: 10,
            dead_letter_failures: true,
            delay_queue_type: "quorum".into(),
            ack_batch: 32,
            ack_flush: Duration::from_millis(5),
        }
    }
}

impl WorkerConfig {
    /// How the worker acks: coalesced unless `ack_batch` is 1 (or 0).
    pub fn ack_policy(&self) -> celeriac_broker::AckPolicy {
        if self.ack_batch <= 1 {
            celeriac_broker::AckPolicy::EachMessage
        } else {
            celeriac_broker::AckPolicy::Coalesce {
                max_batch: self.ack_batch,
                max_delay: self.ack_flush,
            }
        }
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

/// The TOML config file (`--config worker.toml`): every key optional,
/// named like the CLI flags.
///
/// ```toml
/// broker = "amqp://guest:guest@localhost:5672//"
/// result_backend = "rpc://"
/// queues = ["images", "reports"]
/// concurrency = 32
/// prefetch_multiplier = 4
/// hostname = "images@%h"
/// loglevel = "info"
/// shutdown_timeout = 60
/// eta_horizon = 600
/// redelivery_limit = 10
/// dead_letter_failures = true
/// delay_queue_type = "quorum"
/// ack_batch = 32
/// ack_flush_ms = 5
/// ```
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Broker URL.
    pub broker: Option<String>,
    /// Result backend URL.
    pub result_backend: Option<String>,
    /// Queues.
    pub queues: Option<Vec<String>>,
    /// Concurrency.
    pub concurrency: Option<usize>,
    /// Prefetch multiplier.
    pub prefetch_multiplier: Option<u16>,
    /// Node name.
    pub hostname: Option<String>,
    /// Log level.
    pub loglevel: Option<String>,
    /// Shutdown timeout in seconds.
    pub shutdown_timeout: Option<f64>,
    /// ETA horizon in seconds.
    pub eta_horizon: Option<f64>,
    /// Redelivery limit.
    pub redelivery_limit: Option<u32>,
    /// Dead-letter final failures.
    pub dead_letter_failures: Option<bool>,
    /// Delay queue type.
    pub delay_queue_type: Option<String>,
    /// Ack batch size.
    pub ack_batch: Option<u16>,
    /// Ack flush interval in milliseconds.
    pub ack_flush_ms: Option<u64>,
}

impl ConfigFile {
    /// Reads and parses a config file; errors name the line and field.
    pub fn load(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// Expands Celery's `%h` (host name) and `%n` (short host name) in a node name.
pub(crate) fn expand_hostname(name: &str) -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let short = host.split('.').next().unwrap_or(&host).to_owned();
    name.replace("%h", &host).replace("%n", &short)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn config_files_reject_unknown_keys_with_the_line() {
        let err = toml::from_str::<ConfigFile>("queues = [\"a\"]\nconcurency = 4\n").unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
        assert!(err.to_string().contains("line 2"), "{err}");
        let ok: ConfigFile = toml::from_str("concurrency = 4\nshutdown_timeout = 1.5").unwrap();
        assert_eq!(ok.concurrency, Some(4));
    }

    #[test]
    fn hostname_placeholders_expand() {
        assert!(!expand_hostname("w@%h").contains("%h"));
    }
}
