//! ETA and countdown tasks must not hold up the tasks queued behind them:
//! a burst of countdown tasks from a Python producer, and a retry storm with
//! backoff, each followed by ordinary tasks. Counts and order, not timings:
//! every ordinary task runs before the first ETA comes due, every ETA task
//! runs once and not before its due time.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::{App, State};
use celeriac_demo::tasks as demo;
use celeriac_tests::worker::{RunningWorker, cleanup};
use celeriac_tests::{broker_url, interop_python, rabbitmqctl, repo_root, require_redis, unique};
use celeriac_worker::{Summary, WorkerConfig};
use serde::Deserialize;

/// Tasks in the burst.
const BURST: usize = 2_000;
/// Retrying tasks in the storm.
const STORM: usize = 1_000;
/// Ordinary tasks sent behind them.
const ORDINARY: usize = 100;
/// Seconds until the burst comes due.
const DUE_IN: f64 = 20.0;
/// Seconds until each retry of the storm comes due: long enough for the
/// 1,000 tasks to fail once while other tests share the two cores.
const RETRY_IN: f64 = 40.0;

/// One task sent by `tests/interop/send_burst.py`.
#[derive(Debug, Deserialize)]
struct Sent {
    id: String,
    /// When it was sent (Unix seconds).
    sent: f64,
    /// When it is due (Unix seconds), if it has an ETA.
    eta: Option<f64>,
}

/// Sends `count` tasks named `task` to `queue` from a Python Celery
/// producer, due `eta_in` seconds after each send if given.
async fn send_from_python(
    queue: &str,
    task: &str,
    count: usize,
    eta_in: Option<f64>,
    arg: Option<f64>,
) -> Result<Vec<Sent>> {
    let mut command = tokio::process::Command::new(interop_python()?);
    command
        .arg(repo_root().join("tests/interop/send_burst.py"))
        .args([&broker_url(), queue, task, &count.to_string()]);
    if let Some(seconds) = eta_in {
        command.args(["--eta-in", &seconds.to_string()]);
    }
    if let Some(arg) = arg {
        command.args(["--arg", &arg.to_string()]);
    }
    let output = command
        .kill_on_drop(true)
        .output()
        .await
        .context("running send_burst.py")?;
    ensure!(
        output.status.success(),
        "send_burst.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// A Rust worker with default settings but for `-c 8` (as the reported
/// run), storing results in Redis; and an app to read them.
async fn start_worker(queue: &str, redis: &str) -> Result<(RunningWorker, App)> {
    let app = demo::register(App::builder())
        .broker_url(broker_url())
        .result_backend(redis)
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![queue.to_owned()],
        concurrency: 8,
        ..WorkerConfig::default()
    };
    let reader = App::builder()
        .broker_url(broker_url())
        .result_backend(redis)
        .build()
        .await?;
    Ok((RunningWorker::run(app, config), reader))
}

/// When each task ran (the `demo.now` / `demo.retry_once` value), in order.
async fn run_times(app: &App, tasks: &[Sent], timeout: Duration) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(tasks.len());
    for (index, task) in tasks.iter().enumerate() {
        let ran = app
            .async_result::<f64>(task.id.clone())
            .get(timeout)
            .await
            .with_context(|| {
                format!(
                    "task {} (number {} of {} in send order) has no result",
                    task.id,
                    index + 1,
                    tasks.len()
                )
            })?;
        times.push(ran);
    }
    Ok(times)
}

/// What the broker holds for `queue` and in the delay levels (ready,
/// unacked, consumers), for a failure message.
fn where_tasks_are(queue: &str) -> String {
    let listing = rabbitmqctl(&[
        "list_queues",
        "-q",
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    ])
    .unwrap_or_else(|e| format!("(rabbitmqctl failed: {e})"));
    let lines: Vec<&str> = listing
        .lines()
        .filter(|line| line.contains(queue) || line.starts_with("celery_delayed_"))
        .filter(|line| !line.ends_with("\t0\t0\t0"))
        .collect();
    format!("the broker holds (name, ready, unacked, consumers): {lines:?}")
}

/// `error` (tasks that never ran) with what the broker holds for `queue`
/// and, once `worker` is stopped, what it says it did: whether the missing
/// tasks ran (and their results went missing) or never reached it.
async fn with_worker_state(
    error: anyhow::Error,
    queue: &str,
    worker: RunningWorker,
) -> anyhow::Error {
    let held = where_tasks_are(queue);
    let summary = match worker.stop().await {
        Ok(summary) => format!("{summary:?}"),
        Err(e) => format!("(stopping it failed: {e:#})"),
    };
    error.context(format!("{held}; the worker, stopped, says {summary}"))
}

