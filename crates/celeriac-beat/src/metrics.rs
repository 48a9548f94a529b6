//! Beat's Prometheus metrics and probes (`--metrics-addr`).
//!
//! - `celeriac_beat_ticks_sent_total{entry}`: ticks sent and confirmed;
//! - `celeriac_beat_send_failures_total{entry}`: ticks whose send failed;
//! - `celeriac_beat_skipped_total{entry}`: runs skipped (`catch_up = skip`);
//! - `celeriac_beat_lateness_seconds`: due time to confirmed send;
//! - `celeriac_beat_leader`: 1 while this beat is the active one.
//!
//! `/healthz` answers while the beat runs; `/readyz` while it is connected
//! to RabbitMQ (an active beat and a standby are both ready: either can
//! send when it must).

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use celeriac::App;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The `Content-Type` of [`BeatMetrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EntryLabels {
    entry: String,
}

/// A beat's metrics; cheap to clone.
#[derive(Clone)]
pub struct BeatMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    sent: Family<EntryLabels, Counter>,
    failed: Family<EntryLabels, Counter>,
    skipped: Family<EntryLabels, Counter>,
    lateness: Histogram,
    leader: Gauge,
}

impl std::fmt::Debug for BeatMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BeatMetrics").finish_non_exhaustive()
    }
}

impl Default for BeatMetrics {
    fn default() -> Self {
        BeatMetrics::new()
    }
}

impl BeatMetrics {
    /// Fresh metrics, all at zero.
    pub fn new() -> BeatMetrics {
        let mut registry = Registry::default();
        let sent = Family::<EntryLabels, Counter>::default();
        let failed = Family::<EntryLabels, Counter>::default();
        let skipped = Family::<EntryLabels, Counter>::default();
        // 1 ms to about 33 s, doubling.
        let lateness = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let leader = Gauge::default();
        registry.register(
            "celeriac_beat_ticks_sent",
            "Ticks sent and confirmed, by entry.",
            sent.clone(),
        );
        registry.register(
            "celeriac_beat_send_failures",
            "Ticks whose send failed, by entry.",
            failed.clone(),
        );
        registry.register(
            "celeriac_beat_skipped",
            "Runs skipped by catch_up = skip, by entry.",
            skipped.clone(),
        );
        registry.register(
            "celeriac_beat_lateness_seconds",
            "Seconds from a tick's due time to its confirmed send.",
            lateness.clone(),
        );
        registry.register(
            "celeriac_beat_leader",
            "1 while this beat is the active one.",
            leader.clone(),
        );
        BeatMetrics {
            inner: Arc::new(Inner {
                registry,
                sent,
                failed,
                skipped,
                lateness,
                leader,
            }),
        }
    }

    /// Every series, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if encode(&mut text, &self.inner.registry).is_err() {
            text.clear();
        }
        text
    }

    /// A tick of `entry` was sent, `late` seconds after it was due.
    pub(crate) fn sent(&self, entry: &str, late: f64) {
        self.inner.sent.get_or_create(&labels(entry)).inc();
        self.inner.lateness.observe(late.max(0.0));
    }

    /// A tick of `entry` could not be sent.
    pub(crate) fn failed(&self, entry: &str) {
        self.inner.failed.get_or_create(&labels(entry)).inc();
    }

    /// `missed` runs of `entry` were skipped.
    pub(crate) fn skipped(&self, entry: &str, missed: u64) {
        self.inner
            .skipped
            .get_or_create(&labels(entry))
            .inc_by(missed);
    }

    /// Whether this beat is the active one.
    pub(crate) fn leading(&self, leader: bool) {
        self.inner.leader.set(i64::from(leader));
    }
}

fn labels(entry: &str) -> EntryLabels {
    EntryLabels {
        entry: entry.to_owned(),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop`.
pub(crate) fn serve(
    listener: TcpListener,
    metrics: BeatMetrics,
    app: App,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let router = Router::new()
        .route(
            "/metrics",
            get(move || async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render()) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || async move { readiness(&app) }));
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "the metrics listener stopped");
        }
    })
}

fn readiness(app: &App) -> Response {
    match app.broker().down_reason() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready:\nnot connected to RabbitMQ: {reason}\n"),
        )
            .into_response(),
    }
}
