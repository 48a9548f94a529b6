//! A message handed to this process, and how it is settled: acked (alone or
//! coalesced with others), rejected or nacked. Settling a delivery whose
//! channel is gone is [`AckOutcome::Void`]: the broker has already requeued
//! it.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::{Acker, Channel};

use celeriac_protocol::{DecodeError, DecodeOptions, RawMessage, TaskMessage};

use crate::BrokerError;
use crate::ack::AckWindow;
use crate::error::channel_error;
use crate::wire::raw_message;

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
    /// [`AckPolicy::Coalesce`](crate::AckPolicy::Coalesce) the ack joins the next multiple ack (sent
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
    /// coalescing [`AckPolicy`](crate::AckPolicy). For a delivery a copy of which now lives
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
    async fn in_tag_order<T>(&self, send: impl Future<Output = T>) -> T {
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
        send: impl Future<Output = Result<bool, lapin::Error>>,
    ) -> Result<AckOutcome, BrokerError> {
        if !self.channel.status().connected() {
            return Ok(AckOutcome::Void);
        }
        match tokio::time::timeout(SETTLE_TIMEOUT, send).await {
            Ok(result) => settle(result, operation),
            Err(_) if !self.channel.status().connected() => Ok(AckOutcome::Void),
            Err(_) => Err(BrokerError::Channel {
                operation,
                code: None,
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

/// Our delivery for one of lapin's, on `channel` of connection `generation`,
/// registered with the coalescing `window` if there is one.
pub(crate) fn convert(
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
