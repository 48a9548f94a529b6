//! Prometheus metrics of what an app sends, for programs that only produce
//! tasks (a web service, a script) as much as for workers.
//!
//! - `celery_task_sent_total{name, hostname, queue_name}`: tasks sent and
//!   confirmed by the broker (named as celery-exporter names the count of
//!   `task-sent` events, so the same panels work);
//! - `celeriac_task_send_errors_total{name, hostname, reason}`: sends that
//!   failed, by a short reason ([`send_error_reason`]);
//! - `celeriac_task_send_seconds{hostname, kind}`: from the call to the
//!   broker's confirm, for one task (`kind="task"`) or a
//!   [`send_many`](crate::App::send_many) batch (`kind="batch"`);
//! - `celeriac_broker_reconnects_total{hostname}` in [`SendMetrics::render`]
//!   (a worker that adds these series to its own exports its own count).
//!
//! Off until [`App::metrics`](crate::App::metrics) is first called. The
//! `name` label is bounded: registered task names, then the first
//! [`MAX_TASK_NAMES`] other names sent, then `unknown`.
//!
//! Why `prometheus-client` rather than the `metrics` facade: the worker
//! exports with it, so a worker adds an app's series to its own registry
//! and serves one `/metrics`; and its typed label sets keep label names
//! checked at compile time.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use celeriac_broker::{Broker, BrokerError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Error;

/// How many task names not registered in the app get a label of their
/// own; later ones are counted as `unknown`.
pub const MAX_TASK_NAMES: usize = 1000;

/// The `name` label of task names past [`MAX_TASK_NAMES`].
const UNKNOWN_TASK: &str = "unknown";

/// Labels of `celery_task_sent_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SentLabels {
    name: String,
    hostname: String,
    queue_name: String,
}

/// Labels of `celeriac_task_send_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    name: String,
    hostname: String,
    reason: String,
}

/// Labels of `celeriac_task_send_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    hostname: String,
    kind: &'static str,
}

/// Labels of `celeriac_broker_reconnects_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    hostname: String,
}

type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// 0.5 ms to about 8 s, doubling (as the worker's publish-confirm series).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// The metrics of one app's sends. Cheap to clone; the default records
/// nothing.
///
/// ```no_run
/// # async fn demo(app: celeriac::App) {
/// let metrics = app.metrics();
/// // serve `metrics.render()` with `SendMetrics::CONTENT_TYPE` at /metrics
/// // from your own HTTP server (docs/observability.md, "Producers", has
/// // an axum route).
/// # let _ = metrics;
/// # }
/// ```
#[derive(Clone, Default)]
pub struct SendMetrics {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for SendMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendMetrics")
            .field("enabled", &self.inner.is_some())
            .finish_non_exhaustive()
    }
}

struct Inner {
    hostname: String,
    names: NameLabels,
    families: SendFamilies,
    /// For [`SendMetrics::render`]: the send series plus reconnects.
    standalone: Registry,
    reconnects: Family<HostLabels, Counter>,
    reconnects_seen: Mutex<u64>,
    broker: Broker,
}

/// The send series, registered in the app's own registry and, through
/// [`SendMetrics::register`], in a worker's.
struct SendFamilies {
    sent: Family<SentLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: LatencyFamily,
}

impl Default for SendFamilies {
    fn default() -> SendFamilies {
        SendFamilies {
            sent: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl SendFamilies {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "celery_task_sent",
            "Tasks sent and confirmed by the broker.",
            self.sent.clone(),
        );
        registry.register(
            "celeriac_task_send_errors",
            "Task sends that failed, by reason.",
            self.errors.clone(),
        );
        registry.register(
            "celeriac_task_send_seconds",
            "Seconds from a send call to the broker's confirm, per task or batch.",
            self.latency.clone(),
        );
    }
}

impl SendMetrics {
    /// The HTTP `Content-Type` of [`render`](Self::render)'s output.
    pub const CONTENT_TYPE: &'static str =
        "application/openmetrics-text; version=1.0.0; charset=utf-8";

    /// Metrics labelled with `hostname`, giving the app's `registered`
    /// task names labels of their own; `broker`'s reconnects are counted.
    pub(crate) fn new(
        hostname: &str,
        registered: impl IntoIterator<Item = String>,
        broker: Broker,
    ) -> SendMetrics {
        let families = SendFamilies::default();
        let reconnects = Family::default();
        let mut standalone = Registry::default();
        families.register(&mut standalone);
        standalone.register(
            "celeriac_broker_reconnects",
            "Times the app reconnected to the broker.",
            reconnects.clone(),
        );
        SendMetrics {
            inner: Some(Arc::new(Inner {
                hostname: hostname.to_owned(),
                names: NameLabels::new(registered),
                families,
                standalone,
                reconnects,
                reconnects_seen: Mutex::new(0),
                broker,
            })),
        }
    }

    /// Whether this records anything.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Adds the send series (not the reconnects, which a worker counts
    /// itself) to `registry`, so one `/metrics` serves both.
    pub fn register(&self, registry: &mut Registry) {
        if let Some(inner) = &self.inner {
            inner.families.register(registry);
        }
    }

