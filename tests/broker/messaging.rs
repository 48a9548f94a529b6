//! Routing, confirmed publishing and its failures, consuming with a
//! prefetch limit, recovery of a cancelled consumer, connection details and
//! coalesced acks.

// Sets up scenarios the broker API deliberately does not offer (a queue
// that refuses publishes, a raw look at the connection), with lapin.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac_broker::{
    AckOutcome, Broker, BrokerConfig, BrokerError, ConsumeOptions, Queue, RouteOptions, Router,
};
use celeriac_protocol::{DecodeOptions, HeaderValue};
use celeriac_tests::{broker_url, connect, queue_stats, unique};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::{Cleanup, next, task};

#[tokio::test]
async fn routed_task_round_trips_through_the_default_exchange() -> Result<()> {
    let broker = connect().await?;
    let name = unique("roundtrip");
    let _cleanup = Cleanup(vec![name.clone()]);
    let router = Router::new(Queue::celery_default(name.clone()));
    let destination = router.resolve("proj.tasks.add", &RouteOptions::default())?;
    ensure!(
        destination.exchange.is_empty() && destination.routing_key == name,
        "{destination:?}"
    );

    let msg = task("proj.tasks.add");
    broker.send(&destination, &msg.encode()?).await?;

    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![Queue::celery_default(name.clone())],
            prefetch: 4,
        })
        .await?;
    let delivery = next(&mut consumer).await?;
    let decoded = delivery.task(&DecodeOptions::default())?;
    ensure!(decoded.headers.id == msg.headers.id && decoded.body.args == msg.body.args);
    ensure!(delivery.exchange.is_empty() && delivery.routing_key == name && !delivery.redelivered);
    ensure!(delivery.message.headers["retries"] == HeaderValue::Int(0));
    ensure!(delivery.ack().await? == AckOutcome::Done);
    Ok(())
}

#[tokio::test]
async fn unroutable_and_refused_publishes_are_errors() -> Result<()> {
    let broker = connect().await?;
    let body = task("t").encode()?;
    let unroutable = broker
        .publish("amq.direct", &unique("nobody-bound"), &body)
        .await;
    ensure!(
        matches!(unroutable, Err(BrokerError::Unroutable { .. })),
        "{unroutable:?}"
    );
    let missing = broker
        .publish(&unique("no-such-exchange"), "k", &body)
        .await;
    ensure!(
        matches!(missing, Err(BrokerError::PublishRefused { .. })),
        "{missing:?}"
    );
    // The handle keeps working after the channel error.
    let name = unique("after-refusal");
    let _cleanup = Cleanup(vec![name.clone()]);
    broker.declare(&Queue::celery_default(name.clone())).await?;
    broker.publish("", &name, &body).await?;
    Ok(())
}

