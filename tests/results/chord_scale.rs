//! A chord of 1,000 members on two worker processes with concurrency 100
//! each: the body is applied exactly once, with the 1,000 results in header
//! order. The body goes to a queue no worker consumes, so the test counts
//! and reads the body messages themselves.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::broker::{ConsumeOptions, Queue};
use celeriac::protocol::DecodeOptions;
use celeriac::{App, Signature, chord};
use celeriac_demo::tasks::add;
use celeriac_tests::worker::{cleanup, demo_worker_with};
use celeriac_tests::{broker_url, require_redis, unique};
use serde_json::Value;

const MEMBERS: i64 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chord_of_1000_on_two_workers_applies_its_body_once_in_order() -> Result<()> {
    let redis = require_redis()?;
    let queue = unique("chord-scale");
    let body_queue = Queue::celery_default(unique("chord-scale-body"));
    let app = App::builder()
        .broker_url(broker_url())
        .result_backend(redis.clone())
        .default_queue(queue.clone())
        .queue(body_queue.clone())
        .build()
        .await?;
    app.broker().declare(&body_queue).await?;
    let workers = [
        demo_worker_with(&queue, &redis, &["-c", "100"])?,
        demo_worker_with(&queue, &redis, &["-c", "100"])?,
    ];
    let body = Signature::new("test.chord_body").with_queue(body_queue.name.clone());
    let result = chord((0..MEMBERS).map(|i| add::s(i, 0)), body)
        .apply_async(&app)
        .await?;

    // Wait for the body message, then long enough for a second one to show.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut bodies = 0;
    while tokio::time::Instant::now() < deadline {
        bodies = app
            .broker()
            .queue_counts(&body_queue.name)
            .await?
            .map_or(0, |(n, _)| n);
        if bodies > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(bodies > 0, "the chord's body was never sent");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let bodies = app
        .broker()
        .queue_counts(&body_queue.name)
        .await?
        .map_or(0, |(n, _)| n);
    println!("chord of {MEMBERS} on two workers: {bodies} body message(s)");
    ensure!(bodies == 1, "the body was sent {bodies} times");

    let mut consumer = app
        .broker()
        .consume(ConsumeOptions {
            queues: vec![body_queue.clone()],
            prefetch: 1,
        })
        .await?;
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await?
        .context("no body message")?;
    let message = delivery.task(&DecodeOptions::default())?;
    delivery.ack().await?;
    consumer.stop();
    ensure!(
        message.headers.id == result.id(),
        "the body carries the chord's id"
    );
    let results = message.body.args.first().cloned().unwrap_or(Value::Null);
    let expected: Vec<Value> = (0..MEMBERS).map(Value::from).collect();
    ensure!(
        results == Value::Array(expected),
        "the body did not get the 1,000 results in header order"
    );
    drop(workers);
    app.broker().delete_queue(&body_queue.name).await?;
    app.broker().delete_exchange(&body_queue.name).await?;
    cleanup(&app, &queue).await;
    Ok(())
}