    /// Every series now, in the OpenMetrics text format (empty when
    /// disabled).
    pub fn render(&self) -> String {
        let Some(inner) = &self.inner else {
            return String::new();
        };
        let reconnects = inner.broker.reconnects();
        let mut seen = lock(&inner.reconnects_seen);
        let labels = HostLabels {
            hostname: inner.hostname.clone(),
        };
        let counter = inner.reconnects.get_or_create(&labels);
        counter.inc_by(reconnects.saturating_sub(*seen));
        drop(counter);
        *seen = reconnects.max(*seen);
        drop(seen);
        let mut text = String::new();
        if encode(&mut text, &inner.standalone).is_err() {
            text.clear();
        }
        text
    }

    /// A task of `name` went to `queue`, confirmed after `elapsed`.
    pub(crate) fn sent(&self, name: &str, queue: &str, elapsed: Duration) {
        if let Some(inner) = &self.inner {
            inner.count_sent(name, queue);
            inner.observe("task", elapsed);
        }
    }

    /// A batch of `(name, queue)` was confirmed after `elapsed`.
    pub(crate) fn sent_batch<'a>(
        &self,
        tasks: impl IntoIterator<Item = (&'a str, &'a str)>,
        elapsed: Duration,
    ) {
        if let Some(inner) = &self.inner {
            for (name, queue) in tasks {
                inner.count_sent(name, queue);
            }
            inner.observe("batch", elapsed);
        }
    }

    /// Sending a task of `name` failed with `error`.
    pub(crate) fn failed(&self, name: &str, error: &Error) {
        if let Some(inner) = &self.inner {
            let labels = ErrorLabels {
                name: inner.names.label(name),
                hostname: inner.hostname.clone(),
                reason: send_error_reason(error).to_owned(),
            };
            inner.families.errors.get_or_create(&labels).inc();
        }
    }
}

impl Inner {
    fn count_sent(&self, name: &str, queue: &str) {
        let labels = SentLabels {
            name: self.names.label(name),
            hostname: self.hostname.clone(),
            queue_name: queue.to_owned(),
        };
        self.families.sent.get_or_create(&labels).inc();
    }

    fn observe(&self, kind: &'static str, elapsed: Duration) {
        let labels = LatencyLabels {
            hostname: self.hostname.clone(),
            kind,
        };
        self.families
            .latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// The `name` label's values, kept bounded.
struct NameLabels {
    /// Names that always get their own label (the app's registered tasks).
    registered: HashSet<String>,
    /// Other names seen so far, at most [`MAX_TASK_NAMES`].
    others: Mutex<HashSet<String>>,
}

impl NameLabels {
    fn new(registered: impl IntoIterator<Item = String>) -> NameLabels {
        NameLabels {
            registered: registered.into_iter().collect(),
            others: Mutex::default(),
        }
    }

    /// `name` itself while the label set stays bounded, else `unknown`.
    fn label(&self, name: &str) -> String {
        if self.registered.contains(name) {
            return name.to_owned();
        }
        let mut others = lock(&self.others);
        if others.contains(name) || others.len() < MAX_TASK_NAMES {
            others.insert(name.to_owned());
            return name.to_owned();
        }
        UNKNOWN_TASK.to_owned()
    }
}

/// A short, stable label for why a send failed: `unroutable`, `nacked`,
/// `refused`, `confirm_timeout`, `unavailable`, `connect`, `channel`,
/// `declare`, `inequivalent`, `headers`, `arguments`, `encode`, `backend`,
/// `route`, `config` or `url`.
pub fn send_error_reason(error: &Error) -> &'static str {
    match error {
        Error::Broker(broker) => match broker {
            BrokerError::Unroutable { .. } => "unroutable",
            BrokerError::Nacked { .. } => "nacked",
            BrokerError::PublishRefused { .. } => "refused",
            BrokerError::ConfirmTimeout { .. } => "confirm_timeout",
            BrokerError::Unavailable { .. } => "unavailable",
            BrokerError::Connect { .. } => "connect",
            BrokerError::Channel { .. } => "channel",
            BrokerError::Declare { .. } => "declare",
            BrokerError::Inequivalent(_) => "inequivalent",
            BrokerError::Headers(_) => "headers",
            _ => "broker",
        },
        Error::Arguments { .. } => "arguments",
        Error::Encode(_) => "encode",
        Error::Backend(_) => "backend",
        Error::Route(_) => "route",
        Error::Config(_) => "config",
        Error::Url(_) => "url",
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_past_the_cap_share_one_label() {
        let names = NameLabels::new(["mine.task".to_owned()]);
        for i in 0..MAX_TASK_NAMES {
            assert_eq!(names.label(&format!("other.{i}")), format!("other.{i}"));
        }
        assert_eq!(names.label("one.too.many"), "unknown");
        assert_eq!(names.label("other.7"), "other.7");
        assert_eq!(names.label("mine.task"), "mine.task");
    }

    #[test]
    fn reasons_name_what_went_wrong() {
        let arguments = Error::Arguments {
            task: "t".into(),
            detail: "d".into(),
        };
        assert_eq!(send_error_reason(&arguments), "arguments");
        assert_eq!(send_error_reason(&Error::Config("x".into())), "config");
    }
}
