//! What every delivery's handler shares: the app, the settings, the pool
//! of slots, the shutdown signals, the outbox, what the worker holds and
//! has revoked, the events, the rate and runtime limits and the counts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use celeriac::broker::{ConsumerHandle, Delivery};
use celeriac::protocol::{DecodeOptions, TaskMessage};
use celeriac::{App, DeliveryInfo, Registry, Request, TaskOptions};
use tokio_util::sync::CancellationToken;

use crate::burst::Bursts;
use crate::eta_holds::EtaHolds;
use crate::events::Events;
use crate::isolation::Isolation;
use crate::limits::{Limits, Pool};
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use crate::rate_limits::RateLimits;
use crate::revoked::Revoked;
use crate::starts::Starts;
use crate::tracker::Tracker;
use crate::{Stats, WorkerConfig};

/// Shared by every delivery's handler.
pub(crate) struct Context {
    pub(crate) app: App,
    pub(crate) config: WorkerConfig,
    /// One slot per task allowed to run at once.
    pub(crate) pool: Pool,
    /// Cancelled when the worker starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// Cancelled to ask the worker to shut down (the `shutdown` command).
    pub(crate) stop: CancellationToken,
    /// Everything the worker publishes goes through here.
    pub(crate) outbox: Outbox,
    pub(crate) stats: Arc<Stats>,
    /// Adds and cancels consumed queues (`add_consumer`).
    pub(crate) consumer: ConsumerHandle,
    /// The tasks held now, and the counts since start.
    pub(crate) tracker: Arc<Tracker>,
    /// Revoked ids and stamps.
    pub(crate) revoked: Revoked,
    /// Task and worker events.
    pub(crate) events: Arc<Events>,
    /// The slots for ETA tasks held until due.
    pub(crate) eta_holds: EtaHolds,
    /// Runs of deliveries moved to the delay topology, and burst consumers.
    pub(crate) bursts: Bursts,
    /// Time limits set by remote control.
    pub(crate) limits: Limits,
    /// Rate limits: the tasks', the worker's, and remote control's.
    pub(crate) rates: RateLimits,
    /// The latest start of each key of the global rate limits here.
    pub(crate) global_starts: Starts,
    /// When the worker started.
    pub(crate) started: Instant,
    /// Prometheus metrics (disabled unless asked for).
    pub(crate) metrics: Metrics,
    /// Milliseconds after `started` when the worker loop last turned.
    pub(crate) loop_turned: AtomicU64,
    /// Deliveries in hand, and running a message alone.
    pub(crate) isolation: Isolation,
    /// The tasks this worker runs: the app's, and the built-in ones
    /// ([`crate::builtins`]).
    pub(crate) tasks: Registry,
    /// How deliveries are decoded (signatures checked if security is set up).
    pub(crate) decode: DecodeOptions,
    /// Each task's options (its own over the app's defaults), resolved
    /// once at start rather than per delivery.
    pub(crate) task_options: HashMap<String, Arc<TaskOptions>>,
}

impl Context {
    /// Marks that the worker loop is turning (for `/healthz`).
    pub(crate) fn loop_turns(&self) {
        let since = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.loop_turned.store(since, Ordering::Relaxed);
    }

    /// How long since the worker loop last turned.
    pub(crate) fn loop_silence(&self) -> Duration {
        let turned = Duration::from_millis(self.loop_turned.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(turned)
    }

    /// Whether `queue` is configured for broker-native dead-lettering.
    pub(crate) fn native_dead_lettering(&self, queue: &str) -> bool {
        self.consumer
            .queues()
            .iter()
            .any(|q| q.name == queue && q.arguments.dead_letter_exchange.is_some())
    }

    /// Each task's options, resolved once.
    pub(crate) fn resolve_task_options(
        app: &App,
        tasks: &Registry,
    ) -> HashMap<String, Arc<TaskOptions>> {
        tasks
            .tasks()
            .map(|task| {
                let options = task.options().or(app.task_defaults());
                (task.name().to_owned(), Arc::new(options))
            })
            .collect()
    }

    /// The options of task `name` (the app's defaults for a name that is
    /// not registered).
    pub(crate) fn options_of(&self, name: &str) -> Arc<TaskOptions> {
        match self.task_options.get(name) {
            Some(options) => options.clone(),
            None => Arc::new(self.app.task_options(name)),
        }
    }

    /// Whether `queue` is a broadcast queue this worker consumes.
    pub(crate) fn is_broadcast_queue(&self, queue: &str) -> bool {
        self.consumer
            .queues()
            .iter()
            .any(|q| q.name == queue && q.is_broadcast())
    }

    /// The request context of a delivery.
    pub(crate) fn request_for(&self, delivery: &Delivery, message: &TaskMessage) -> Request {
        let info = DeliveryInfo {
            exchange: delivery.exchange.clone(),
            routing_key: delivery.routing_key.clone(),
            priority: delivery.priority(),
            redelivered: delivery.redelivered,
        };
        let request = Request::from_message(message, info, self.config.hostname.clone());
        match self.app.result_backend() {
            Some(backend) => {
                let extended = self.app.result_settings().extended;
                request.with_results(backend.clone(), message, extended)
            }
            None => request,
        }
    }

    /// Whether the task of `message` stores no result: it ignores its
    /// result, or the app has no result backend to store it in (then no
    /// result document is built at all).
    pub(crate) fn ignores_result(&self, message: &TaskMessage) -> bool {
        if self.app.result_backend().is_none() {
            return true;
        }
        message
            .headers
            .ignore_result
            .or_else(|| match self.task_options.get(&message.headers.task) {
                Some(options) => options.ignore_result,
                None => self.app.task_options(&message.headers.task).ignore_result,
            })
            .unwrap_or(false)
    }
}
