//! The worker loop: consume, hand each delivery to `handle`, and shut down
//! gracefully.
//!
//! Concurrency is a semaphore of `concurrency` permits held while a task
//! runs; deliveries waiting for a permit or an ETA hold no permit. Prefetch
//! (`concurrency × prefetch_multiplier`, per consumer) bounds what sits in
//! memory.
//!
//! Shutdown: consumers are cancelled (no new deliveries, channel kept open),
//! waiting deliveries are handed back unstarted, running tasks get
//! `shutdown_timeout` to finish and settle, then the connection closes. What
//! is still unacked then goes back to the queue through the broker.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use celeriac::App;
use celeriac_broker::{ConsumeOptions, Queue};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::WorkerConfig;
use crate::delay::DelayTopology;
use crate::handle::handle;

/// Counts of outcomes, for logs and the shutdown summary.
#[derive(Debug, Default)]
pub struct Stats {
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    redelivered: AtomicU64,
    revoked: AtomicU64,
}

impl Stats {
    pub(crate) fn succeeded(&self) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn redelivered(&self) {
        self.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn revoked(&self) {
        self.revoked.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot of the counts.
    pub fn summary(&self) -> Summary {
        Summary {
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            revoked: self.revoked.load(Ordering::Relaxed),
        }
    }
}

/// What a worker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Tasks that failed for good.
    pub failed: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Messages dead-lettered (failures and messages that could not run).
    pub dead_lettered: u64,
    /// Redelivered messages counted.
    pub redelivered: u64,
    /// Tasks revoked because they expired.
    pub revoked: u64,
}

/// Shared by every delivery's handler.
pub(crate) struct Context {
    pub(crate) app: App,
    pub(crate) config: WorkerConfig,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) delay: DelayTopology,
    pub(crate) stats: Arc<Stats>,
    /// Reply queues a result already waited for in vain, and when: their
    /// client is taken to be gone, and later results do not wait again.
    gone_reply_queues: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    queues: Vec<Queue>,
}

impl Context {
    /// Reply queues a result waited for in vain, by when it gave up.
    pub(crate) fn gone_reply_queues(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, std::time::Instant>> {
        self.gone_reply_queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `queue` is configured for broker-native dead-lettering.
    pub(crate) fn native_dead_lettering(&self, queue: &str) -> bool {
        self.queues
            .iter()
            .any(|q| q.name == queue && q.arguments.dead_letter_exchange.is_some())
    }
}

/// A worker over an [`App`]'s registered tasks.
///
/// ```no_run
/// # async fn demo(app: celeriac::App) -> Result<(), celeriac_worker::WorkerError> {
/// use celeriac_worker::{Worker, WorkerConfig};
/// let config = WorkerConfig { queues: vec!["images".into()], concurrency: 32, ..WorkerConfig::default() };
/// let summary = Worker::new(app, config).run_until(async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
pub struct Worker {
    app: App,
    config: WorkerConfig,
    stats: Arc<Stats>,
}

/// Why a worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Consuming could not start (e.g. a queue declaration clash).
    #[error(transparent)]
    Broker(#[from] celeriac_broker::BrokerError),
    /// The app could not be built.
    #[error(transparent)]
    App(#[from] celeriac::Error),
    /// The configuration is invalid.
    #[error("invalid worker configuration: {0}")]
    Config(String),
}

impl Worker {
    /// A worker for `app` with `config`.
    pub fn new(app: App, config: WorkerConfig) -> Worker {
        Worker {
            app,
            config,
            stats: Arc::default(),
        }
    }

    /// Live outcome counts (also returned when the worker stops).
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` completes, then shuts down gracefully.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Summary, WorkerError> {
        if self.config.concurrency == 0 {
            return Err(WorkerError::Config("concurrency must be at least 1".into()));
        }
        let queues: Vec<Queue> = self
            .config
            .queues
            .iter()
            .map(|name| {
                self.app
                    .router()
                    .queues()
                    .find(|q| &q.name == name)
                    .cloned()
                    .unwrap_or_else(|| Queue::celery_default(name.clone()))
            })
            .collect();
        let mut consumer = self
            .app
            .broker()
            .consume_with(
                ConsumeOptions {
                    queues: queues.clone(),
                    prefetch: self.config.prefetch(),
                },
                self.config.ack_policy(),
            )
            .await?;
        let ctx = Arc::new(Context {
            permits: Arc::new(Semaphore::new(self.config.concurrency)),
            shutdown: CancellationToken::new(),
            delay: DelayTopology::new(&self.config.delay_queue_type),
            stats: self.stats.clone(),
            app: self.app.clone(),
            config: self.config.clone(),
            gone_reply_queues: std::sync::Mutex::default(),
            queues,
        });
        info!(
            hostname = %self.config.hostname,
            queues = ?self.config.queues,
            concurrency = self.config.concurrency,
            prefetch = self.config.prefetch(),
            tasks = ?self.app.registry().names().collect::<Vec<_>>(),
            "worker ready"
        );

        let mut running = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                delivery = consumer.next() => match delivery {
                    Some(delivery) => {
                        running.spawn(handle(ctx.clone(), delivery));
                        // Free finished tasks now: reaping one per turn of
                        // this loop lets them pile up (each holds its
                        // message) whenever deliveries win the select.
                        while running.try_join_next().is_some() {}
                    }
                    None => {
                        warn!("the consumer ended (broker handle closed)");
                        break;
                    }
                },
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }

        info!(
            running = running.len(),
            "shutting down: no new tasks; waiting for running ones"
        );
        consumer.cancel().await;
        ctx.shutdown.cancel();
        while let Some(delivery) = consumer.try_next() {
            running.spawn(handle(ctx.clone(), delivery));
        }
        let drained = tokio::time::timeout(self.config.shutdown_timeout, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            warn!(
                unfinished = running.len(),
                timeout = ?self.config.shutdown_timeout,
                "tasks still running at the shutdown timeout; their messages go back to the queue"
            );
            running.abort_all();
        }
        consumer.flush_acks().await;
        consumer.stop();
        self.app.close().await;
        let summary = self.stats.summary();
        info!(?summary, "worker stopped");
        Ok(summary)
    }
}
