//! The worker's Prometheus metrics.
//!
//! Task counters and histograms are named and labelled as celery-exporter
//! names them (`celery_task_succeeded_total{name, hostname, queue_name}`
//! and so on), so dashboards and alerts built on it keep working; each
//! counts the task event of the same name that the worker emits (whether
//! or not events are enabled). Celeriac's own series, which no Celery
//! exporter can see, are prefixed `celeriac_`.
//!
//! Label values are bounded: `name` is a registered task name or
//! `unknown`, `queue_name` a queue the worker consumes, `hostname` the
//! host part of the node name (`worker1@host` → `host`), as
//! celery-exporter has it.
//!
//! Off unless asked for ([`Worker::metrics`](crate::Worker::metrics) or
//! `--metrics-addr`): a disabled [`Metrics`] records nothing.

mod probes;
mod series;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use celeriac::metrics::SendMetrics;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::context::Context;
pub(crate) use probes::serve;
use series::{Families, TaskSeries, WorkerLabels};

/// The label value for task names the worker has not registered.
const UNKNOWN_TASK: &str = "unknown";

/// The host part of a node name (`worker1@host` → `host`): the
/// `hostname` label, as celery-exporter has it.
pub(crate) fn node_host(node: &str) -> &str {
    node.split_once('@').map_or(node, |(_, host)| host)
}

/// A worker's metrics, rendered in the OpenMetrics text format that
/// Prometheus scrapes. Cheap to clone.
///
/// An embedding program can mount [`Metrics::render`] in its own HTTP
/// server instead of `--metrics-addr`:
///
/// ```no_run
/// # async fn demo(app: celeriac::App) {
/// use celeriac_worker::{Worker, WorkerConfig};
/// let worker = Worker::new(app, WorkerConfig::default());
/// let metrics = worker.metrics();
/// // e.g. in an axum handler: `metrics.render()` with `Metrics::CONTENT_TYPE`
/// # let _ = metrics;
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("enabled", &self.inner.is_some())
            .finish_non_exhaustive()
    }
}

struct Inner {
    registry: Registry,
    families: Families,
    /// The host part of the worker's node name (the `hostname` label).
    hostname: String,
    /// Registered task names: anything else is counted as `unknown`.
    known: HashSet<String>,
    /// Resolved series by queue, then task name.
    series: RwLock<HashMap<String, HashMap<String, Arc<TaskSeries>>>>,
    /// The running worker, read at each scrape for its gauges.
    live: Mutex<Weak<Context>>,
    /// Broker reconnects already counted.
    reconnects_seen: Mutex<u64>,
    /// `celeriac_result_store_seconds` of this worker.
    result_store: Histogram,
}

impl Metrics {
    /// The HTTP `Content-Type` of [`render`](Self::render)'s output.
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// Metrics that record nothing.
    pub(crate) fn disabled() -> Metrics {
        Metrics::default()
    }

    /// Metrics for the worker named `node` running `tasks`, serving the
    /// app's `sends` (tasks sent from tasks, callbacks) with its own.
    pub(crate) fn new(
        node: &str,
        tasks: impl IntoIterator<Item = String>,
        sends: &SendMetrics,
    ) -> Metrics {
        let mut registry = Registry::default();
        let families = Families::register(&mut registry);
        sends.register(&mut registry);
        let hostname = node_host(node);
        let result_store = families.result_store(hostname);
        Metrics {
            inner: Some(Arc::new(Inner {
                registry,
                families,
                hostname: hostname.to_owned(),
                known: tasks.into_iter().collect(),
                series: RwLock::default(),
                live: Mutex::new(Weak::new()),
                reconnects_seen: Mutex::new(0),
                result_store,
            })),
        }
    }

    /// Whether this records anything.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Every series now, in the OpenMetrics text format (empty when
    /// disabled).
    pub fn render(&self) -> String {
        let Some(inner) = &self.inner else {
            return String::new();
        };
        inner.refresh_gauges();
        let mut text = String::new();
        if encode(&mut text, &inner.registry).is_err() {
            text.clear();
        }
        text
    }

