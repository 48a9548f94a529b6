//! Scenario 5: the memory of a worker process (`celeriac-demo worker`), idle, draining a
//! backlog at concurrency 100, and across many tasks.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use celeriac_broker::Broker;
use serde::Serialize;
use tokio::process::{Child, Command};

use crate::measure::memory_kib;

/// What the memory scenario measured, in KiB.
#[derive(Debug, Serialize)]
pub(crate) struct MemoryReport {
    /// Concurrency of the worker process.
    pub(crate) concurrency: usize,
    /// RSS of a worker consuming an empty queue.
    pub(crate) idle_rss_kib: u64,
    /// Tasks in the backlog the second worker starts on.
    pub(crate) backlog: u64,
    /// Peak RSS (`VmHWM`) of that worker once the backlog is drained.
    pub(crate) backlog_peak_kib: u64,
    /// RSS after each further chunk of tasks, the first right after the
    /// backlog: flat means no growth per task.
    pub(crate) rss_after_chunks_kib: Vec<u64>,
    /// Tasks the worker ran in all.
    pub(crate) total_tasks: u64,
}

impl MemoryReport {
    /// Last RSS sample over the first one (1.0: no growth).
    pub(crate) fn growth(&self) -> f64 {
        match (
            self.rss_after_chunks_kib.first(),
            self.rss_after_chunks_kib.last(),
        ) {
            (Some(&first), Some(&last)) if first > 0 => last as f64 / first as f64,
            _ => f64::NAN,
        }
    }
}

/// The `celeriac-demo` binary (whose `worker` command serves the demo
/// tasks) next to this benchmark's own.
pub(crate) fn worker_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let binary = exe.with_file_name("celeriac-demo");
    if !binary.exists() {
        bail!(
            "{} not found: build it with the benchmark, e.g. `cargo build --release -p celeriac-demo -p celeriac-bench`",
            binary.display()
        );
    }
    Ok(binary)
}

/// A worker process consuming `queue` with the demo tasks.
pub(crate) struct WorkerProcess {
    child: Child,
    pid: u32,
}

impl WorkerProcess {
    /// Starts a worker and waits for its consumer to appear on `queue`.
    pub(crate) async fn start(
        broker: &Broker,
        url: &str,
        queue: &str,
        concurrency: usize,
    ) -> anyhow::Result<WorkerProcess> {
        Self::start_with(broker, url, queue, concurrency, &[]).await
    }

    /// [`start`](Self::start) with more `celeriac-demo worker` options.
    pub(crate) async fn start_with(
        broker: &Broker,
        url: &str,
        queue: &str,
        concurrency: usize,
        options: &[&str],
    ) -> anyhow::Result<WorkerProcess> {
        let mut child = Command::new(worker_binary()?)
            .args([
                "worker",
                "--broker",
                url,
                "-Q",
                queue,
                "--loglevel",
                "error",
            ])
            .args(["-c", &concurrency.to_string()])
            .args(options)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting celeriac-demo worker")?;
        let pid = child.id().context("the worker has no pid")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, consumers) = broker.queue_counts(queue).await?.unwrap_or_default();
            if consumers > 0 {
                return Ok(WorkerProcess { child, pid });
            }
            if Instant::now() > deadline || child.try_wait()?.is_some() {
                bail!("celeriac-demo worker did not start consuming {queue}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A `/proc` memory value of the worker, in KiB.
    pub(crate) fn memory_kib(&self, field: &str) -> anyhow::Result<u64> {
        memory_kib(self.pid, field).with_context(|| format!("reading {field} of the worker"))
    }

    /// Waits until `queue` has no ready message and the worker has settled.
    pub(crate) async fn wait_drained(
        &mut self,
        broker: &Broker,
        queue: &str,
    ) -> anyhow::Result<()> {
        loop {
            let (ready, _) = broker.queue_counts(queue).await?.unwrap_or_default();
            if ready == 0 {
                // The last prefetched tasks finish within milliseconds.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Ok(());
            }
            if self.child.try_wait()?.is_some() {
                bail!("celeriac-demo worker exited while draining");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the worker gracefully (SIGTERM), or kills it after 30 s.
    pub(crate) async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
