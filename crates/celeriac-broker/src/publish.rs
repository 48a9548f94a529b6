//! Confirmed publishing.
//!
//! Every publish is `mandatory` and waits for the broker's confirm: a
//! negative confirm (once the wait is over), a returned (unroutable) message
//! or a timeout is an error, never a success. Publishes from concurrent
//! tasks share one confirming channel and are in flight together
//! (pipelined confirms), so throughput is bounded by the broker, not by
//! round trips. Which publish a `basic.return` belongs to is decided by the
//! channel's return desk (`returns.rs`), not by the confirm lapin attached
//! it to, and each publish is numbered in the order its frames go out
//! (`hand_over`).
//!
//! If the connection drops before the confirm arrives, the outcome is
//! unknown; the publish waits for the connection to come back (up to
//! `publish_wait`) and sends again. That is at-least-once: a message that had
//! in fact been stored may be stored twice, never lost. A negative confirm
//! for a message going to one queue is sent again too, with backoff, within
//! the same `publish_wait`: on a cluster a quorum queue nacks while it
//! elects a new leader after a node loss (and RabbitMQ may still have
//! stored a nacked message, so this too can make a duplicate); a full
//! `reject-publish` queue nacks until a consumer makes room. A message for
//! a topic or fanout exchange is not sent again on a nack: the queues that
//! took it would get it twice. Every nack also renews the publishing
//! channel: RabbitMQ 3.10 keeps nacking a channel first used just after a
//! quorum queue's leader was lost until that node returns
//! (`Session::renew_publisher` in `connection.rs`).

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, PublisherConfirm};
use tokio::time::Instant;
use tracing::debug;

use celeriac_protocol::RawMessage;

use crate::BrokerError;
use crate::connection::{Broker, Publisher, Session};
use crate::returns::{Carried, Confirmed, Mark, Tracked, Verdict};
use crate::routing::Destination;
use crate::topology::ExchangeKind;
use crate::wire::basic_properties;

/// Why one attempt did not end in a confirmed publish.
enum Attempt {
    /// A final answer about this message.
    Failed(BrokerError),
    /// The broker refused it for now (a negative confirm): a quorum queue
    /// electing a new leader after a node loss, or a full queue with
    /// `x-overflow: reject-publish`. Worth sending again until the wait is
    /// over.
    Refused(BrokerError),
    /// The connection or channel went away before the outcome was known.
    InDoubt(String),
}

/// What a negative confirm does to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nacks {
    /// Send again until `publish_wait` is over: the message goes to one
    /// queue, so the resend can only duplicate it where RabbitMQ stored
    /// it despite the nack.
    Resend,
    /// An error at once: the message may have gone to several queues, and
    /// those that took it would get it again.
    Fail,
}

impl Nacks {
    /// The default exchange routes to one queue; any other may route to
    /// several.
    fn for_exchange(exchange: &str) -> Nacks {
        if exchange.is_empty() {
            Nacks::Resend
        } else {
            Nacks::Fail
        }
    }

    /// A routed destination names its queue: through a direct exchange
    /// (Celery's per-queue exchange) that is the one queue it goes to.
    fn for_destination(destination: &Destination) -> Nacks {
        match &destination.queue {
            Some(queue)
                if !queue.is_broadcast()
                    && queue.exchange.kind == ExchangeKind::Direct
                    && queue.exchange.name == destination.exchange =>
            {
                Nacks::Resend
            }
            _ => Nacks::for_exchange(&destination.exchange),
        }
    }
}

/// First pause before a refused message is sent again; it doubles per
/// refusal up to [`REFUSED_PAUSE_MAX`].
const REFUSED_PAUSE_MIN: Duration = Duration::from_millis(50);
/// Longest pause between sends of a refused message.
const REFUSED_PAUSE_MAX: Duration = Duration::from_secs(1);