    /// Reads the running worker's gauges at each scrape.
    pub(crate) fn watch(&self, ctx: &Arc<Context>) {
        if let Some(inner) = &self.inner {
            *lock(&inner.live) = Arc::downgrade(ctx);
        }
    }

    /// A task of `name` from `queue` was received.
    pub(crate) fn received(&self, queue: &str, name: &str) {
        self.task(queue, name, |s| {
            s.received.inc();
        });
    }

    /// A task started, `wait` after it was enqueued (when the message says
    /// when that was).
    pub(crate) fn started(&self, queue: &str, name: &str, wait: Option<Duration>) {
        self.task(queue, name, |s| {
            s.started.inc();
            if let Some(wait) = wait {
                s.queue_wait.observe(wait.as_secs_f64());
            }
        });
    }

    /// A task succeeded after running `runtime` seconds.
    pub(crate) fn succeeded(&self, queue: &str, name: &str, runtime: f64) {
        self.task(queue, name, |s| {
            s.succeeded.inc();
            s.runtime.observe(runtime);
        });
    }

    /// A task failed with an exception of type `exception`.
    pub(crate) fn failed(&self, queue: &str, name: &str, exception: &str) {
        if let Some(inner) = &self.inner {
            inner.families.failed(&inner.labels(queue, name), exception);
        }
    }

    /// A retry of a task was scheduled.
    pub(crate) fn retried(&self, queue: &str, name: &str) {
        self.task(queue, name, |s| {
            s.retried.inc();
        });
    }

    /// A task rejected its message.
    pub(crate) fn rejected(&self, queue: &str, name: &str) {
        self.task(queue, name, |s| {
            s.rejected.inc();
        });
    }

    /// A task was revoked (by id or stamp, expired, or terminated).
    pub(crate) fn revoked(&self, queue: &str, name: &str) {
        self.task(queue, name, |s| {
            s.revoked.inc();
        });
    }

    /// A delivery was deferred to wait for its rate-limit turn.
    pub(crate) fn rate_deferred(&self, queue: &str, name: &str) {
        self.task(queue, name, |s| {
            s.rate_deferred.inc();
        });
    }

    /// A delivery was acked without running: its id had already succeeded.
    pub(crate) fn skipped_succeeded(&self, queue: &str, name: &str) {
        self.task(queue, name, |s| {
            s.skipped_succeeded.inc();
        });
    }

    /// A delivery was deferred because its global limit was full.
    pub(crate) fn limit_deferred(&self, queue: &str, name: &str) {
        self.task(queue, name, |s| {
            s.limit_deferred.inc();
        });
    }

    /// A message from `queue` was dead-lettered with `reason`.
    pub(crate) fn dead_lettered(&self, queue: &str, reason: &str) {
        if let Some(inner) = &self.inner {
            inner.families.dead_lettered(&inner.hostname, queue, reason);
        }
    }

    /// A message from `queue` hit the redelivery limit (a crash loop).
    pub(crate) fn redelivery_limit(&self, queue: &str) {
        if let Some(inner) = &self.inner {
            inner.families.redelivery_limit(&inner.hostname, queue);
        }
    }

    /// A publish of `kind` (`retry`, `delay`, `dead_letter`, `workflow`,
    /// `requeue`) was confirmed after `elapsed`.
    pub(crate) fn published(&self, kind: &'static str, elapsed: Duration) {
        if let Some(inner) = &self.inner {
            inner
                .families
                .published(&inner.hostname, kind, elapsed.as_secs_f64());
        }
    }

    /// A result was stored after `elapsed` (retries included).
    pub(crate) fn result_stored(&self, elapsed: Duration) {
        if let Some(inner) = &self.inner {
            inner.result_store.observe(elapsed.as_secs_f64());
        }
    }

    /// Runs `record` on the series of `name` from `queue`.
    fn task(&self, queue: &str, name: &str, record: impl FnOnce(&TaskSeries)) {
        if let Some(inner) = &self.inner {
            record(&inner.series(queue, name));
        }
    }
}

