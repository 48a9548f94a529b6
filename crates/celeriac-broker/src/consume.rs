//! Consuming with late acks and a prefetch limit, re-subscribing after
//! connection loss and after the broker cancels a consumer.
//!
//! One channel per [`Consumer`], `basic.qos(prefetch, global=false)` (a
//! per-consumer limit: §9 item 10 — global QoS is going away and quorum
//! queues never had it), one `basic.consume(no_ack=false)` per queue. Each
//! queue is declared before it is consumed, as a Celery worker does.
//!
//! - **Connection lost:** every subscription ends; once the supervisor has
//!   reconnected, the consumer opens a new channel, restores QoS and
//!   subscribes again. Deliveries received before the loss keep their old
//!   acker: acking them reports [`AckOutcome::Void`] (the broker has already
//!   requeued them), they are never acked on the new channel.
//! - **Consumer cancelled by the broker** (its queue was deleted): logged,
//!   and the queue is re-declared and consumed again after a backoff, so it
//!   "comes back" as soon as it can.

use std::sync::Arc;
use std::time::Duration;

use futures_lite::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use lapin::{Acker, Channel};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use celeriac_protocol::{DecodeError, DecodeOptions, Properties, RawMessage, TaskMessage};

use crate::BrokerError;
use crate::ack::{AckPolicy, AckWindow};
use crate::connection::{Broker, Link, Session, channel_error};
use crate::field_table::from_field_table;
use crate::operations::declare_queue;
use crate::topology::Queue;

/// What to consume.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// The queues, each declared before it is consumed.
    pub queues: Vec<Queue>,
    /// Unacked deliveries allowed in flight per queue (Celery: concurrency ×
    /// prefetch multiplier). `0` means unlimited.
    pub prefetch: u16,
}

/// A message handed to this process, not yet acknowledged.
pub struct Delivery {
    /// The message as it arrived.
    pub message: RawMessage,
    /// The queue it was consumed from.
    pub queue: String,
    /// The exchange it was published to (`""` for the default exchange).
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Whether the broker delivered it before (to us or another consumer).
    pub redelivered: bool,
    /// Which connection it came on (increases with each reconnect).
    pub generation: u64,
    acker: Acker,
    channel: Channel,
    tag: u64,
    window: Option<Arc<AckWindow>>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.queue)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("redelivered", &self.redelivered)
            .field("generation", &self.generation)
            .field("body_len", &self.message.body.len())
            .finish_non_exhaustive()
    }
}

/// What happened to an ack, reject or nack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The broker got it.
    Done,
    /// The channel the delivery came on is gone: the broker has already
    /// requeued the message and will deliver it again. Nothing was sent.
    Void,
}

impl Delivery {
    /// Decodes the message as a Celery task (v2, v1 or hybrid).
    pub fn task(&self, options: &DecodeOptions) -> Result<TaskMessage, DecodeError> {
        TaskMessage::decode(&self.message, options)
    }

    /// The AMQP priority it was published with.
    pub fn priority(&self) -> Option<u8> {
        self.message.properties.priority
    }

    /// Acknowledges the delivery: the broker forgets the message. Under
    /// [`AckPolicy::Coalesce`] the ack joins the next multiple ack (sent
    /// within the policy's delay).
    pub async fn ack(&self) -> Result<AckOutcome, BrokerError> {
        if let Some(window) = &self.window {
            if !self.channel.status().connected() {
                return Ok(AckOutcome::Void);
            }
            window.finished(self.tag);
            return Ok(AckOutcome::Done);
        }
        self.settle("basic.ack", self.acker.ack(BasicAckOptions::default()))
            .await
    }

    /// Acks the delivery with its own `basic.ack`, sent now even under a
    /// coalescing [`AckPolicy`]. For a delivery a copy of which now lives
    /// elsewhere (a retry, a dead letter, a counted redelivery): the ack
    /// must not wait in a window that a crash would lose, or both the copy
    /// and the original would come back.
    pub async fn ack_now(&self) -> Result<AckOutcome, BrokerError> {
        let ack = self.settle("basic.ack", self.acker.ack(BasicAckOptions::default()));
        self.in_tag_order(ack).await
    }

    /// Sends every coalesced ack waiting on this delivery's channel now.
    /// Call it before running something that may take the process down (a
    /// message that already crashed a worker), so finished tasks are not
    /// delivered again with it.
    pub async fn flush_pending_acks(&self) {
        if let Some(window) = &self.window {
            window.flush_all().await;
        }
    }

    /// Rejects the delivery; with `requeue` it goes back to the queue,
    /// otherwise it is dropped or, if the queue has a dead-letter exchange,
    /// dead-lettered by the broker.
    pub async fn reject(&self, requeue: bool) -> Result<AckOutcome, BrokerError> {
        let reject = self.settle(
            "basic.reject",
            self.acker.reject(BasicRejectOptions { requeue }),
        );
        self.in_tag_order(reject).await
    }

