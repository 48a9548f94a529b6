//! Everything the worker publishes goes through the [`Outbox`], each publish
//! confirmed before the delivery it belongs to is settled:
//!
//! - results, through the app's result backend ([`Outbox::store`]);
//! - workflow messages (callbacks, errbacks, chain steps), through the app's
//!   canvas, so the app's routes apply to them ([`Outbox::apply`]);
//! - copies of a delivery: retries and requeues back to a queue
//!   ([`Outbox::republish`]), long ETAs through the delay topology
//!   ([`Outbox::postpone`]) and dead letters ([`Outbox::dead_letter`]).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use celeriac::broker::{BrokerError, DeadLetter, Delivery};
use celeriac::protocol::{RawMessage, TaskMessage};
use celeriac::{App, Apply, Request, ResultMeta, Signature};
use tracing::{debug, warn};

/// How long a result waits for a missing `rpc://` reply queue to reappear.
const REPLY_QUEUE_WAIT: Duration = Duration::from_secs(10);
/// How long a reply queue that stayed missing is taken to be gone for good:
/// results for it are tried once, without waiting (a client that sent tasks
/// and exited must not slow every one of its tasks down by the wait).
const GONE_REPLY_QUEUE_MEMORY: Duration = Duration::from_secs(300);

/// The worker's one way out to the broker and the result backend.
pub(crate) struct Outbox {
    app: App,
    /// Reply queues a result already waited for in vain, and when.
    gone_reply_queues: Mutex<HashMap<String, Instant>>,
}

impl Outbox {
    /// An outbox publishing through `app`.
    pub(crate) fn new(app: App) -> Outbox {
        Outbox {
            app,
            gone_reply_queues: Mutex::default(),
        }
    }

    /// Stores a result through the app's backend (if any). A result that
    /// cannot be delivered (e.g. the caller's reply queue is gone) is logged,
    /// not fatal: the task's outcome stands.
    pub(crate) async fn store(
        &self,
        request: &Request,
        message: &TaskMessage,
        mut meta: ResultMeta,
    ) {
        let Some(backend) = self.app.result_backend() else {
            return;
        };
        if meta.parent_id.is_none() {
            meta.parent_id.clone_from(&message.headers.parent_id);
        }
        if meta.group_id.is_none() {
            meta.group_id.clone_from(&message.headers.group);
        }
        let reply_to = request.reply_to.clone().unwrap_or_default();
        let gone = self.reply_queue_gone(&reply_to);
        let wait = if gone {
            Duration::ZERO
        } else {
            REPLY_QUEUE_WAIT
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match backend.store(&meta, request).await {
                Ok(()) => {
                    if gone {
                        self.gone().remove(&reply_to);
                    }
                    return;
                }
                // An rpc:// reply queue is auto-delete: it vanishes while its
                // client reconnects and comes back when the client re-declares it.
                Err(BrokerError::Unroutable { .. }) if tokio::time::Instant::now() < deadline => {
                    debug!(id = %request.id, "the reply queue is missing; waiting for its client to re-declare it");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    if matches!(e, BrokerError::Unroutable { .. }) {
                        self.gone().insert(reply_to, Instant::now());
                    }
                    warn!(id = %request.id, state = %meta.status, error = %e, "could not deliver the result");
                    return;
                }
            }
        }
    }

    /// Sends a callback, errback or chain step through the app's canvas
    /// (the app's routes choose its queue unless the signature names one).
    pub(crate) async fn apply(
        &self,
        signature: &Signature,
        apply: Apply<'_>,
    ) -> Result<Vec<String>, celeriac::Error> {
        Box::pin(self.app.apply_signature(signature, apply)).await
    }

    /// Publishes a copy of a message (a retry, a requeue, a counted
    /// redelivery) and waits for the confirm.
    pub(crate) async fn republish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &RawMessage,
    ) -> Result<(), BrokerError> {
        self.app
            .broker()
            .publish(exchange, routing_key, message)
            .await
    }

    /// Moves a delivery to the delay topology, to come back to its queue
    /// after `wait`.
    pub(crate) async fn postpone(
        &self,
        delivery: &Delivery,
        wait: Duration,
    ) -> Result<(), BrokerError> {
        self.app
            .broker()
            .publish_delayed(&delivery.queue, wait, &delivery.message)
            .await
    }

    /// Dead-letters a delivery (confirmed).
    pub(crate) async fn dead_letter(
        &self,
        delivery: &Delivery,
        letter: &DeadLetter,
    ) -> Result<(), BrokerError> {
        self.app.broker().dead_letter(delivery, letter).await
    }

    fn gone(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.gone_reply_queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a result for `reply_to` recently waited in vain.
    fn reply_queue_gone(&self, reply_to: &str) -> bool {
        let mut gone = self.gone();
        gone.retain(|_, since| since.elapsed() < GONE_REPLY_QUEUE_MEMORY);
        gone.contains_key(reply_to)
    }
}
