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
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::BrokerError;
use crate::ack::{AckPolicy, AckWindow};
use crate::connection::{Broker, Link, Session};
use crate::declare::declare_queue;
use crate::delivery::{Delivery, convert};
use crate::error::channel_error;
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

/// The live subscription: its session, channel and consumer tags (by
/// queue), so [`Consumer::cancel`] can stop deliveries without closing the
/// channel and a [`ConsumerHandle`] can add and cancel queues.
#[derive(Default)]
struct Subscriptions {
    session: Option<Arc<Session>>,
    channel: Option<Channel>,
    window: Option<Arc<AckWindow>>,
    /// `(queue, consumer tag)` of every live `basic.consume`.
    tags: Vec<(String, String)>,
    /// The queues consumed, in order; re-subscriptions consume these.
    queues: Vec<Queue>,
    cancelled: bool,
    /// Deliveries stopped for a while ([`ConsumerHandle::pause`]): the
    /// queues stay listed, but none is consumed until resumed.
    paused: bool,
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
    sender: mpsc::Sender<Delivery>,
    /// The task keeping it subscribed, which closes its channel on stop.
    subscriber: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("waiting", &self.deliveries.len())
            .field("stopped", &self.stop.is_cancelled())
            .finish_non_exhaustive()
    }
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

    /// A handle that adds and cancels queues of this consumer while it runs
    /// (Celery's `add_consumer` / `cancel_consumer`).
    pub fn handle(&self) -> ConsumerHandle {
        ConsumerHandle {
            subscriptions: self.subscriptions.clone(),
            sender: self.sender.clone(),
            stop: self.stop.clone(),
        }
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
        cancel_subscriptions(channel, tags).await;
    }

    /// Stops consuming. Deliveries not yet acked are requeued by the broker
    /// when the channel closes, which happens in the background.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops consuming and waits until the channel is closed, so the
    /// deliveries not acked are back in their queues when this returns
    /// (for a reader that looks at a queue again right after).
    pub async fn close(mut self) {
        self.stop.cancel();
        if let Some(subscriber) = self.subscriber.take() {
            let _ = subscriber.await;
        }
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
        lock(&subscriptions).queues.clone_from(&options.queues);
        let session = self.session().await?;
        let channel = subscribe(
            &session,
            options.prefetch,
            policy,
            &sender,
            &stop,
            &subscriptions,
        )
        .await?;
        let keep_subscribed = Subscriber {
            broker: self.clone(),
            options,
            policy,
            sender: sender.clone(),
            stop: stop.clone(),
            subscriptions: subscriptions.clone(),
        };
        let subscriber = tokio::spawn(keep_subscribed.run(session, channel));
        Ok(Consumer {
            deliveries,
            stop,
            subscriptions,
            sender,
            subscriber: Some(subscriber),
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
    attempt: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(SUBSCRIBE_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(BrokerError::Channel {
                operation,
                code: None,
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
                let attempt_to_subscribe = subscribe(
                    &session,
                    options.prefetch,
                    policy,
                    &sender,
                    &stop,
                    &subscriptions,
                );
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
                                session = next.clone();
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

/// Opens a channel on `session`, sets QoS, declares and consumes every
/// queue listed in `subscriptions` (none while paused).
async fn subscribe(
    session: &Arc<Session>,
    prefetch: u16,
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
        .basic_qos(prefetch, BasicQosOptions { global: false })
        .await
        .map_err(|e| channel_error("basic.qos", &e))?;
    // The queues are read under the lock that installs the channel, so a
    // `resume` either sees this channel (and consumes them on it) or has
    // already cleared `paused` (and they are consumed here).
    let queues = {
        let mut subs = lock(subscriptions);
        subs.session = Some(session.clone());
        subs.channel = Some(channel.clone());
        subs.tags.clear();
        if subs.paused {
            Vec::new()
        } else {
            subs.queues.clone()
        }
    };
    let window = match policy {
        AckPolicy::EachMessage => None,
        AckPolicy::Coalesce {
            max_batch,
            max_delay,
        } => Some(AckWindow::start(max_batch, max_delay)),
    };
    lock(subscriptions).window.clone_from(&window);
    for queue in &queues {
        let forwarder = QueueForwarder {
            session: session.clone(),
            channel: channel.clone(),
            queue: queue.clone(),
            sender: sender.clone(),
            stop: stop.clone(),
            subscriptions: subscriptions.clone(),
            window: window.clone(),
        };
        forwarder.start().await?;
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
    /// Declares and consumes the queue, then forwards its deliveries. If
    /// the queue stopped being wanted meanwhile (paused, cancelled, or
    /// dropped from the list), the new subscription is cancelled at once;
    /// what it received before that is still forwarded.
    async fn start(self) -> Result<(), BrokerError> {
        declare_queue(&self.channel, &self.queue).await?;
        let consumer = start_consumer(&self.channel, &self.queue.name).await?;
        let tag = consumer.tag().as_str().to_owned();
        if !self.record_tag(&tag) {
            self.cancel_own(&tag).await;
        }
        tokio::spawn(self.run(consumer, tag));
        Ok(())
    }

    /// Whether this queue is still one the consumer wants.
    fn wanted(&self) -> bool {
        let subs = lock(&self.subscriptions);
        !subs.cancelled && !subs.paused && subs.queues.iter().any(|q| q.name == self.queue.name)
    }

    /// Records the subscription `tag` if the queue is still wanted, under
    /// the lock that `pause`, `cancel` and `cancel_queue` take the tags
    /// under, so none of them can miss it. `false` if it is not wanted.
    fn record_tag(&self, tag: &str) -> bool {
        let mut subs = lock(&self.subscriptions);
        let wanted = !subs.cancelled
            && !subs.paused
            && subs.queues.iter().any(|q| q.name == self.queue.name);
        if wanted {
            subs.tags.push((self.queue.name.clone(), tag.to_owned()));
        }
        wanted
    }

    /// Whether `tag` is still recorded: `pause`, `cancel` and
    /// `cancel_queue` remove a tag before cancelling it, the broker's own
    /// cancel (a deleted queue) does not.
    fn owns(&self, tag: &str) -> bool {
        lock(&self.subscriptions).tags.iter().any(|(_, t)| t == tag)
    }

    async fn cancel_own(&self, tag: &str) {
        cancel_subscriptions(
            Some(self.channel.clone()),
            vec![(self.queue.name.clone(), tag.to_owned())],
        )
        .await;
    }

    async fn run(self, mut consumer: lapin::Consumer, mut tag: String) {
        let mut attempt = 0;
        // A re-subscription failed: the ended stream keeps answering `None`
        // and each is another attempt.
        let mut retrying = false;
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
                    debug!(queue = %self.queue.name, error = %e, "consumer stream error");
                }
                None => {
                    let ours = self.owns(&tag);
                    if (!ours && !retrying)
                        || !self.wanted()
                        || self.stop.is_cancelled()
                        || !self.channel.status().connected()
                        || !self.session.is_connected()
                    {
                        return;
                    }
                    if ours {
                        warn!(queue = %self.queue.name, "the broker cancelled the consumer (queue deleted?); re-declaring and re-subscribing");
                        lock(&self.subscriptions).tags.retain(|(_, t)| *t != tag);
                    }
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
                            retrying = false;
                            tag = c.tag().as_str().to_owned();
                            if !self.record_tag(&tag) {
                                self.cancel_own(&tag).await;
                            }
                            consumer = c;
                        }
                        Err(e) => {
                            retrying = true;
                            warn!(queue = %self.queue.name, error = %e, "re-subscribing failed");
                        }
                    }
                }
            }
        }
    }
}

/// Sends `basic.cancel` for each `(queue, consumer tag)` on `channel`, each
/// confirmed by the broker before the next; a failure means the channel is
/// going away (and its subscriptions with it), so it is only logged.
async fn cancel_subscriptions(channel: Option<Channel>, tags: Vec<(String, String)>) {
    let Some(channel) = channel else {
        return;
    };
    for (queue, tag) in tags {
        if let Err(e) = channel
            .basic_cancel(tag.as_str().into(), Default::default())
            .await
        {
            debug!(queue, error = %e, "basic.cancel failed; the channel is going away");
        }
    }
}

/// Adds and cancels queues of a running [`Consumer`]; cheap to clone.
#[derive(Clone)]
pub struct ConsumerHandle {
    subscriptions: SharedSubscriptions,
    sender: mpsc::Sender<Delivery>,
    stop: CancellationToken,
}

impl std::fmt::Debug for ConsumerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerHandle")
            .field("queues", &self.queues())
            .finish_non_exhaustive()
    }
}

