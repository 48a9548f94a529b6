//! Everything the worker publishes goes through the [`Outbox`], each publish
//! confirmed before the delivery it belongs to is settled:
//!
//! - results, through the app's result backend ([`Outbox::store`]): while
//!   the store is unreachable the outbox retries with backoff, up to the
//!   worker's `result_store_timeout`; only then does it give up, and the
//!   delivery goes back to the queue instead of being acked;
//! - workflow messages (callbacks, errbacks, chain steps, chord bodies),
//!   through the app's canvas, so the app's routes apply to them
//!   ([`Outbox::apply`]);
//! - releasing a finished unique task's lock ([`Outbox::release_unique`]);
//! - copies of a delivery: retries and requeues back to a queue
//!   ([`Outbox::republish`]), long ETAs and retry backoffs through the
//!   delay topology ([`Outbox::delay`]) and dead letters
//!   ([`Outbox::dead_letter`]).

use std::future::Future;
use std::time::{Duration, Instant};

use celeriac::broker::{BrokerError, DeadLetter, Delivery};
use celeriac::protocol::{HeaderValue, RawMessage, TaskMessage};
use celeriac::{App, Apply, BackendError, Request, ResultMeta, Signature, UNIQUE_KEY_HEADER};
use tracing::{debug, error, warn};

use crate::gone_queues::GoneReplyQueues;
use crate::metrics::Metrics;

/// How long a result waits for a missing `rpc://` reply queue to reappear.
const REPLY_QUEUE_WAIT: Duration = Duration::from_secs(10);
/// How long a reply queue that stayed missing is taken to be gone for good:
/// results for it are tried once, without waiting (a client that sent tasks
/// and exited must not slow every one of its tasks down by the wait).
const GONE_REPLY_QUEUE_MEMORY: Duration = Duration::from_secs(300);
/// The first wait between attempts to reach an unreachable result store;
/// it doubles up to [`STORE_RETRY_MAX`].
const STORE_RETRY_MIN: Duration = Duration::from_millis(100);
/// The longest wait between attempts to reach the result store.
const STORE_RETRY_MAX: Duration = Duration::from_secs(5);

/// A result that could not be stored within the worker's
/// `result_store_timeout` (the error is logged): the delivery must go back
/// to its queue.
#[derive(Debug)]
pub(crate) struct NotStored;

/// The worker's one way out to the broker and the result backend.
pub(crate) struct Outbox {
    app: App,
    /// How long storing a result may keep retrying an unreachable store.
    store_timeout: Duration,
    /// Reply queues a result already waited for in vain, and when.
    gone_reply_queues: GoneReplyQueues,
    /// Confirm and store latencies go here.
    metrics: Metrics,
}

impl Outbox {
    /// An outbox publishing through `app`.
    pub(crate) fn new(app: App, store_timeout: Duration, metrics: Metrics) -> Outbox {
        Outbox {
            app,
            store_timeout,
            gone_reply_queues: GoneReplyQueues::new(GONE_REPLY_QUEUE_MEMORY),
            metrics,
        }
    }

