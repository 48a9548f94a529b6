//! Celery's `rpc://` result backend (§4.3).
//!
//! - The producer declares its reply queue exactly as Python does: named by a
//!   per-app UUID, default exchange, durable, auto-delete, not exclusive,
//!   `x-expires` = `result_expires` (1 day), before sending the first task.
//! - It consumes that queue; results are matched to tasks by correlation id
//!   (the task id). Results for ids nobody waits for yet are kept for their
//!   waiters, up to a bound.
//! - The worker side publishes each result document to the default exchange
//!   with the request's `reply_to` as routing key and its correlation id,
//!   transient (`delivery_mode` 1) and with no headers, as Python does.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use celeriac_broker::{Broker, BrokerError, ConsumeOptions, Queue};
use celeriac_protocol::store::ResultTuple;
use celeriac_protocol::{DecodeOptions, ResultMeta, State};
use tokio::sync::{OnceCell, watch};
use tracing::warn;

use super::{BackendError, BoxFuture, ResultBackend};
use crate::{Request, Security};

/// How many tasks' results are remembered; the oldest unwatched ones go first.
const MAX_REMEMBERED: usize = 100_000;

/// The `rpc://` result backend.
pub struct RpcBackend {
    broker: Broker,
    queue: Queue,
    /// Signs stored results and checks received ones, if set up.
    security: Option<Security>,
    consumer: OnceCell<()>,
    results: Arc<Mutex<Results>>,
}

#[derive(Default)]
struct Results {
    entries: HashMap<String, Entry>,
    order: VecDeque<String>,
}

struct Entry {
    history: Vec<State>,
    latest: watch::Sender<Option<ResultMeta>>,
}

impl Results {
    fn entry(&mut self, task_id: &str) -> &mut Entry {
        if !self.entries.contains_key(task_id) {
            self.evict();
            self.order.push_back(task_id.to_owned());
        }
        self.entries
            .entry(task_id.to_owned())
            .or_insert_with(|| Entry {
                history: Vec::new(),
                latest: watch::channel(None).0,
            })
    }

    fn evict(&mut self) {
        let mut scanned = 0;
        while self.entries.len() >= MAX_REMEMBERED && scanned < self.order.len() {
            scanned += 1;
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            match self.entries.get(&oldest) {
                Some(entry) if entry.latest.receiver_count() > 0 => self.order.push_back(oldest),
                _ => {
                    self.entries.remove(&oldest);
                }
            }
        }
    }

    fn record(&mut self, meta: ResultMeta) {
        let entry = self.entry(&meta.task_id);
        entry.history.push(meta.status.clone());
        entry.latest.send_replace(Some(meta));
    }
}

fn lock(results: &Mutex<Results>) -> MutexGuard<'_, Results> {
    results
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for RpcBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcBackend")
            .field("reply_queue", &self.queue.name)
            .finish_non_exhaustive()
    }
}

impl RpcBackend {
    /// A backend whose reply queue expires after `result_expires` unused
    /// (Celery's `result_expires`, 1 day by default).
    pub fn new(broker: Broker, result_expires: Duration) -> RpcBackend {
        let oid = uuid::Uuid::new_v4().to_string();
        let queue = Queue::rpc_reply(oid, result_expires);
        RpcBackend {
            broker,
            queue,
            security: None,
            consumer: OnceCell::new(),
            results: Arc::default(),
        }
    }

    /// Signs the results it stores, and accepts only signed results, as
    /// `security` says (Celery's `result_serializer = 'auth'`).
    pub fn with_security(mut self, security: Option<Security>) -> RpcBackend {
        self.security = security;
        self
    }

    /// The reply queue's declaration.
    pub fn reply_queue(&self) -> &Queue {
        &self.queue
    }

    async fn start_consumer(&self) -> Result<(), BrokerError> {
        let options = ConsumeOptions {
            queues: vec![self.queue.clone()],
            prefetch: 1_000,
        };
        let mut consumer = self.broker.consume(options).await?;
        let results = self.results.clone();
        let decode = self
            .security
            .as_ref()
            .map_or_else(DecodeOptions::default, Security::decode_options);
        tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                match ResultMeta::decode(&delivery.message, &decode) {
                    Ok(mut meta) => {
                        if let Some(id) = &delivery.message.properties.correlation_id
                            && meta.task_id.is_empty()
                        {
                            meta.task_id = id.clone();
                        }
                        lock(&results).record(meta);
                    }
                    Err(e) => {
                        warn!(error = %e, "ignoring an undecodable message on the rpc:// reply queue");
                    }
                }
                let _ = delivery.ack().await;
            }
        });
        Ok(())
    }
}

/// Groups are kept by the client that sent them; the rpc:// store has no
/// place to save one.
const NO_SAVED_GROUPS: BackendError = BackendError::Unsupported {
    backend: "rpc://",
    what: "saving or restoring groups",
    fix: "keep the GroupResult in the process that sent the group, or use a Redis backend",
};

impl ResultBackend for RpcBackend {
    fn url(&self) -> String {
        "rpc://".into()
    }

    fn reply_to(&self) -> Option<&str> {
        Some(&self.queue.name)
    }

    fn prepare<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.consumer
                .get_or_try_init(|| self.start_consumer())
                .await?;
            lock(&self.results).entry(task_id);
            Ok(())
        })
    }

    fn keeps_results_by_id(&self) -> bool {
        false
    }

    fn get<'a>(
        &'a self,
        task_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ResultMeta>, BackendError>> {
        Box::pin(async move {
            Ok(lock(&self.results)
                .entries
                .get(task_id)
                .and_then(|e| e.latest.borrow().clone()))
        })
    }

    fn wait<'a>(
        &'a self,
        task_id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<ResultMeta>, BackendError>> {
        Box::pin(async move {
            self.consumer
                .get_or_try_init(|| self.start_consumer())
                .await?;
            let mut latest = lock(&self.results).entry(task_id).latest.subscribe();
            let ready = latest.wait_for(|meta| meta.as_ref().is_some_and(|m| m.status.is_ready()));
            match tokio::time::timeout(timeout, ready).await {
                Ok(Ok(meta)) => Ok(meta.clone()),
                Ok(Err(_)) | Err(_) => Ok(None),
            }
        })
    }

    fn history(&self, task_id: &str) -> Vec<State> {
        lock(&self.results)
            .entries
            .get(task_id)
            .map(|e| e.history.clone())
            .unwrap_or_default()
    }

    fn store<'a>(
        &'a self,
        meta: &'a ResultMeta,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let Some(reply_to) = request.reply_to.as_deref().filter(|r| !r.is_empty()) else {
                return Ok(());
            };
            let mut raw = meta
                .encode_signed(self.security.as_ref().map(Security::signer))
                .map_err(|e| BackendError::Document(e.to_string()))?;
            raw.properties.correlation_id = Some(
                request
                    .correlation_id
                    .clone()
                    .unwrap_or_else(|| request.id.clone()),
            );
            Ok(self.broker.publish("", reply_to, &raw).await?)
        })
    }

    fn forget<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            lock(&self.results).entries.remove(task_id);
            Ok(())
        })
    }

    fn save_group<'a>(
        &'a self,
        _group: &'a ResultTuple,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Err(NO_SAVED_GROUPS) })
    }

    fn restore_group<'a>(
        &'a self,
        _group_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ResultTuple>, BackendError>> {
        Box::pin(async { Err(NO_SAVED_GROUPS) })
    }
}
