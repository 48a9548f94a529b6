//! The baselines: what lapin alone achieves against the same broker, with
//! the same message bytes, confirm window and prefetch as Celeriac.

// The raw-lapin baselines: the one place outside celeriac-broker that
// uses lapin (see clippy.toml).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use celeriac_broker::delay;
use celeriac_protocol::RawMessage;
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::oneshot;

/// The AMQP properties Celeriac publishes `message` with, built here with
/// lapin from the same header bytes the broker crate writes (that crate
/// keeps lapin's types out of its API).
pub(crate) fn basic_properties(message: &RawMessage) -> anyhow::Result<BasicProperties> {
    let bytes = celeriac_broker::encode_headers(&message.headers)?;
    let (_, headers): (_, FieldTable) = lapin::types::parsing::parse_field_table(bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("re-reading the header table: {e:?}"))?;
    let p = &message.properties;
    let short = |s: &String| ShortString::from(s.as_str());
    let mut props = BasicProperties::default().with_headers(headers);
    if let Some(v) = &p.content_type {
        props = props.with_content_type(short(v));
    }
    if let Some(v) = &p.content_encoding {
        props = props.with_content_encoding(short(v));
    }
    if let Some(v) = &p.correlation_id {
        props = props.with_correlation_id(short(v));
    }
    if let Some(v) = &p.reply_to {
        props = props.with_reply_to(short(v));
    }
    if let Some(v) = p.delivery_mode {
        props = props.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        props = props.with_priority(v);
    }
    Ok(props)
}

/// A plain lapin connection to `url`.
pub(crate) async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("connecting to {url}: is RabbitMQ running?"))
}

/// Publishes `count` copies of `message` to `queue` (default exchange),
/// persistent and `mandatory`, keeping up to `window` unconfirmed.
/// Returns the time from the first publish to the last confirm.
pub(crate) async fn publish(
    connection: &Connection,
    queue: &str,
    message: &RawMessage,
    count: u64,
    window: usize,
) -> anyhow::Result<Duration> {
    publish_routed(connection, message, count, window, || {
        (Cow::Borrowed(""), Cow::Borrowed(queue))
    })
    .await
}

/// Publishes `count` copies of `message` through Celery's delay topology
/// so that all come back to `queue` at `due`, as a producer publishing
/// countdown tasks there directly would: each to the level of its delay's
/// highest bit, with the routing key of the delay left at its publish.
/// The topology must be declared and `queue` bound to it.
pub(crate) async fn publish_delayed(
    connection: &Connection,
    queue: &str,
    message: &RawMessage,
    count: u64,
    window: usize,
    due: Instant,
) -> anyhow::Result<Duration> {
    publish_routed(connection, message, count, window, || {
        let delay = due.saturating_duration_since(Instant::now());
        (
            Cow::Owned(delay::entry_exchange(delay)),
            Cow::Owned(delay::routing_key(delay, queue)),
        )
    })
    .await
}

/// Publishes `count` copies of `message`, each to the exchange and routing
/// key `route` gives, persistent and `mandatory`, keeping up to `window`
/// unconfirmed. Returns the time from the first publish to the last
/// confirm.
async fn publish_routed<'a>(
    connection: &Connection,
    message: &RawMessage,
    count: u64,
    window: usize,
    mut route: impl FnMut() -> (Cow<'a, str>, Cow<'a, str>),
) -> anyhow::Result<Duration> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = basic_properties(message)?;
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let mut in_flight = VecDeque::with_capacity(window);
    let start = Instant::now();
    for _ in 0..count {
        let (exchange, routing_key) = route();
        let confirm = channel
            .basic_publish(
                exchange.as_ref().into(),
                routing_key.as_ref().into(),
                options,
                &message.body,
                properties.clone(),
            )
            .await?;
        in_flight.push_back(confirm);
        if in_flight.len() >= window
            && let Some(oldest) = in_flight.pop_front()
        {
            check_ack(oldest.await?)?;
        }
    }
    while let Some(confirm) = in_flight.pop_front() {
        check_ack(confirm.await?)?;
    }
    let elapsed = start.elapsed();
    channel.close(200, "done".into()).await?;
    Ok(elapsed)
}

/// Fails unless the broker acked a confirmed publish (and routed it).
pub(crate) fn check_ack(confirmation: lapin::Confirmation) -> anyhow::Result<()> {
    match confirmation {
        lapin::Confirmation::Ack(None) => Ok(()),
        other => bail!("the broker did not accept a benchmark message: {other:?}"),
    }
}

