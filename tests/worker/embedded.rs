//! A worker embedded in a program that also sends tasks, on one shared
//! `App`, and the `TestWorker` harness for testing user tasks.

use std::time::Duration;

use anyhow::{Result, ensure};
use celeriac::{App, TaskResult, task};
use celeriac_tests::{broker_url, unique};
use celeriac_worker::testing::TestWorker;
use celeriac_worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

#[task(name = "test.shop.total")]
async fn total(prices: Vec<u32>) -> TaskResult<u32> {
    Ok(prices.iter().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_app_sends_tasks_and_runs_the_worker() -> Result<()> {
    let queue = unique("embedded");
    let app = App::builder()
        .broker_url(broker_url())
        .result_backend("rpc://")
        .default_queue(queue.clone())
        .task(total)
        .build()
        .await?;
    let stop = CancellationToken::new();
    let config = WorkerConfig {
        queues: vec![queue.clone()],
        concurrency: 2,
        ..WorkerConfig::default()
    };
    let worker =
        tokio::spawn(Worker::new(app.clone(), config).run_until(stop.clone().cancelled_owned()));
    let sum = total::new(vec![1, 2, 3]).apply_async(&app).await?;
    ensure!(sum.get(Duration::from_secs(30)).await? == 6);
    stop.cancel();
    let summary = worker.await??;
    ensure!(summary.succeeded == 1, "{summary:?}");
    // The worker stopped; the app (and its connection) still serves the
    // rest of the program.
    let later = total::new(vec![4]).apply_async(&app).await?;
    ensure!(
        app.broker().queue_counts(&queue).await? == Some((1, 0)),
        "the send after the worker stopped waits in the queue"
    );
    let _ = later;
    app.broker().delete_queue(&queue).await?;
    app.broker().delete_exchange(&queue).await?;
    app.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_harness_runs_tasks_through_a_real_worker() -> Result<()> {
    let worker = TestWorker::start(App::builder().result_backend("rpc://").task(total)).await?;
    let queue = worker.queue().to_owned();
    let sum = total::new(vec![3, 4]).apply_async(worker.app()).await?;
    ensure!(sum.get(Duration::from_secs(30)).await? == 7);
    let bad = worker
        .app()
        .send_task("test.shop.total")
        .args((["not", "numbers"],))
        .apply()
        .await?;
    let failure = celeriac_tests::worker::failure(bad.get(Duration::from_secs(30)).await)?;
    ensure!(failure.exc_type == "TypeError", "{failure}");
    let summary = worker.stop().await?;
    ensure!(summary.succeeded == 1 && summary.failed == 1, "{summary:?}");
    let check = App::builder().broker_url(broker_url()).build().await?;
    ensure!(
        check.broker().queue_counts(&queue).await?.is_none(),
        "the harness removed its queue"
    );
    check.close().await;
    Ok(())
}
