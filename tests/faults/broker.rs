//! celeriac-broker recovering from faults injected into the real RabbitMQ:
//! every connection closed by the broker (repeatedly), and a broker restart
//! (`rabbitmqctl stop_app` / `start_app`), each while a producer and a
//! consumer stream messages. Every confirmed message must be consumed at
//! least once.
//!
//! These tests disturb the whole broker, so they live in their own test
//! binary (cargo runs test binaries one at a time) and take a lock so they
//! never overlap each other. Each restores the broker before it returns.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac_broker::{Broker, BrokerConfig, ConsumeOptions, Queue};
use celeriac_protocol::TaskMessage;
use celeriac_tests::{broker_url, disturbing, rabbitmqctl, restore_broker, unique};

const MESSAGES: usize = 3_000;
const PUBLISHERS: usize = 8;

async fn connect() -> Result<Broker> {
    let mut config = BrokerConfig::from_url(&broker_url())?;
    config.reconnect_max = Duration::from_millis(500);
    config.publish_wait = Duration::from_secs(90);
    Ok(Broker::connect(config).await?)
}

/// Starts the broker app again if a test stops it and then fails.
struct RestartOnDrop;

impl Drop for RestartOnDrop {
    fn drop(&mut self) {
        restore_broker(&["start_app"]);
    }
}

/// Streams `MESSAGES` messages through a fresh queue while `fault` runs
/// (in a blocking thread) each time the confirmed count passes one of
/// `fault_at`; then accounts for every id.
async fn stream_through(label: &str, fault_at: &[usize], fault: fn() -> Result<()>) -> Result<()> {
    let producer = connect().await?;
    let consumer_broker = connect().await?;
    let name = unique(label);
    let queue = Queue::celery_default(name.clone());
    producer.declare(&queue).await?;
    let mut consumer = consumer_broker
        .consume(ConsumeOptions {
            queues: vec![queue],
            prefetch: 50,
        })
        .await?;

    let seen: Arc<std::sync::Mutex<HashMap<String, usize>>> = Arc::default();
    let consuming = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                let id = match delivery.task(&Default::default()) {
                    Ok(task) => task.headers.id,
                    Err(_) => continue,
                };
                // A Void outcome means the message comes back: counted again.
                let _ = delivery.ack().await;
                *seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(id)
                    .or_default() += 1;
            }
        })
    };

    let confirmed: Arc<std::sync::Mutex<HashSet<String>>> = Arc::default();
    let failed: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let next_index = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut publishers = Vec::new();
    for _ in 0..PUBLISHERS {
        let (producer, name, confirmed, failed, next_index) = (
            producer.clone(),
            name.clone(),
            confirmed.clone(),
            failed.clone(),
            next_index.clone(),
        );
        publishers.push(tokio::spawn(async move {
            loop {
                let i = next_index.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= MESSAGES {
                    return;
                }
                let id = format!("msg-{i}");
                let raw = match TaskMessage::new("fault.test", id.clone()).encode() {
                    Ok(raw) => raw,
                    Err(e) => {
                        failed
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(e.to_string());
                        continue;
                    }
                };
                match producer.publish("", &name, &raw).await {
                    Ok(()) => {
                        confirmed
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .insert(id);
                    }
                    Err(e) => failed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(format!("{id}: {e}")),
                }
            }
        }));
    }

    let mut faults_done = 0;
    for &threshold in fault_at {
        while confirmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
            < threshold
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::task::spawn_blocking(fault).await??;
        faults_done += 1;
    }
    for p in publishers {
        p.await?;
    }

    let confirmed = confirmed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = {
            let seen = seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            confirmed.iter().all(|id| seen.contains_key(id))
        };
        if done || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // QoS was restored on the re-subscribed consumer.
    let consumers = rabbitmqctl(&[
        "list_consumers",
        "-q",
        "--no-table-headers",
        "queue_name",
        "prefetch_count",
    ])?;
    let prefetch: Vec<&str> = consumers
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .collect::<Vec<_>>()
                .get(..2)
                .map(<[&str]>::to_vec)
        })
        .filter(|fields| fields[0] == name)
        .map(|fields| fields[1])
        .collect();
    consuming.abort();

    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let lost: Vec<&String> = confirmed
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let failed = failed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    println!(
        "{label}: faults {faults_done}, sent {MESSAGES}, confirmed {}, publish errors {}, consumed {}, duplicates {duplicates}, lost {}",
        confirmed.len(),
        failed.len(),
        seen.len(),
        lost.len()
    );
    producer.delete_queue(&name).await?;
    producer.delete_exchange(&name).await?;
    producer.close().await;
    consumer_broker.close().await;
    ensure!(
        faults_done == fault_at.len(),
        "not every fault was injected"
    );
    ensure!(
        prefetch == ["50"],
        "consumers after recovery (prefetch per consumer): {prefetch:?}"
    );
    ensure!(
        lost.is_empty(),
        "{} confirmed messages were never consumed, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    ensure!(
        failed.is_empty(),
        "publishes failed although the broker came back: {:?}",
        &failed[..failed.len().min(3)]
    );
    Ok(())
}

fn close_all_connections() -> Result<()> {
    rabbitmqctl(&["close_all_connections", "celeriac fault test"]).map(drop)
}

fn restart_broker_app() -> Result<()> {
    let _restart = RestartOnDrop;
    rabbitmqctl(&["stop_app"])?;
    rabbitmqctl(&["start_app"]).context("restarting the RabbitMQ app")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_survives_connections_closed_by_the_broker() -> Result<()> {
    let _serial = disturbing().await;
    stream_through("close-all", &[300, 1_200, 2_100], close_all_connections).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_confirmed_message_survives_a_broker_restart() -> Result<()> {
    let _serial = disturbing().await;
    stream_through("restart", &[1_000], restart_broker_app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_fails_clearly_when_the_broker_stays_down() -> Result<()> {
    let _serial = disturbing().await;
    let mut config = BrokerConfig::from_url(&broker_url())?;
    config.publish_wait = Duration::from_secs(2);
    let broker = Broker::connect(config).await?;
    let raw = TaskMessage::new("fault.test", "down-1").encode()?;
    let outcome = {
        let _restart = RestartOnDrop;
        rabbitmqctl(&["stop_app"])?;
        broker.publish("amq.direct", "nowhere", &raw).await
    };
    let err = outcome
        .err()
        .context("a publish succeeded while the broker was stopped")?;
    println!("{err}");
    ensure!(
        matches!(err, celeriac_broker::BrokerError::Unavailable { .. }),
        "{err}"
    );
    // And the handle recovers once the broker is back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !broker.is_connected() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no reconnect within 60 s of start_app"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queue = Queue::celery_default(unique("after-down"));
    broker.declare(&queue).await?;
    broker.publish("", &queue.name, &raw).await?;
    broker.delete_queue(&queue.name).await?;
    broker.delete_exchange(&queue.name).await?;
    broker.close().await;
    Ok(())
}
