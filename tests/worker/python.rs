//! Python producer → Rust worker → Python reads the result, with a Python
//! worker alongside on its own queue for callbacks and mixed chains. The
//! Python side is `tests/interop/drive_rust_worker.py`, a plain Celery 5.7
//! client; see it for the scenarios (args, every JSON type and kombu
//! envelope, countdown, expires, a Rust failure raised in Python, a Rust
//! retry seen as RETRY then SUCCESS, a link to a Python task, a chain
//! mixing Python and Rust tasks, unknown tasks, 100 concurrent results).

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
