//! Python Celery's own tooling pointed at a Rust worker: every inspect and
//! control command through `app.control` and the `celery` CLI, revocation,
//! events through Celery's receiver, a mixed fleet answering one broadcast,
//! shutdown; and Flower listing the worker and its tasks.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac_tests::worker::demo_worker_with;
use celeriac_tests::{
    PythonWorker, broker_url, delete_queue, interop_python, repo_root, require_redis, unique,
};

use super::{client, node, wait_for_node};

/// Runs a driver script from `tests/interop` with `args`; passes its
/// output through and fails if any of its scenarios failed.
async fn drive(script: &str, redis: &str, args: &[&str]) -> Result<()> {
    let output = tokio::process::Command::new(interop_python()?)
        .arg(repo_root().join("tests/interop").join(script))
        .args(args)
        .current_dir(repo_root().join("tests/interop"))
        .env("CELERIAC_TEST_BROKER", broker_url())
        .env("CELERIAC_TEST_BACKEND", redis)
        .output()
        .await
        .with_context(|| format!("running {script}"))?;
    println!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.success(),
        "{script} saw the Rust worker behave unlike a Celery worker; see the FAIL lines above"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn celery_inspect_control_and_events_work_on_a_rust_worker() -> Result<()> {
    let redis = require_redis()?;
    let queue = unique("ctl");
    let (rust, python) = (node("rust"), node("python"));
    let python_queue = unique("ctl-python");
    let _peer = PythonWorker::start_node(&python_queue, &python, &redis).await?;
    let mut worker = demo_worker_with(&queue, &redis, &["-n", &rust, "-c", "4"])?;
    let app = client(&redis).await?;
    wait_for_node(&app, &rust).await?;
    wait_for_node(&app, &python).await?;
    let driven = drive(
        "drive_control.py",
        &redis,
        &[
            "--node",
            &rust,
            "--queue",
            &queue,
            "--peer",
            &python,
            "--acks-late",
            "--expect-sync-terminate-error",
            // demo.cpu's loop in a debug build: a few seconds.
            "--cpu-iterations",
            "300000000",
            "--shutdown",
        ],
    )
    .await;
    // The last scenario shut the worker down: it must exit by itself.
    let exited = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await;
    delete_queue(&queue);
    delete_queue(&python_queue);
    driven?;
    let status = exited.context("the Rust worker did not exit after `shutdown`")??;
    ensure!(
        status.success(),
        "the worker exited with {status} after `shutdown`"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flower_lists_the_rust_worker_and_its_tasks() -> Result<()> {
    let redis = require_redis()?;
    let queue = unique("flower");
    let rust = node("flower");
    let _worker = demo_worker_with(&queue, &redis, &["-n", &rust])?;
    let app = client(&redis).await?;
    wait_for_node(&app, &rust).await?;
    let checked = drive(
        "flower_check.py",
        &redis,
        &["--node", &rust, "--queue", &queue],
    )
    .await;
    delete_queue(&queue);
    checked
}
