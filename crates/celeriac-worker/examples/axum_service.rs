//! One service, one process, one `App`: an HTTP API that enqueues work and
//! the worker that does it.
//!
//! ```sh
//! cargo run -p celeriac-worker --example axum_service
//! curl -s -XPOST localhost:3000/thumbnails -H 'content-type: application/json' \
//!      -d '{"url": "https://example.com/a.png", "width": 800}'
//! # {"task_id":"..."}
//! curl -s localhost:3000/thumbnails/<task_id>
//! # {"state":"SUCCESS","result":"https://example.com/a.png@800w"}
//! curl -s localhost:3000/metrics | grep -E 'celery_task_(sent|succeeded)_total'
//! # the worker's Prometheus metrics and the API's sends, served by the
//! # service's own router
//! ```
//!
//! `--once` starts the service on a free port, makes one request of each
//! kind against it, prints the answers, deletes its queue and exits (a
//! smoke test; run it with `CELERIAC_QUEUE` naming a queue of its own). The
//! worker consumes queue `celery` unless `CELERIAC_QUEUE` names another;
//! RabbitMQ at Celery's default URL unless `CELERIAC_BROKER_URL` says
//! otherwise. Ctrl-C stops the HTTP server, then the worker (gracefully),
//! then closes the shared connection.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use celeriac::{App, TaskResult, task};
use celeriac_worker::{Metrics, Worker, WorkerConfig};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The work the API hands off: here it only pretends to resize an image.
#[task(name = "service.thumbnail")]
async fn thumbnail(url: String, width: u32) -> TaskResult<String> {
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(format!("{url}@{width}w"))
}

#[derive(Deserialize)]
struct ThumbnailRequest {
    url: String,
    width: u32,
}

/// `POST /thumbnails`: enqueue, answer at once with the task id.
async fn enqueue(
    State(app): State<App>,
    Json(request): Json<ThumbnailRequest>,
) -> Result<Json<Value>, (StatusCode, String)> {
    let sent = thumbnail::new(request.url, request.width)
        .apply_async(&app)
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(json!({ "task_id": sent.id() })))
}

/// `GET /thumbnails/{id}`: the task's state, and its result once done.
async fn status(State(app): State<App>, Path(id): Path<String>) -> Json<Value> {
    let result = app.async_result::<String>(id);
    match result.get(Duration::from_secs(5)).await {
        Ok(value) => Json(json!({ "state": "SUCCESS", "result": value })),
        Err(e) => {
            let state = result
                .state()
                .await
                .map_or_else(|_| "UNKNOWN".into(), |s| s.to_string());
            Json(json!({ "state": state, "error": e.to_string() }))
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let once = std::env::args().any(|a| a == "--once");
    let queue = std::env::var("CELERIAC_QUEUE").unwrap_or_else(|_| "celery".into());
    let app = App::builder()
        .result_backend("rpc://")
        .default_queue(queue.clone())
        .task(thumbnail)
        .build()
        .await?;

    let stop = CancellationToken::new();
    let config = WorkerConfig {
        queues: vec![queue],
        concurrency: 16,
        ..WorkerConfig::default()
    };
    let worker = Worker::new(app.clone(), config);
    // The worker's metrics, mounted in this service's router (asking for
    // the handle turns recording on); they include the shared app's send
    // series, so the tasks the API enqueues are counted too.
    let metrics = worker.metrics();
    let worker = tokio::spawn(worker.run_until(stop.clone().cancelled_owned()));

    let api =
        Router::new()
            .route("/thumbnails", post(enqueue))
            .route("/thumbnails/{id}", get(status))
            .route(
                "/metrics",
                get(move || async move {
                    ([("content-type", Metrics::CONTENT_TYPE)], metrics.render())
                }),
            )
            .with_state(app.clone());
    let listener = TcpListener::bind(if once {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:3000"
    })
    .await?;
    let address = listener.local_addr()?;
    println!("listening on http://{address}");
    let server_stop = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, api)
            .with_graceful_shutdown(server_stop.cancelled_owned())
            .await
    });

    if once {
        let answer = smoke_test(&address.to_string()).await;
        stop.cancel();
        println!("{}", answer?);
    } else {
        tokio::signal::ctrl_c().await?;
        stop.cancel();
    }
    server.await??;
    let summary = worker.await??;
    println!("worker: {summary:?}");
    if once {
        // Leave nothing behind on the broker after a smoke run.
        let queue = app.router().default_queue().name.clone();
        app.broker().delete_queue(&queue).await?;
        app.broker().delete_exchange(&queue).await?;
    }
    app.close().await;
    Ok(())
}

/// One POST and one GET against the running service.
async fn smoke_test(address: &str) -> Result<String, Box<dyn std::error::Error>> {
    let body = r#"{"url": "https://example.com/a.png", "width": 800}"#;
    let created = http(address, "POST", "/thumbnails", body).await?;
    let task_id = serde_json::from_str::<Value>(&created)?["task_id"]
        .as_str()
        .ok_or("no task id in the answer")?
        .to_owned();
    let done = http(address, "GET", &format!("/thumbnails/{task_id}"), "").await?;
    if !done.contains("SUCCESS") {
        return Err(format!("the task did not succeed: {done}").into());
    }
    let metrics = http(address, "GET", "/metrics", "").await?;
    let succeeded = metrics
        .lines()
        .find(|line| line.starts_with("celery_task_succeeded_total{name=\"service.thumbnail\""))
        .ok_or_else(|| format!("no succeeded count for the task in /metrics:\n{metrics}"))?;
    let sent = metrics
        .lines()
        .find(|line| line.starts_with("celery_task_sent_total{name=\"service.thumbnail\""))
        .ok_or_else(|| format!("no sent count for the task in /metrics:\n{metrics}"))?;
    Ok(format!("{done}\n{sent}\n{succeeded}"))
}

/// A minimal HTTP/1.1 request; returns the response body.
async fn http(
    address: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{method} {path}: {head}").into());
    }
    Ok(body.to_owned())
}
