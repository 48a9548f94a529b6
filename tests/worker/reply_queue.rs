//! `rpc://` results while the caller's reply queue is missing (it is
//! auto-delete, so it vanishes while its client reconnects): the worker
//! waits up to 10 s for it to be declared again, then takes it to be gone
//! and, for 5 minutes, tries later results for it once without waiting
//! (docs/reliability.md). Followed through the worker's JSON log lines,
//! which name each task id, so nothing here depends on timing.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use celeriac::App;
use celeriac::broker::ConsumeOptions;
use celeriac::protocol::TaskMessage;
use celeriac_broker::Queue;
use celeriac_tests::unique;
use celeriac_tests::worker::{cleanup, client, json_logging_worker};
use serde_json::{Value, json};

/// What the worker logs at debug level each time it finds the queue missing.
const WAITING: &str = "the reply queue is missing; waiting for its client to re-declare it";
/// What it logs when it gives up on the queue.
const GONE: &str = "the caller's reply queue is gone; dropping its result";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_waits_for_its_reply_queue_and_a_gone_one_is_not_waited_for_again() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-reply-queue"));
    let app = client(&queue).await?;
    app.broker().declare(&queue).await?;
    let (_worker, log_path) = json_logging_worker(&queue.name, "debug", &["-c", "1"])?;

    // A client reconnecting: its reply queue is missing when the task
    // finishes and declared again while the worker waits.
    let back = Queue::celery_default(format!("{}.back", queue.name));
    let first = send_add(&app, &queue.name, &back.name, "reply-back").await?;
    log_line(&log_path, WAITING, &first).await?;
    app.broker().declare(&back).await?;
    let result = first_message(&app, &back).await?;
    ensure!(
        result["task_id"] == first.as_str()
            && result["status"] == "SUCCESS"
            && result["result"] == 3,
        "the result that waited for its reply queue: {result}"
    );

    // A client that exited: its queue never comes back. The first result
    // waits for it, then the queue is taken to be gone ...
    let exited = format!("{}.exited", queue.name);
    let second = send_add(&app, &queue.name, &exited, "reply-gone-1").await?;
    log_line(&log_path, GONE, &second).await?;
    ensure!(
        lines_for(&log_path, WAITING, &second)? > 0,
        "the first result for the missing queue did not wait for it"
    );
    // ... so the next result for it is tried once and dropped, not waited for.
    let third = send_add(&app, &queue.name, &exited, "reply-gone-2").await?;
    log_line(&log_path, GONE, &third).await?;
    let waits = lines_for(&log_path, WAITING, &third)?;
    ensure!(
        waits == 0,
        "a result for a reply queue already found gone waited for it again ({waits} waits)"
    );

    app.broker().delete_queue(&back.name).await?;
    cleanup(&app, &queue.name).await;
    let _ = std::fs::remove_file(&log_path);
    Ok(())
}

/// Publishes `demo.add(1, 2)` with id `id` whose result goes to `reply_to`.
async fn send_add(app: &App, queue: &str, reply_to: &str, id: &str) -> Result<String> {
    let id = format!("{id}-{}", std::process::id());
    let mut message = TaskMessage::new("demo.add", &id).with_args(vec![json!(1), json!(2)]);
    message.properties.reply_to = Some(reply_to.to_owned());
    app.broker().publish("", queue, &message.encode()?).await?;
    Ok(id)
}

/// Waits (up to 30 s) for a log line with `message` about task `id`.
async fn log_line(log_path: &Path, message: &str, id: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if lines_for(log_path, message, id)? > 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(log_path)?;
    bail!("the worker did not log {message:?} for task {id} within 30 s; its log:\n{text}")
}

/// How many of the worker's log lines say `message` about task `id`.
fn lines_for(log_path: &Path, message: &str, id: &str) -> Result<usize> {
    let text = std::fs::read_to_string(log_path)?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == message && line["id"] == id)
        .count())
}

/// The body of the first message on `queue`, decoded.
async fn first_message(app: &App, queue: &Queue) -> Result<Value> {
    let mut consumer = app
        .broker()
        .consume(ConsumeOptions {
            queues: vec![queue.clone()],
            prefetch: 1,
        })
        .await?;
    let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .context("no result reached the reply queue within 30 s")?
        .context("the consumer ended")?;
    delivery.ack().await?;
    consumer.stop();
    Ok(serde_json::from_slice(&delivery.message.body)?)
}
