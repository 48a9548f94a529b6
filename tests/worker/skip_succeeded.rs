//! `skip_succeeded`: a message whose task id already succeeded is acked
//! without running the task again; without the option it runs each time.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use celeriac::{App, TaskCall, task};
use celeriac_tests::worker::cleanup;
use celeriac_tests::{broker_url, require_redis, unique};
use celeriac_worker::{Worker, WorkerConfig, WorkerError};
use tokio_util::sync::CancellationToken;

/// Messages sent again with the id of a task that already succeeded.
const AGAIN: u32 = 100;

static CHARGES: AtomicU32 = AtomicU32::new(0);
static NOTES: AtomicU32 = AtomicU32::new(0);

/// A side effect that must happen once per task id.
#[task(name = "tests.skip.charge", skip_succeeded = true)]
async fn charge(order: u32) -> u32 {
    CHARGES.fetch_add(1, Ordering::SeqCst);
    order
}

/// The same, without the option: the control.
#[task(name = "tests.skip.note")]
async fn note(order: u32) -> u32 {
    NOTES.fetch_add(1, Ordering::SeqCst);
    order
}

/// Waits until `done` says so, or fails after a minute with `what`.
async fn eventually(what: &str, done: impl Fn() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        if tokio::time::Instant::now() > deadline {
            bail!("waited a minute for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Sends `task` once with `id`, waits for its result, then sends it
/// [`AGAIN`] more times with the same id.
async fn send_again(app: &App, queue: &str, task: &str, id: &str) -> Result<()> {
    let first = app
        .send_many([TaskCall::<u32>::new(task, vec![7.into()])
            .task_id(id)
            .queue(queue)])
        .await?;
    ensure!(first[0].get(Duration::from_secs(30)).await? == 7);
    app.send_many((0..AGAIN).map(|_| {
        TaskCall::<u32>::new(task, vec![7.into()])
            .task_id(id)
            .queue(queue)
    }))
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_id_that_already_succeeded_is_not_run_again() -> Result<()> {
    let redis = require_redis()?;
    let queue = unique("skip-succeeded");
    let app = App::builder()
        .broker_url(broker_url())
        .result_backend(&redis)
        .task(charge)
        .task(note)
        .build()
        .await?;
    let worker = Worker::new(
        app.clone(),
        WorkerConfig {
            queues: vec![queue.clone()],
            concurrency: 8,
            hostname: format!("test@{queue}"),
            ..WorkerConfig::default()
        },
    );
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));

    // The control: the same id sent again runs again.
    send_again(&app, &queue, "tests.skip.note", &unique("task-id")).await?;
    eventually("the note task's runs", || {
        NOTES.load(Ordering::SeqCst) == AGAIN + 1
    })
    .await?;

    send_again(&app, &queue, "tests.skip.charge", &unique("task-id")).await?;
    eventually(
        "the charge task's messages to be acked without running",
        || stats.summary().skipped_succeeded == u64::from(AGAIN),
    )
    .await?;
    stop.cancel();
    let summary = running.await??;
    println!("{summary:?}");
    ensure!(
        CHARGES.load(Ordering::SeqCst) == 1,
        "the charge task ran {} times for one id",
        CHARGES.load(Ordering::SeqCst)
    );
    ensure!(
        summary.succeeded == u64::from(AGAIN + 2)
            && summary.skipped_succeeded == u64::from(AGAIN)
            && summary.failed == 0
            && summary.dead_lettered == 0,
        "expected {} runs and {AGAIN} skipped: {summary:?}",
        AGAIN + 2
    );
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_succeeded_needs_results_kept_by_id() -> Result<()> {
    let app = App::builder()
        .broker_url(broker_url())
        .result_backend("rpc://")
        .task(charge)
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![unique("skip-succeeded-rpc")],
        ..WorkerConfig::default()
    };
    match Worker::new(app.clone(), config).run_until(async {}).await {
        Err(WorkerError::Config(why)) => ensure!(
            why.contains("tests.skip.charge has skip_succeeded") && why.contains("redis://"),
            "the error does not name the task and the fix: {why}"
        ),
        other => bail!("a worker started with skip_succeeded over rpc://: {other:?}"),
    }
    app.close().await;
    Ok(())
}
