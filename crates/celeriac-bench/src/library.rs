//! The Celeriac side of each scenario: the producer API and an in-process
//! worker running the demo tasks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use celeriac::{App, TaskCall};
use celeriac_worker::{Stats, Summary, Worker, WorkerConfig, WorkerError};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A producer app whose default queue is `queue`, reading results from
/// `results` (a result backend URL) if given.
pub(crate) async fn producer(url: &str, queue: &str, results: Option<&str>) -> anyhow::Result<App> {
    let mut builder = App::builder().broker_url(url).default_queue(queue);
    if let Some(backend) = results {
        builder = builder.result_backend(backend);
    }
    Ok(builder.build().await?)
}

/// Runs `call` `count` times in all, spread over `callers` concurrent tasks
/// each calling it in a loop; returns the time until the last call is done.
async fn fan_out<F, Fut>(app: &App, count: u64, callers: u64, call: F) -> anyhow::Result<Duration>
where
    F: Fn(App) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let (app, call) = (app.clone(), call.clone());
        let share = count / callers + u64::from(caller < count % callers);
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                call(app.clone()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}

/// Sends `count` `demo.add(1, 2)` tasks from `callers` concurrent callers of
/// `send_task(..).apply()`; returns the time until the last one is confirmed.
pub(crate) async fn publish(app: &App, count: u64, callers: u64) -> anyhow::Result<Duration> {
    fan_out(app, count, callers, |app| async move {
        app.send_task("demo.add").args((1, 2)).apply().await?;
        Ok(())
    })
    .await
}

/// Sends `count` `demo.add(1, 2)` tasks with one `send_many` call; returns
/// the time until the last one is confirmed.
pub(crate) async fn send_many(app: &App, count: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let calls = (0..count).map(|_| TaskCall::<Value>::new("demo.add", vec![json!(1), json!(2)]));
    let results = app.send_many(calls).await?;
    anyhow::ensure!(
        results.len() as u64 == count,
        "send_many returned {} results",
        results.len()
    );
    Ok(start.elapsed())
}

/// A Celeriac worker running in this process.
pub(crate) struct InProcessWorker {
    stats: Arc<Stats>,
    stop: oneshot::Sender<()>,
    run: JoinHandle<Result<Summary, WorkerError>>,
}

/// How the in-process worker is configured.
#[derive(Debug, Clone)]
pub(crate) struct WorkerShape {
    pub(crate) concurrency: usize,
    pub(crate) ack_batch: u16,
    /// The result backend URL results are stored in, if any.
    pub(crate) results: Option<String>,
    /// Send task events (`-E`).
    pub(crate) task_events: bool,
    /// Record Prometheus metrics (as `--metrics-addr` does; nothing scrapes).
    pub(crate) metrics: bool,
    /// The window of the consumer that moves a burst of ETA tasks.
    pub(crate) eta_burst_window: u16,
}

impl WorkerShape {
    /// A worker with default settings at `concurrency`: coalesced acks
    /// (batches of 32), no result backend, no events, no metrics.
    pub(crate) fn plain(concurrency: usize) -> WorkerShape {
        WorkerShape {
            concurrency,
            ack_batch: 32,
            results: None,
            task_events: false,
            metrics: false,
            eta_burst_window: celeriac_worker::BURST_WINDOW,
        }
    }
}

/// How long the benchmark's stored results live: long enough to be read,
/// short enough that a run leaves nothing behind for long.
const BENCH_RESULT_EXPIRES: Duration = Duration::from_secs(600);

impl InProcessWorker {
    /// Starts a worker with the demo tasks consuming `queue`.
    pub(crate) async fn start(url: &str, queue: &str, shape: WorkerShape) -> anyhow::Result<Self> {
        let mut builder = App::builder().broker_url(url).default_queue(queue);
        if let Some(backend) = &shape.results {
            builder = builder
                .result_backend(backend.clone())
                .result_expires(BENCH_RESULT_EXPIRES);
        }
        let app = celeriac_demo::tasks::register(builder).build().await?;
        let config = WorkerConfig {
            queues: vec![queue.to_owned()],
            concurrency: shape.concurrency,
            ack_batch: shape.ack_batch,
            task_events: shape.task_events,
            eta_burst_window: shape.eta_burst_window,
            hostname: format!("celeriac-bench@{}", std::process::id()),
            // As the Python baseline runs (`--without-mingle`): a drain is
            // timed from the worker's start, and mingling waits a second
            // for replies no other worker here sends.
            mingle: false,
            ..WorkerConfig::default()
        };
        let worker = Worker::new(app, config);
        if shape.metrics {
            // Asking for the handle turns recording on.
            let _ = worker.metrics();
        }
        let stats = worker.stats();
        let (stop, stopped) = oneshot::channel();
        let run = tokio::spawn(worker.run_until(async {
            let _ = stopped.await;
        }));
        Ok(InProcessWorker { stats, stop, run })
    }

    /// Waits until `count` tasks have succeeded; fails on any other outcome.
    pub(crate) async fn wait_for_successes(&self, count: u64) -> anyhow::Result<()> {
        loop {
            let summary = self.stats.summary();
            if summary.failed + summary.dead_lettered + summary.retried > 0 {
                bail!("benchmark tasks did not all succeed: {summary:?}");
            }
            if summary.succeeded >= count {
                return Ok(());
            }
            if self.run.is_finished() {
                bail!("the worker stopped early");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Shuts the worker down gracefully.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.run.await.context("the worker task panicked")??;
        Ok(())
    }
}

/// Sends `count` `demo.add` tasks from `callers` concurrent callers, each
/// waiting for its result before sending the next; returns the total time.
pub(crate) async fn round_trips(app: &App, count: u64, callers: u64) -> anyhow::Result<Duration> {
    fan_out(app, count, callers, |app| async move {
        let result = app.send_task("demo.add").args((1, 2)).apply().await?;
        let sum: i64 = result.get_as(Duration::from_secs(60)).await?;
        anyhow::ensure!(sum == 3, "demo.add(1, 2) returned {sum}");
        Ok(())
    })
    .await
}

/// Latencies of one task, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Latency {
    /// From just before `apply` to the task starting in the worker.
    pub(crate) to_start: f64,
    /// From just before `apply` to the result being read by the producer.
    pub(crate) to_result: f64,
}

/// Sends `count` `demo.now` tasks at `rate` per second (open loop: sends do
/// not wait for results) and measures each one's latencies.
pub(crate) async fn latencies(app: &App, count: u64, rate: f64) -> anyhow::Result<Vec<Latency>> {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut probes = Vec::new();
    for _ in 0..count {
        ticker.tick().await;
        let app = app.clone();
        probes.push(tokio::spawn(async move {
            let sent = unix_seconds();
            let result = app.send_task("demo.now").apply().await?;
            let started: f64 = result.get_as(Duration::from_secs(60)).await?;
            let received = unix_seconds();
            anyhow::Ok(Latency {
                to_start: (started - sent) * 1000.0,
                to_result: (received - sent) * 1000.0,
            })
        }));
    }
    let mut latencies = Vec::with_capacity(probes.len());
    for probe in probes {
        latencies.push(probe.await??);
    }
    Ok(latencies)
}

fn unix_seconds() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}