/// How a raw consumer acknowledges.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RawAck {
    /// One `basic.ack` per delivery, the next delivery taken only once it
    /// is sent.
    EachMessage,
    /// One `basic.ack` per delivery, each sent from a task of its own
    /// without waiting for the ones before, as the worker's tasks ack
    /// (`ack_batch 1`); all awaited before the clock stops.
    EachPipelined,
    /// One `basic.ack(multiple=true)` every `n` deliveries (and the last).
    Every(u64),
}

/// A consumer of `queue` on `channel` with `prefetch` (late acks).
async fn consume(
    channel: &lapin::Channel,
    queue: &str,
    prefetch: u16,
) -> anyhow::Result<lapin::Consumer> {
    channel
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await?;
    Ok(channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await?)
}

/// Consumes `count` deliveries from `queue` with `prefetch`, acking as
/// `ack` says. Returns the time from `basic.consume` to the last ack sent.
pub(crate) async fn drain(
    connection: &Connection,
    queue: &str,
    count: u64,
    prefetch: u16,
    ack: RawAck,
) -> anyhow::Result<Duration> {
    if let RawAck::Every(n) = ack {
        anyhow::ensure!(
            prefetch == 0 || n <= u64::from(prefetch),
            "acking every {n} deliveries with a window of {prefetch} would wait forever"
        );
    }
    let channel = connection.create_channel().await?;
    let start = Instant::now();
    let mut consumer = consume(&channel, queue, prefetch).await?;
    let mut received = 0;
    let mut acks = tokio::task::JoinSet::new();
    while received < count {
        let delivery = consumer
            .next()
            .await
            .context("the consumer stream ended early")??;
        received += 1;
        match ack {
            RawAck::EachMessage => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            RawAck::EachPipelined => {
                acks.spawn(async move { delivery.ack(BasicAckOptions::default()).await });
                while let Some(sent) = acks.try_join_next() {
                    sent??;
                }
            }
            RawAck::Every(n) if received % n == 0 || received == count => {
                delivery.ack(BasicAckOptions { multiple: true }).await?;
            }
            RawAck::Every(_) => {}
        }
    }
    while let Some(sent) = acks.join_next().await {
        sent??;
    }
    let elapsed = start.elapsed();
    channel.close(200, "done".into()).await?;
    Ok(elapsed)
}

/// Moves `count` deliveries from `queue` into Celery's delay topology so
/// that all come back at `due`, as a worker moves countdown tasks out of
/// its queue: a consumer with `prefetch` republishes each delivery (its
/// body and properties as received) to the level of its delay's highest
/// bit with confirms, and acks each delivery once its copy is confirmed.
/// Returns the time from `basic.consume` to the last ack sent.
pub(crate) async fn relay_delayed(
    connection: &Connection,
    queue: &str,
    count: u64,
    prefetch: u16,
    due: Instant,
) -> anyhow::Result<Duration> {
    let publishing = connection.create_channel().await?;
    publishing
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let consuming = connection.create_channel().await?;
    let start = Instant::now();
    let mut consumer = consume(&consuming, queue, prefetch).await?;
    let mut in_flight = VecDeque::with_capacity(usize::from(prefetch));
    let mut received = 0;
    while received < count {
        let delivery = consumer
            .next()
            .await
            .context("the consumer stream ended early")??;
        received += 1;
        let delay = due.saturating_duration_since(Instant::now());
        let confirm = publishing
            .basic_publish(
                delay::entry_exchange(delay).as_str().into(),
                delay::routing_key(delay, queue).as_str().into(),
                options,
                &delivery.data,
                delivery.properties.clone(),
            )
            .await?;
        in_flight.push_back((confirm, delivery));
        // Settle the oldest copies while the window still has deliveries
        // coming: half the window in flight, as the broker refills it.
        while in_flight.len() > usize::from(prefetch / 2).max(1)
            || (received == count && !in_flight.is_empty())
        {
            let Some((confirm, delivery)) = in_flight.pop_front() else {
                break;
            };
            check_ack(confirm.await?)?;
            delivery.ack(BasicAckOptions::default()).await?;
        }
    }
    let elapsed = start.elapsed();
    consuming.close(200, "done".into()).await?;
    publishing.close(200, "done".into()).await?;
    Ok(elapsed)
}

