//! A Celery task through RabbitMQ and back, plus a poison message
//! dead-lettered with its reason. Runs against Celery's default URL, or
//! `CELERIAC_BROKER_URL` / `CELERY_BROKER_URL` if set.
//!
//! Run: `cargo run -p celeriac-broker --example broker_roundtrip`

use std::error::Error;
use std::time::Duration;

use celeriac_broker::dead_letter::REASON_HEADER;
use celeriac_broker::{
    Broker, BrokerConfig, ConsumeOptions, DeadLetter, DeadLetterReason, Queue, RouteOptions, Router,
};
use celeriac_protocol::json::to_python_json;
use celeriac_protocol::{Bytes, DecodeOptions, RawMessage, TaskMessage};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("CELERIAC_BROKER_URL")
        .or_else(|_| std::env::var("CELERY_BROKER_URL"))
        .unwrap_or_else(|_| celeriac_broker::url::DEFAULT_URL.to_owned());
    let broker = Broker::connect(BrokerConfig::from_url(&url)?).await?;
    println!("connected to {}", BrokerConfig::from_url(&url)?.urls);

    // A queue of our own, shaped exactly as Python Celery declares queues.
    let name = format!("celeriac-demo.{}", std::process::id());
    let queue = Queue::celery_default(name.clone());
    let router = Router::new(queue.clone());

    // Producer side: route, declare, publish with a confirm.
    let task = TaskMessage::new("proj.tasks.add", format!("demo-{}", std::process::id()))
        .with_args(vec![2.into(), 2.into()]);
    let destination = router.resolve("proj.tasks.add", &RouteOptions::default())?;
    broker.send(&destination, &task.encode()?).await?;
    println!(
        "sent     {} {} to exchange {:?} key {:?} (confirmed)",
        task.headers.task,
        to_python_json(&task.body.args),
        destination.exchange,
        destination.routing_key
    );

    // And a message no Celery worker could run: a pickle body.
    let mut poison = RawMessage {
        body: Bytes::from_static(b"\x80\x04K\x02."),
        ..task.encode()?
    };
    poison.properties.content_type = Some("application/x-python-serialize".into());
    broker.publish("", &name, &poison).await?;

    // Consumer side: late acks, prefetch 4.
    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![queue],
            prefetch: 4,
        })
        .await?;
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await?
            .ok_or("consumer ended")?;
        match delivery.task(&DecodeOptions::default()) {
            Ok(task) => {
                println!(
                    "received {} {} (id {})",
                    task.headers.task,
                    to_python_json(&task.body.args),
                    task.headers.id
                );
                delivery.ack().await?;
            }
            Err(err) => {
                let letter = DeadLetter::new(
                    DeadLetterReason::from_decode_reason(err.reason()),
                    err.to_string(),
                );
                broker.dead_letter(&delivery, &letter).await?;
                delivery.ack().await?;
                println!("dead-lettered to {name}.dead: {} ({err})", letter.reason);
            }
        }
    }

    // Show the dead letter, then clean up.
    let dead = broker.config().dead_letter.queue_for(&name);
    let mut dlq = broker
        .consume(ConsumeOptions {
            queues: vec![dead.clone()],
            prefetch: 1,
        })
        .await?;
    if let Some(letter) = tokio::time::timeout(Duration::from_secs(10), dlq.next()).await? {
        println!(
            "in {}: {REASON_HEADER}={}",
            dead.name,
            letter.message.headers[REASON_HEADER]
                .as_str()
                .unwrap_or("?")
        );
        letter.ack().await?;
    }
    consumer.stop();
    dlq.stop();
    for queue in [&name, &dead.name] {
        broker.delete_queue(queue).await?;
    }
    broker.delete_exchange(&name).await?;
    broker.close().await;
    Ok(())
}
