//! The worker's `/metrics`, `/healthz` and `/readyz` (`metrics_addr`)
//! after a known mix of outcomes: every counter exact, histogram counts
//! matching. (`/readyz` across a broker outage is in the `faults` binary.)

use std::time::Duration;

use anyhow::{Result, ensure};
use celeriac::App;
use celeriac_broker::Queue;
use celeriac_tests::scrape::{free_local_addr, http_get, sample, wait_for_listener};
use celeriac_tests::unique;
use celeriac_tests::worker::{RunningWorker, cleanup, client, failure};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_mix_of_outcomes_exactly() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-metrics"));
    let app = client(&queue).await?;
    let addr = free_local_addr()?;
    let mut worker = RunningWorker::start(App::builder(), &queue, |config| {
        config.metrics_addr = Some(addr);
    })
    .await?;
    worker.while_running(wait_for_listener(addr)).await??;
    let (status, body) = http_get(addr, "/readyz").await?;
    ensure!(
        status == 200,
        "/readyz of a running worker: {status} {body}"
    );

    let mut sums = Vec::new();
    for i in 0..3 {
        sums.push(app.send_task("demo.add").args((i, 1)).apply().await?);
    }
    let mut fails = Vec::new();
    for _ in 0..2 {
        fails.push(app.send_task("demo.fail").args(("boom",)).apply().await?);
    }
    let retried = app
        .send_task("demo.retry_once")
        .args((0.0,))
        .apply()
        .await?;
    let unknown = app.send_task("test.not_registered").apply().await?;
    for (i, sum) in (0..).zip(&sums) {
        ensure!(sum.get_as::<i64>(WAIT).await? == i + 1);
    }
    for failed in &fails {
        ensure!(failure(failed.get(WAIT).await)?.exc_type == "ValueError");
    }
    retried.get_as::<f64>(WAIT).await?;
    ensure!(failure(unknown.get(WAIT).await)?.exc_type == "NotRegistered");

    // Dead letters are confirmed before the result is read, but the
    // metrics may trail the result by a moment: read until they agree.
    let host = &queue.name;
    let q = &queue.name;
    let labels = |name: &str| format!(r#"{{name="{name}",hostname="{host}",queue_name="{q}"}}"#);
    let expected: Vec<(String, f64)> = vec![
        (
            format!("celery_task_received_total{}", labels("demo.add")),
            3.0,
        ),
        (
            format!("celery_task_started_total{}", labels("demo.add")),
            3.0,
        ),
        (
            format!("celery_task_succeeded_total{}", labels("demo.add")),
            3.0,
        ),
        (
            format!("celery_task_runtime_count{}", labels("demo.add")),
            3.0,
        ),
        // Celeriac's producer stamps each message with its enqueue time.
        (
            format!("celery_task_queue_wait_time_count{}", labels("demo.add")),
            3.0,
        ),
        (
            format!("celery_task_retried_total{}", labels("demo.add")),
            0.0,
        ),
        (
            format!("celery_task_received_total{}", labels("demo.fail")),
            2.0,
        ),
        (
            format!("celery_task_succeeded_total{}", labels("demo.fail")),
            0.0,
        ),
        (
            format!(
                r#"celery_task_failed_total{{name="demo.fail",hostname="{host}",exception="ValueError",queue_name="{q}"}}"#
            ),
            2.0,
        ),
        // The retry is a second delivery of the same task.
        (
            format!("celery_task_received_total{}", labels("demo.retry_once")),
            2.0,
        ),
        (
            format!("celery_task_started_total{}", labels("demo.retry_once")),
            2.0,
        ),
        (
            format!("celery_task_retried_total{}", labels("demo.retry_once")),
            1.0,
        ),
        (
            format!("celery_task_succeeded_total{}", labels("demo.retry_once")),
            1.0,
        ),
        (
            format!(
                r#"celery_task_failed_total{{name="unknown",hostname="{host}",exception="NotRegistered",queue_name="{q}"}}"#
            ),
            1.0,
        ),
        (
            format!(
                r#"celeriac_dead_letters_total{{hostname="{host}",queue_name="{q}",reason="failed"}}"#
            ),
            2.0,
        ),
        (
            format!(
                r#"celeriac_dead_letters_total{{hostname="{host}",queue_name="{q}",reason="unknown_task"}}"#
            ),
            1.0,
        ),
        (
            format!(
                r#"celeriac_publish_confirm_seconds_count{{hostname="{host}",kind="dead_letter"}}"#
            ),
            3.0,
        ),
        (
            format!(
                r#"celeriac_publish_confirm_seconds_count{{hostname="{host}",kind="republish"}}"#
            ),
            1.0,
        ),
        // SUCCESS ×4, FAILURE ×2, NotRegistered ×1 (RETRY is progress).
        (
            format!(r#"celeriac_result_store_seconds_count{{hostname="{host}"}}"#),
            7.0,
        ),
        (format!(r#"celery_worker_up{{hostname="{host}"}}"#), 1.0),
        (
            format!(r#"celery_worker_tasks_active{{hostname="{host}"}}"#),
            0.0,
        ),
        (
            format!(r#"celeriac_eta_tasks_held{{hostname="{host}"}}"#),
            0.0,
        ),
    ];
    let mut text = String::new();
    let mut wrong = Vec::new();
    for _ in 0..20 {
        let (status, body) = http_get(addr, "/metrics").await?;
        ensure!(status == 200, "/metrics: {status}");
        text = body;
        wrong = expected
            .iter()
            .filter(|(series, want)| sample(&text, series) != Some(*want))
            .map(|(series, want)| format!("{series}: want {want}, got {:?}", sample(&text, series)))
            .collect();
        if wrong.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    ensure!(
        wrong.is_empty(),
        "{}\n--- /metrics:\n{text}",
        wrong.join("\n")
    );
    ensure!(
        text.ends_with("# EOF\n"),
        "not an OpenMetrics exposition: {text}"
    );
    let (status, _) = http_get(addr, "/healthz").await?;
    ensure!(status == 200, "/healthz: {status}");

    worker.stop().await?;
    cleanup(&app, &queue.name).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_port_stops_the_worker_with_the_fix() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-metrics-port"));
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let worker = RunningWorker::start(App::builder(), &queue, |config| {
        config.metrics_addr = Some(addr);
    })
    .await?;
    let error = match worker.stop().await {
        Ok(summary) => anyhow::bail!("the worker ran on a taken port: {summary:?}"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        error.contains(&addr.to_string()) && error.contains("choose a free port"),
        "{error}"
    );
    drop(taken);
    Ok(())
}
