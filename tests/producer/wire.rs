//! What the producer API puts on the wire, read back from the real broker:
//! headers Python tools rely on, parent/root ids inside a task, reply_to only
//! when a result is expected, and clear errors for bad calls.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::{App, Error, Request, ResultError, TaskResult, request, task};
use celeriac_broker::{ConsumeOptions, Delivery};
use celeriac_protocol::{DecodeOptions, HeaderValue, Seconds, TaskMessage};
use celeriac_tests::{broker_url, unique};
use serde_json::json;

#[task(
    name = "producer.resize",
    time_limit = 30,
    soft_time_limit = 1.5,
    priority = 4
)]
async fn resize(url: String, width: u32) -> TaskResult<String> {
    Ok(format!("{url}@{width}"))
}

async fn app(queue: &str, results: bool) -> Result<App> {
    let mut builder = App::builder()
        .broker_url(broker_url())
        .default_queue(queue)
        .task(resize);
    if results {
        builder = builder.result_backend("rpc://");
    }
    Ok(builder.build().await?)
}

async fn receive(app: &App) -> Result<(Delivery, TaskMessage)> {
    let mut consumer = app
        .broker()
        .consume(ConsumeOptions {
            queues: vec![app.router().default_queue().clone()],
            prefetch: 1,
        })
        .await?;
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await?
        .context("no message")?;
    let message = delivery.task(&DecodeOptions::default())?;
    delivery.ack().await?;
    Ok((delivery, message))
}

async fn cleanup(app: &App, queue: &str) {
    let _ = app.broker().delete_queue(queue).await;
    let _ = app.broker().delete_exchange(queue).await;
    app.close().await;
}

#[tokio::test]
async fn typed_calls_carry_celerys_headers_and_options() -> Result<()> {
    let queue = unique("producer-headers");
    let app = app(&queue, true).await?;
    let sent = resize::new("a.png".into(), 800)
        .header("x-trace", "abc")
        .expires_in(Duration::from_secs(60))
        .apply_async(&app)
        .await?;
    let (delivery, message) = receive(&app).await?;
    let h = &message.headers;
    ensure!(h.id == sent.id() && h.root_id.as_deref() == Some(sent.id()) && h.parent_id.is_none());
    ensure!(
        h.argsrepr.as_deref() == Some("('a.png', 800)"),
        "{:?}",
        h.argsrepr
    );
    ensure!(
        h.origin.as_deref() == Some(app.origin()) && app.origin().starts_with("gen"),
        "{:?}",
        h.origin
    );
    ensure!(
        h.timelimit.hard == Some(Seconds::Int(30)) && h.timelimit.soft == Some(Seconds::Float(1.5))
    );
    ensure!(h.extra["x-trace"] == HeaderValue::Str("abc".into()));
    ensure!(h.expires.is_some() && message.properties.expiration.is_some());
    ensure!(delivery.priority() == Some(4), "task priority");
    let reply_to = app
        .result_backend()
        .and_then(|b| b.reply_to().map(str::to_owned));
    ensure!(message.properties.reply_to == reply_to && reply_to.is_some());
    ensure!(message.properties.correlation_id.as_deref() == Some(sent.id()));
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test]
async fn tasks_sent_from_a_task_carry_its_ids() -> Result<()> {
    let queue = unique("producer-parent");
    let app = app(&queue, false).await?;
    let mut parent = Request::detached("producer.parent", "parent-id");
    parent.root_id = Some("root-id".into());
    request::scope(parent, resize::new("a.png".into(), 1).apply_async(&app)).await?;
    let (_, message) = receive(&app).await?;
    ensure!(message.headers.parent_id.as_deref() == Some("parent-id"));
    ensure!(message.headers.root_id.as_deref() == Some("root-id"));
    ensure!(
        message.properties.reply_to.is_none(),
        "no backend, no reply_to"
    );
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test]
async fn bad_calls_are_clear_errors() -> Result<()> {
    let queue = unique("producer-errors");
    let app = app(&queue, false).await?;
    let err = app.send_task("x").args(42).apply().await.unwrap_err();
    ensure!(
        matches!(err, Error::Arguments { .. }) && err.to_string().contains("JSON array"),
        "{err}"
    );
    let err = app
        .send_task("x")
        .kwargs(json!([1]))
        .apply()
        .await
        .unwrap_err();
    ensure!(err.to_string().contains("JSON object"), "{err}");
    let result = app.send_task("x").apply().await?;
    let err = result.get(Duration::from_secs(1)).await.unwrap_err();
    ensure!(
        matches!(err, ResultError::NoBackend(_)) && err.to_string().contains("rpc://"),
        "{err}"
    );
    let _ = receive(&app).await?;
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test]
async fn send_many_stores_every_call_once_in_order() -> Result<()> {
    let queue = unique("producer-many");
    let app = app(&queue, false).await?;
    let calls = (0..2_500).map(|i| resize::new(format!("img-{i}"), i));
    let results = app.send_many(calls).await?;
    ensure!(results.len() == 2_500, "{} results", results.len());
    let (ready, _) = app.broker().queue_counts(&queue).await?.unwrap_or_default();
    ensure!(ready == 2_500, "{ready} messages in the queue, want 2500");
    for (i, result) in results.iter().take(3).enumerate() {
        let (_, message) = receive(&app).await?;
        ensure!(
            message.headers.id == result.id(),
            "message {i} out of order"
        );
        ensure!(message.body.args == vec![json!(format!("img-{i}")), json!(i)]);
        // The task's default priority travels with each message, as with apply_async.
        ensure!(message.properties.priority == Some(4));
    }
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test]
async fn send_many_to_a_missing_exchange_is_an_error() -> Result<()> {
    let queue = unique("producer-many-missing");
    let app = app(&queue, false).await?;
    let calls =
        (0..10).map(|i| resize::new("x".to_owned(), i).exchange(unique("no-such-exchange")));
    let err = app.send_many(calls).await.unwrap_err();
    ensure!(err.to_string().contains("no-such-exchange"), "{err}");
    cleanup(&app, &queue).await;
    Ok(())
}
