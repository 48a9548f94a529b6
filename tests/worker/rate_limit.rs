//! Rate limits set wrongly stop the worker at start, and deliveries back
//! late for their slots start one interval apart. (A limited task's rate
//! is measured alone, in `tests/faults/rate_limit.rs`.)

use anyhow::{Result, ensure};
use celeriac::{App, TaskCall};
use celeriac_demo::tasks as demo;
use celeriac_tests::worker::{RunningWorker, cleanup, ensure_starts_spaced, send_back_late};
use celeriac_tests::{broker_url, require_redis, unique};
use celeriac_worker::{Worker, WorkerConfig, WorkerError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_for_a_task_the_worker_lacks_stops_it_at_start() -> Result<()> {
    let app = demo::register(App::builder())
        .broker_url(broker_url())
        .build()
        .await?;
    for (task, rate, expected) in [
        ("demo.nope", "1/s", "demo.nope, which is not registered"),
        (
            "demo.add",
            "ten/s",
            "rate_limits for demo.add: Invalid rate limit string",
        ),
    ] {
        let config = WorkerConfig {
            queues: vec![unique("rate-limit-config")],
            rate_limits: [(task.to_owned(), rate.to_owned())].into(),
            ..WorkerConfig::default()
        };
        match Worker::new(app.clone(), config).run_until(async {}).await {
            Err(WorkerError::Config(why)) => ensure!(
                why.contains(expected),
                "the error for {task}={rate} does not say {expected:?}: {why}"
            ),
            other => anyhow::bail!("{task}={rate} started a worker: {other:?}"),
        }
    }
    app.close().await;
    Ok(())
}

/// The header a delivery deferred for its per-worker rate limit carries
/// its slot in (microseconds since the Unix epoch).
const RATE_SLOT_HEADER: &str = "x-celeriac-rate-slot";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_back_late_for_their_slots_start_one_interval_apart() -> Result<()> {
    // What a loaded host does to deferred deliveries, made on purpose:
    // thirty of them come back together, every slot already passed (the
    // newest 0.55 s ago, the oldest 2 s ago: well within the five seconds
    // a carried slot is honoured), all within the worker's prefetch
    // window. Each may run as far as its slot goes; their starts must
    // still be spaced.
    const RATE: f64 = 10.0;
    const RUNS: usize = 30;
    let redis = require_redis()?;
    let queue = unique("rate-limit-late");
    let app = demo::register(App::builder())
        .broker_url(broker_url())
        .result_backend(&redis)
        .build()
        .await?;
    let sent = send_back_late(&app, RUNS, RATE_SLOT_HEADER, || {
        TaskCall::new("demo.now", vec![]).queue(&queue)
    })
    .await?;
    let config = WorkerConfig {
        queues: vec![queue.clone()],
        concurrency: 8,
        rate_limits: [("demo.now".to_owned(), format!("{RATE}/s"))].into(),
        ..WorkerConfig::default()
    };
    let worker = RunningWorker::run(app.clone(), config);
    // Unspaced, all thirty start within a fraction of a second.
    let spaced = ensure_starts_spaced("late deliveries", &sent, RATE).await;
    let summary = worker.stop().await?;
    spaced?;
    ensure!(
        summary.succeeded == RUNS as u64 && summary.failed == 0 && summary.dead_lettered == 0,
        "expected {RUNS} runs, none failed or dead-lettered; the worker says {summary:?}"
    );
    cleanup(&app, &queue).await;
    app.close().await;
    Ok(())
}
