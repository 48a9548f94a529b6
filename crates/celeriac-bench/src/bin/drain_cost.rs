//! One worker drain in one process, for counting its instructions with
//! callgrind (repeatable where timings on a shared 2-core machine are not):
//! fills a fresh queue with `--tasks` no-op `demo.add` messages, drains it
//! with an in-process worker, and exits. `--publish-only` stops after the
//! fill, so the drain's own count is the difference of two runs.
//!
//! ```sh
//! cargo build --release -p celeriac-bench --bin drain_cost
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/plain.cg target/release/drain_cost --tasks 5000
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/metrics.cg target/release/drain_cost --tasks 5000 --metrics
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/fill.cg target/release/drain_cost --tasks 5000 --publish-only
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/raw.cg target/release/drain_cost --tasks 5000 --raw
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/info.cg target/release/drain_cost --tasks 5000 --log info >/dev/null
//! grep -h '^summary' /tmp/*.cg
//! ```
//!
//! `--payload 1000000 --task demo.measure` fills the queue with one-document
//! tasks of that body size instead (the `payload` scenario's bodies; the
//! task is `demo.echo` or `demo.measure`), for a large body's count.
//!
//! `--raw-fill` fills the queue with raw lapin instead of `send_many` (the
//! same bytes, the same confirm window), so two `--publish-only` runs give
//! `send_many`'s instructions per task against raw lapin's (less a run
//! with `--tasks 0`, for what connecting costs).
//!
//! `--apply 1000` fills with that many concurrent callers of
//! `send_task(..).apply()` instead (the `publish` scenario's producers), and
//! `--raw-fill --window 1000` with raw lapin keeping as many confirms in
//! flight, so two `--publish-only` runs give `apply()`'s instructions per
//! task against raw lapin's at the same window.
//!
//! `--publish-only --keep-queue NAME` fills `NAME` and leaves it filled,
//! for a worker process to drain under a profiler
//! (`scripts/flamegraph-drain`).
//!
//! `--log info` logs as the worker CLI does (its own subscriber, its own
//! filter), so the row measures what a deployed worker pays per task.
//! `--raw` drains the same messages with raw lapin instead (the
//! benchmark's multi-ack baseline: the worker's window, one multiple ack
//! per ack batch), so the two drains' counts over the fill's give the
//! worker's instructions per task against raw lapin's.

use std::time::Duration;

use anyhow::{Context as _, bail};
use celeriac::{App, TaskCall};
use celeriac_broker::Queue;
use celeriac_protocol::TaskMessage;
use clap::Parser;
use serde_json::{Value, json};

// The benchmark's raw-lapin baselines; this binary uses one of them.
#[allow(dead_code)]
#[path = "../raw.rs"]
mod raw;

use raw::RawAck;

// The payload scenario's document argument.
#[path = "../document.rs"]
mod document;

/// How many confirms `App::send_many` keeps in flight.
const SEND_MANY_WINDOW: usize = 5_000;