    /// Stores a result through the app's backend (if any), retrying while
    /// the store is unreachable. A result for an `rpc://` caller that has
    /// gone is dropped with a log line (nobody can read it).
    pub(crate) async fn store(
        &self,
        request: &Request,
        meta: &ResultMeta,
    ) -> Result<(), NotStored> {
        let Some(backend) = self.app.result_backend() else {
            return Ok(());
        };
        let reply_to = request.reply_to.clone().unwrap_or_default();
        let gone = self.gone_reply_queues.is_gone(&reply_to, Instant::now());
        let reply_deadline = tokio::time::Instant::now()
            + if gone {
                Duration::ZERO
            } else {
                REPLY_QUEUE_WAIT
            };
        let started = tokio::time::Instant::now();
        let deadline = started + self.store_timeout;
        let mut pause = STORE_RETRY_MIN;
        loop {
            let error = match backend.store(meta, request).await {
                Ok(()) => {
                    self.metrics.result_stored(started.elapsed());
                    if gone {
                        self.gone_reply_queues.forget(&reply_to);
                    }
                    return Ok(());
                }
                Err(error) => error,
            };
            let now = tokio::time::Instant::now();
            match &error {
                // An rpc:// reply queue is auto-delete: it vanishes while its
                // client reconnects and comes back when the client re-declares it.
                BackendError::Broker(BrokerError::Unroutable { .. }) if now < reply_deadline => {
                    debug!(id = %request.id, "the reply queue is missing; waiting for its client to re-declare it");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                BackendError::Broker(BrokerError::Unroutable { .. }) => {
                    self.gone_reply_queues.remember(&reply_to, Instant::now());
                    warn!(id = %request.id, state = %meta.status, error = %error, "the caller's reply queue is gone; dropping its result");
                    return Ok(());
                }
                e if e.is_retryable() && now + pause < deadline => {
                    warn!(id = %request.id, state = %meta.status, error = %e, retry_in = ?pause, "the result store is unreachable; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(STORE_RETRY_MAX);
                }
                _ => {
                    error!(id = %request.id, state = %meta.status, error = %error, "could not store the result");
                    return Err(NotStored);
                }
            }
        }
    }

    /// Runs a result-store operation `what` (chord bookkeeping), retrying it
    /// while the store is unreachable, as [`store`](Self::store) does.
    pub(crate) async fn with_store<T, F, Fut>(
        &self,
        what: &str,
        mut operation: F,
    ) -> Result<T, NotStored>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, BackendError>>,
    {
        let deadline = tokio::time::Instant::now() + self.store_timeout;
        let mut pause = STORE_RETRY_MIN;
        loop {
            match operation().await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_retryable() && tokio::time::Instant::now() + pause < deadline => {
                    warn!(error = %e, retry_in = ?pause, "{what}: the result store is unreachable; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(STORE_RETRY_MAX);
                }
                Err(e) => {
                    error!(error = %e, "{what} failed");
                    return Err(NotStored);
                }
            }
        }
    }

    /// Releases the unique lock a finished task's message names
    /// ([`UNIQUE_KEY_HEADER`]) if the task still holds it, so the next
    /// send of the same task is enqueued. A failure leaves the lock to
    /// expire after its time to live.
    pub(crate) async fn release_unique(&self, message: &TaskMessage) {
        let Some(HeaderValue::Str(key)) = message.headers.extra.get(UNIQUE_KEY_HEADER) else {
            return;
        };
        let Some(locks) = self.app.result_backend().and_then(|b| b.unique_locks()) else {
            warn!(key = %key, "this worker's result backend keeps no unique locks; the task's lock expires on its own");
            return;
        };
        if let Err(e) = locks.release(key, &message.headers.id).await {
            warn!(key = %key, error = %e, "could not release a unique task's lock; it expires on its own");
        }
    }

    /// Stores a state that is not the task's outcome (`STARTED`, `RETRY`):
    /// a failure is logged, and the task goes on.
    pub(crate) async fn store_progress(&self, request: &Request, meta: &ResultMeta) {
        if let Some(backend) = self.app.result_backend()
            && let Err(e) = backend.store(meta, request).await
        {
            warn!(id = %request.id, state = %meta.status, error = %e, "could not store the task's state");
        }
    }

    /// Sends a callback, errback, chain step or chord body through the
    /// app's canvas (the app's routes choose its queue unless the signature
    /// names one).
    pub(crate) async fn apply(
        &self,
        signature: &Signature,
        apply: Apply<'_>,
    ) -> Result<Vec<String>, celeriac::Error> {
        self.timed(
            "workflow",
            Box::pin(self.app.apply_signature(signature, apply)),
        )
        .await
    }

    /// Publishes a copy of a message (a retry, a requeue, a counted
    /// redelivery) and waits for the confirm.
    pub(crate) async fn republish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &RawMessage,
    ) -> Result<(), BrokerError> {
        let broker = self.app.broker();
        self.timed("republish", broker.publish(exchange, routing_key, message))
            .await
    }

    /// Publishes `message` through the delay topology, to come back to
    /// `queue` after `wait` (a long ETA moved out of the worker, or a
    /// retry's backoff).
    pub(crate) async fn delay(
        &self,
        queue: &str,
        wait: Duration,
        message: &RawMessage,
    ) -> Result<(), BrokerError> {
        let broker = self.app.broker();
        self.timed("delay", broker.publish_delayed(queue, wait, message))
            .await
    }

    /// Dead-letters a delivery (confirmed).
    pub(crate) async fn dead_letter(
        &self,
        delivery: &Delivery,
        letter: &DeadLetter,
    ) -> Result<(), BrokerError> {
        let broker = self.app.broker();
        self.timed("dead_letter", broker.dead_letter(delivery, letter))
            .await
    }

    /// Runs a publish of `kind`, recording how long its confirm took.
    async fn timed<T, E>(
        &self,
        kind: &'static str,
        publish: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let started = Instant::now();
        let published = publish.await;
        if published.is_ok() {
            self.metrics.published(kind, started.elapsed());
        }
        published
    }
}