/// What an `rpc://` round trip does, in raw lapin: `count` requests,
/// `callers` at a time. Each caller publishes `message` with confirms,
/// `reply_to` set to one exclusive reply queue and a fresh
/// `correlation_id`, and waits for the reply carrying that id. A responder
/// consuming `queue` with `prefetch` publishes `reply` with confirms to
/// each request's `reply_to` under its `correlation_id`, and acks the
/// request once the reply is confirmed, as the worker stores a result
/// before it acks. Returns the time from the first publish to the last
/// reply.
pub(crate) async fn round_trips(
    connection: &Connection,
    queue: &str,
    message: &RawMessage,
    reply: &[u8],
    count: u64,
    callers: u64,
    prefetch: u16,
) -> anyhow::Result<Duration> {
    let waiting: Waiting = Arc::default();
    let replies = connection.create_channel().await?;
    let reply_queue = replies
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?
        .name()
        .to_string();
    let mut reply_stream = replies
        .basic_consume(
            reply_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut tasks = tokio::task::JoinSet::new();
    let route_replies = waiting.clone();
    tasks.spawn(async move {
        while let Some(delivery) = reply_stream.next().await {
            let delivery = delivery?;
            let id = delivery.properties.correlation_id().clone();
            let caller = id.and_then(|id| callers_of(&route_replies).remove(id.as_str()));
            if let Some(caller) = caller {
                let _ = caller.send(());
            }
        }
        anyhow::Ok(())
    });
    tasks.spawn(respond(
        connection.create_channel().await?,
        connection.create_channel().await?,
        queue.to_owned(),
        reply.to_vec(),
        prefetch,
    ));

    let requests = connection.create_channel().await?;
    requests
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let properties = basic_properties(message)?.with_reply_to(reply_queue.as_str().into());
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut calls = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..callers {
        let (requests, properties, waiting, next) = (
            requests.clone(),
            properties.clone(),
            waiting.clone(),
            next.clone(),
        );
        let (queue, body) = (queue.to_owned(), message.body.clone());
        calls.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                let id = uuid::Uuid::new_v4().to_string();
                let (replied, reply) = oneshot::channel();
                callers_of(&waiting).insert(id.clone(), replied);
                let confirm = requests
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties.clone().with_correlation_id(id.as_str().into()),
                    )
                    .await?;
                check_ack(confirm.await?)?;
                tokio::time::timeout(Duration::from_secs(60), reply)
                    .await
                    .context("no reply within 60 s")?
                    .context("the reply router stopped")?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(call) = calls.join_next().await {
        call??;
    }
    let elapsed = start.elapsed();
    tasks.abort_all();
    requests.close(200, "done".into()).await?;
    replies.close(200, "done".into()).await?;
    Ok(elapsed)
}

/// Callers waiting for a reply, by correlation id.
type Waiting = Arc<Mutex<HashMap<String, oneshot::Sender<()>>>>;

/// The waiting callers, even if a caller panicked while holding them.
fn callers_of(
    waiting: &Waiting,
) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
    waiting
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The responder of [`round_trips`]: replies to each request on `queue`
/// and acks it once the reply is confirmed.
async fn respond(
    consuming: lapin::Channel,
    publishing: lapin::Channel,
    queue: String,
    reply: Vec<u8>,
    prefetch: u16,
) -> anyhow::Result<()> {
    publishing
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut requests = consume(&consuming, &queue, prefetch).await?;
    let reply: Arc<[u8]> = reply.into();
    let mut answering = tokio::task::JoinSet::new();
    while let Some(delivery) = requests.next().await {
        let delivery = delivery?;
        let (publishing, reply) = (publishing.clone(), reply.clone());
        answering.spawn(async move {
            let to = delivery
                .properties
                .reply_to()
                .clone()
                .context("a request without reply_to")?;
            let mut properties = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_content_encoding("utf-8".into());
            if let Some(id) = delivery.properties.correlation_id() {
                properties = properties.with_correlation_id(id.clone());
            }
            let confirm = publishing
                .basic_publish(
                    "".into(),
                    to.as_str().into(),
                    BasicPublishOptions::default(),
                    &reply,
                    properties,
                )
                .await?;
            check_ack(confirm.await?)?;
            delivery.ack(BasicAckOptions::default()).await?;
            anyhow::Ok(())
        });
        while let Some(done) = answering.try_join_next() {
            done??;
        }
    }
    Ok(())
}
