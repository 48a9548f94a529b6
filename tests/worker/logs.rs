//! `--log-format json`: one JSON object per line, and the lines a task logs
//! carry its `task_id` and the `trace_id` its message's `traceparent` named.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac_broker::Queue;
use celeriac_tests::unique;
use celeriac_tests::worker::{cleanup, client, json_logging_worker};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_task_id_and_trace_id() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-json-logs"));
    let app = client(&queue).await?;
    let (_worker, log_path) = json_logging_worker(&queue.name, "info", &[])?;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let sum = app
        .send_task("demo.add")
        .args((20, 22))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .apply()
        .await?;
    let id = sum.id().to_owned();
    ensure!(sum.get_as::<i64>(Duration::from_secs(30)).await? == 42);

    let text = std::fs::read_to_string(&log_path)?;
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("not JSON: {line}")))
        .collect::<Result<_>>()?;
    let succeeded = lines
        .iter()
        .find(|line| line["message"] == "task succeeded")
        .with_context(|| format!("no 'task succeeded' line in:\n{text}"))?;
    let span = &succeeded["span"];
    ensure!(
        span["task_id"] == id.as_str()
            && span["trace_id"] == trace_id
            && span["task"] == "demo.add",
        "the task's line does not carry its span: {succeeded}"
    );
    cleanup(&app, &queue.name).await;
    let _ = std::fs::remove_file(&log_path);
    Ok(())
}
