//! The worker under broker conditions that break Celery deployments.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::App;
use celeriac_broker::{AckOutcome, ConsumeOptions, Queue};
use celeriac_demo::tasks as demo;
use celeriac_protocol::TaskMessage;
use celeriac_tests::scrape::{free_local_addr, http_get, sample, wait_for_listener};
use celeriac_tests::worker::RunningWorker;
use celeriac_tests::{ConsumerTimeout, broker_url, disturbing, rabbitmqctl, unique};
use celeriac_worker::WorkerConfig;

/// Messages waiting in delay level `level` (`celery_delayed_<level>`, where
/// a delay of 2^level up to 2^(level+1) seconds spends its first 2^level
/// seconds). One level only: other tests' short delays pass through the low
/// levels while this runs.
///
/// The delay levels are quorum queues, whose `list_queues` count is the
/// one their last metrics tick reported (every 5 s or so): a message that
/// has arrived may not be counted yet; see [`wait_for_delayed`].
fn delayed_messages(level: u32) -> Result<u64> {
    let wanted = format!("celery_delayed_{level}");
    let listing = rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages",
    ])?;
    Ok(listing
        .lines()
        .filter_map(|line| line.split_once(char::is_whitespace))
        .filter(|(name, _)| *name == wanted)
        .filter_map(|(_, n)| n.trim().parse::<u64>().ok())
        .sum())
}

/// Waits up to 30 s (several quorum metrics ticks) for delay level `level`
/// to report `wanted` messages, and returns the last count seen.
async fn wait_for_delayed(level: u32, wanted: u64) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let count = delayed_messages(level)?;
        if count == wanted || tokio::time::Instant::now() >= deadline {
            return Ok(count);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_far_eta_survives_a_short_consumer_timeout() -> Result<()> {
    let _serial = disturbing().await;
    let _timeout = ConsumerTimeout::set(2_000)?;
    let queue = Queue::celery_default(unique("worker-consumer-timeout"));
    let client = App::builder()
        .broker_url(broker_url())
        .result_backend("rpc://")
        .default_queue(queue.name.clone())
        .build()
        .await?;
    client.broker().declare(&queue).await?;
    // Two hours (7,200 s, just under 2^13) wait in level 12 first.
    let far_level = 12;
    let delayed_before = delayed_messages(far_level)?;

    // Control: a delivery held unacked past the timeout loses its channel,
    // which is what kills Celery workers holding long ETAs.
    let control = Queue::celery_default(unique("consumer-timeout-control"));
    client.broker().declare(&control).await?;
    client
        .broker()
        .publish("", &control.name, &TaskMessage::new("x", "held").encode()?)
        .await?;
    let mut holder = client
        .broker()
        .consume(ConsumeOptions {
            queues: vec![control.clone()],
            prefetch: 1,
        })
        .await?;
    let held = tokio::time::timeout(Duration::from_secs(10), holder.next())
        .await?
        .context("no delivery")?;

    let app = demo::register(App::builder())
        .broker_url(broker_url())
        .result_backend("rpc://")
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![queue.name.clone()],
        concurrency: 2,
        ..WorkerConfig::default()
    };
    let worker = RunningWorker::run(app, config);

    let far = client
        .send_task("demo.now")
        .eta(chrono::Utc::now() + chrono::Duration::hours(2))
        .apply()
        .await?;
    // Well past the consumer timeout (checked every 500 ms here).
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(
        held.ack().await? == AckOutcome::Void,
        "control: the broker did not enforce the shortened consumer_timeout"
    );

    let sum: i64 = client
        .send_task("demo.add")
        .args((20, 22))
        .apply()
        .await?
        .get_as(Duration::from_secs(30))
        .await?;
    ensure!(sum == 42, "the worker stopped working");
    ensure!(!far.ready().await?, "the 2-hour ETA task ran early");
    let delayed_after = wait_for_delayed(far_level, delayed_before + 1).await?;
    ensure!(
        delayed_after == delayed_before + 1,
        "the far ETA is not waiting in delay level {far_level}: \
         {delayed_before} messages there before, {delayed_after} after"
    );
    let summary = worker.stop().await?;
    ensure!(
        summary.redelivered == 0,
        "messages were redelivered (a channel was closed): {summary:?}"
    );

    // Leave nothing behind: the delayed copy would come back in two hours.
    for level in 0..28 {
        let _ = rabbitmqctl(&["purge_queue", &format!("celery_delayed_{level}")]);
    }
    holder.stop();
    for name in [&queue.name, &control.name] {
        client.broker().delete_queue(name).await?;
        client.broker().delete_exchange(name).await?;
    }
    client.close().await;
    Ok(())
}

/// `/readyz` says not ready, with the reason, while RabbitMQ's connections
/// are closed, and ready again once the worker has reconnected and consumes
/// its queue again; the reconnect is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_broker_connection() -> Result<()> {
    let _serial = disturbing().await;
    let queue = Queue::celery_default(unique("worker-readyz"));
    let addr = free_local_addr()?;
    let mut worker = RunningWorker::start(App::builder(), &queue, |config| {
        config.metrics_addr = Some(addr);
    })
    .await?;
    worker.while_running(wait_for_listener(addr)).await??;
    let (status, body) = http_get(addr, "/readyz").await?;
    ensure!(status == 200, "before the outage: {status} {body}");

    rabbitmqctl(&["close_all_connections", "celeriac readiness test"])?;
    let not_ready = poll_readyz(addr, 503).await?;
    ensure!(
        not_ready.contains("not connected to RabbitMQ") || not_ready.contains("not consuming"),
        "the not-ready body gives no reason: {not_ready}"
    );
    poll_readyz(addr, 200).await?;
    let (_, metrics) = http_get(addr, "/metrics").await?;
    let reconnects = sample(
        &metrics,
        &format!(
            r#"celeriac_broker_reconnects_total{{hostname="{}"}}"#,
            queue.name
        ),
    );
    ensure!(
        reconnects.is_some_and(|n| n >= 1.0),
        "reconnects: {reconnects:?}\n{metrics}"
    );

    let client = celeriac_tests::worker::client(&queue).await?;
    let sum: i64 = client
        .send_task("demo.add")
        .args((1, 2))
        .apply()
        .await?
        .get_as(Duration::from_secs(30))
        .await?;
    ensure!(sum == 3, "the worker does not work after the reconnect");
    worker.stop().await?;
    celeriac_tests::worker::cleanup(&client, &queue.name).await;
    Ok(())
}

/// Polls `/readyz` (every 100 ms, up to 60 s) until it answers `status`;
/// returns that answer's body.
async fn poll_readyz(addr: std::net::SocketAddr, status: u16) -> Result<String> {
    let mut last = (0, String::new());
    for _ in 0..600 {
        if let Ok(answer) = http_get(addr, "/readyz").await {
            if answer.0 == status {
                return Ok(answer.1);
            }
            last = answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "/readyz never answered {status} in 60 s; last: {} {}",
        last.0,
        last.1
    )
}
