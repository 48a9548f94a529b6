//! The delay topology: a queue deleted while its delayed messages wait
//! must not jam the delay levels for everyone else, and a delayed message
//! reaches its own queue only.

use std::time::Duration;

use anyhow::{Result, ensure};
use celeriac_broker::delay::{ORPHANS, orphans_queue};
use celeriac_broker::{ConsumeOptions, Queue};
use celeriac_tests::{connect, unique};
use tokio::time::{Instant, timeout};

use crate::{Cleanup, next, task};

/// More orphans than RabbitMQ's dead-letter forwarder holds at once (32):
/// enough to jam a level of the raw topology for good.
const ORPHANED: usize = 40;

#[tokio::test]
async fn a_queue_deleted_while_its_messages_wait_does_not_jam_the_delay_levels() -> Result<()> {
    let broker = connect().await?;
    let gone = Queue::celery_default(unique("delay-gone"));
    let live = Queue::celery_default(unique("delay-live"));
    let _cleanup = Cleanup(vec![gone.name.clone(), live.name.clone()]);
    broker.declare(&gone).await?;
    broker.declare(&live).await?;

    // 40 messages wait a second in celery_delayed_0 for a queue that is
    // deleted meanwhile.
    let one_second = Duration::from_secs(1);
    for _ in 0..ORPHANED {
        broker
            .publish_delayed(&gone.name, one_second, &task("demo.add").encode()?)
            .await?;
    }
    broker.delete_queue(&gone.name).await?;

    // Then one for a queue that exists, through the same level.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![live.clone()],
            prefetch: 1,
        })
        .await?;
    let sent = task("demo.add");
    broker
        .publish_delayed(&live.name, one_second, &sent.encode()?)
        .await?;
    let arrived = next(&mut consumer).await?;
    ensure!(
        arrived.message.headers.get("id") == sent.encode()?.headers.get("id"),
        "a different message arrived in {}",
        live.name
    );
    arrived.ack().await?;
    consumer.stop();

    // The 40 are kept, not dropped: they wait in the orphans queue.
    let orphans = take_orphans_of(&broker, &gone.name, ORPHANED).await?;
    ensure!(
        orphans == ORPHANED,
        "{orphans} of the {ORPHANED} messages delayed for the deleted queue reached {ORPHANS}"
    );
    broker.close().await;
    Ok(())
}

#[tokio::test]
async fn a_delayed_message_reaches_its_own_queue_and_not_one_whose_name_ends_like_it() -> Result<()>
{
    let broker = connect().await?;
    let short = Queue::celery_default(unique("delay-exact"));
    let dotted = Queue::celery_default(format!("outer.{}", short.name));
    let _cleanup = Cleanup(vec![short.name.clone(), dotted.name.clone()]);
    for queue in [&short, &dotted] {
        broker.declare(queue).await?;
    }
    // The dotted queue first: that declares the delay topology, which a
    // fresh broker does not have yet.
    broker.prepare_delayed_delivery(&dotted.name).await?;
    // As earlier Celeriac left a broker: the short queue bound with
    // `#.<name>`, which preparing the queue must undo.
    broker
        .bind_queue(
            &short.name,
            celeriac_broker::delay::DELIVERY_EXCHANGE,
            &format!("#.{}", short.name),
        )
        .await?;
    broker.prepare_delayed_delivery(&short.name).await?;
    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![dotted.clone()],
            prefetch: 1,
        })
        .await?;
    broker
        .publish_delayed(
            &dotted.name,
            Duration::from_secs(1),
            &task("demo.add").encode()?,
        )
        .await?;
    next(&mut consumer).await?.ack().await?;
    consumer.stop();
    // Had the short queue kept its `#.<name>` binding, a copy would have
    // arrived with the dotted queue's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let short_has = broker
        .queue_counts(&short.name)
        .await?
        .map(|(ready, _)| ready);
    ensure!(
        short_has == Some(0),
        "{} received a message delayed for {}: {short_has:?} ready",
        short.name,
        dotted.name
    );
    broker.close().await;
    Ok(())
}

/// Acks up to `expected` orphaned messages that were delayed for `queue`,
/// waiting up to 20 s for them, and returns how many there were. Other
/// tests' orphans are left in place.
async fn take_orphans_of(
    broker: &celeriac_broker::Broker,
    queue: &str,
    expected: usize,
) -> Result<usize> {
    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![orphans_queue(broker.config().delay_queue_type)],
            prefetch: 1_000,
        })
        .await?;
    let suffix = format!(".{queue}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut found = 0;
    let mut others = Vec::new();
    while found < expected {
        let Ok(Some(delivery)) = timeout(deadline - Instant::now(), consumer.next()).await else {
            break;
        };
        if delivery.routing_key.ends_with(&suffix) {
            delivery.ack().await?;
            found += 1;
        } else {
            others.push(delivery);
        }
    }
    // Stopping hands the others back to the queue, unacked.
    drop(others);
    consumer.stop();
    Ok(found)
}
