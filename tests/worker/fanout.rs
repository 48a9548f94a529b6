//! Durable fan-out: events published once to a topic exchange reach three
//! subscribing services (two Rust, one Python), each with its own queue,
//! and each service handles every event once.

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

/// Each of `0..EVENTS` exactly once in `handled`, in any order.
fn each_once(service: &str, mut handled: Vec<u32>) -> Result<()> {
    handled.sort_unstable();
    let expected: Vec<u32> = (0..EVENTS).collect();
    ensure!(
        handled == expected,
        "{service} handled {} events, expected each of 0..{EVENTS} once: {handled:?}",
        handled.len()
    );
    Ok(())
}

/// Waits until `count` says `EVENTS`, for a minute at most.
async fn until_all(service: &str, mut count: impl AsyncFnMut() -> Result<usize>) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let seen = count().await?;
        if seen >= EVENTS as usize {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{service} handled {seen} of {EVENTS} events in a minute"
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
    let mut probes = 0;
    loop {
        let bound = celeriac_tests::rabbitmqctl(&[
            "list_bindings",
            "-q",
            "source_name",
            "destination_name",
        ])?;
        let subscribers = [&billing_queue, &shipping_queue, &python_queue]
            .iter()
            .filter(|queue| {
                bound
                    .lines()
                    .any(|l| l.starts_with(&exchange) && l.ends_with(queue.as_str()))
            })
            .count();
        if subscribers == 3 {
            break;
        }
        probes += 1;
        ensure!(
            probes < 600,
            "the three subscribers did not bind their queues in a minute; Python's log:\n{}",
            python.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut ids = Vec::new();
    for order in 0..EVENTS {
        let call = TaskCall::<Value>::new("events.order_created", vec![json!(order)]);
        ids.push(events.publish("order.created", call).await?);
    }
    // An event nobody subscribes to is refused, not dropped.
    let nobody = TaskCall::<Value>::new("events.order_created", vec![json!(0)]);
    let refused = events.publish("invoice.paid", nobody).await;
    ensure!(refused.is_err(), "an event with no subscriber was accepted");

    until_all("billing", async || Ok(BILLING.lock().unwrap().len())).await?;
    until_all("shipping", async || Ok(SHIPPING.lock().unwrap().len())).await?;
    let client = redis::Client::open(redis.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    until_all("the Python service", async || {
        Ok(connection.llen::<_, usize>(&events_key).await?)
    })
    .await
    .with_context(|| python.log())?;
    // A moment for any duplicate to show.
    tokio::time::sleep(Duration::from_millis(500)).await;

    each_once("billing", BILLING.lock().unwrap().clone())?;
    each_once("shipping", SHIPPING.lock().unwrap().clone())?;
    let python_handled: Vec<u32> = connection.lrange(&events_key, 0, -1).await?;
    each_once("the Python service", python_handled)?;
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
