//! Rust producer → RabbitMQ → a real Python Celery 5.7 worker → rpc:// result
//! back in Rust. The worker runs `tests/interop/tasks.py` on a queue of its
//! own, started by this test and stopped when it ends.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use celeriac::kombu::Special;
use celeriac::{App, ResultError, Signature, State};
use celeriac_tests::{PythonWorker, broker_url, unique};
use chrono::{NaiveDate, NaiveTime, TimeZone as _, Utc};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn app(queue: &str) -> Result<App> {
    Ok(App::builder()
        .broker_url(broker_url())
        .result_backend("rpc://")
        .default_queue(queue)
        .build()
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_runs_our_tasks_and_we_read_its_results() -> Result<()> {
    let queue = unique("python-worker");
    let worker = PythonWorker::start(&queue).await?;
    let app = app(&queue).await?;
    let outcome = scenarios(&app, &queue).await;
    if outcome.is_err() {
        println!("--- Python worker log ---\n{}", worker.log());
    }
    let _ = app.broker().delete_queue(&queue).await;
    let _ = app.broker().delete_exchange(&queue).await;
    app.close().await;
    outcome
}

async fn scenarios(app: &App, queue: &str) -> Result<()> {
    // The worker takes a few seconds to start; the first result proves it runs.
    let first = app.send_task("interop.add").args((2, 3)).apply().await?;
    let sum: i64 = first
        .get_as(Duration::from_secs(60))
        .await
        .context("the Python worker never answered")?;
    ensure!(sum == 5, "positional: {sum}");

    let keyword = app
        .send_task("interop.add")
        .kwargs(json!({"x": 2, "y": 40}))
        .apply()
        .await?;
    ensure!(keyword.get(WAIT).await? == json!(42), "keyword");
    let mixed = app
        .send_task("interop.add")
        .args((2,))
        .kwargs(json!({"y": 5}))
        .apply()
        .await?;
    ensure!(mixed.get(WAIT).await? == json!(7), "mixed");

    every_json_type(app).await?;
    kombu_envelopes(app).await?;
    countdown_and_expires(app).await?;
    link_callback(app, queue).await?;
    failure_and_retry(app).await?;
    many_concurrent_results(app).await?;
    Ok(())
}

async fn every_json_type(app: &App) -> Result<()> {
    let args = json!(["héllo", "中文 😀", "\u{0}\t\"\\", null, true, false, 0, -1, 0.5, 1e100,
                      9223372036854775807u64, [1, [2, [3]]], {"a": {"b": [null]}}, [], {}]);
    let big: Value = serde_json::from_str("[18446744073709551616, -9223372036854775809]")?;
    let mut all = args.as_array().cloned().unwrap_or_default();
    all.extend(big.as_array().cloned().unwrap_or_default());
    let kwargs = json!({"unicode_é": "✓", "nested": {"list": [1.5, "x"]}});
    let result = app
        .send_task("interop.echo")
        .args(&all)
        .kwargs(&kwargs)
        .apply()
        .await?
        .get(WAIT)
        .await?;
    ensure!(
        result == json!([all, kwargs]),
        "echo changed the values: {result}"
    );
    Ok(())
}

async fn kombu_envelopes(app: &App) -> Result<()> {
    let values = json!([
        Special::DateTime(
            Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5)
                .single()
                .context("date")?
                .fixed_offset()
        ),
        Special::Date(NaiveDate::from_ymd_opt(2024, 1, 2).context("date")?),
        Special::Time(
            NaiveTime::from_hms_micro_opt(1, 2, 3, 456_789).context("time")?,
            None
        ),
        Special::Decimal("1.10".into()),
        Special::Uuid("12345678-1234-5678-1234-567812345678".parse()?),
        Special::Bytes(vec![0xff, 0x00]),
    ]);
    let types = app
        .send_task("interop.describe")
        .args(&values)
        .apply()
        .await?
        .get(WAIT)
        .await?;
    ensure!(
        types == json!(["datetime", "date", "time", "Decimal", "UUID", "bytes"]),
        "Python decoded {types}"
    );
    let echoed = app
        .send_task("interop.echo")
        .args(&values)
        .apply()
        .await?
        .get(WAIT)
        .await?;
    ensure!(
        echoed[0] == values,
        "envelopes changed on the way back: {echoed}"
    );
    // And Python's own special values arrive as envelopes we read.
    let special: Vec<Special> = app
        .send_task("interop.special")
        .apply()
        .await?
        .get_as(WAIT)
        .await?;
    ensure!(
        special[3] == Special::Uuid("12345678-1234-5678-1234-567812345678".parse()?),
        "{special:?}"
    );
    ensure!(
        special[4] == Special::Bytes(vec![0xff, 0x00]),
        "{special:?}"
    );
    Ok(())
}

async fn countdown_and_expires(app: &App) -> Result<()> {
    let sent = Utc::now();
    let started: f64 = app
        .send_task("interop.now")
        .countdown(Duration::from_secs(2))
        .apply()
        .await?
        .get_as(WAIT)
        .await?;
    let eta = (sent + chrono::Duration::seconds(2)).timestamp_millis() as f64 / 1000.0;
    ensure!(
        started >= eta - 0.01,
        "the Python worker ran the task at {started}, before its eta {eta}"
    );

    let expired = app
        .send_task("interop.now")
        .countdown(Duration::from_secs(3))
        .expires_in(Duration::from_secs(1))
        .apply()
        .await?;
    match expired.get(WAIT).await {
        Err(ResultError::Failed(failure)) => {
            ensure!(failure.state == State::Revoked, "{failure}");
            ensure!(failure.exc_type == "TaskRevokedError", "{failure}");
        }
        other => bail!("an expired task should be revoked by the Python worker, got {other:?}"),
    }
    Ok(())
}

async fn link_callback(app: &App, queue: &str) -> Result<()> {
    let callback_id = unique("callback");
    // Python routes the callback by its own settings: name the queue.
    let callback = Signature::new("interop.add")
        .with_args(vec![json!(10)])
        .with_option("task_id", callback_id.clone())
        .with_option("queue", queue);
    let parent = app
        .send_task("interop.add")
        .args((2, 2))
        .link(callback)
        .apply()
        .await?;
    ensure!(parent.get(WAIT).await? == json!(4));
    let linked: i64 = app.async_result::<i64>(callback_id).get(WAIT).await?;
    ensure!(
        linked == 14,
        "the callback got the parent's result prepended: {linked}"
    );
    Ok(())
}

async fn failure_and_retry(app: &App) -> Result<()> {
    let failed = app
        .send_task("interop.fail")
        .args(("missing",))
        .apply()
        .await?;
    match failed.get(WAIT).await {
        Err(ResultError::Failed(failure)) => {
            ensure!(failure.state == State::Failure, "{failure}");
            ensure!(
                failure.exc_type == "KeyError" && failure.exc_module.as_deref() == Some("builtins"),
                "{failure}"
            );
            ensure!(failure.message == "missing", "{failure}");
            ensure!(
                failure
                    .traceback
                    .as_deref()
                    .is_some_and(|t| t.contains("raise KeyError")),
                "{failure:?}"
            );
        }
        other => bail!("expected a KeyError failure, got {other:?}"),
    }

    let flaky = app
        .send_task("interop.flaky")
        .args(("second time lucky",))
        .apply()
        .await?;
    let value: String = flaky.get_as(WAIT).await?;
    ensure!(value == "second time lucky");
    let history = flaky.history();
    ensure!(
        history == [State::Retry, State::Success],
        "states seen: {history:?}"
    );
    Ok(())
}

async fn many_concurrent_results(app: &App) -> Result<()> {
    let mut pending = Vec::new();
    for i in 0..200_i64 {
        pending.push(tokio::spawn({
            let app = app.clone();
            async move {
                let result = app
                    .send_task("interop.add")
                    .args((i, 1_000))
                    .apply()
                    .await?;
                let sum: i64 = result.get_as(WAIT).await?;
                anyhow::Ok((i, sum, result.id().to_owned()))
            }
        }));
    }
    let mut ids = HashSet::new();
    for task in pending {
        let (i, sum, id) = task.await??;
        ensure!(sum == i + 1_000, "task {i} got {sum}");
        ids.insert(id);
    }
    ensure!(ids.len() == 200, "task ids are not unique");
    Ok(())
}
