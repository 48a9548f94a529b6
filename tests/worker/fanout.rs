//! Fan-out. Durable: events published once to a topic exchange reach three
//! subscribing services (two Rust, one Python), each with its own queue,
//! and each service handles every event once. Broadcast (Celery's
//! `Broadcast` queues): a task sent once, from Rust or from Python, runs on
//! every worker consuming the broadcast queue, Rust and Python.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::broker::{Exchange, Queue};
use celeriac::{App, TaskCall, task};
use celeriac_tests::python::PythonWorker;
use celeriac_tests::worker::{RunningWorker, cleanup};
use celeriac_tests::{broker_url, require_redis, unique};
use celeriac_worker::WorkerConfig;
use redis::AsyncCommands as _;
use serde_json::{Value, json};

/// Events published.
const EVENTS: u32 = 50;

static BILLING: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static SHIPPING: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static FIRST_WORKER: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static SECOND_WORKER: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The billing service's handler of `order.created`.
#[task(name = "events.order_created")]
async fn billing_order_created(order_id: u32) {
    BILLING.lock().unwrap().push(order_id);
}

/// The shipping service's handler of `order.created`.
#[task(name = "events.order_created")]
async fn shipping_order_created(order_id: u32) {
    SHIPPING.lock().unwrap().push(order_id);
}

/// The first broadcast consumer's handler.
#[task(name = "events.order_created")]
async fn first_worker_order_created(order_id: u32) {
    FIRST_WORKER.lock().unwrap().push(order_id);
}

/// The second broadcast consumer's handler.
#[task(name = "events.order_created")]
async fn second_worker_order_created(order_id: u32) {
    SECOND_WORKER.lock().unwrap().push(order_id);
}

/// The queues bound to `exchange` now, by `rabbitmqctl`.
fn bound_to(exchange: &str) -> Result<Vec<String>> {
    let bindings =
        celeriac_tests::rabbitmqctl(&["list_bindings", "-q", "source_name", "destination_name"])?;
    Ok(bindings
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(source, _)| *source == exchange)
        .map(|(_, queue)| queue.to_owned())
        .collect())
}

/// Waits up to a minute until `count` queues are bound to `exchange`.
async fn until_bound(exchange: &str, count: usize, python: &PythonWorker) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while bound_to(exchange)?.len() < count {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{count} queues were not bound to {exchange} within a minute: {:?}; Python's \
             log:\n{}",
            bound_to(exchange)?,
            python.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A Rust service's worker: its own app, with its queue bound to
/// `exchange` by `pattern`.
async fn service(
    queue: &str,
    exchange: &str,
    pattern: &str,
    handler: impl celeriac::Task,
) -> Result<RunningWorker> {
    let app = App::builder()
        .broker_url(broker_url())
        .queue(Queue::celery_default(queue).bound_to(Exchange::topic(exchange), pattern))
        .task(handler)
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![queue.to_owned()],
        concurrency: 4,
        ..WorkerConfig::default()
    };
    Ok(RunningWorker::run(app, config))
}

/// Each of `0..total` exactly once in `handled`, in any order.
fn each_once(service: &str, mut handled: Vec<u32>, total: u32) -> Result<()> {
    handled.sort_unstable();
    let expected: Vec<u32> = (0..total).collect();
    ensure!(
        handled == expected,
        "{service} handled {} events, expected each of 0..{total} once: {handled:?}",
        handled.len()
    );
    Ok(())
}