    /// Negatively acknowledges the delivery (like `reject`).
    pub async fn nack(&self, requeue: bool) -> Result<AckOutcome, BrokerError> {
        let options = BasicNackOptions {
            requeue,
            multiple: false,
        };
        let nack = self.settle("basic.nack", self.acker.nack(options));
        self.in_tag_order(nack).await
    }

    /// Runs `send` (this delivery's own ack, reject or nack) in order with
    /// the coalesced acks of its channel, if it has a window.
    async fn in_tag_order<T>(&self, send: impl std::future::Future<Output = T>) -> T {
        match &self.window {
            Some(window) => window.settle_alone(self.tag, send).await,
            None => send.await,
        }
    }

    /// Sends an ack/reject/nack unless the delivery's channel is already
    /// gone, and never waits forever on a connection that died meanwhile.
    async fn settle(
        &self,
        operation: &'static str,
        send: impl std::future::Future<Output = Result<bool, lapin::Error>>,
    ) -> Result<AckOutcome, BrokerError> {
        if !self.channel.status().connected() {
            return Ok(AckOutcome::Void);
        }
        match tokio::time::timeout(SETTLE_TIMEOUT, send).await {
            Ok(result) => settle(result, operation),
            Err(_) if !self.channel.status().connected() => Ok(AckOutcome::Void),
            Err(_) => Err(BrokerError::Channel {
                operation,
                detail: format!("no progress within {SETTLE_TIMEOUT:?}"),
            }),
        }
    }
}

/// How long an ack may take to be handed to the connection.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

fn settle(
    result: Result<bool, lapin::Error>,
    operation: &'static str,
) -> Result<AckOutcome, BrokerError> {
    match result {
        Ok(true) => Ok(AckOutcome::Done),
        // Already settled, or the channel is gone (poisoned acker).
        Ok(false) => Ok(AckOutcome::Void),
        Err(e)
            if matches!(
                e.kind(),
                lapin::ErrorKind::InvalidChannelState(..)
                    | lapin::ErrorKind::InvalidConnectionState(_)
                    | lapin::ErrorKind::IOError(_)
            ) =>
        {
            Ok(AckOutcome::Void)
        }
        Err(e) => Err(channel_error(operation, &e)),
    }
}

/// The live subscription's channel and consumer tags, so [`Consumer::cancel`]
/// can stop deliveries without closing the channel.
#[derive(Default)]
struct Subscriptions {
    channel: Option<Channel>,
    window: Option<Arc<AckWindow>>,
    tags: Vec<String>,
    cancelled: bool,
}

type SharedSubscriptions = Arc<std::sync::Mutex<Subscriptions>>;

fn lock(subscriptions: &SharedSubscriptions) -> std::sync::MutexGuard<'_, Subscriptions> {
    subscriptions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running subscription. Deliveries arrive through [`Consumer::next`];
/// dropping it (or [`Consumer::stop`]) cancels the subscription.
pub struct Consumer {
    deliveries: mpsc::Receiver<Delivery>,
    stop: CancellationToken,
    subscriptions: SharedSubscriptions,
}

impl Consumer {
    /// The next delivery; `None` once the consumer is stopped or the broker
    /// handle closed.
    pub async fn next(&mut self) -> Option<Delivery> {
        self.deliveries.recv().await
    }

    /// A delivery already received, without waiting.
    pub fn try_next(&mut self) -> Option<Delivery> {
        self.deliveries.try_recv().ok()
    }

    /// Sends every coalesced ack still pending (call before [`stop`](Self::stop)).
    pub async fn flush_acks(&self) {
        let window = lock(&self.subscriptions).window.clone();
        if let Some(window) = window {
            window.flush_all().await;
        }
    }

    /// Stops new deliveries (`basic.cancel`) but keeps the channel open, so
    /// deliveries already received can still be acked or requeued: the first
    /// step of a graceful shutdown. Then [`stop`](Self::stop) closes it.
    pub async fn cancel(&self) {
        let (channel, tags) = {
            let mut subs = lock(&self.subscriptions);
            subs.cancelled = true;
            (subs.channel.clone(), std::mem::take(&mut subs.tags))
        };
        if let Some(channel) = channel {
            for tag in tags {
                let _ = channel
                    .basic_cancel(tag.as_str().into(), Default::default())
                    .await;
            }
        }
    }

    /// Stops consuming. Deliveries not yet acked are requeued by the broker
    /// when the channel closes.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Broker {
    /// Declares and consumes `options.queues`.
    ///
    /// The first subscription happens before this returns, so a bad queue
    /// declaration (e.g. a 406 argument clash) is an error here; later
    /// re-subscriptions retry with backoff and log their errors.
    pub async fn consume(&self, options: ConsumeOptions) -> Result<Consumer, BrokerError> {
        self.consume_with(options, AckPolicy::EachMessage).await
    }