impl Broker {
    /// Publishes `message` to `exchange` with `routing_key` and waits for the
    /// broker to confirm it.
    ///
    /// Returns `Ok` only once the broker has taken responsibility for the
    /// message (confirmed, and routed to at least one queue). A lost
    /// connection makes it send the message again until
    /// [`BrokerConfig::publish_wait`] is over. So does a negative confirm (a
    /// quorum queue between leaders, a full `reject-publish` queue) when
    /// `exchange` is the default exchange, which routes to one queue; through
    /// another exchange a nack is an error at once, as the queues that did
    /// take the message would get it again ([`send`](Self::send) knows more).
    ///
    /// [`BrokerConfig::publish_wait`]: crate::BrokerConfig::publish_wait
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &RawMessage,
    ) -> Result<(), BrokerError> {
        let nacks = Nacks::for_exchange(exchange);
        self.publish_with(exchange, routing_key, message, nacks)
            .await
    }

    /// [`publish`](Self::publish) with `nacks` saying what a negative
    /// confirm does.
    pub(crate) async fn publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &RawMessage,
        nacks: Nacks,
    ) -> Result<(), BrokerError> {
        // Built before the first attempt (a header AMQP cannot carry fails
        // here) and handed to it; a second attempt (rare: a refused or
        // unknown publish) builds them again, so that no publish pays for
        // a copy of its header table.
        let mut built = Some(basic_properties(message)?);
        let deadline = Instant::now() + self.shared.config.publish_wait;
        let mut refused_pause = REFUSED_PAUSE_MIN;
        loop {
            let session = self.session_until(deadline).await?;
            let properties = match built.take() {
                Some(properties) => properties,
                None => basic_properties(message)?,
            };
            match self
                .publish_once(&session, exchange, routing_key, &message.body, properties)
                .await
            {
                Ok(()) => return Ok(()),
                Err(Attempt::Failed(error)) => return Err(error),
                Err(Attempt::Refused(error)) => {
                    let now = Instant::now();
                    if nacks == Nacks::Fail || now >= deadline {
                        return Err(error);
                    }
                    debug!(
                        exchange,
                        routing_key, "publish refused (negative confirm); sending again"
                    );
                    self.shared.resent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(refused_pause.min(deadline - now)).await;
                    refused_pause = (refused_pause * 2).min(REFUSED_PAUSE_MAX);
                }
                Err(Attempt::InDoubt(reason)) => {
                    debug!(reason = %reason, exchange, routing_key, "publish outcome unknown; sending again");
                    if Instant::now() >= deadline {
                        return Err(BrokerError::Unavailable {
                            urls: self.shared.config.urls.to_string(),
                            waited: self.shared.config.publish_wait,
                            detail: reason,
                        });
                    }
                    self.shared.resent.fetch_add(1, Ordering::Relaxed);
                    // Give a dying connection a moment to be noticed, so the
                    // next attempt waits for its replacement.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Declares the destination's queue (once per handle, as Python's
    /// `maybe_declare` does), then publishes with the destination's priority.
    /// A nacked message is sent again when the destination is one queue
    /// (see [`publish`](Self::publish)).
    pub async fn send(
        &self,
        destination: &Destination,
        message: &RawMessage,
    ) -> Result<(), BrokerError> {
        self.declare_destination(destination).await?;
        let message = with_priority(destination, message);
        let nacks = Nacks::for_destination(destination);
        self.publish_with(
            &destination.exchange,
            &destination.routing_key,
            &message,
            nacks,
        )
        .await
    }

    /// Declares the destination's queue unless this handle already has (as
    /// Python's `maybe_declare` does).
    async fn declare_destination(&self, destination: &Destination) -> Result<(), BrokerError> {
        match &destination.queue {
            // A broadcast queue belongs to the worker consuming it: a
            // producer's would never be consumed, nor ever deleted.
            Some(queue) if queue.is_broadcast() => {
                if !self.broadcast_exchange_declared(&queue.exchange.name) {
                    self.declare_exchange(&queue.exchange).await?;
                    self.mark_broadcast_exchange(&queue.exchange.name);
                }
                Ok(())
            }
            Some(queue) if !self.is_declared(queue) => {
                let _declaring = self.shared.declaring.lock().await;
                if self.is_declared(queue) {
                    return Ok(());
                }
                self.declare(queue).await
            }
            _ => Ok(()),
        }
    }

    async fn publish_once(
        &self,
        session: &Session,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Attempt> {
        let sent = start_publish(session, exchange, routing_key, body, properties).await?;
        self.settle(session, exchange, routing_key, sent).await
    }

    /// Waits for one publish's confirm and for every return that could be
    /// its message's, and says what they mean. A negative confirm also
    /// renews the session's publisher channel, so that what is sent again
    /// goes on a fresh one (`Session::renew_publisher` in `connection.rs`).
    async fn settle(
        &self,
        session: &Session,
        exchange: &str,
        routing_key: &str,
        sent: Sent,
    ) -> Result<(), Attempt> {
        let timeout = self.shared.config.confirm_timeout;
        let Ok(outcome) = tokio::time::timeout(timeout, outcome(session, sent)).await else {
            return Err(Attempt::Failed(BrokerError::ConfirmTimeout {
                waited: timeout,
                blocked: self.blocked_reason(),
            }));
        };
        match outcome {
            Outcome::Routed => Ok(()),
            Outcome::Returned => Err(Attempt::Failed(BrokerError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            })),
            Outcome::Nacked => Err(Attempt::Refused(BrokerError::Nacked {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            })),
            Outcome::NotConfirming => Err(Attempt::InDoubt(
                "the channel was not in confirm mode".into(),
            )),
            Outcome::Unknown => Err(Attempt::InDoubt(
                "a publish on the same channel was abandoned mid-write; \
                 its confirm may have taken this message's return"
                    .into(),
            )),
            Outcome::ChannelFailed(e) => {
                let text = e.to_string();
                // A channel closed because of *this* publish (e.g. no such
                // exchange) is a final answer; anything else leaves it in doubt.
                if session.is_connected() && text.contains(&format!("'{exchange}'")) {
                    Err(Attempt::Failed(BrokerError::PublishRefused {
                        exchange: exchange.to_owned(),
                        detail: text,
                    }))
                } else {
                    Err(Attempt::InDoubt(text))
                }
            }
        }
    }

    /// Sends many messages, each to its destination, with up to
    /// `SEND_MANY_WINDOW` of them unconfirmed at once on one channel.
    ///
    /// Returns `Ok` only once every message is confirmed and routed, with the
    /// same guarantees as [`Broker::send`] for each. A message whose outcome
    /// is left in doubt by a lost connection is sent again (one by one) after
    /// the reconnect. On an error, the messages before the failing one may
    /// have been stored; none after it are sent.
    pub async fn send_many(&self, batch: &[(Destination, RawMessage)]) -> Result<(), BrokerError> {
        for (destination, _) in batch {
            self.declare_destination(destination).await?;
        }
        let deadline = Instant::now() + self.shared.config.publish_wait;
        let session = self.session_until(deadline).await?;
        let mut in_doubt = Vec::new();
        let mut in_flight = VecDeque::with_capacity(SEND_MANY_WINDOW);
        for (index, (destination, message)) in batch.iter().enumerate() {
            let properties = basic_properties(&with_priority(destination, message))?;
            let (exchange, routing_key) = (&destination.exchange, &destination.routing_key);
            match start_publish(&session, exchange, routing_key, &message.body, properties).await {
                Ok(sent) => in_flight.push_back((index, sent)),
                Err(_) => in_doubt.push(index),
            }
            if in_flight.len() >= SEND_MANY_WINDOW
                && let Some((index, sent)) = in_flight.pop_front()
            {
                self.settle_in_batch(&session, batch, index, sent, &mut in_doubt)
                    .await?;
            }
        }
        while let Some((index, sent)) = in_flight.pop_front() {
            self.settle_in_batch(&session, batch, index, sent, &mut in_doubt)
                .await?;
        }
        for index in in_doubt {
            let (destination, message) = &batch[index];
            self.shared.resent.fetch_add(1, Ordering::Relaxed);
            self.send(destination, message).await?;
        }
        Ok(())
    }

    async fn settle_in_batch(
        &self,
        session: &Session,
        batch: &[(Destination, RawMessage)],
        index: usize,
        sent: Sent,
        in_doubt: &mut Vec<usize>,
    ) -> Result<(), BrokerError> {
        let destination = &batch[index].0;
        match self
            .settle(
                session,
                &destination.exchange,
                &destination.routing_key,
                sent,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(Attempt::Failed(error)) => Err(error),
            Err(Attempt::Refused(error)) if Nacks::for_destination(destination) == Nacks::Fail => {
                Err(error)
            }
            // Sent again one by one, as `send` does.
            Err(Attempt::Refused(_) | Attempt::InDoubt(_)) => {
                in_doubt.push(index);
                Ok(())
            }
        }
    }
}

/// Messages [`Broker::send_many`] keeps unconfirmed at once.
const SEND_MANY_WINDOW: usize = 5_000;

/// `message` with the destination's priority, if it has one.
fn with_priority<'a>(destination: &Destination, message: &'a RawMessage) -> Cow<'a, RawMessage> {
    match destination.priority {
        Some(priority) if message.properties.priority != Some(priority) => {
            let mut message = message.clone();
            message.properties.priority = Some(priority);
            Cow::Owned(message)
        }
        _ => Cow::Borrowed(message),
    }
}

/// One message handed to the publisher channel, its confirm tracked by the
/// channel's return desk.
struct Sent {
    publisher: Publisher,
    tracked: Tracked,
}

/// Hands one message to the session's publisher channel.
async fn start_publish(
    session: &Session,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<Sent, Attempt> {
    let publisher = session
        .publisher()
        .await
        .map_err(|e| Attempt::InDoubt(e.to_string()))?;
    let correlation_id = properties
        .correlation_id()
        .as_ref()
        .map(lapin::types::ShortString::as_str);
    let mark = Mark::of(exchange, routing_key, correlation_id, body);
    let ticket = publisher.returns.register(Some(mark));
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = hand_over(&publisher, exchange, routing_key, options, body, properties)
        .await
        .map_err(|e| Attempt::InDoubt(e.to_string()))?;
    Ok(Sent {
        tracked: ticket.track(confirm),
        publisher,
    })
}

/// Publishes on the publisher channel, numbered in the order its frames go
/// out.
///
/// lapin gives a publish its confirm's number and then queues its frames,
/// in two steps: two tasks publishing at once on one channel can have
/// their frames sent in the other order than their numbers, so each
/// task's confirm completes on the other message's `basic.ack` (before
/// its own message's return has arrived, for an unroutable one). Both
/// steps happen in the first poll of `basic_publish`, which this makes
/// under the channel's numbering lock.
async fn hand_over(
    publisher: &Publisher,
    exchange: &str,
    routing_key: &str,
    options: BasicPublishOptions,
    body: &[u8],
    properties: BasicProperties,
) -> Result<PublisherConfirm, lapin::Error> {
    let mut publishing = std::pin::pin!(publisher.channel.basic_publish(
        exchange.into(),
        routing_key.into(),
        options,
        body,
        properties,
    ));
    let first = std::future::poll_fn(|cx| {
        let _numbering = publisher
            .numbering
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Poll::Ready(publishing.as_mut().poll(cx))
    })
    .await;
    match first {
        Poll::Ready(handed) => handed,
        Poll::Pending => publishing.await,
    }
}

/// What the broker did with one `mandatory` publish.
enum Outcome {
    /// Confirmed, and routed to at least one queue.
    Routed,
    /// Confirmed, but no queue took it.
    Returned,
    /// A negative confirm.
    Nacked,
    /// The channel was not in confirm mode.
    NotConfirming,
    /// The channel or connection failed before the answer came.
    ChannelFailed(lapin::Error),
    /// Confirmed, but whether it was routed cannot be told: a publish on
    /// its channel was dropped mid-write, and that publish's confirm may
    /// have taken this message's return unseen.
    Unknown,
}

/// Waits for the confirm of `sent`, then (when it was acked) for every
/// return that could be its message's (`returns.rs`).
async fn outcome(session: &Session, sent: Sent) -> Outcome {
    let Sent {
        publisher,
        mut tracked,
    } = sent;
    let seen = (&mut tracked).await;
    match seen.confirmed {
        Confirmed::Ack => {}
        Confirmed::Nack => {
            session.renew_publisher(publisher.channel.id()).await;
            return Outcome::Nacked;
        }
        Confirmed::NotRequested => return Outcome::NotConfirming,
        Confirmed::Failed(e) => return Outcome::ChannelFailed(e),
    }
    let place = match seen.carried {
        Carried::Own => return Outcome::Returned,
        Carried::Nothing => seen.place,
        Carried::Another => match probe(&publisher).await {
            Ok(place) => place,
            Err(e) => return Outcome::ChannelFailed(e),
        },
    };
    match tracked.returned_by(place).await {
        Verdict::Routed => Outcome::Routed,
        Verdict::Returned => Outcome::Returned,
        Verdict::Unknown => Outcome::Unknown,
    }
}

/// Sends probes on the publisher channel until one's confirm carries no
/// return, and gives that confirm's place: lapin hands each confirm it
/// completes the oldest return it holds, so a confirm that carried another
/// message's return may have left this message's queued behind it. A probe
/// is an empty, non-`mandatory` message to the default exchange with the
/// empty routing key, which names no queue: the broker drops it and
/// confirms it.
async fn probe(publisher: &Publisher) -> Result<u64, lapin::Error> {
    loop {
        let ticket = publisher.returns.register(None);
        let options = BasicPublishOptions::default();
        let confirm =
            hand_over(publisher, "", "", options, &[], BasicProperties::default()).await?;
        let seen = ticket.track(confirm).await;
        if let Confirmed::Failed(e) = seen.confirmed {
            return Err(e);
        }
        if seen.carried == Carried::Nothing {
            return Ok(seen.place);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Exchange, Queue};

    fn to(exchange: &str, queue: Option<Queue>) -> Destination {
        Destination {
            exchange: exchange.to_owned(),
            routing_key: "images".to_owned(),
            priority: None,
            queue,
        }
    }

    #[test]
    fn a_nack_is_resent_only_where_the_message_goes_to_one_queue() {
        let images = Queue::celery_default("images");
        assert_eq!(Nacks::for_exchange(""), Nacks::Resend);
        assert_eq!(Nacks::for_exchange("events"), Nacks::Fail);
        assert_eq!(
            Nacks::for_destination(&to("images", Some(images.clone()))),
            Nacks::Resend
        );
        assert_eq!(Nacks::for_destination(&to("", None)), Nacks::Resend);
        let mut on_topic = images;
        on_topic.exchange = Exchange::topic("events");
        assert_eq!(
            Nacks::for_destination(&to("events", Some(on_topic))),
            Nacks::Fail
        );
        let broadcast = Queue::broadcast("everyone");
        let exchange = broadcast.exchange.name.clone();
        assert_eq!(
            Nacks::for_destination(&to(&exchange, Some(broadcast))),
            Nacks::Fail
        );
        assert_eq!(Nacks::for_destination(&to("elsewhere", None)), Nacks::Fail);
    }
}
