//! The worker's monitoring and remote-control flags (`-E`, heartbeats,
//! mingle, the state db, the metrics listener), flattened into
//! [`crate::cli::Args`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::{ConfigFile, WorkerConfig};

/// Events, heartbeats, remote control and revocation state.
// These doc comments are the `--help` text; their `[default: ...]` notes
// are not intra-doc links.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, Clone, Default, Args)]
pub struct MonitoringArgs {
    /// Send task events for Flower and `celery events` (Celery's -E);
    /// Flower's enable_events turns them on too [default: false]
    #[arg(
        short = 'E',
        long,
        env = "CELERIAC_TASK_EVENTS",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub task_events: Option<bool>,

    /// Seconds between worker-heartbeat events; 0 sends none [default: 2]
    #[arg(long, env = "CELERIAC_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<f64>,

    /// Send no worker-heartbeat events (Flower then shows the worker
    /// offline)
    #[arg(long)]
    pub without_heartbeat: bool,

    /// Answer `celery inspect` / `celery control` on this worker's pidbox
    /// queue (Celery's worker_enable_remote_control) [default: true]
    #[arg(long, env = "CELERIAC_REMOTE_CONTROL")]
    pub remote_control: Option<bool>,

    /// Do not ask other workers for revoked task ids at start-up
    #[arg(long)]
    pub without_mingle: bool,

    /// Keep revoked task ids (and the clock) in this file across restarts
    /// (Celery's --statedb) [default: none]
    #[arg(long, env = "CELERIAC_STATEDB")]
    pub statedb: Option<PathBuf>,

    /// Serve Prometheus /metrics and the /healthz and /readyz probes on
    /// this HOST:PORT, e.g. 0.0.0.0:9808 [default: none]
    #[arg(long, env = "CELERIAC_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
}

impl MonitoringArgs {
    /// Sets `worker`'s monitoring settings: flag > environment > `file` >
    /// what `worker` holds (the defaults).
    pub(crate) fn apply(self, file: &ConfigFile, worker: &mut WorkerConfig) -> Result<(), String> {
        if let Some(on) = self.task_events.or(file.task_events) {
            worker.task_events = on;
        }
        match self.heartbeat_interval.or(file.heartbeat_interval) {
            Some(s) if s.is_finite() && s > 0.0 => {
                worker.heartbeat = Some(Duration::from_secs_f64(s));
            }
            Some(0.0) => worker.heartbeat = None,
            Some(s) => {
                return Err(format!(
                    "heartbeat_interval must be a non-negative number of seconds, got {s}"
                ));
            }
            None => {}
        }
        if self.without_heartbeat {
            worker.heartbeat = None;
        }
        if let Some(on) = self.remote_control.or(file.remote_control) {
            worker.remote_control = on;
        }
        if self.without_mingle || file.mingle == Some(false) {
            worker.mingle = false;
        }
        if let Some(path) = self.statedb.or_else(|| file.statedb.clone()) {
            worker.statedb = Some(path);
        }
        if let Some(addr) = self.metrics_addr.or_else(|| file.metrics_addr.clone()) {
            worker.metrics_addr = Some(parse_listen_addr(&addr)?);
        }
        Ok(())
    }
}

/// A `HOST:PORT` to listen on; the error says what a good one looks like.
fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("metrics_addr must be an IP address and port such as 0.0.0.0:9808 or 127.0.0.1:9808, got {text:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_metrics_address_is_an_ip_and_port() {
        assert_eq!(
            parse_listen_addr("127.0.0.1:9808").unwrap(),
            SocketAddr::from(([127, 0, 0, 1], 9808))
        );
        let error = parse_listen_addr("localhost").unwrap_err();
        assert!(error.contains("0.0.0.0:9808"), "{error}");
    }
}
