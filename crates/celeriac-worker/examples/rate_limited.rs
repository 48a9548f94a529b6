//! A rate-limited task beside an unlimited one on the same queue: the
//! limited one runs at its rate, the other is not held up behind it.
//!
//! ```sh
//! cargo run -p celeriac-worker --example rate_limited
//! # 100 resize tasks done in 0.87 s, while the partner API was called 5 times
//! # 15 partner API calls, 0.200 s apart (median; the closest two 0.199 s; limit 5/s)
//! ```
//!
//! The worker runs in this process on a queue of its own (`CELERIAC_QUEUE`
//! names another), against RabbitMQ at Celery's default URL unless
//! `CELERIAC_BROKER_URL` says otherwise; the queue is deleted at the end.

use std::time::{Duration, Instant};

use celeriac::{App, task};
use celeriac_worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

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

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = std::env::var("CELERIAC_QUEUE")
        .unwrap_or_else(|_| format!("celeriac-example-rate.{}", std::process::id()));
    let app = App::builder()
        .result_backend("rpc://")
        .default_queue(queue.clone())
        .task(call_partner)
        .task(resize)
        .build()
        .await?;
    let stop = CancellationToken::new();
    let config = WorkerConfig {
        queues: vec![queue.clone()],
        ..WorkerConfig::default()
    };
    let worker =
        tokio::spawn(Worker::new(app.clone(), config).run_until(stop.clone().cancelled_owned()));
    // Let the worker declare its delay queues (it does so as it starts).
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The limited calls first: a Celery worker would keep them in its
    // prefetch window, and the resizes behind them would wait.
    let started = Instant::now();
    let mut calls = Vec::new();
    for order in 0..15 {
        calls.push(call_partner::new(order).apply_async(&app).await?);
    }
    let mut resizes = Vec::new();
    for width in 0..100 {
        resizes.push(resize::new(width).apply_async(&app).await?);
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
        "100 resize tasks done in {:.2} s, while the partner API was called {before} times",
        resized_in.as_secs_f64()
    );
    let mut gaps: Vec<f64> = ran.windows(2).map(|pair| pair[1] - pair[0]).collect();
    gaps.sort_by(f64::total_cmp);
    println!(
        "{} partner API calls, {:.3} s apart (median; the closest two {:.3} s; limit 5/s)",
        ran.len(),
        gaps[gaps.len() / 2],
        gaps[0]
    );

    stop.cancel();
    worker.await??;
    app.broker().delete_queue(&queue).await?;
    app.broker().delete_exchange(&queue).await?;
    app.close().await;
    Ok(())
}
