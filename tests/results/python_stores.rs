//! Python Celery with a shared result store on both sides of a Rust
//! worker, for each store any process reads (Redis, and Celery's database
//! backend on PostgreSQL): a Python app using Rust tasks unchanged
//! (`tests/interop/drive_results.py`), and a Rust app using Python tasks.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::{App, RouteOptions, Signature, chord, group};
use celeriac_demo::tasks as demo;
use celeriac_tests::postgres::TestDatabase;
use celeriac_tests::worker::{RunningWorker, binary, cleanup};
use celeriac_tests::{
    PythonWorker, broker_url, delete_queue, interop_python, interop_result_column, repo_root,
    require_redis, unique,
};
use celeriac_worker::WorkerConfig;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn route(queue: &str) -> RouteOptions {
    RouteOptions {
        queue: Some(queue.to_owned()),
        ..RouteOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_app_with_a_redis_backend_uses_rust_workers_unchanged() -> Result<()> {
    python_app_uses_rust_workers(&require_redis()?, "redis").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_app_with_a_database_backend_uses_rust_workers_unchanged() -> Result<()> {
    let database = TestDatabase::create("py_app").await?;
    python_app_uses_rust_workers(&database.backend_url(), "db").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_django_app_with_django_celery_results_uses_rust_workers_unchanged() -> Result<()> {
    let database = TestDatabase::create("django_app").await?;
    database.migrate_django().await?;
    python_app_uses_rust_workers(&database.django_backend_url(), "django").await
}

/// Runs every scenario of `drive_results.py` against a Rust worker and a
/// Python one sharing the store at `backend`.
async fn python_app_uses_rust_workers(backend: &str, tag: &str) -> Result<()> {
    let rust_queue = unique(&format!("{tag}-rust"));
    let python_queue = unique(&format!("{tag}-python"));
    let routes = json!({"demo.*": {"queue": rust_queue}, "interop.*": {"queue": python_queue}});
    let python = PythonWorker::start_with(&python_queue, &routes, backend).await?;
    let app = demo::register(App::builder())
        .broker_url(broker_url())
        .result_backend(backend)
        .database_result_column(interop_result_column()?)
        .route("demo.*", route(&rust_queue))
        .route("interop.*", route(&python_queue))
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![rust_queue.clone()],
        concurrency: 8,
        track_started: true,
        // The driver checks that results name this worker.
        hostname: format!("celeriac@{rust_queue}"),
        ..WorkerConfig::default()
    };
    let mut worker = RunningWorker::run(app, config);

    let driver = tokio::process::Command::new(interop_python()?)
        .arg(repo_root().join("tests/interop/drive_results.py"))
        .args([
            broker_url(),
            backend.to_owned(),
            rust_queue.clone(),
            python_queue.clone(),
        ])
        .kill_on_drop(true)
        .output();
    let output = worker
        .while_running(driver)
        .await?
        .context("running the Python driver")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        println!("--- Python worker log ---\n{}", python.log());
    }
    let summary = worker.stop().await?;
    println!("Rust worker: {summary:?}");
    drop(python);
    let admin = App::builder().broker_url(broker_url()).build().await?;
    cleanup(&admin, &python_queue).await;
    let admin = App::builder().broker_url(broker_url()).build().await?;
    cleanup(&admin, &rust_queue).await;
    ensure!(
        output.status.success(),
        "the Python app saw Rust tasks misbehave with the {backend} backend; see the FAIL lines \
         above"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_app_uses_python_workers_on_the_same_redis() -> Result<()> {
    rust_app_uses_python_workers(&require_redis()?, "redis").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_app_uses_python_workers_on_the_same_database() -> Result<()> {
    let database = TestDatabase::create("rust_app").await?;
    rust_app_uses_python_workers(&database.backend_url(), "db").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_app_uses_python_workers_on_the_same_django_tables() -> Result<()> {
    let database = TestDatabase::create("rust_django").await?;
    database.migrate_django().await?;
    rust_app_uses_python_workers(&database.django_backend_url(), "django").await
}

/// A Rust producer's results, group and chord, run by a Python worker on
/// the store at `backend` (on the database, the chord's
/// `celery.chord_unlock` goes to the Python worker with the body's route).
async fn rust_app_uses_python_workers(backend: &str, tag: &str) -> Result<()> {
    let python_queue = unique(&format!("{tag}-python-worker"));
    // The Python worker applies the chord's body, so it routes it (as a
    // Python deployment would).
    let routes = json!({"interop.*": {"queue": python_queue}});
    let python = PythonWorker::start_with(&python_queue, &routes, backend).await?;
    let app = App::builder()
        .broker_url(broker_url())
        .result_backend(backend)
        .database_result_column(interop_result_column()?)
        .route("interop.*", route(&python_queue))
        .build()
        .await?;

    let sum: i64 = app
        .send_task("interop.add")
        .args((40, 2))
        .apply()
        .await?
        .get_as(WAIT)
        .await?;
    ensure!(sum == 42, "interop.add returned {sum}");

    let add = |x: i64, y: i64| Signature::new("interop.add").with_arg(x).with_arg(y);
    let members = group((0..5).map(|i| add(i, i))).apply_async(&app).await?;
    members.save().await?;
    let values: Vec<i64> = members.join(WAIT).await?;
    ensure!(values == [0, 2, 4, 6, 8], "group returned {values:?}");
    let restored = app
        .restore_group(members.id())
        .await?
        .context("the saved group is restorable")?;
    ensure!(restored.results().len() == 5);

    let total = chord((0..5).map(|i| add(i, 1)), Signature::new("interop.tsum"))
        .apply_async(&app)
        .await?
        .get_as::<i64>(WAIT)
        .await;
    if total.is_err() {
        println!("--- Python worker log ---\n{}", python.log());
    }
    ensure!(
        total? == 15,
        "the chord's body did not get every header result"
    );
    drop(python);
    cleanup(&app, &python_queue).await;
    Ok(())
}

/// The canvas tour of docs/tasks.md (`celeriac-demo canvas`), with its
/// chord whose header runs on a Python worker and body on the Rust one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canvas_tour_runs_a_chord_across_python_and_rust() -> Result<()> {
    let redis = require_redis()?;
    let python_queue = unique("redis-canvas-tour");
    let python = PythonWorker::start_with(&python_queue, &json!({}), &redis).await?;
    let output = tokio::process::Command::new(binary("celeriac-demo")?)
        .args(["canvas", "--python-queue", &python_queue])
        .args(["--broker", &broker_url(), "--result-backend", &redis])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!(
        "{stdout}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    drop(python);
    delete_queue(&python_queue);
    ensure!(output.status.success(), "celeriac-demo canvas failed");
    for line in [
        "add(4))  -> 14",
        "for i in 0..5)           -> [0, 2, 4, 6, 8]",
        "(tsum)        -> 55",
        "celery.exceptions.ChordError: Dependency",
        "chord(Python interop.add)(Rust tsum)     -> 30",
    ] {
        ensure!(stdout.contains(line), "the tour did not print {line:?}");
    }
    Ok(())
}