/// A queue that holds one message and refuses the rest (set up raw: our
/// API deliberately offers no such queue), on `channel`.
async fn declare_full_queue(channel: &lapin::Channel, name: &str) -> Result<()> {
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(name.into(), QueueDeclareOptions::default(), args)
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_negative_confirm_is_an_error_once_the_publish_wait_is_over() -> Result<()> {
    let mut config = BrokerConfig::from_url(&broker_url())?;
    config.publish_wait = Duration::from_secs(1);
    let broker = Broker::connect(config).await?;
    let name = unique("full");
    let _cleanup = Cleanup(vec![name.clone()]);
    let conn =
        lapin::Connection::connect(&broker_url(), lapin::ConnectionProperties::default()).await?;
    declare_full_queue(&conn.create_channel().await?, &name).await?;
    let body = task("t").encode()?;
    broker.publish("", &name, &body).await?;
    let resent_before = broker.publishes_resent();
    let refused = broker.publish("", &name, &body).await;
    ensure!(
        matches!(refused, Err(BrokerError::Nacked { .. })),
        "{refused:?}"
    );
    ensure!(
        broker.publishes_resent() > resent_before,
        "the refused message was not sent again before giving up"
    );
    conn.close(200, "done".into()).await?;
    Ok(())
}

#[tokio::test]
async fn a_refused_publish_goes_through_once_the_queue_takes_it() -> Result<()> {
    let broker = connect().await?;
    let name = unique("full-then-room");
    let _cleanup = Cleanup(vec![name.clone()]);
    let conn =
        lapin::Connection::connect(&broker_url(), lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    declare_full_queue(&channel, &name).await?;
    let body = task("t").encode()?;
    broker.publish("", &name, &body).await?;
    // The second is refused while the queue is full...
    let second = tokio::spawn({
        let (broker, name, body) = (broker.clone(), name.clone(), body.clone());
        async move { broker.publish("", &name, &body).await }
    });
    let resent_before = broker.publishes_resent();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.publishes_resent() == resent_before {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the second publish was never refused"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... and stored once a consumer makes room.
    let taken = channel
        .basic_get(
            name.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await?;
    ensure!(taken.is_some(), "the first message was not in the queue");
    second.await??;
    let counts = broker.queue_counts(&name).await?;
    ensure!(
        counts.map(|c| c.0) == Some(1),
        "the second message is not in the queue: {counts:?}"
    );
    // What was sent again is the whole message: its headers and properties
    // are built again for the second attempt.
    let resent = channel
        .basic_get(
            name.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await?
        .context("the second message could not be taken")?;
    let properties = &resent.delivery.properties;
    let id = properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get("id"))
        .and_then(|id| id.as_long_string())
        .map(ToString::to_string);
    let Some(HeaderValue::Str(sent_id)) = body.headers.get("id") else {
        anyhow::bail!("the test message has no id header");
    };
    ensure!(
        id.as_deref() == Some(sent_id.as_str())
            && properties
                .correlation_id()
                .as_ref()
                .map(ShortString::as_str)
                == Some(sent_id.as_str())
            && resent.delivery.data == body.body,
        "the message sent again differs from the one published: id {id:?}, properties \
         {properties:?}"
    );
    conn.close(200, "done".into()).await?;
    Ok(())
}

#[tokio::test]
async fn prefetch_limits_unacked_deliveries_per_consumer() -> Result<()> {
    let broker = connect().await?;
    let name = unique("prefetch");
    let _cleanup = Cleanup(vec![name.clone()]);
    let queue = Queue::celery_default(name.clone());
    broker.declare(&queue).await?;
    for _ in 0..10 {
        broker.publish("", &name, &task("t").encode()?).await?;
    }
    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![queue],
            prefetch: 3,
        })
        .await?;
    let held = [
        next(&mut consumer).await?,
        next(&mut consumer).await?,
        next(&mut consumer).await?,
    ];
    let stats = queue_stats(
        &name,
        &["messages_ready", "messages_unacknowledged", "consumers"],
    )?;
    ensure!(
        stats == ["7", "3", "1"],
        "ready/unacked/consumers = {stats:?}"
    );
    for delivery in &held {
        delivery.ack().await?;
    }
    for _ in 0..7 {
        next(&mut consumer).await?.ack().await?;
    }
    Ok(())
}

/// What a worker does to run a crash-loop suspect alone: pause stops
/// deliveries (the broker sees no consumer) while what was received can
/// still be acked; resume consumes again.
#[tokio::test]
async fn a_paused_consumer_receives_nothing_until_resumed() -> Result<()> {
    let broker = connect().await?;
    let name = unique("paused");
    let _cleanup = Cleanup(vec![name.clone()]);
    let queue = Queue::celery_default(name.clone());
    broker.declare(&queue).await?;
    broker.publish("", &name, &task("t").encode()?).await?;
    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![queue],
            prefetch: 10,
        })
        .await?;
    let received = next(&mut consumer).await?;
    let handle = consumer.handle();
    handle.pause().await;
    ensure!(
        handle.not_consuming().is_empty(),
        "a pause is on purpose: readiness must not report the queue as lost"
    );
    for _ in 0..3 {
        broker.publish("", &name, &task("t").encode()?).await?;
    }
    received.ack().await?;
    let stats = queue_stats(
        &name,
        &["messages_ready", "messages_unacknowledged", "consumers"],
    )?;
    ensure!(
        stats == ["3", "0", "0"],
        "paused: ready/unacked/consumers = {stats:?} (want 3 waiting, the ack taken, no consumer)"
    );
    ensure!(
        consumer.try_next().is_none(),
        "a delivery arrived while paused"
    );
    handle.resume().await?;
    for _ in 0..3 {
        next(&mut consumer).await?.ack().await?;
    }
    ensure!(queue_stats(&name, &["consumers"])? == ["1"]);
    Ok(())
}

