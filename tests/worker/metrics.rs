//! The worker's `/metrics`, `/healthz` and `/readyz` (`metrics_addr`)
//! after a known mix of outcomes: every counter exact, histogram counts
//! matching; a real Prometheus scraping it. (`/readyz` across a broker
//! outage is in the `faults` binary.)

use std::time::Duration;

use anyhow::{Result, ensure};
use celeriac::{App, Signature};
use celeriac_broker::Queue;
use celeriac_tests::scrape::{free_local_addr, http_get, sample, wait_for_listener};
use celeriac_tests::unique;
use celeriac_tests::worker::{RunningWorker, cleanup, client, failure, reply_queue};
use percent_encoding::NON_ALPHANUMERIC;
use serde_json::json;

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
    // The chain's second step is sent by the worker: its send metrics.
    let reply_to = reply_queue(&app)?;
    let last = unique("metrics-chain-last");
    let chain = Signature::chain(vec![
        Signature::new("demo.echo")
            .with_args(vec![json!([1, 2])])
            .with_option("reply_to", reply_to.clone()),
        Signature::new("demo.tsum")
            .with_option("reply_to", reply_to)
            .with_option("task_id", last.clone()),
    ]);
    app.apply_signature(&chain, celeriac::Apply::default())
        .await?;
    for (i, sum) in (0..).zip(&sums) {
        ensure!(sum.get_as::<i64>(WAIT).await? == i + 1);
    }
    for failed in &fails {
        ensure!(failure(failed.get(WAIT).await)?.exc_type == "ValueError");
    }
    retried.get_as::<f64>(WAIT).await?;
    ensure!(failure(unknown.get(WAIT).await)?.exc_type == "NotRegistered");
    ensure!(app.async_result::<i64>(last).get(WAIT).await? == 3);

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
        // SUCCESS ×6 (add ×3, retry_once, echo, tsum), FAILURE ×2,
        // NotRegistered ×1 (RETRY is progress).
        (
            format!(r#"celeriac_result_store_seconds_count{{hostname="{host}"}}"#),
            9.0,
        ),
        // The app's send series, under the worker's hostname: the chain's
        // next step (a retry is a republish, counted above, not a send).
        (
            format!("celery_task_sent_total{}", labels("demo.tsum")),
            1.0,
        ),
        (
            format!(r#"celeriac_task_send_seconds_count{{hostname="{host}",kind="task"}}"#),
            1.0,
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

/// A real Prometheus server (Debian's `prometheus`, which
/// `scripts/ensure-prometheus` installs) scrapes a running worker, and a
/// query of its HTTP API returns the demo tasks' success count; it accepts
/// every query of the committed Grafana dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_worker() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-prometheus"));
    let app = client(&queue).await?;
    let addr = free_local_addr()?;
    let mut worker = RunningWorker::start(App::builder(), &queue, |config| {
        config.metrics_addr = Some(addr);
    })
    .await?;
    worker.while_running(wait_for_listener(addr)).await??;
    for i in 0..3 {
        let sum = app.send_task("demo.add").args((i, i)).apply().await?;
        ensure!(sum.get_as::<i64>(WAIT).await? == 2 * i);
    }

    let server = match PrometheusServer::start(addr) {
        Ok(server) => server,
        Err(missing) => {
            // Leave nothing behind on the broker when Prometheus is missing.
            worker.stop().await?;
            cleanup(&app, &queue.name).await;
            return Err(missing);
        }
    };
    let query = format!(
        r#"celery_task_succeeded_total{{name="demo.add",hostname="{}"}}"#,
        queue.name
    );
    let mut answer = String::new();
    let mut value = None;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok((200, body)) = http_get(server.addr, &PrometheusServer::query_path(&query)).await
        else {
            continue;
        };
        answer = body;
        value = serde_json::from_str::<serde_json::Value>(&answer)?
            .pointer("/data/result/0/value/1")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        if value.is_some() {
            break;
        }
    }
    ensure!(
        value.as_deref() == Some("3"),
        "Prometheus's answer to {query}: {answer}\n(server log: {})",
        server.log()
    );
    let queries = dashboard_queries()?;
    ensure!(
        queries.len() >= 10,
        "the dashboard has {} queries",
        queries.len()
    );
    for promql in &queries {
        let (status, body) = http_get(server.addr, &PrometheusServer::query_path(promql)).await?;
        ensure!(
            status == 200 && body.contains(r#""status":"success""#),
            "Prometheus refuses the dashboard's query {promql}: {status} {body}"
        );
    }
    drop(server);
    worker.stop().await?;
    cleanup(&app, &queue.name).await;
    Ok(())
}

/// Every PromQL query of the committed Grafana dashboard, with its
/// variables set as "All" would set them.
fn dashboard_queries() -> Result<Vec<String>> {
    let path = celeriac_tests::repo_root().join("docs/grafana/celeriac-workers.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    Ok(panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .map(|expr| {
            expr.replace("$hostname", ".*")
                .replace("$queue", ".*")
                .replace("$__rate_interval", "30s")
        })
        .collect())
}

/// A Prometheus server on a free port scraping one target every second,
/// with a throw-away data directory; killed and removed on drop.
struct PrometheusServer {
    addr: std::net::SocketAddr,
    dir: std::path::PathBuf,
    process: tokio::process::Child,
}

impl PrometheusServer {
    fn start(target: std::net::SocketAddr) -> Result<PrometheusServer> {
        let addr = free_local_addr()?;
        let dir = std::env::temp_dir().join(unique("celeriac-prometheus"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: celeriac\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let process = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start prometheus ({e}); run scripts/ensure-prometheus \
                     (Debian: apt-get install prometheus)"
                )
            })?;
        Ok(PrometheusServer { addr, dir, process })
    }

    /// The API path of an instant query for `promql`.
    fn query_path(promql: &str) -> String {
        let encoded = percent_encoding::utf8_percent_encode(promql, NON_ALPHANUMERIC);
        format!("/api/v1/query?query={encoded}")
    }

    /// The end of the server's log, for a failure message.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let start = text.len().saturating_sub(2_000);
        text.get(start..).unwrap_or_default().to_owned()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.process.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
