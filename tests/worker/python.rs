//! Python producer → Rust worker → Python reads the result, with a Python
//! worker alongside on its own queue for callbacks and mixed chains. The
//! Python side is `tests/interop/drive_rust_worker.py`, a plain Celery 5.7
//! client; see it for the scenarios (args, every JSON type and kombu
//! envelope, countdown, expires, a Rust failure raised in Python, a Rust
//! retry seen as RETRY then SUCCESS, a link to a Python task, a chain
//! mixing Python and Rust tasks, unknown tasks, 100 concurrent results,
//! large bodies read from their text: typed, JSON value, kombu envelopes
//! and a wrong type);
//! and a Python trace continued through Rust tasks.

use anyhow::{Context as _, Result, ensure};
use celeriac::App;
use celeriac_demo::tasks as demo;
use celeriac_tests::worker::RunningWorker;
use celeriac_tests::{PythonWorker, broker_url, interop_python, repo_root, unique};
use celeriac_worker::WorkerConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_app_uses_rust_tasks_like_its_own() -> Result<()> {
    let rust_queue = unique("rust-worker");
    let python_queue = unique("python-side");
    let python_worker = PythonWorker::start(&python_queue).await?;

    let app = demo::register(App::builder())
        .broker_url(broker_url())
        .result_backend("rpc://")
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![rust_queue.clone()],
        concurrency: 8,
        ..WorkerConfig::default()
    };
    let mut worker = RunningWorker::run(app, config);

    let driver = tokio::process::Command::new(interop_python()?)
        .arg(repo_root().join("tests/interop/drive_rust_worker.py"))
        .args([broker_url(), rust_queue.clone(), python_queue.clone()])
        .kill_on_drop(true)
        .output();
    let output = worker
        .while_running(driver)
        .await?
        .context("running the Python driver")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        println!("--- Python worker log ---\n{}", python_worker.log());
    }
    let summary = worker.stop().await?;
    println!("Rust worker: {summary:?}");

    let cleanup = App::builder().broker_url(broker_url()).build().await?;
    for queue in [&rust_queue, &python_queue, &format!("{rust_queue}.dead")] {
        let _ = cleanup.broker().delete_queue(queue).await;
        let _ = cleanup.broker().delete_exchange(queue).await;
    }
    cleanup.close().await;
    ensure!(
        output.status.success(),
        "the Python app saw Rust tasks misbehave; see the FAIL lines above"
    );
    Ok(())
}

/// A trace started in a traced Python app (`opentelemetry-instrumentation-
/// celery`) continues through a Rust task, into the callback and the chain
/// step the Rust worker sends to a traced Python worker: every run reports
/// the producer's trace id (`tests/interop/drive_trace.py`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_trace_continues_through_rust_tasks_and_back() -> Result<()> {
    let rust_queue = unique("rust-traced");
    let python_queue = unique("python-traced");
    let python_worker = PythonWorker::start_traced(&python_queue).await?;
    let app = demo::register(App::builder())
        .broker_url(broker_url())
        .result_backend("rpc://")
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![rust_queue.clone()],
        ..WorkerConfig::default()
    };
    let mut worker = RunningWorker::run(app, config);
    let driver = tokio::process::Command::new(interop_python()?)
        .arg(repo_root().join("tests/interop/drive_trace.py"))
        .args([broker_url(), rust_queue.clone(), python_queue.clone()])
        .current_dir(repo_root().join("tests/interop"))
        .kill_on_drop(true)
        .output();
    let output = worker
        .while_running(driver)
        .await?
        .context("running the Python driver")?;
    println!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        println!("--- Python worker log ---\n{}", python_worker.log());
    }
    worker.stop().await?;
    let cleanup = App::builder().broker_url(broker_url()).build().await?;
    for queue in [&rust_queue, &python_queue] {
        let _ = cleanup.broker().delete_queue(queue).await;
        let _ = cleanup.broker().delete_exchange(queue).await;
    }
    cleanup.close().await;
    ensure!(
        output.status.success(),
        "the trace did not cross Python and Rust; see the FAIL lines above"
    );
    Ok(())
}
