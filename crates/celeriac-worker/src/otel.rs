//! OTLP export of the task spans (the `otel` cargo feature,
//! `--otlp-endpoint`).
//!
//! Each task run's `task` span becomes an OpenTelemetry span named
//! `run/<task name>` (as `opentelemetry-instrumentation-celery` names a
//! Python worker's), of kind consumer, whose parent is the span the
//! message's `traceparent` names. Its span id is the one the task passes
//! on: tasks it sends, its callbacks and its retries carry it as their
//! parent, so the exported spans link up across Python and Rust. A task
//! whose message carried no trace context starts a trace of its own.
//!
//! Spans go to `<endpoint>/v1/traces` as OTLP protobuf over HTTP, in
//! batches from the SDK's own thread (`OTEL_BSP_*` variables tune it);
//! `OTEL_SERVICE_NAME` names the service (default `celeriac-worker`).

use std::sync::atomic::{AtomicBool, Ordering};

use celeriac::Request;
use celeriac::protocol::TaskHeaders;
use celeriac::protocol::trace::TraceContext;
use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use tracing::Span;
use tracing::subscriber::Subscriber;
use tracing_opentelemetry::{OpenTelemetryLayer, OpenTelemetrySpanExt as _};
use tracing_subscriber::registry::LookupSpan;

/// Whether spans are being exported (the layer is installed).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The service name when `OTEL_SERVICE_NAME` does not give one.
const DEFAULT_SERVICE_NAME: &str = "celeriac-worker";

/// Why span export could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// The endpoint is not an `http://` URL.
    #[error(
        "otlp_endpoint must be an http:// URL of an OpenTelemetry collector (e.g. http://127.0.0.1:4318), got {0:?}; for TLS, run a collector beside the worker and let it forward"
    )]
    Endpoint(String),
    /// The exporter could not be built.
    #[error("cannot set up the OTLP exporter for {endpoint}: {reason}")]
    Exporter {
        /// The traces URL.
        endpoint: String,
        /// What the OpenTelemetry SDK said.
        reason: String,
    },
}

/// The running export: flush it with [`shutdown`](Self::shutdown) before
/// the process exits, or the last batch is lost.
#[derive(Debug)]
pub struct OtlpExport {
    provider: SdkTracerProvider,
}

impl OtlpExport {
    /// Sends what is still batched and stops the exporter's thread.
    pub fn shutdown(self) {
        EXPORTING.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: the last task spans may not have reached the collector: {e}");
        }
    }
}

/// The `tracing` layer that exports spans to `endpoint` (a collector's
/// base URL, or its full `/v1/traces` URL), from the worker `node`.
pub(crate) fn layer<S>(
    endpoint: &str,
    node: &str,
) -> Result<(OpenTelemetryLayer<S, SdkTracer>, OtlpExport), OtlpError>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let url = traces_url(endpoint)?;
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(url.clone())
        .build()
        .map_err(|e| OtlpError::Exporter {
            endpoint: url,
            reason: e.to_string(),
        })?;
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.instance.id", node.to_owned()))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("celeriac-worker");
    EXPORTING.store(true, Ordering::Relaxed);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false);
    Ok((layer, OtlpExport { provider }))
}

/// `<endpoint>/v1/traces`, unless `endpoint` already ends so.
fn traces_url(endpoint: &str) -> Result<String, OtlpError> {
    let endpoint = endpoint.trim();
    if !endpoint.starts_with("http://") {
        return Err(OtlpError::Endpoint(endpoint.to_owned()));
    }
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        Ok(base.to_owned())
    } else {
        Ok(format!("{base}/v1/traces"))
    }
}

/// Makes `span` (a task run's) the exported span that continues the
/// trace its message carried (`sender`, when it carried one), and gives
/// `request` that span's context, so what the task sends is parented on
/// it. Does nothing unless spans are exported.
///
/// `request.trace` already has a span id of its own (Celeriac makes one for
/// every run, exported or not); here it becomes the exported span's.
pub(crate) fn continue_trace(span: &Span, headers: &TaskHeaders, request: &mut Request) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let sender = TraceContext::from_headers(headers);
    span.record("otel.name", format!("run/{}", request.task));
    span.record("otel.kind", "consumer");
    if let Some(sender) = sender {
        let parent = SpanContext::new(
            TraceId::from_bytes(sender.trace_id.to_be_bytes()),
            SpanId::from_bytes(sender.span_id.to_be_bytes()),
            TraceFlags::new(sender.flags),
            true,
            TraceState::default(),
        );
        let _ = span.set_parent(Context::new().with_remote_span_context(parent));
    }
    let context = span.context();
    let ours = context.span().span_context().clone();
    if ours.is_valid() {
        if sender.is_none() {
            span.record("trace_id", ours.trace_id().to_string());
        }
        request.trace = Some(TraceContext {
            trace_id: u128::from_be_bytes(ours.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(ours.span_id().to_bytes()),
            flags: ours.trace_flags().to_u8(),
        });
    }
}

/// Marks an exported task span as failed (a task that raised, was
/// rejected or terminated), so trace UIs flag it.
pub(crate) fn mark_outcome(span: &Span, outcome: &'static str) {
    if EXPORTING.load(Ordering::Relaxed) && matches!(outcome, "failed" | "rejected" | "terminated")
    {
        span.set_status(Status::error(outcome));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_traces_path_once() {
        let url = |text: &str| traces_url(text).unwrap();
        assert_eq!(url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
        let https = traces_url("https://c:4318").unwrap_err().to_string();
        assert!(
            https.contains("http://") && https.contains("collector"),
            "{https}"
        );
    }
}