impl ConsumerHandle {
    /// The queues consumed now.
    pub fn queues(&self) -> Vec<Queue> {
        lock(&self.subscriptions).queues.clone()
    }

    /// The queues this consumer should consume but does not right now (its
    /// channel is down, or a queue's subscription is being restored), by
    /// name; empty while every queue is consumed.
    pub fn not_consuming(&self) -> Vec<String> {
        let subs = lock(&self.subscriptions);
        if subs.paused {
            // Stopped on purpose, for a moment (see `pause`).
            return Vec::new();
        }
        let channel_up = subs
            .channel
            .as_ref()
            .is_some_and(|c| c.status().connected())
            && subs.session.as_ref().is_some_and(|s| s.is_connected());
        subs.queues
            .iter()
            .filter(|q| !channel_up || !subs.tags.iter().any(|(name, _)| *name == q.name))
            .map(|q| q.name.clone())
            .collect()
    }

    /// Finished deliveries whose ack waits in the coalescing window (0
    /// when acks are not coalesced).
    pub fn acks_pending(&self) -> usize {
        let window = lock(&self.subscriptions).window.clone();
        window.map_or(0, |w| w.pending())
    }

    /// Declares and starts consuming `queue` on the consumer's channel (with
    /// its prefetch); after a reconnect it is consumed again like the
    /// others. While paused it is declared and listed, and consumed from
    /// `resume` on. `Ok(false)` if it is consumed already.
    pub async fn add_queue(&self, queue: Queue) -> Result<bool, BrokerError> {
        let (session, channel, window) = {
            let subs = lock(&self.subscriptions);
            if subs.queues.iter().any(|q| q.name == queue.name) {
                return Ok(false);
            }
            match (&subs.session, &subs.channel) {
                (Some(session), Some(channel)) if !subs.cancelled => {
                    (session.clone(), channel.clone(), subs.window.clone())
                }
                _ => return Err(BrokerError::Closed),
            }
        };
        lock(&self.subscriptions).queues.push(queue.clone());
        let forwarder = QueueForwarder {
            session,
            channel,
            queue: queue.clone(),
            sender: self.sender.clone(),
            stop: self.stop.clone(),
            subscriptions: self.subscriptions.clone(),
            window,
        };
        if let Err(error) = bounded("basic.consume", forwarder.start()).await {
            lock(&self.subscriptions)
                .queues
                .retain(|q| q.name != queue.name);
            return Err(error);
        }
        Ok(true)
    }