    /// Like [`consume`](Self::consume), acking as `policy` says (a worker
    /// uses [`AckPolicy::Coalesce`]).
    pub async fn consume_with(
        &self,
        options: ConsumeOptions,
        policy: AckPolicy,
    ) -> Result<Consumer, BrokerError> {
        let capacity = usize::from(options.prefetch.max(1)) * options.queues.len().max(1);
        let (sender, deliveries) = mpsc::channel(capacity);
        let stop = self.shared.shutdown.child_token();
        let subscriptions = SharedSubscriptions::default();
        let session = self.session().await?;
        let channel = subscribe(&session, &options, policy, &sender, &stop, &subscriptions).await?;
        let keep_subscribed = Subscriber {
            broker: self.clone(),
            options,
            policy,
            sender,
            stop: stop.clone(),
            subscriptions: subscriptions.clone(),
        };
        tokio::spawn(keep_subscribed.run(session, channel));
        Ok(Consumer {
            deliveries,
            stop,
            subscriptions,
        })
    }
}

/// The longest one re-subscription attempt may take. A connection that
/// dies in the middle of one can leave lapin's replies unanswered; without
/// a bound the consumer would wait on it forever and never move to the
/// next connection.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a subscription `attempt`, failing it after [`SUBSCRIBE_TIMEOUT`].
async fn bounded<T>(
    operation: &'static str,
    attempt: impl std::future::Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(SUBSCRIBE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(BrokerError::Channel {
                operation,
                detail: format!("no answer within {SUBSCRIBE_TIMEOUT:?}"),
            })
        })
}

/// What keeps a consumer subscribed across reconnects.
struct Subscriber {
    broker: Broker,
    options: ConsumeOptions,
    policy: AckPolicy,
    sender: mpsc::Sender<Delivery>,
    stop: CancellationToken,
    subscriptions: SharedSubscriptions,
}

impl Subscriber {
    /// Keeps the consumer subscribed across reconnects until it is stopped.
    async fn run(self, session: Arc<Session>, channel: Channel) {
        let Subscriber {
            broker,
            options,
            policy,
            sender,
            stop,
            subscriptions,
        } = self;
        let mut session = session;
        let mut channel = channel;
        let mut link = broker.watch_link();
        let mut health = tokio::time::interval(Duration::from_millis(250));
        loop {
            // Wait until the subscription's connection or channel is gone,
            // or we are stopped.
            loop {
                tokio::select! {
                    _ = health.tick() => {
                        // The broker closed the channel but not the connection
                        // (e.g. RabbitMQ's consumer_timeout): subscribe again on
                        // a new channel of the same connection.
                        let cancelled = lock(&subscriptions).cancelled;
                        if !channel.status().connected() && session.is_connected() && !cancelled {
                            warn!("the broker closed the consumer channel; subscribing again");
                            break;
                        }
                    }
                    () = stop.cancelled() => {
                        if channel.status().connected() {
                            let _ = channel.close(200, "consumer stopped".into()).await;
                        }
                        return;
                    }
                    changed = link.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let current = link.borrow_and_update().clone();
                        match current {
                            Link::Closed => return,
                            Link::Up(next) if next.generation != session.generation => {
                                session = next;
                                break;
                            }
                            _ => {}
                        }
                    }
                }
            }
            // Re-subscribe, retrying with backoff.
            let mut attempt = 0;
            loop {
                if stop.is_cancelled() || lock(&subscriptions).cancelled {
                    return;
                }
                let attempt_to_subscribe =
                    subscribe(&session, &options, policy, &sender, &stop, &subscriptions);
                match bounded("subscribing", attempt_to_subscribe).await {
                    Ok(c) => {
                        info!(generation = session.generation, "consumer re-subscribed");
                        channel = c;
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, attempt, "re-subscribing failed; retrying");
                        tokio::time::sleep(broker.config().reconnect_delay(attempt)).await;
                        attempt = attempt.saturating_add(1);
                        match &*link.borrow() {
                            Link::Up(next) if next.generation != session.generation => {
                                session = next.clone()
                            }
                            Link::Closed => return,
                            _ => {}
                        }
                    }
                }
            }
        }
    }
}

