//! Revocations outlive the worker that received them: kept across a
//! restart with `--statedb`, and learned by workers that start later
//! through mingle, between Python and Rust workers in both directions.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::protocol::State;
use celeriac::protocol::control::ControlOutcome;
use celeriac_tests::worker::demo_worker_with;
use celeriac_tests::{PythonWorker, delete_queue, require_redis, unique};

use super::{client, node, wait_for_node};

const WAIT: Duration = Duration::from_secs(30);

/// The revoked ids worker `node` remembers.
async fn revoked_on(app: &celeriac::App, node: &str) -> Result<Vec<String>> {
    let replies = app
        .control()
        .to([node])
        .timeout(Duration::from_secs(3))
        .revoked()
        .await?;
    let reply = replies
        .into_iter()
        .next()
        .context("no reply to `revoked`")?;
    Ok(reply.value?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_id_survives_a_restart_with_a_statedb() -> Result<()> {
    let redis = require_redis()?;
    let queue = unique("statedb");
    let worker_node = node("statedb");
    let dir = std::env::temp_dir().join(unique("statedb"));
    std::fs::create_dir_all(&dir)?;
    let statedb = dir.join("worker.state");
    let statedb_arg = statedb.display().to_string();
    let flags = [
        "-n",
        worker_node.as_str(),
        "--statedb",
        statedb_arg.as_str(),
        "--without-mingle",
    ];
    let app = client(&redis).await?;

    let mut first = demo_worker_with(&queue, &redis, &flags)?;
    wait_for_node(&app, &worker_node).await?;
    let id = uuid_like(&queue);
    let replies = app
        .control()
        .to([worker_node.as_str()])
        .revoke(&[id.as_str()], false)
        .await?;
    ensure!(
        replies.first().map(|r| &r.value)
            == Some(&Ok(ControlOutcome::ok(format!(
                "tasks {{'{id}'}} flagged as revoked"
            )))),
        "revoke replied {replies:?}"
    );
    app.control().to([worker_node.as_str()]).shutdown().await?;
    let status = tokio::time::timeout(WAIT, first.wait())
        .await
        .context("no exit on shutdown")??;
    ensure!(status.success(), "the worker exited with {status}");
    ensure!(
        statedb.exists(),
        "no state db written at {}",
        statedb.display()
    );

    // A new process, without mingle: only the state db can tell it.
    let _second = demo_worker_with(&queue, &redis, &flags)?;
    wait_for_node(&app, &worker_node).await?;
    let known = revoked_on(&app, &worker_node).await?;
    ensure!(
        known.contains(&id),
        "the restarted worker forgot {id}: {known:?}"
    );

    let revoked = app
        .send_task("demo.add")
        .args((1, 2))
        .queue(queue.clone())
        .task_id(id.clone())
        .apply()
        .await?;
    let marker = app
        .send_task("demo.echo")
        .args(("after",))
        .queue(queue.clone())
        .apply()
        .await?;
    marker.get(WAIT).await?;
    let meta = revoked
        .meta()
        .await?
        .context("no state for the revoked task")?;
    ensure!(
        meta.status == State::Revoked,
        "the revoked task ended {}",
        meta.status
    );
    let stats = app.control().to([worker_node.as_str()]).stats().await?;
    let stats = stats.into_iter().next().context("no stats reply")?.value?;
    ensure!(
        !stats.total.contains_key("demo.add"),
        "the revoked task ran: totals {:?}",
        stats.total
    );
    app.control().to([worker_node.as_str()]).shutdown().await?;
    delete_queue(&queue);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_start_later_learn_revocations_through_mingle() -> Result<()> {
    let redis = require_redis()?;
    let app = client(&redis).await?;
    let (rust_a, python, rust_b) = (node("mingle-a"), node("mingle-py"), node("mingle-b"));
    let queues = [unique("mingle-a"), unique("mingle-py"), unique("mingle-b")];

    let _a = demo_worker_with(&queues[0], &redis, &["-n", &rust_a])?;
    wait_for_node(&app, &rust_a).await?;
    let from_rust = uuid_like("from-rust");
    app.control()
        .to([rust_a.as_str()])
        .revoke(&[from_rust.as_str()], false)
        .await?;

    // A Python worker asks at start-up and hears it from the Rust one.
    let _python = PythonWorker::start_node(&queues[1], &python, &redis).await?;
    wait_for_node(&app, &python).await?;
    let known = revoked_on(&app, &python).await?;
    ensure!(
        known.contains(&from_rust),
        "Python did not learn {from_rust} from Rust: {known:?}"
    );

    let from_python = uuid_like("from-python");
    app.control()
        .to([python.as_str()])
        .revoke(&[from_python.as_str()], false)
        .await?;
    // A Rust worker started now learns both, from each kind of peer.
    let _b = demo_worker_with(&queues[2], &redis, &["-n", &rust_b])?;
    wait_for_node(&app, &rust_b).await?;
    let known = revoked_on(&app, &rust_b).await?;
    for id in [&from_rust, &from_python] {
        ensure!(
            known.contains(id),
            "the new Rust worker did not learn {id}: {known:?}"
        );
    }
    for queue in &queues {
        delete_queue(queue);
    }
    Ok(())
}

/// A task id unique to this run.
fn uuid_like(tag: &str) -> String {
    format!("{tag}-{}", unique("id"))
}
