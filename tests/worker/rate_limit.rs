//! Rate limits set wrongly stop the worker at start, and deliveries back
//! late for their slots start one interval apart. (A limited task's rate
//! is measured alone, in `tests/faults/rate_limit.rs`.)

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::{App, HeaderValue, TaskCall};
use celeriac_demo::tasks as demo;
use celeriac_tests::worker::{RunningWorker, busiest_second, cleanup};
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
    let oldest = chrono::Utc::now().timestamp_micros() - 2_000_000;
    let sent = app
        .send_many((0..RUNS).map(|k| {
            let slot = oldest + i64::try_from(k).unwrap_or(0) * 50_000;
            TaskCall::<f64>::new("demo.now", vec![])
                .queue(&queue)
                .header(RATE_SLOT_HEADER, HeaderValue::Int(slot))
        }))
        .await?;
    let config = WorkerConfig {
        queues: vec![queue.clone()],
        concurrency: 8,
        rate_limits: [("demo.now".to_owned(), format!("{RATE}/s"))].into(),
        ..WorkerConfig::default()
    };
    let worker = RunningWorker::run(app.clone(), config);
    let mut times = Vec::with_capacity(RUNS);
    for (i, task) in sent.iter().enumerate() {
        let ran = task
            .get(Duration::from_secs(60))
            .await
            .with_context(|| format!("demo.now #{i} has no result"))?;
        times.push(ran);
    }
    let summary = worker.stop().await?;
    times.sort_by(f64::total_cmp);
    let busiest = busiest_second(&times);
    let span = times[RUNS - 1] - times[0];
    println!(
        "{RUNS} late deliveries at {RATE}/s started over {span:.2} s, at most {busiest} in one \
         second; {} deferred",
        summary.rate_deferred
    );
    // Starts an interval apart (less up to half an interval a late waiter
    // is credited) put at most 11 in a second; one more allows for a task
    // reading the clock a moment after its start. Unspaced, all thirty
    // start within a fraction of a second.
    ensure!(
        busiest <= RATE as usize + 2,
        "{busiest} of the late deliveries started within one second at {RATE}/s"
    );
    ensure!(
        span >= (RUNS - 1) as f64 / RATE * 0.9,
        "{RUNS} starts at {RATE}/s took only {span:.2} s"
    );
    ensure!(
        summary.succeeded == RUNS as u64 && summary.failed == 0 && summary.dead_lettered == 0,
        "expected {RUNS} runs, none failed or dead-lettered; the worker says {summary:?}"
    );
    cleanup(&app, &queue).await;
    app.close().await;
    Ok(())
}
