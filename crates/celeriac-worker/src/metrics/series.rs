//! The metric families, their labels and buckets.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Prometheus's default histogram buckets (as celery-exporter uses for
/// `celery_task_runtime`), in seconds.
const DEFAULT_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Labels of the celery-exporter task series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TaskLabels {
    pub(crate) name: String,
    pub(crate) hostname: String,
    pub(crate) queue_name: String,
}

/// Labels of `celery_task_failed_total` (celery-exporter's order).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailedLabels {
    name: String,
    hostname: String,
    exception: String,
    queue_name: String,
}

/// Labels of the per-worker series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WorkerLabels {
    pub(crate) hostname: String,
}

/// Labels of the dead-letter counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeadLetterLabels {
    hostname: String,
    queue_name: String,
    reason: String,
}

/// Labels of the redelivery-limit counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    hostname: String,
    queue_name: String,
}

/// Labels of the publish-confirm histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishLabels {
    hostname: String,
    kind: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
/// A gauge per worker.
pub(crate) type GaugeFamily = Family<WorkerLabels, Gauge>;

fn task_histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

/// 0.5 ms to about 8 s, doubling: broker confirms and result stores.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// One task name's series from one queue, resolved once and then updated
/// without a label lookup.
pub(crate) struct TaskSeries {
    pub(crate) received: Counter,
    pub(crate) started: Counter,
    pub(crate) succeeded: Counter,
    pub(crate) retried: Counter,
    pub(crate) rejected: Counter,
    pub(crate) revoked: Counter,
    pub(crate) rate_deferred: Counter,
    pub(crate) skipped_succeeded: Counter,
    pub(crate) limit_deferred: Counter,
    pub(crate) runtime: Histogram,
    pub(crate) queue_wait: Histogram,
}

/// Every family the worker exports.
pub(crate) struct Families {
    received: Family<TaskLabels, Counter>,
    started: Family<TaskLabels, Counter>,
    succeeded: Family<TaskLabels, Counter>,
    failed: Family<FailedLabels, Counter>,
    retried: Family<TaskLabels, Counter>,
    rejected: Family<TaskLabels, Counter>,
    revoked: Family<TaskLabels, Counter>,
    rate_deferred: Family<TaskLabels, Counter>,
    skipped_succeeded: Family<TaskLabels, Counter>,
    limit_deferred: Family<TaskLabels, Counter>,
    runtime: HistogramFamily<TaskLabels>,
    queue_wait: HistogramFamily<TaskLabels>,
    pub(crate) worker_up: GaugeFamily,
    pub(crate) tasks_active: GaugeFamily,
    pub(crate) tasks_held: GaugeFamily,
    pub(crate) eta_held: GaugeFamily,
    pub(crate) acks_pending: GaugeFamily,
    pub(crate) reconnects: Family<WorkerLabels, Counter>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    redelivery_limit: Family<QueueLabels, Counter>,
    publish: HistogramFamily<PublishLabels>,
    result_store: HistogramFamily<WorkerLabels>,
}