/// The latest of `times`.
fn latest(times: &[f64]) -> f64 {
    times.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Checks the worker ran exactly `runs` tasks, nothing failed, nothing
/// came back or went to the dead letters, and retried `retries`.
fn ensure_each_ran_once(summary: &Summary, runs: u64, retries: u64) -> Result<()> {
    ensure!(
        summary.succeeded == runs
            && summary.retried == retries
            && summary.failed == 0
            && summary.dead_lettered == 0
            && summary.redelivered == 0,
        "expected {runs} runs and {retries} retries, nothing failed, dead-lettered or \
         redelivered; the worker says {summary:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_countdown_tasks_does_not_hold_up_the_tasks_behind_it() -> Result<()> {
    let redis = require_redis()?;
    let queue = unique("eta-burst");
    let (worker, reader) = start_worker(&queue, &redis).await?;

    let burst = send_from_python(&queue, "demo.now", BURST, Some(DUE_IN), None).await?;
    let ordinary = send_from_python(&queue, "demo.now", ORDINARY, None, None).await?;
    let first_due = burst
        .iter()
        .filter_map(|task| task.eta)
        .fold(f64::INFINITY, f64::min);

    let ordinary_ran = match run_times(&reader, &ordinary, Duration::from_secs(60)).await {
        Ok(times) => times,
        Err(e) => return Err(with_worker_state(e, &queue, worker).await),
    };
    let last_ordinary = latest(&ordinary_ran);
    println!(
        "the last of {ORDINARY} ordinary tasks ran {:.2} s after it was sent; the first of \
         {BURST} countdown tasks was due {:.2} s later",
        last_ordinary - ordinary[ORDINARY - 1].sent,
        first_due - last_ordinary,
    );
    ensure!(
        last_ordinary < first_due,
        "the ordinary tasks waited for the countdown burst: the last ran {:.2} s after the \
         first countdown task came due",
        last_ordinary - first_due
    );

    let burst_ran = run_times(&reader, &burst, Duration::from_secs(DUE_IN as u64 + 60)).await?;
    let mut latest_lateness = 0.0_f64;
    for (task, ran) in burst.iter().zip(&burst_ran) {
        let due = task.eta.context("a burst task without an ETA")?;
        ensure!(
            *ran >= due,
            "countdown task {} ran {:.3} s before its ETA",
            task.id,
            due - ran
        );
        latest_lateness = latest_lateness.max(ran - due);
    }
    println!("countdown tasks ran at most {latest_lateness:.2} s after their ETA");

    let summary = worker.stop().await?;
    ensure_each_ran_once(&summary, (BURST + ORDINARY) as u64, 0)?;
    cleanup(&reader, &queue).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_storm_with_backoff_does_not_hold_up_fresh_tasks() -> Result<()> {
    let redis = require_redis()?;
    let queue = unique("retry-storm");
    let (worker, reader) = start_worker(&queue, &redis).await?;

    // Each fails once and asks to be retried RETRY_IN seconds later.
    let storm = send_from_python(&queue, "demo.retry_once", STORM, None, Some(RETRY_IN)).await?;
    // One deadline for the whole storm to fail once. A retry that already
    // ran means the storm took longer than its backoff, and the fresh tasks
    // could not be sent before any retry came due: say so plainly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for task in &storm {
        let result = reader.async_result::<f64>(task.id.clone());
        loop {
            match result.state().await? {
                State::Retry => break,
                State::Success => anyhow::bail!(
                    "task {} already ran its retry before the storm had failed once: \
                     1,000 failures took over {RETRY_IN} s on this machine",
                    task.id
                ),
                _ => {}
            }
            ensure!(
                tokio::time::Instant::now() < deadline,
                "task {} never reached RETRY",
                task.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Every retry is waiting now; none is due before this.
    let first_retry_due = storm.iter().map(|t| t.sent).fold(f64::INFINITY, f64::min) + RETRY_IN;
    let fresh = send_from_python(&queue, "demo.now", ORDINARY, None, None).await?;

    let fresh_ran = match run_times(&reader, &fresh, Duration::from_secs(60)).await {
        Ok(times) => times,
        Err(e) => return Err(with_worker_state(e, &queue, worker).await),
    };
    let last_fresh = latest(&fresh_ran);
    ensure!(
        last_fresh < first_retry_due,
        "the fresh tasks waited for the retries: the last ran {:.2} s after the first retry \
         could come due",
        last_fresh - first_retry_due
    );

    let retried_ran = run_times(&reader, &storm, Duration::from_secs(RETRY_IN as u64 + 60)).await?;
    for (task, ran) in storm.iter().zip(&retried_ran) {
        ensure!(
            *ran >= task.sent + RETRY_IN,
            "task {} was retried {:.3} s before its backoff was over",
            task.id,
            task.sent + RETRY_IN - ran
        );
    }

    let summary = worker.stop().await?;
    ensure_each_ran_once(&summary, (STORM + ORDINARY) as u64, STORM as u64)?;
    cleanup(&reader, &queue).await;
    Ok(())
}