/// Opens a channel on `session`, sets QoS, declares and consumes every queue.
async fn subscribe(
    session: &Arc<Session>,
    options: &ConsumeOptions,
    policy: AckPolicy,
    sender: &mpsc::Sender<Delivery>,
    stop: &CancellationToken,
    subscriptions: &SharedSubscriptions,
) -> Result<Channel, BrokerError> {
    let channel = session
        .connection
        .create_channel()
        .await
        .map_err(|e| channel_error("opening a consumer channel", &e))?;
    channel
        .basic_qos(options.prefetch, BasicQosOptions { global: false })
        .await
        .map_err(|e| channel_error("basic.qos", &e))?;
    {
        let mut subs = lock(subscriptions);
        subs.channel = Some(channel.clone());
        subs.tags.clear();
    }
    let window = match policy {
        AckPolicy::EachMessage => None,
        AckPolicy::Coalesce {
            max_batch,
            max_delay,
        } => Some(AckWindow::start(max_batch, max_delay)),
    };
    lock(subscriptions).window.clone_from(&window);
    for queue in &options.queues {
        declare_queue(&channel, queue).await?;
        let consumer = start_consumer(&channel, &queue.name).await?;
        lock(subscriptions)
            .tags
            .push(consumer.tag().as_str().to_owned());
        let forwarder = QueueForwarder {
            session: session.clone(),
            channel: channel.clone(),
            queue: queue.clone(),
            sender: sender.clone(),
            stop: stop.clone(),
            subscriptions: subscriptions.clone(),
            window: window.clone(),
        };
        tokio::spawn(forwarder.run(consumer));
    }
    Ok(channel)
}

async fn start_consumer(channel: &Channel, queue: &str) -> Result<lapin::Consumer, BrokerError> {
    channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .map_err(|e| channel_error("basic.consume", &e))
}

/// Moves deliveries of one queue into the consumer's channel; re-subscribes
/// if the broker cancels the consumer while the channel stays open.
struct QueueForwarder {
    session: Arc<Session>,
    channel: Channel,
    queue: Queue,
    sender: mpsc::Sender<Delivery>,
    stop: CancellationToken,
    subscriptions: SharedSubscriptions,
    window: Option<Arc<AckWindow>>,
}

impl QueueForwarder {
    async fn run(self, mut consumer: lapin::Consumer) {
        let mut attempt = 0;
        loop {
            let next = tokio::select! {
                () = self.stop.cancelled() => return,
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    attempt = 0;
                    let delivery = convert(
                        delivery,
                        &self.queue.name,
                        self.session.generation,
                        &self.channel,
                        self.window.as_ref(),
                    );
                    if self.sender.send(delivery).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) => {
                    debug!(queue = %self.queue.name, error = %e, "consumer stream error")
                }
                None => {
                    let cancelled = lock(&self.subscriptions).cancelled;
                    if cancelled
                        || self.stop.is_cancelled()
                        || !self.channel.status().connected()
                        || !self.session.is_connected()
                    {
                        return;
                    }
                    warn!(queue = %self.queue.name, "the broker cancelled the consumer (queue deleted?); re-declaring and re-subscribing");
                    tokio::time::sleep(
                        Duration::from_millis(100).saturating_mul(1 << attempt.min(6)),
                    )
                    .await;
                    attempt += 1;
                    let resubscribed = async {
                        declare_queue(&self.channel, &self.queue).await?;
                        start_consumer(&self.channel, &self.queue.name).await
                    };
                    match bounded("basic.consume", resubscribed).await {
                        Ok(c) => {
                            lock(&self.subscriptions)
                                .tags
                                .push(c.tag().as_str().to_owned());
                            consumer = c;
                        }
                        Err(e) => {
                            warn!(queue = %self.queue.name, error = %e, "re-subscribing failed")
                        }
                    }
                }
            }
        }
    }
}

/// Our view of an AMQP message's properties and body.
pub(crate) fn raw_message(p: &lapin::BasicProperties, body: Vec<u8>) -> RawMessage {
    let text = |v: &Option<lapin::types::ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    RawMessage {
        properties: Properties {
            content_type: text(p.content_type()),
            content_encoding: text(p.content_encoding()),
            correlation_id: text(p.correlation_id()),
            reply_to: text(p.reply_to()),
            delivery_mode: *p.delivery_mode(),
            priority: *p.priority(),
            expiration: text(p.expiration()),
        },
        headers: p
            .headers()
            .as_ref()
            .map(from_field_table)
            .unwrap_or_default(),
        body,
    }
}

fn convert(
    delivery: lapin::message::Delivery,
    queue: &str,
    generation: u64,
    channel: &Channel,
    window: Option<&Arc<AckWindow>>,
) -> Delivery {
    let message = raw_message(&delivery.properties, delivery.data);
    if let Some(window) = window {
        window.delivered(delivery.delivery_tag, delivery.acker.clone());
    }
    Delivery {
        message,
        queue: queue.to_owned(),
        exchange: delivery.exchange.as_str().to_owned(),
        routing_key: delivery.routing_key.as_str().to_owned(),
        redelivered: delivery.redelivered,
        generation,
        acker: delivery.acker,
        channel: channel.clone(),
        tag: delivery.delivery_tag,
        window: window.cloned(),
    }
}
