//! The transport under [`Control`](super::Control): requests broadcast on
//! `celery.pidbox`, replies gathered from this app's own reply queue
//! (`<oid>.reply.celery.pidbox`, consumed once the first call needs it) and
//! handed to the call waiting for their ticket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use celeriac_broker::control::control_exchange;
use celeriac_broker::{Broker, BrokerError, ConsumeOptions, Queue};
use celeriac_protocol::control::{ControlReply, ControlRequest, REPLY_EXCHANGE, ReplyTo};
use celeriac_protocol::event::LamportClock;
use celeriac_protocol::{DecodeOptions, auth};
use tokio::sync::{OnceCell, mpsc};
use tracing::{debug, warn};

use crate::{Error, Security};

type Waiting = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<ControlReply>>>>;

/// One app's control mailbox.
pub(crate) struct Mailbox {
    broker: Broker,
    clock: Arc<LamportClock>,
    /// Signs requests and checks replies, if message signing is set up
    /// (kombu's mailbox uses the task serializer, `auth` then).
    security: Option<Security>,
    /// This client's id: its reply queue's routing key.
    oid: String,
    consumer: OnceCell<()>,
    waiting: Waiting,
}

fn lock(waiting: &Waiting) -> MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<ControlReply>>> {
    waiting
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Mailbox {
    /// A mailbox on `broker`, stamping messages with `clock`, signing and
    /// verifying with `security`.
    pub(crate) fn new(
        broker: Broker,
        clock: Arc<LamportClock>,
        security: Option<Security>,
    ) -> Mailbox {
        Mailbox {
            broker,
            clock,
            security,
            oid: uuid::Uuid::new_v4().to_string(),
            consumer: OnceCell::new(),
            waiting: Waiting::default(),
        }
    }

    /// Broadcasts `request` without waiting for replies (a *cast*).
    pub(crate) async fn cast(
        &self,
        request: &ControlRequest,
        timeout: Duration,
    ) -> Result<(), Error> {
        self.publish(request, timeout).await
    }

    /// Broadcasts `request` as a *call* and gathers replies until `limit`
    /// have arrived or none has come for `timeout` (kombu's rule).
    pub(crate) async fn call(
        &self,
        request: ControlRequest,
        timeout: Duration,
        limit: Option<usize>,
    ) -> Result<Vec<ControlReply>, Error> {
        self.consumer
            .get_or_try_init(|| self.start_consumer())
            .await?;
        let ticket = uuid::Uuid::new_v4().to_string();
        let request = request.expecting_reply(
            ticket.clone(),
            ReplyTo {
                exchange: REPLY_EXCHANGE.into(),
                routing_key: self.oid.clone(),
            },
        );
        let (sender, mut replies) = mpsc::unbounded_channel();
        lock(&self.waiting).insert(ticket.clone(), sender);
        let gathered = async {
            self.publish(&request, timeout).await?;
            let mut gathered = Vec::new();
            while limit.is_none_or(|limit| gathered.len() < limit) {
                match tokio::time::timeout(timeout, replies.recv()).await {
                    Ok(Some(reply)) => gathered.push(reply),
                    Ok(None) | Err(_) => break,
                }
            }
            Ok(gathered)
        }
        .await;
        lock(&self.waiting).remove(&ticket);
        gathered
    }

    async fn publish(&self, request: &ControlRequest, timeout: Duration) -> Result<(), Error> {
        let expires_at = unix_now() + timeout.as_secs_f64();
        let mut raw = request.encode(self.clock.forward(), expires_at)?;
        if let Some(security) = &self.security {
            auth::seal_message(&mut raw, security.signer());
        }
        self.broker
            .publish_transient(&control_exchange(), "", &raw)
            .await?;
        Ok(())
    }

    async fn start_consumer(&self) -> Result<(), BrokerError> {
        let options = ConsumeOptions {
            queues: vec![Queue::control_reply(&self.oid)],
            prefetch: 1_000,
        };
        let mut consumer = self.broker.consume(options).await?;
        let waiting = self.waiting.clone();
        let clock = self.clock.clone();
        let decode = self
            .security
            .as_ref()
            .map_or_else(DecodeOptions::default, Security::decode_options);
        tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                match ControlReply::decode(&delivery.message, &decode) {
                    Ok(replies) => {
                        for reply in replies {
                            if let Some(received) = reply.clock {
                                clock.adjust(received);
                            }
                            let waiter = reply
                                .ticket
                                .as_ref()
                                .and_then(|t| lock(&waiting).get(t).cloned());
                            match waiter {
                                Some(waiter) => {
                                    let _ = waiter.send(reply);
                                }
                                None => {
                                    debug!(node = %reply.node, "a control reply came after its call ended");
                                }
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "ignoring an undecodable control reply"),
                }
                let _ = delivery.ack().await;
            }
        });
        Ok(())
    }
}

/// Now, in Unix seconds.
pub(crate) fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}
