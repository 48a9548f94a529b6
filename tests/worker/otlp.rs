//! `--otlp-endpoint` (the `otel` feature): each task run's span reaches an
//! OTLP/HTTP collector, parented on the trace context its message carried,
//! and the callback the task sends continues the trace under that span.
//! The collector is a minimal one in this test: it decodes what the
//! OpenTelemetry exporter posts with the official protobuf definitions.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use axum::body::Bytes;
use axum::extract::State;
use celeriac::Signature;
use celeriac_broker::Queue;
use celeriac_tests::unique;
use celeriac_tests::worker::{cleanup, client, demo_worker, reply_queue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// What the collector received: each span with its resource's attributes.
type Received = Arc<Mutex<Vec<(Vec<KeyValue>, Span)>>>;

/// Serves `POST /v1/traces` on a free local port.
async fn start_collector() -> Result<(SocketAddr, Received)> {
    let received = Received::default();
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(collect))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((addr, received))
}

async fn collect(
    State(received): State<Received>,
    body: Bytes,
) -> ([(&'static str, &'static str); 1], Vec<u8>) {
    if let Ok(request) = ExportTraceServiceRequest::decode(body) {
        let mut spans = received.lock().unwrap_or_else(PoisonError::into_inner);
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((resource.clone(), span));
                }
            }
        }
    }
    // An empty ExportTraceServiceResponse: everything accepted.
    ([("content-type", "application/x-protobuf")], Vec::new())
}

/// A string attribute's value.
fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(text) => Some(text.as_str()),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_spans_reach_an_otlp_collector_as_one_trace() -> Result<()> {
    let (collector, received) = start_collector().await?;
    let queue = Queue::celery_default(unique("worker-otlp"));
    let app = client(&queue).await?;
    let node = format!("test@{}", queue.name);
    let endpoint = format!("http://{collector}");
    let worker = demo_worker(
        &queue.name,
        &[
            "-n",
            &node,
            "--without-mingle",
            "--otlp-endpoint",
            &endpoint,
        ],
    )?;

    let trace_id = format!("{:032x}", fastrand::u128(1..));
    let sender_span = "00f067aa0ba902b7";
    let reply_to = reply_queue(&app)?;
    let callback_id = unique("otlp-callback");
    let first = app
        .send_task("demo.add")
        .args((1, 2))
        .header("traceparent", format!("00-{trace_id}-{sender_span}-01"))
        .link(
            Signature::new("demo.add")
                .with_args(vec![json!(10)])
                .with_option("reply_to", reply_to)
                .with_option("queue", queue.name.clone())
                .with_option("task_id", callback_id.clone()),
        )
        .apply()
        .await?;
    ensure!(first.get_as::<i64>(WAIT).await? == 3);
    ensure!(
        app.async_result::<i64>(callback_id.clone())
            .get(WAIT)
            .await?
            == 13
    );

    // SIGTERM: the worker flushes its last batch of spans as it exits.
    let pid = worker.id().context("the worker is running")?;
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    ensure!(killed.success(), "kill -TERM failed");
    let mut worker = worker;
    let status = tokio::time::timeout(WAIT, worker.wait()).await??;
    ensure!(status.success(), "the worker exited with {status}");

    let spans = received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let run = |id: &str| {
        spans
            .iter()
            .find(|(_, span)| attribute(&span.attributes, "task_id") == Some(id))
            .with_context(|| {
                format!(
                    "no span for task {id} among {} received: {spans:#?}",
                    spans.len()
                )
            })
    };
    let (resource, parent) = run(first.id())?;
    let (_, child) = run(&callback_id)?;
    let hex = hex_of;
    ensure!(
        parent.name == "run/demo.add" && parent.kind == SpanKind::Consumer as i32,
        "span name {:?}, kind {}",
        parent.name,
        parent.kind
    );
    ensure!(
        hex(&parent.trace_id) == trace_id && hex(&parent.parent_span_id) == sender_span,
        "the task's span does not continue the message's trace: {parent:#?}"
    );
    ensure!(
        attribute(&parent.attributes, "outcome") == Some("succeeded")
            && attribute(&parent.attributes, "task") == Some("demo.add"),
        "span attributes: {:#?}",
        parent.attributes
    );
    ensure!(
        hex(&child.trace_id) == trace_id && child.parent_span_id == parent.span_id,
        "the callback's span is not the task span's child: {child:#?}"
    );
    ensure!(
        attribute(resource, "service.name") == Some("celeriac-worker")
            && attribute(resource, "service.instance.id") == Some(node.as_str()),
        "resource: {resource:#?}"
    );
    cleanup(&app, &queue.name).await;
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