#[derive(Debug, Parser)]
struct Args {
    /// Broker URL.
    #[arg(long, default_value = "amqp://guest:guest@localhost:5672//")]
    broker: String,
    /// Tasks to fill the queue with and drain.
    #[arg(long, default_value_t = 5_000)]
    tasks: u64,
    /// Worker concurrency.
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Record the worker's Prometheus metrics.
    #[arg(long)]
    metrics: bool,
    /// Record the per-task spans (the worker's log subscriber, every line
    /// off).
    #[arg(long)]
    spans: bool,
    /// Log as the worker CLI does, at this level (e.g. `info`), to stdout.
    #[arg(long, conflicts_with = "spans")]
    log: Option<String>,
    /// Fill the queue with one-document tasks whose bodies are about this
    /// many bytes (as the `payload` scenario's) instead of `demo.add(1, 2)`.
    #[arg(long)]
    payload: Option<usize>,
    /// The task the `--payload` documents are sent to.
    #[arg(long, default_value = "demo.measure", requires = "payload",
          value_parser = ["demo.measure", "demo.echo"])]
    task: String,
    /// Fill the queue, then exit without draining it.
    #[arg(long)]
    publish_only: bool,
    /// Fill this queue (declared as Celery declares one) instead of a
    /// fresh one, and leave it filled, for a worker process to drain.
    #[arg(long, requires = "publish_only")]
    keep_queue: Option<String>,
    /// Fill with raw lapin instead of `App::send_many`: one call's message,
    /// encoded once and published `--tasks` times (so one task id, and no
    /// enqueue-time header, where `send_many`'s each have their own),
    /// persistent and `mandatory`, with confirms, `--window` unconfirmed
    /// at most (5,000 unless given, as `send_many` keeps them). Only with
    /// `--publish-only`: a
    /// worker would run the same task id again and again.
    #[arg(long, requires = "publish_only", conflicts_with = "apply")]
    raw_fill: bool,
    /// How many confirms `--raw-fill` keeps in flight (`send_many`'s
    /// window unless given; give `--apply`'s caller count to compare with
    /// it).
    #[arg(long, requires = "raw_fill", default_value_t = SEND_MANY_WINDOW)]
    window: usize,
    /// Fill from this many concurrent callers of `send_task(..).apply()`
    /// (`demo.add(1, 2)` only) instead of one `send_many` call.
    #[arg(long, conflicts_with = "payload")]
    apply: Option<u64>,
    /// Drain with a raw lapin consumer (the worker's prefetch window,
    /// one multiple ack per 32 deliveries) instead of the worker.
    #[arg(long, conflicts_with_all = ["publish_only", "metrics", "spans", "log"])]
    raw: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.spans {
        // The worker's own log subscriber with the task span on and every
        // line off: what recording the spans costs, without printing any.
        celeriac_worker::cli::init_logging("off,celeriac_worker::task_span=info");
    }
    if let Some(level) = &args.log {
        celeriac_worker::cli::init_logging(level);
    }
    let queue = args
        .keep_queue
        .clone()
        .unwrap_or_else(|| format!("celeriac-drain-cost.{}", std::process::id()));
    let app = celeriac_demo::tasks::register(App::builder())
        .broker_url(args.broker.clone())
        .queue(Queue::celery_default(queue.clone()))
        .default_queue(queue.clone())
        .build()
        .await?;
    let (task, arguments) = match args.payload {
        Some(bytes) => (args.task.as_str(), vec![document::document(bytes)]),
        None => ("demo.add", vec![json!(1), json!(2)]),
    };
    if args.raw_fill {
        // The app declares its queues on its first send; raw lapin sends
        // none, and would see its first messages returned unroutable.
        app.broker()
            .declare(&Queue::celery_default(queue.clone()))
            .await?;
        let id = uuid::Uuid::new_v4().to_string();
        let message = TaskMessage::new(task, id).with_args(arguments).encode()?;
        let connection = raw::connect(&args.broker).await?;
        raw::publish(&connection, &queue, &message, args.tasks, args.window).await?;
    } else if let Some(callers) = args.apply {
        apply_from(&app, args.tasks, callers).await?;
    } else {
        let calls = (0..args.tasks).map(|_| TaskCall::<Value>::new(task, arguments.clone()));
        app.send_many(calls).await.context("filling the queue")?;
    }
    let config = celeriac_worker::WorkerConfig {
        queues: vec![queue.clone()],
        concurrency: args.concurrency,
        hostname: format!("drain-cost@{}", std::process::id()),
        remote_control: false,
        heartbeat: None,
        ..celeriac_worker::WorkerConfig::default()
    };
    if args.raw {
        // The benchmark's own multi-ack baseline, with the worker's window
        // and its ack batch (at most half the window).
        let prefetch = config.prefetch();
        let every = u64::from((prefetch / 2).clamp(1, 32));
        let connection = raw::connect(&args.broker).await?;
        raw::drain(
            &connection,
            &queue,
            args.tasks,
            prefetch,
            RawAck::Every(every),
        )
        .await?;
    }
    if args.publish_only || args.raw {
        if args.keep_queue.is_none() {
            app.broker().delete_queue(&queue).await?;
        }
        app.close().await;
        return Ok(());
    }
    let worker = celeriac_worker::Worker::new(app.clone(), config);
    if args.metrics {
        let _ = worker.metrics();
    }
    let stats = worker.stats();
    let stop = tokio_util::sync::CancellationToken::new();
    let run = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    while stats.summary().succeeded < args.tasks {
        if run.is_finished() || tokio::time::Instant::now() > deadline {
            bail!("the drain stopped early: {:?}", stats.summary());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    run.await??;
    app.broker().delete_queue(&queue).await?;
    app.close().await;
    println!(
        "{}",
        json!({"drained": args.tasks, "summary": format!("{:?}", stats.summary())})
    );
    Ok(())
}

/// Sends `tasks` `demo.add(1, 2)` tasks from `callers` concurrent callers
/// of `send_task(..).apply()`, as the `publish` scenario does.
async fn apply_from(app: &App, tasks: u64, callers: u64) -> anyhow::Result<()> {
    let callers = callers.clamp(1, tasks.max(1));
    let mut running = Vec::new();
    for caller in 0..callers {
        let app = app.clone();
        let share = tasks / callers + u64::from(caller < tasks % callers);
        running.push(tokio::spawn(async move {
            for _ in 0..share {
                app.send_task("demo.add").args((1, 2)).apply().await?;
            }
            anyhow::Ok(())
        }));
    }
    for caller in running {
        caller.await??;
    }
    Ok(())
}