/// Waits until `count` says `total`, for a minute at most.
async fn until_all(
    service: &str,
    total: u32,
    mut count: impl AsyncFnMut() -> Result<usize>,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = count().await?;
        if seen >= total as usize {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{service} handled {seen} of {total} events in a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_published_once_reaches_every_subscribing_service_once() -> Result<()> {
    let redis = require_redis()?;
    let exchange = unique("events");
    let billing_queue = unique("billing-events");
    let shipping_queue = unique("shipping-events");
    let python_queue = unique("python-events");
    let events_key = unique("events-handled");

    let billing = service(&billing_queue, &exchange, "order.*", billing_order_created).await?;
    let shipping = service(
        &shipping_queue,
        &exchange,
        "order.#",
        shipping_order_created,
    )
    .await?;
    let python =
        PythonWorker::start_subscriber(&python_queue, &exchange, "order.#", &redis, &events_key)
            .await?;

    // Publish only once every subscriber's queue is bound: an event with no
    // subscriber is refused, and a late one would miss the first events.
    let producer = App::builder().broker_url(broker_url()).build().await?;
    let events = producer.topic(&exchange);
    until_bound(&exchange, 3, &python).await?;

    let mut ids = Vec::new();
    for order in 0..EVENTS {
        let call = TaskCall::<Value>::new("events.order_created", vec![json!(order)]);
        ids.push(events.publish("order.created", call).await?);
    }
    // An event nobody subscribes to is refused, not dropped.
    let nobody = TaskCall::<Value>::new("events.order_created", vec![json!(0)]);
    let refused = events.publish("invoice.paid", nobody).await;
    ensure!(refused.is_err(), "an event with no subscriber was accepted");

    until_all("billing", EVENTS, async || {
        Ok(BILLING.lock().unwrap().len())
    })
    .await?;
    until_all("shipping", EVENTS, async || {
        Ok(SHIPPING.lock().unwrap().len())
    })
    .await?;
    let client = redis::Client::open(redis.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    until_all("the Python service", EVENTS, async || {
        Ok(connection.llen::<_, usize>(&events_key).await?)
    })
    .await
    .with_context(|| python.log())?;
    // A moment for any duplicate to show.
    tokio::time::sleep(Duration::from_millis(500)).await;

    each_once("billing", BILLING.lock().unwrap().clone(), EVENTS)?;
    each_once("shipping", SHIPPING.lock().unwrap().clone(), EVENTS)?;
    let python_handled: Vec<u32> = connection.lrange(&events_key, 0, -1).await?;
    each_once("the Python service", python_handled, EVENTS)?;
    let _: () = connection.del(&events_key).await?;

    for (worker, queue) in [(billing, billing_queue), (shipping, shipping_queue)] {
        let summary = worker.stop().await?;
        ensure!(
            summary.succeeded == u64::from(EVENTS) && summary.dead_lettered == 0,
            "{queue}: {summary:?}"
        );
        let cleaner = App::builder().broker_url(broker_url()).build().await?;
        cleanup(&cleaner, &queue).await;
    }
    drop(python);
    let _ = producer.broker().delete_queue(&python_queue).await;
    let _ = producer.broker().delete_exchange(&exchange).await;
    producer.close().await;
    Ok(())
}

/// A Rust worker consuming the broadcast queue `alias` with `handler`.
async fn broadcast_worker(alias: &str, handler: impl celeriac::Task) -> Result<RunningWorker> {
    let app = App::builder()
        .broker_url(broker_url())
        .queue(Queue::broadcast(alias))
        .task(handler)
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![alias.to_owned()],
        concurrency: 4,
        hostname: format!("{}@{alias}", fastrand::u32(..)),
        ..WorkerConfig::default()
    };
    Ok(RunningWorker::run(app, config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_task_runs_on_every_worker_from_either_language() -> Result<()> {
    const EACH: u32 = 10;
    let redis = require_redis()?;
    let alias = unique("reload");
    let events_key = unique("broadcast-handled");
    let first = broadcast_worker(&alias, first_worker_order_created).await?;
    let second = broadcast_worker(&alias, second_worker_order_created).await?;
    let python = PythonWorker::start_broadcast(&alias, &redis, &events_key).await?;
    until_bound(&alias, 3, &python).await?;

    // From Rust: orders EACH..2*EACH, routed by the broadcast queue's alias.
    let producer = App::builder()
        .broker_url(broker_url())
        .queue(Queue::broadcast(&alias))
        .build()
        .await?;
    let calls = (EACH..2 * EACH).map(|order| {
        TaskCall::<Value>::new("events.order_created", vec![json!(order)]).queue(&alias)
    });
    producer.send_many(calls).await?;
    // From Python: orders 0..EACH, with Celery's own Broadcast queue.
    let output = tokio::process::Command::new(celeriac_tests::interop_python()?)
        .arg(celeriac_tests::repo_root().join("tests/interop/send_burst.py"))
        .args([
            &broker_url(),
            &alias,
            "events.order_created",
            &EACH.to_string(),
        ])
        .args(["--index-arg", "--broadcast"])
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "send_burst.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Neither producer declared a queue of its own on the exchange.
    let bound = bound_to(&alias)?;
    ensure!(
        bound.len() == 3 && bound.iter().all(|queue| queue.starts_with("bcast.")),
        "the broadcast exchange has other queues than its three consumers': {bound:?}"
    );

    let total = 2 * EACH;
    until_all("the first Rust worker", total, async || {
        Ok(FIRST_WORKER.lock().unwrap().len())
    })
    .await?;
    until_all("the second Rust worker", total, async || {
        Ok(SECOND_WORKER.lock().unwrap().len())
    })
    .await?;
    let client = redis::Client::open(redis.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    until_all("the Python worker", total, async || {
        Ok(connection.llen::<_, usize>(&events_key).await?)
    })
    .await
    .with_context(|| python.log())?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    each_once(
        "the first Rust worker",
        FIRST_WORKER.lock().unwrap().clone(),
        total,
    )?;
    each_once(
        "the second Rust worker",
        SECOND_WORKER.lock().unwrap().clone(),
        total,
    )?;
    let python_handled: Vec<u32> = connection.lrange(&events_key, 0, -1).await?;
    each_once("the Python worker", python_handled, total)?;
    let _: () = connection.del(&events_key).await?;

    for worker in [first, second] {
        let summary = worker.stop().await?;
        ensure!(
            summary.succeeded == u64::from(total) && summary.dead_lettered == 0,
            "{summary:?}"
        );
    }
    drop(python);
    // With every consumer gone (their queues with them), a broadcast is
    // refused rather than dropped.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !bound_to(&alias)?.is_empty() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "broadcast queues outlived their consumers: {:?}",
            bound_to(&alias)?
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unheard = TaskCall::<Value>::new("events.order_created", vec![json!(0)]).queue(&alias);
    ensure!(
        producer.send_many([unheard]).await.is_err(),
        "a broadcast with no worker to hear it was accepted"
    );
    let _ = producer.broker().delete_exchange(&alias).await;
    producer.close().await;
    Ok(())
}
