//! The HTTP listener of `--metrics-addr`: `/metrics` for Prometheus,
//! `/healthz` and `/readyz` for Kubernetes probes.
//!
//! - `/healthz`: 200 while the worker's loop turns (it ticks every second;
//!   silent for [`STALL_LIMIT`] means stuck) and while it shuts down, 503
//!   otherwise.
//! - `/readyz`: 200 while connected to RabbitMQ and consuming every
//!   configured queue; 503 with the reasons, one per line, otherwise
//!   (connection down, a queue not consumed, shutting down).

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Metrics;
use crate::context::Context;

/// How long the worker loop may go without a tick before `/healthz` fails.
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Probe {
    metrics: Metrics,
    worker: Weak<Context>,
}

/// Serves the probes and metrics on `listener` until `stop` is cancelled.
pub(crate) fn serve(
    listener: TcpListener,
    metrics: Metrics,
    ctx: &Arc<Context>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let probe = Probe {
        metrics,
        worker: Arc::downgrade(ctx),
    };
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(probe);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            warn!(error = %e, "the metrics listener stopped");
        }
    })
}

async fn render(axum::extract::State(probe): axum::extract::State<Probe>) -> Response {
    (
        [(header::CONTENT_TYPE, Metrics::CONTENT_TYPE)],
        probe.metrics.render(),
    )
        .into_response()
}

async fn healthz(axum::extract::State(probe): axum::extract::State<Probe>) -> Response {
    let Some(ctx) = probe.worker.upgrade() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "the worker has stopped\n").into_response();
    };
    if ctx.shutdown.is_cancelled() {
        // Draining running tasks is not a hang: a liveness probe that
        // failed now would kill the worker in the middle of its shutdown.
        return (StatusCode::OK, "ok (shutting down)\n").into_response();
    }
    let silent = ctx.loop_silence();
    if silent > STALL_LIMIT {
        let body = format!("the worker loop has not turned for {silent:?}\n");
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(axum::extract::State(probe): axum::extract::State<Probe>) -> Response {
    let reasons = match probe.worker.upgrade() {
        Some(ctx) => not_ready(&ctx),
        None => vec!["the worker has stopped".to_owned()],
    };
    if reasons.is_empty() {
        return (StatusCode::OK, "ready\n").into_response();
    }
    let body = format!("not ready:\n{}\n", reasons.join("\n"));
    (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
}

/// Why the worker is not ready to take tasks; empty when it is.
fn not_ready(ctx: &Context) -> Vec<String> {
    let mut reasons = Vec::new();
    if ctx.shutdown.is_cancelled() {
        reasons.push("shutting down".to_owned());
    }
    if let Some(reason) = ctx.app.broker().down_reason() {
        reasons.push(format!("not connected to RabbitMQ: {reason}"));
    }
    for queue in ctx.consumer.not_consuming() {
        reasons.push(format!("not consuming queue {queue}"));
    }
    reasons
}
