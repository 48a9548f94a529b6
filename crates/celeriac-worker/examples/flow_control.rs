//! Flow control with a worker in this process: a rate-limited task beside
//! an unlimited one on the same queue, a unique task sent in a burst, and a
//! task id that already succeeded sent again.
//!
//! ```sh
//! cargo run -p celeriac-worker --example flow_control
//! # rate limit: 100 resize tasks done in 0.87 s, while the partner API was called 5 times
//! # rate limit: 15 partner API calls, 0.200 s apart (median; the closest two 0.199 s; limit 5/s)
//! # unique: 50 sends while it was queued gave 1 task id; it ran 1 time(s)
//! # skip_succeeded: charged 1 time(s) for 3 messages with one task id (2 acked without running)
//! ```
//!
//! The worker consumes a queue of its own (`CELERIAC_QUEUE` names another)
//! from RabbitMQ at Celery's default URL, and keeps results and locks in
//! Redis at 127.0.0.1:6379 (`CELERIAC_BROKER_URL` and
//! `CELERIAC_RESULT_BACKEND` say otherwise); the queue is deleted at the end.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use celeriac::{App, task};
use celeriac_worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

static SYNCS: AtomicU32 = AtomicU32::new(0);
static CHARGES: AtomicU32 = AtomicU32::new(0);

/// A call to a partner whose API allows five requests a second. Returns
/// when it ran (seconds since the Unix epoch).
#[task(name = "example.call_partner", rate_limit = "5/s")]
async fn call_partner(order: u32) -> f64 {
    let _ = order;
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

/// Local work with no limit.
#[task(name = "example.resize")]
async fn resize(width: u32) -> u32 {
    width / 2
}

/// Work that must not pile up: one sync per account queued at a time.
#[task(name = "example.sync_account", unique_for = 60)]
async fn sync_account(account: u32) -> u32 {
    SYNCS.fetch_add(1, Ordering::SeqCst);
    account
}

/// A side effect that must happen once per task id.
#[task(name = "example.charge", skip_succeeded = true)]
async fn charge(cents: u32) -> u32 {
    CHARGES.fetch_add(1, Ordering::SeqCst);
    cents
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = std::env::var("CELERIAC_QUEUE")
        .unwrap_or_else(|_| format!("celeriac-example-flow.{}", std::process::id()));
    let backend = std::env::var("CELERIAC_RESULT_BACKEND")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let app = App::builder()
        .result_backend(&backend)
        .default_queue(queue.clone())
        .task(call_partner)
        .task(resize)
        .task(sync_account)
        .task(charge)
        .build()
        .await?;

    // Sent before the worker starts: all of it is queued at once.
    let unique_id = unique_burst_is_sent_once(&app).await?;

    let stop = CancellationToken::new();
    let config = WorkerConfig {
        queues: vec![queue.clone()],
        ..WorkerConfig::default()
    };
    let worker = Worker::new(app.clone(), config);
    let stats = worker.stats();
    let worker = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));
    // Let the worker declare its delay queues (it does so as it starts).
    tokio::time::sleep(Duration::from_secs(1)).await;

    rate_limit_holds_up_nothing(&app).await?;
    app.async_result::<u32>(unique_id)
        .get(Duration::from_secs(30))
        .await?;
    let syncs = SYNCS.load(Ordering::SeqCst);
    println!("unique: 50 sends while it was queued gave 1 task id; it ran {syncs} time(s)");
    succeeded_id_runs_once(&app).await?;
    // The two later messages are acked without running: wait for that.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats.summary().skipped_succeeded < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let charges = CHARGES.load(Ordering::SeqCst);
    let skipped = stats.summary().skipped_succeeded;
    println!(
        "skip_succeeded: charged {charges} time(s) for 3 messages with one task id \
         ({skipped} acked without running)"
    );

    stop.cancel();
    worker.await??;
    app.broker().delete_queue(&queue).await?;
    app.broker().delete_exchange(&queue).await?;
    app.close().await;
    Ok(())
}

/// Fifteen rate-limited calls, then 100 unlimited tasks behind them.
async fn rate_limit_holds_up_nothing(app: &App) -> Result<(), Box<dyn std::error::Error>> {
    // The limited calls first: a Celery worker would keep them in its
    // prefetch window, and the resizes behind them would wait.
    let started = Instant::now();
    let mut calls = Vec::new();
    for order in 0..15 {
        calls.push(call_partner::new(order).apply_async(app).await?);
    }
    let mut resizes = Vec::new();
    for width in 0..100 {
        resizes.push(resize::new(width).apply_async(app).await?);
    }
    for sent in &resizes {
        sent.get(Duration::from_secs(30)).await?;
    }
    let resized_in = started.elapsed();
    let resized_at = chrono::Utc::now().timestamp_micros() as f64 / 1e6;

    let mut ran = Vec::new();
    for sent in &calls {
        ran.push(sent.get(Duration::from_secs(60)).await?);
    }
    ran.sort_by(f64::total_cmp);
    let before = ran.iter().filter(|&&at| at <= resized_at).count();
    println!(
        "rate limit: 100 resize tasks done in {:.2} s, while the partner API was called \
         {before} times",
        resized_in.as_secs_f64()
    );
    let mut gaps: Vec<f64> = ran.windows(2).map(|pair| pair[1] - pair[0]).collect();
    gaps.sort_by(f64::total_cmp);
    println!(
        "rate limit: {} partner API calls, {:.3} s apart (median; the closest two {:.3} s; \
         limit 5/s)",
        ran.len(),
        gaps[gaps.len() / 2],
        gaps[0]
    );
    Ok(())
}

/// Fifty sends of one unique task before any worker runs it; its id.
async fn unique_burst_is_sent_once(app: &App) -> Result<String, Box<dyn std::error::Error>> {
    // An account of this run, so a lock left by a killed earlier run (it
    // expires after a minute) does not answer for it.
    let account = std::process::id();
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(
            sync_account::new(account)
                .apply_async(app)
                .await?
                .id()
                .to_owned(),
        );
    }
    ids.dedup();
    if ids.len() != 1 {
        return Err(format!("50 sends of a unique task gave {} ids", ids.len()).into());
    }
    Ok(ids.remove(0))
}

/// One task id sent three times, one after the other.
async fn succeeded_id_runs_once(app: &App) -> Result<(), Box<dyn std::error::Error>> {
    let id = format!("charge-{}", std::process::id());
    for _ in 0..3 {
        charge::new(1_999)
            .task_id(&id)
            .apply_async(app)
            .await?
            .get(Duration::from_secs(30))
            .await?;
    }
    Ok(())
}