impl Inner {
    /// The label value for a task name.
    fn name_label<'a>(&self, name: &'a str) -> &'a str {
        if self.known.contains(name) {
            name
        } else {
            UNKNOWN_TASK
        }
    }

    fn labels(&self, queue: &str, name: &str) -> series::TaskLabels {
        series::TaskLabels {
            name: self.name_label(name).to_owned(),
            hostname: self.hostname.clone(),
            queue_name: queue.to_owned(),
        }
    }

    /// The series of `name` from `queue`, created on first use.
    fn series(&self, queue: &str, name: &str) -> Arc<TaskSeries> {
        if let Some(found) = read(&self.series).get(queue).and_then(|q| q.get(name)) {
            return found.clone();
        }
        let label = self.name_label(name).to_owned();
        let mut all = write(&self.series);
        let by_name = all.entry(queue.to_owned()).or_default();
        if let Some(found) = by_name.get(&label) {
            return found.clone();
        }
        let created = Arc::new(self.families.task_series(&self.labels(queue, &label)));
        by_name.insert(label, created.clone());
        created
    }

    /// Sets the gauges from the running worker, and counts new reconnects.
    fn refresh_gauges(&self) {
        let labels = WorkerLabels {
            hostname: self.hostname.clone(),
        };
        let families = &self.families;
        let Some(ctx) = lock(&self.live).upgrade() else {
            families.worker_up.get_or_create(&labels).set(0);
            families.tasks_active.get_or_create(&labels).set(0);
            return;
        };
        let up = i64::from(!ctx.shutdown.is_cancelled());
        families.worker_up.get_or_create(&labels).set(up);
        let gauge = |family: &series::GaugeFamily, value: usize| {
            family
                .get_or_create(&labels)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        gauge(&families.tasks_active, ctx.tracker.running());
        gauge(&families.tasks_held, ctx.tracker.held());
        gauge(&families.eta_held, ctx.eta_holds.held());
        gauge(&families.acks_pending, ctx.consumer.acks_pending());
        let reconnects = ctx.app.broker().reconnects();
        let mut seen = lock(&self.reconnects_seen);
        let counter = families.reconnects.get_or_create(&labels);
        counter.inc_by(reconnects.saturating_sub(*seen));
        *seen = reconnects.max(*seen);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn counters_carry_celery_exporter_names_and_labels() {
        let metrics = Metrics::new("w1@box", ["demo.add".to_owned()], &SendMetrics::default());
        metrics.received("celery", "demo.add");
        metrics.started("celery", "demo.add", Some(Duration::from_millis(20)));
        metrics.succeeded("celery", "demo.add", 0.01);
        metrics.failed("celery", "demo.add", "ValueError");
        let text = metrics.render();
        let labels = r#"{name="demo.add",hostname="box",queue_name="celery"}"#;
        for (name, want) in [
            ("celery_task_received_total", 1.0),
            ("celery_task_started_total", 1.0),
            ("celery_task_succeeded_total", 1.0),
            ("celery_task_retried_total", 0.0),
            ("celery_task_revoked_total", 0.0),
            ("celery_task_rejected_total", 0.0),
            ("celery_task_runtime_count", 1.0),
            ("celery_task_queue_wait_time_count", 1.0),
        ] {
            assert_eq!(
                sample(&text, &format!("{name}{labels}")),
                Some(want),
                "{name} in\n{text}"
            );
        }
        let failed = r#"celery_task_failed_total{name="demo.add",hostname="box",exception="ValueError",queue_name="celery"}"#;
        assert_eq!(sample(&text, failed), Some(1.0), "{text}");
    }

    #[test]
    fn unregistered_names_share_one_label_value() {
        let metrics = Metrics::new("w1@box", ["demo.add".to_owned()], &SendMetrics::default());
        for i in 0..50 {
            metrics.received("celery", &format!("junk.{i}"));
        }
        let text = metrics.render();
        let unknown =
            r#"celery_task_received_total{name="unknown",hostname="box",queue_name="celery"}"#;
        assert_eq!(sample(&text, unknown), Some(50.0), "{text}");
        assert!(!text.contains("junk."), "{text}");
    }

    #[test]
    fn disabled_metrics_record_and_render_nothing() {
        let metrics = Metrics::disabled();
        metrics.received("celery", "demo.add");
        assert!(!metrics.is_enabled());
        assert_eq!(metrics.render(), "");
    }
}