    /// Stops deliveries from every queue for a while (`basic.cancel`, each
    /// confirmed by the broker) but keeps the channel, so deliveries
    /// already received can still be acked or handed back; the queues stay
    /// listed, and a reconnect meanwhile subscribes none of them.
    /// [`resume`](Self::resume) consumes them again.
    pub async fn pause(&self) {
        let (channel, tags) = {
            let mut subs = lock(&self.subscriptions);
            subs.paused = true;
            (subs.channel.clone(), std::mem::take(&mut subs.tags))
        };
        cancel_subscriptions(channel, tags).await;
    }

    /// Consumes every listed queue again after [`pause`](Self::pause), on
    /// the current channel; if that channel is down, the re-subscription
    /// after the reconnect consumes them. If a queue cannot be consumed,
    /// the channel is closed so that the consumer subscribes every queue
    /// again on a new one, and the error is returned. A no-op unless
    /// paused.
    pub async fn resume(&self) -> Result<(), BrokerError> {
        let (session, channel, window, queues) = {
            let mut subs = lock(&self.subscriptions);
            if !std::mem::replace(&mut subs.paused, false) || subs.cancelled {
                return Ok(());
            }
            let (Some(session), Some(channel)) = (subs.session.clone(), subs.channel.clone())
            else {
                return Ok(());
            };
            let queues: Vec<Queue> = subs
                .queues
                .iter()
                .filter(|q| !subs.tags.iter().any(|(name, _)| *name == q.name))
                .cloned()
                .collect();
            (session, channel, subs.window.clone(), queues)
        };
        if !channel.status().connected() || !session.is_connected() {
            return Ok(());
        }
        for queue in queues {
            let forwarder = QueueForwarder {
                session: session.clone(),
                channel: channel.clone(),
                queue,
                sender: self.sender.clone(),
                stop: self.stop.clone(),
                subscriptions: self.subscriptions.clone(),
                window: window.clone(),
            };
            if let Err(error) = bounded("basic.consume", forwarder.start()).await {
                // The consumer's keeper subscribes every listed queue again
                // on a new channel once this one is closed.
                let _ = channel
                    .close(200, "re-subscribing after a failed resume".into())
                    .await;
                return Err(error);
            }
        }
        Ok(())
    }

    /// Deliveries received and not yet taken by [`Consumer::next`].
    pub fn waiting(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// Stops consuming the queue named `name` (`basic.cancel`); deliveries
    /// already received stay valid. `false` if it was not consumed.
    pub async fn cancel_queue(&self, name: &str) -> bool {
        let (channel, tags) = {
            let mut subs = lock(&self.subscriptions);
            let before = subs.queues.len();
            subs.queues.retain(|q| q.name != name);
            if subs.queues.len() == before {
                return false;
            }
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut subs.tags)
                .into_iter()
                .partition(|(q, _)| q == name);
            subs.tags = kept;
            (subs.channel.clone(), gone)
        };
        cancel_subscriptions(channel, tags).await;
        true
    }
}
