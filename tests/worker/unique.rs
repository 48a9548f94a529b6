//! Unique tasks: a send, then a burst of sends of one task while it is
//! queued or running, enqueue it once; once it is done, the next send runs
//! it again.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Result, ensure};
use celeriac::{App, TaskCall, task};
use celeriac_tests::worker::{RunningWorker, cleanup};
use celeriac_tests::{broker_url, require_redis, unique};
use celeriac_worker::WorkerConfig;
use tokio::task::JoinSet;

/// Sends in the burst.
const BURST: usize = 1_000;

static SYNCS: AtomicU32 = AtomicU32::new(0);

/// Work that must not pile up: one per account at a time.
#[task(name = "tests.unique.sync_account", unique_for = 60)]
async fn sync_account(account: u32) -> u32 {
    SYNCS.fetch_add(1, Ordering::SeqCst);
    // Still running while the rest of the burst arrives, however slowly.
    tokio::time::sleep(Duration::from_secs(3)).await;
    account
}

/// Sends `sync_account(account)` `count` times at once; the task ids the
/// sends returned.
async fn burst(app: &App, queue: &str, account: u32, count: usize) -> Result<Vec<String>> {
    let mut sends = JoinSet::new();
    for _ in 0..count {
        let app = app.clone();
        let call =
            TaskCall::<u32>::new("tests.unique.sync_account", vec![account.into()]).queue(queue);
        sends.spawn(async move { app.send_many([call]).await });
    }
    let mut ids = Vec::with_capacity(count);
    while let Some(sent) = sends.join_next().await {
        ids.push(sent??[0].id().to_owned());
    }
    Ok(ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_one_unique_task_runs_it_once_and_a_later_send_runs_again() -> Result<()> {
    let redis = require_redis()?;
    let queue = unique("unique-task");
    let app = App::builder()
        .broker_url(broker_url())
        .result_backend(&redis)
        .task(sync_account)
        .build()
        .await?;
    let worker = RunningWorker::run(
        app.clone(),
        WorkerConfig {
            queues: vec![queue.clone()],
            concurrency: 8,
            ..WorkerConfig::default()
        },
    );

    // Accounts of this run only: a lock left by an earlier run that was
    // killed would still hold the same arguments for up to a minute.
    let account = std::process::id();
    let first = sync_account::new(account)
        .queue(&queue)
        .apply_async(&app)
        .await?
        .id()
        .to_owned();
    let ids = burst(&app, &queue, account, BURST).await?;
    ensure!(
        ids.iter().all(|id| *id == first),
        "{BURST} sends of one unique task gave {} ids other than the first send's",
        ids.iter().filter(|id| **id != first).count()
    );
    // Another account is another task.
    let other = burst(&app, &queue, account + 1, 1).await?;
    ensure!(
        other[0] != first,
        "a task with other arguments got the same id"
    );
    for id in [&first, &other[0]] {
        app.async_result::<u32>(id.clone())
            .get(Duration::from_secs(30))
            .await?;
    }
    ensure!(
        SYNCS.load(Ordering::SeqCst) == 2,
        "expected one run per account, got {}",
        SYNCS.load(Ordering::SeqCst)
    );

    // Done: the lock is released, and the next send is enqueued and runs.
    let again = burst(&app, &queue, account, 1).await?;
    ensure!(
        again[0] != first,
        "a send after the task finished got the old id"
    );
    app.async_result::<u32>(again[0].clone())
        .get(Duration::from_secs(30))
        .await?;
    ensure!(
        SYNCS.load(Ordering::SeqCst) == 3,
        "the later send did not run"
    );

    let summary = worker.stop().await?;
    ensure!(
        summary.succeeded == 3 && summary.failed == 0 && summary.dead_lettered == 0,
        "{summary:?}"
    );
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_task_needs_a_store_for_its_lock() -> Result<()> {
    let app = App::builder()
        .broker_url(broker_url())
        .result_backend("rpc://")
        .task(sync_account)
        .build()
        .await?;
    let queue = unique("unique-rpc");
    let err = sync_account::new(1)
        .queue(&queue)
        .apply_async(&app)
        .await
        .expect_err("a unique task was sent without a lock store");
    ensure!(
        err.to_string().contains("redis://"),
        "the error does not name the fix: {err}"
    );
    cleanup(&app, &queue).await;
    Ok(())
}