impl Families {
    /// Creates the families and registers them in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Families {
        let families = Families {
            received: Family::default(),
            started: Family::default(),
            succeeded: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            rejected: Family::default(),
            revoked: Family::default(),
            rate_deferred: Family::default(),
            skipped_succeeded: Family::default(),
            limit_deferred: Family::default(),
            runtime: Family::new_with_constructor(task_histogram),
            queue_wait: Family::new_with_constructor(task_histogram),
            worker_up: Family::default(),
            tasks_active: Family::default(),
            tasks_held: Family::default(),
            eta_held: Family::default(),
            acks_pending: Family::default(),
            reconnects: Family::default(),
            dead_letters: Family::default(),
            redelivery_limit: Family::default(),
            publish: Family::new_with_constructor(latency_histogram),
            result_store: Family::new_with_constructor(latency_histogram),
        };
        let f = &families;
        let r = registry;
        r.register(
            "celery_task_received",
            "Tasks the worker received.",
            f.received.clone(),
        );
        r.register(
            "celery_task_started",
            "Tasks that started to run.",
            f.started.clone(),
        );
        r.register(
            "celery_task_succeeded",
            "Tasks that succeeded.",
            f.succeeded.clone(),
        );
        r.register(
            "celery_task_failed",
            "Tasks that failed for good, by exception type.",
            f.failed.clone(),
        );
        r.register(
            "celery_task_retried",
            "Task retries scheduled.",
            f.retried.clone(),
        );
        r.register(
            "celery_task_rejected",
            "Tasks that rejected their message to be requeued.",
            f.rejected.clone(),
        );
        r.register(
            "celery_task_revoked",
            "Tasks revoked, expired or terminated.",
            f.revoked.clone(),
        );
        r.register(
            "celeriac_task_rate_deferred",
            "Deliveries moved to the delay queues to wait for their rate-limit turn.",
            f.rate_deferred.clone(),
        );
        r.register(
            "celeriac_task_skipped_succeeded",
            "Deliveries acked without running: the task id had already succeeded (skip_succeeded).",
            f.skipped_succeeded.clone(),
        );
        r.register(
            "celeriac_task_limit_deferred",
            "Deliveries moved to the delay queues because their global limit was full.",
            f.limit_deferred.clone(),
        );
        r.register(
            "celery_task_runtime",
            "Run time of succeeded tasks, in seconds.",
            f.runtime.clone(),
        );
        r.register(
            "celery_task_queue_wait_time",
            "Seconds from enqueue (the message's timestamp_in_ms header) to start.",
            f.queue_wait.clone(),
        );
        r.register(
            "celery_worker_up",
            "1 while the worker runs, 0 once it shuts down.",
            f.worker_up.clone(),
        );
        r.register(
            "celery_worker_tasks_active",
            "Tasks running now.",
            f.tasks_active.clone(),
        );
        r.register(
            "celeriac_worker_tasks_held",
            "Deliveries the worker holds unacked: reserved, scheduled or running.",
            f.tasks_held.clone(),
        );
        r.register(
            "celeriac_eta_tasks_held",
            "ETA tasks held in the worker until due.",
            f.eta_held.clone(),
        );
        r.register(
            "celeriac_acks_pending",
            "Finished deliveries whose ack waits in the coalescing window.",
            f.acks_pending.clone(),
        );
        r.register(
            "celeriac_broker_reconnects",
            "Connections to RabbitMQ lost and opened again.",
            f.reconnects.clone(),
        );
        r.register(
            "celeriac_dead_letters",
            "Messages dead-lettered, by reason.",
            f.dead_letters.clone(),
        );
        r.register(
            "celeriac_redelivery_limit_hits",
            "Messages dead-lettered for crossing the redelivery limit (crash loops).",
            f.redelivery_limit.clone(),
        );
        r.register(
            "celeriac_publish_confirm_seconds",
            "Seconds from publish to the broker's confirm, by kind of message.",
            f.publish.clone(),
        );
        r.register(
            "celeriac_result_store_seconds",
            "Seconds to store a task's outcome in the result backend, retries included.",
            f.result_store.clone(),
        );
        families
    }

    /// The series of one task name from one queue (each shows at zero from
    /// now on, as celery-exporter shows every counter of a seen task).
    pub(crate) fn task_series(&self, labels: &TaskLabels) -> TaskSeries {
        TaskSeries {
            received: self.received.get_or_create_owned(labels),
            started: self.started.get_or_create_owned(labels),
            succeeded: self.succeeded.get_or_create_owned(labels),
            retried: self.retried.get_or_create_owned(labels),
            rejected: self.rejected.get_or_create_owned(labels),
            revoked: self.revoked.get_or_create_owned(labels),
            rate_deferred: self.rate_deferred.get_or_create_owned(labels),
            skipped_succeeded: self.skipped_succeeded.get_or_create_owned(labels),
            limit_deferred: self.limit_deferred.get_or_create_owned(labels),
            runtime: self.runtime.get_or_create_owned(labels),
            queue_wait: self.queue_wait.get_or_create_owned(labels),
        }
    }

    /// Counts a failure of `labels`'s task with `exception`.
    pub(crate) fn failed(&self, labels: &TaskLabels, exception: &str) {
        let labels = FailedLabels {
            name: labels.name.clone(),
            hostname: labels.hostname.clone(),
            exception: exception.to_owned(),
            queue_name: labels.queue_name.clone(),
        };
        self.failed.get_or_create(&labels).inc();
    }

    /// Counts a dead letter from `queue` with `reason`.
    pub(crate) fn dead_lettered(&self, hostname: &str, queue: &str, reason: &str) {
        let labels = DeadLetterLabels {
            hostname: hostname.to_owned(),
            queue_name: queue.to_owned(),
            reason: reason.to_owned(),
        };
        self.dead_letters.get_or_create(&labels).inc();
    }

    /// Counts a message from `queue` past the redelivery limit.
    pub(crate) fn redelivery_limit(&self, hostname: &str, queue: &str) {
        let labels = QueueLabels {
            hostname: hostname.to_owned(),
            queue_name: queue.to_owned(),
        };
        self.redelivery_limit.get_or_create(&labels).inc();
    }

    /// Observes a confirmed publish of `kind`.
    pub(crate) fn published(&self, hostname: &str, kind: &str, seconds: f64) {
        let labels = PublishLabels {
            hostname: hostname.to_owned(),
            kind: kind.to_owned(),
        };
        self.publish.get_or_create(&labels).observe(seconds);
    }

    /// The result-store histogram of the worker on `hostname`.
    pub(crate) fn result_store(&self, hostname: &str) -> Histogram {
        let labels = WorkerLabels {
            hostname: hostname.to_owned(),
        };
        self.result_store.get_or_create_owned(&labels)
    }
}