#[tokio::test]
async fn a_consumer_comes_back_when_its_queue_is_deleted() -> Result<()> {
    let broker = connect().await?;
    let name = unique("deleted");
    let _cleanup = Cleanup(vec![name.clone()]);
    let queue = Queue::celery_default(name.clone());
    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![queue],
            prefetch: 1,
        })
        .await?;

    let conn =
        lapin::Connection::connect(&broker_url(), lapin::ConnectionProperties::default()).await?;
    conn.create_channel()
        .await?
        .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await?;
    // Until the consumer has re-declared its queue, publishes are unroutable.
    let body = task("t").encode()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match broker.publish("", &name, &body).await {
            Ok(()) => break,
            Err(BrokerError::Unroutable { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::task::yield_now().await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    next(&mut consumer).await?.ack().await?;
    conn.close(200, "done".into()).await?;
    Ok(())
}

#[tokio::test]
async fn connection_failures_are_clear_and_never_leak_the_password() -> Result<()> {
    let bad_password = broker_url().replacen("guest:guest", "guest:not-the-password", 1);
    let mut config = BrokerConfig::from_url(&bad_password)?;
    config.connect_timeout = Duration::from_secs(3);
    let err = Broker::connect(config).await.unwrap_err();
    let text = err.to_string();
    ensure!(matches!(err, BrokerError::Connect { .. }), "{text}");
    ensure!(
        !text.contains("not-the-password"),
        "password leaked: {text}"
    );
    println!("{text}");

    // amqps:// against the plain port: a clean error, not a panic.
    let tls = BrokerConfig::from_url("amqps://guest:guest@127.0.0.1:5672//?connect_timeout=3")?;
    let err = Broker::connect(tls).await.unwrap_err();
    ensure!(matches!(err, BrokerError::Connect { .. }), "{err}");
    println!("{err}");
    Ok(())
}

/// Deletes a RabbitMQ user when dropped.
struct RemoveUser(String);

impl Drop for RemoveUser {
    fn drop(&mut self) {
        let _ = celeriac_tests::rabbitmqctl(&["delete_user", &self.0]);
    }
}

#[tokio::test]
async fn a_node_that_fails_channels_is_passed_over_for_the_next_url() -> Result<()> {
    // A user allowed one channel: its connection opens, then the second of
    // the two channels a broker handle opens is refused, as on a node that
    // takes connections and fails their channels.
    let user = unique("limited");
    celeriac_tests::rabbitmqctl(&["add_user", &user, "limited"])?;
    let _remove = RemoveUser(user.clone());
    celeriac_tests::rabbitmqctl(&["set_permissions", "-p", "/", &user, ".*", ".*", ".*"])?;
    celeriac_tests::rabbitmqctl(&["set_user_limits", &user, r#"{"max-channels": 1}"#])?;
    let limited = broker_url().replacen("guest:guest", &format!("{user}:limited"), 1);

    // Alone, it does not connect, and says why.
    let mut config = BrokerConfig::from_url(&limited)?;
    config.connect_timeout = Duration::from_secs(3);
    let err = Broker::connect(config).await.unwrap_err();
    ensure!(
        matches!(err, BrokerError::Connect { .. })
            && err.to_string().contains("opening its channels failed")
            && err.to_string().contains("channel limit"),
        "a connection that cannot open its channels: {err}"
    );

    // Listed before a working URL, it is passed over.
    let both = format!("{limited};{}", broker_url());
    let broker = Broker::connect(BrokerConfig::from_url(&both)?).await?;
    let name = unique("passed-over");
    let _cleanup = Cleanup(vec![name.clone()]);
    broker.declare(&Queue::celery_default(name.clone())).await?;
    broker.publish("", &name, &task("t").encode()?).await?;
    let counts = broker.queue_counts(&name).await?;
    ensure!(
        counts.map(|c| c.0) == Some(1),
        "the message sent through the second URL is not in its queue: {counts:?}"
    );
    broker.close().await;
    Ok(())
}

#[tokio::test]
async fn the_connection_carries_its_name_and_heartbeat() -> Result<()> {
    let mut config = BrokerConfig::from_url(&broker_url())?;
    config.connection_name = unique("connection-name");
    config.heartbeat = Duration::from_secs(7);
    let broker = Broker::connect(config.clone()).await?;
    let listing = celeriac_tests::rabbitmqctl(&[
        "list_connections",
        "-q",
        "--no-table-headers",
        "timeout",
        "client_properties",
    ])?;
    let line = listing
        .lines()
        .find(|line| line.contains(&config.connection_name))
        .with_context(|| {
            format!(
                "connection {} not listed:\n{listing}",
                config.connection_name
            )
        })?;
    ensure!(
        line.trim_start().starts_with('7'),
        "negotiated heartbeat is not 7 s: {line}"
    );
    broker.close().await;
    Ok(())
}

#[tokio::test]
async fn coalesced_acks_never_cover_an_unfinished_delivery() -> Result<()> {
    let broker = connect().await?;
    let name = unique("coalesce");
    let _cleanup = Cleanup(vec![name.clone()]);
    let queue = Queue::celery_default(name.clone());
    broker.declare(&queue).await?;
    for _ in 0..40 {
        broker.publish("", &name, &task("t").encode()?).await?;
    }
    let policy = celeriac_broker::AckPolicy::Coalesce {
        max_batch: 8,
        max_delay: Duration::from_millis(20),
    };
    let mut consumer = broker
        .consume_with(
            ConsumeOptions {
                queues: vec![queue],
                prefetch: 40,
            },
            policy,
        )
        .await?;
    let mut deliveries = Vec::new();
    for _ in 0..40 {
        deliveries.push(next(&mut consumer).await?);
    }
    // Finish all but the first: the first must stay unacked, the others are
    // acked one by one once they have waited the straggler age (20 × 20 ms).
    for delivery in &deliveries[1..] {
        ensure!(delivery.ack().await? == AckOutcome::Done);
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let stats = queue_stats(&name, &["messages_ready", "messages_unacknowledged"])?;
    ensure!(
        stats == ["0", "1"],
        "ready/unacked after acking 39 of 40: {stats:?}"
    );
    deliveries[0].ack().await?;
    consumer.flush_acks().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = queue_stats(&name, &["messages_ready", "messages_unacknowledged"])?;
    ensure!(stats == ["0", "0"], "after the last ack: {stats:?}");
    consumer.stop();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coalesced_acks_racing_with_single_settlements_keep_the_channel() -> Result<()> {
    // Many deliveries finishing out of order on both runtime threads, with
    // immediate acks and requeueing nacks mixed in: every frame must reach
    // the broker in an order it accepts. A multiple ack sent after a later
    // one names an unknown tag and closes the channel (the broker then
    // redelivers everything unacked); a multiple ack sent before a nack of a
    // tag it covers acks that message instead of requeueing it.
    const MESSAGES: usize = 3_000;
    let broker = connect().await?;
    let name = unique("coalesce-race");
    let _cleanup = Cleanup(vec![name.clone()]);
    let queue = Queue::celery_default(name.clone());
    broker.declare(&queue).await?;
    let batch: Vec<_> = (0..MESSAGES)
        .map(|_| {
            let message = task("t").encode()?;
            let destination = celeriac_broker::Destination {
                exchange: String::new(),
                routing_key: name.clone(),
                priority: None,
                queue: None,
            };
            Ok((destination, message))
        })
        .collect::<Result<_>>()?;
    broker.send_many(&batch).await?;
    let policy = celeriac_broker::AckPolicy::Coalesce {
        max_batch: 4,
        max_delay: Duration::from_millis(1),
    };
    let mut consumer = broker
        .consume_with(
            ConsumeOptions {
                queues: vec![queue],
                prefetch: 200,
            },
            policy,
        )
        .await?;
    let (done, mut finished) = tokio::sync::mpsc::unbounded_channel();
    let mut nacked = 0;
    let mut first_deliveries = 0;
    let mut redeliveries = 0;
    while first_deliveries + redeliveries < MESSAGES + nacked {
        let delivery = next(&mut consumer).await?;
        let nack = !delivery.redelivered && fastrand::u8(..10) == 0;
        if delivery.redelivered {
            redeliveries += 1;
        } else {
            first_deliveries += 1;
        }
        nacked += usize::from(nack);
        let done = done.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(fastrand::u64(..2_000))).await;
            let outcome = match fastrand::u8(..10) {
                _ if nack => delivery.nack(true).await,
                0 => delivery.ack_now().await,
                _ => delivery.ack().await,
            };
            let _ = done.send(outcome.map_err(anyhow::Error::from));
        });
    }
    drop(done);
    while let Some(outcome) = finished.recv().await {
        ensure!(
            outcome? == AckOutcome::Done,
            "a settlement found its channel gone"
        );
    }
    consumer.flush_acks().await;
    ensure!(
        first_deliveries == MESSAGES && redeliveries == nacked,
        "{first_deliveries} first deliveries of {MESSAGES}, {redeliveries} redeliveries for \
         {nacked} requeueing nacks: the channel closed, or an ack covered a nacked message"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = queue_stats(&name, &["messages_ready", "messages_unacknowledged"])?;
    ensure!(stats == ["0", "0"], "left in the queue: {stats:?}");
    consumer.stop();
    broker.close().await;
    Ok(())
}

/// lapin hands a returned message to whichever confirm it completes next,
/// not to the publish it belongs to; the publisher gives each return back
/// to its own publish (`returns.rs` in celeriac-broker). With routed
/// publishes in flight on the same channel, one by one and through
/// `send_many`, every unroutable publish must still be reported
/// unroutable, every routed one routed, and every routed message must be
/// in its queue. Without the matching this failed within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returns_reach_their_own_publishes_among_concurrent_ones() -> Result<()> {
    let broker = connect().await?;
    let body = task("t").encode()?;
    let routed = unique("routed-alongside");
    let _cleanup = Cleanup(vec![routed.clone()]);
    broker
        .declare(&Queue::celery_default(routed.clone()))
        .await?;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut streams: Vec<_> = (0..3)
        .map(|_| {
            let (broker, body, routed, stop) =
                (broker.clone(), body.clone(), routed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent = 0u64;
                while !stop.is_cancelled() {
                    broker.publish("", &routed, &body).await?;
                    sent += 1;
                }
                anyhow::Ok(sent)
            })
        })
        .collect();
    let destination = Router::new(Queue::celery_default(routed.clone()))
        .resolve("t", &RouteOptions::default())?;
    let batch: Vec<_> = (0..200)
        .map(|_| (destination.clone(), body.clone()))
        .collect();
    streams.push({
        let (broker, stop) = (broker.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !stop.is_cancelled() {
                broker.send_many(&batch).await?;
                sent += batch.len() as u64;
            }
            anyhow::Ok(sent)
        })
    });
    // Two at a time, so that returns of different messages are in flight
    // together.
    let unroutable: Vec<_> = (0..2)
        .map(|_| {
            let (broker, body) = (broker.clone(), body.clone());
            tokio::spawn(async move {
                let mut looked_routed = 0;
                for _ in 0..150 {
                    match broker
                        .publish("amq.direct", &unique("nobody-bound"), &body)
                        .await
                    {
                        Err(BrokerError::Unroutable { .. }) => {}
                        Ok(()) => looked_routed += 1,
                        other => anyhow::bail!("an unroutable publish gave {other:?}"),
                    }
                }
                anyhow::Ok(looked_routed)
            })
        })
        .collect();
    let mut looked_routed = 0;
    for stream in unroutable {
        looked_routed += stream.await??;
    }
    stop.cancel();
    let mut routed_sent = 0;
    for stream in streams {
        routed_sent += stream
            .await?
            .context("a routed publish alongside the unroutable ones failed")?;
    }
    ensure!(
        looked_routed == 0,
        "{looked_routed} of 300 unroutable publishes were reported as routed \
         ({routed_sent} routed ones alongside)"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = queue_stats(&routed, &["messages_ready"])?;
    ensure!(
        stats == [routed_sent.to_string()],
        "{routed_sent} publishes reported routed, the queue holds {stats:?}"
    );
    Ok(())
}
