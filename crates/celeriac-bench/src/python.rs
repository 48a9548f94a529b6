//! The Python Celery baselines, run from the interop venv that
//! `scripts/setup-interop` creates (pinned Celery).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use celeriac_broker::Broker;
use tokio::process::{Child, Command};

use crate::measure;

/// Where the pinned Python Celery lives.
#[derive(Debug, Clone)]
pub(crate) struct PythonCelery {
    venv_bin: PathBuf,
    workspace: PathBuf,
}

impl PythonCelery {
    /// The venv in `workspace/.venv-interop`, if it has been set up.
    pub(crate) fn find(workspace: &Path) -> Option<PythonCelery> {
        let venv_bin = workspace.join(".venv-interop/bin");
        venv_bin.join("celery").exists().then(|| PythonCelery {
            venv_bin,
            workspace: workspace.to_owned(),
        })
    }

    /// Runs the `send_task` loop for `count` tasks; returns its duration
    /// (the extra first send, which opens the connection, is not timed).
    pub(crate) async fn publish(
        &self,
        url: &str,
        queue: &str,
        count: u64,
    ) -> anyhow::Result<Duration> {
        let script = self
            .workspace
            .join("crates/celeriac-bench/python/send_tasks.py");
        let output = Command::new(self.venv_bin.join("python"))
            .arg(script)
            .args(["--queue", queue, "--count", &count.to_string()])
            .env("CELERIAC_BROKER_URL", url)
            .stdin(Stdio::null())
            .output()
            .await
            .context("running the Python send_task loop")?;
        if !output.status.success() {
            bail!(
                "the Python send_task loop failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)
            .context("reading the Python send_task loop's report")?;
        let seconds = report["seconds"]
            .as_f64()
            .context("the Python report has no seconds")?;
        Ok(Duration::from_secs_f64(seconds))
    }

    /// Starts a prefork worker with `concurrency` processes on a backlog of
    /// `count` tasks in `queue`, storing results in `backend` (none if
    /// `None`), and measures from its consumer appearing until it has run
    /// every task, as Celeriac's drain is measured until its last success.
    /// Python acks each message before running it, so an empty queue does
    /// not mean the tasks ran: each run appends a byte to a file
    /// (`CELERIAC_BENCH_RUNS_FILE`, see `tests/interop/tasks.py`) and the
    /// drain ends when it holds `count`. Returns the duration and the CPU
    /// time the worker's processes used meanwhile.
    pub(crate) async fn drain(
        &self,
        broker: &Broker,
        url: &str,
        queue: &str,
        count: u64,
        concurrency: usize,
        backend: Option<&str>,
    ) -> anyhow::Result<(Duration, Duration)> {
        let runs = std::env::temp_dir().join(format!("{queue}.runs"));
        std::fs::write(&runs, b"").context("creating the Python drain's run count")?;
        let mut worker = self.start_worker(url, queue, concurrency, backend, &runs)?;
        let pid = worker.id().context("the Python worker has no pid")?;
        let outcome = async {
            let deadline = Instant::now() + Duration::from_secs(60);
            let (start, cpu_before) = loop {
                let (_, consumers) = broker.queue_counts(queue).await?.unwrap_or_default();
                if consumers > 0 {
                    break (Instant::now(), measure::tree_cpu(pid));
                }
                if Instant::now() > deadline || worker.try_wait()?.is_some() {
                    bail!("the Python Celery worker did not start consuming {queue}");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            };
            while std::fs::metadata(&runs)?.len() < count {
                if worker.try_wait()?.is_some() {
                    bail!("the Python Celery worker exited while draining");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok((
                start.elapsed(),
                measure::tree_cpu(pid).saturating_sub(cpu_before),
            ))
        }
        .await;
        stop(&mut worker, pid).await;
        let _ = std::fs::remove_file(&runs);
        outcome
    }

    fn start_worker(
        &self,
        url: &str,
        queue: &str,
        concurrency: usize,
        backend: Option<&str>,
        runs: &Path,
    ) -> anyhow::Result<Child> {
        let mut command = Command::new(self.venv_bin.join("celery"));
        command.env("CELERIAC_BENCH_RUNS_FILE", runs);
        if let Some(backend) = backend {
            command
                .env("CELERIAC_TEST_BACKEND", backend)
                .env("CELERIAC_TEST_RESULT_EXPIRES", "600");
        } else {
            // Celery's default: a worker with no backend stores nothing.
            command.env("CELERIAC_TEST_BACKEND", "disabled://");
        }
        command
            .args(["-A", "tasks", "worker", "-P", "prefork", "-Q", queue])
            .args(["-c", &concurrency.to_string(), "--loglevel", "WARNING"])
            .args([
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ])
            .current_dir(self.workspace.join("tests/interop"))
            .env("CELERIAC_TEST_BROKER", url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the Python Celery worker")
    }
}

/// SIGTERM (Celery's warm shutdown), then SIGKILL after a grace period.
async fn stop(worker: &mut Child, pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    if tokio::time::timeout(Duration::from_secs(10), worker.wait())
        .await
        .is_err()
    {
        let _ = worker.kill().await;
    }
}
