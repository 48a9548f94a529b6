//! `app.control()` from Rust: typed replies from a mixed fleet (a Python
//! and a Rust worker answer the same broadcast and both decode), control
//! commands and refusals.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::ReplyError;
use celeriac::protocol::control::ControlOutcome;
use celeriac_tests::worker::{demo_worker, demo_worker_with};
use celeriac_tests::{PythonWorker, delete_queue, require_redis, unique};

use super::{client, node, wait_for_node};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_replies_from_python_and_rust_workers() -> Result<()> {
    let redis = require_redis()?;
    let app = client(&redis).await?;
    let (rust, python) = (node("typed-rust"), node("typed-py"));
    let (rust_queue, python_queue) = (unique("typed-rust"), unique("typed-py"));
    let _rust = demo_worker_with(&rust_queue, &redis, &["-n", &rust, "-c", "3"])?;
    let _python = PythonWorker::start_node(&python_queue, &python, &redis).await?;
    wait_for_node(&app, &rust).await?;
    wait_for_node(&app, &python).await?;
    let both = app
        .control()
        .to([rust.as_str(), python.as_str()])
        .timeout(Duration::from_secs(3));

    let pongs = both.ping().await?;
    ensure!(pongs.len() == 2, "two pongs expected: {pongs:?}");
    ensure!(
        pongs
            .iter()
            .all(|p| p.value == Ok(ControlOutcome::ok("pong"))),
        "{pongs:?}"
    );

    for reply in both.stats().await? {
        let stats = reply
            .value
            .with_context(|| format!("stats of {}", reply.node))?;
        ensure!(stats.pid > 0 && stats.pool.max_concurrency > 0, "{stats:?}");
        if reply.node == rust {
            ensure!(stats.pool.max_concurrency == 3, "concurrency 3: {stats:?}");
        }
    }
    for reply in both.registered().await? {
        let names = reply.value?;
        let wanted = if reply.node == rust {
            "demo.add"
        } else {
            "interop.add"
        };
        ensure!(
            names.iter().any(|n| n == wanted),
            "{}: {names:?}",
            reply.node
        );
    }
    for reply in both.active_queues().await? {
        let queues = reply.value?;
        let wanted = if reply.node == rust {
            &rust_queue
        } else {
            &python_queue
        };
        ensure!(
            queues.iter().any(|q| &q.name == wanted),
            "{}: {queues:?}",
            reply.node
        );
    }
    for reply in both.active().await? {
        ensure!(reply.value?.is_empty(), "{} is idle", reply.node);
    }

    let rust_only = app
        .control()
        .to([rust.as_str()])
        .timeout(Duration::from_secs(3));
    let refused = rust_only.rate_limit("no.such.task", "1/s").await?;
    ensure!(
        refused.first().map(|r| &r.value) == Some(&Err(ReplyError::Refused("unknown task".into()))),
        "{refused:?}"
    );
    let grown = rust_only.pool_grow(2).await?;
    ensure!(grown.first().map(|r| &r.value) == Some(&Ok(ControlOutcome::ok("pool will grow"))));
    let stats = rust_only
        .stats()
        .await?
        .into_iter()
        .next()
        .context("stats")?
        .value?;
    ensure!(
        stats.pool.max_concurrency == 5,
        "3 + 2 slots: {:?}",
        stats.pool
    );
    let unknown = rust_only
        .call("no_such_command", serde_json::json!({}))
        .await?;
    let text = unknown.first().and_then(|r| r.value.as_ref().ok()).cloned();
    ensure!(
        text.as_ref()
            .and_then(|v| v.get("error"))
            .and_then(|e| e.as_str())
            .is_some_and(|e| e.contains("unknown command")),
        "an unknown command says so: {text:?}"
    );
    delete_queue(&rust_queue);
    delete_queue(&python_queue);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_worker_with_the_same_name_runs_tasks_but_not_remote_control() -> Result<()> {
    let twin = node("twin");
    let (first_queue, second_queue) = (unique("twin-1"), unique("twin-2"));
    let _first = demo_worker(&first_queue, &["-n", &twin])?;
    let app = client("rpc://").await?;
    wait_for_node(&app, &twin).await?;
    let _second = demo_worker(&second_queue, &["-n", &twin])?;
    let sum: i64 = app
        .send_task("demo.add")
        .args((1, 2))
        .queue(second_queue.clone())
        .apply()
        .await?
        .get_as(Duration::from_secs(30))
        .await?;
    ensure!(sum == 3, "the second worker runs its tasks");
    let pongs = app
        .control()
        .to([twin.as_str()])
        .timeout(Duration::from_secs(2))
        .ping()
        .await?;
    ensure!(
        pongs.len() == 1,
        "one control queue per node name: {pongs:?}"
    );
    app.control().to([twin.as_str()]).shutdown().await?;
    delete_queue(&first_queue);
    delete_queue(&second_queue);
    Ok(())
}
