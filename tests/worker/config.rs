//! Worker configuration against the real broker: queues with arguments from
//! the config file and flags, the settings' precedence over the program's
//! code, refusing queues that are not configured, and `task_routes` applied
//! to the workflow steps a worker sends on, in a chain mixing Rust and
//! Python tasks that names no queue at all.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::{App, Error, QueueType, RouteOptions, Signature};
use celeriac_broker::RouteError;
use celeriac_tests::worker::{RunningWorker, cleanup, reply_queue};
use celeriac_tests::{PythonWorker, broker_url, queue_stats, unique};
use celeriac_worker::cli::Args;
use clap::Parser as _;
use serde_json::json;

/// The worker's settings for `argv` (after the program name).
fn settings(argv: &[&str]) -> Result<celeriac_worker::cli::Settings> {
    let args = Args::try_parse_from(std::iter::once("worker").chain(argv.iter().copied()))?;
    args.settings().map_err(anyhow::Error::msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_from_the_file_and_flags_are_declared_with_their_arguments() -> Result<()> {
    let from_file = unique("config-file");
    let from_flag = unique("config-flag");
    let dir = std::env::temp_dir().join(unique("config-dir"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("worker.toml");
    std::fs::write(
        &path,
        format!("queues = [\"{from_file}\"]\n[task_queues.\"{from_file}\"]\nmax_priority = 7\n"),
    )?;
    let flag = format!("{from_flag}:queue_type=quorum");
    let settings = settings(&[
        "--config",
        path.to_str().context("utf-8 path")?,
        "--task-queue",
        &flag,
    ])?;
    let mut worker_config = settings.worker.clone();
    worker_config.queues.push(from_flag.clone());
    let app = settings
        .app
        .apply(celeriac_demo::tasks::register(App::builder()))
        .broker_url(broker_url())
        .build()
        .await?;
    let worker = RunningWorker::run(app, worker_config);
    let client = App::builder().broker_url(broker_url()).build().await?;
    // The worker declares what it consumes before the first delivery.
    let mut arguments = Vec::new();
    for _ in 0..100 {
        arguments = [&from_file, &from_flag]
            .iter()
            .map(|q| queue_stats(q, &["arguments"]).map(|f| f.join(" ")))
            .collect::<Result<Vec<_>>>()
            .unwrap_or_default();
        if arguments.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop().await?;
    ensure!(
        arguments.len() == 2,
        "the worker did not declare both queues"
    );
    ensure!(
        arguments[0].contains("x-max-priority") && arguments[0].contains('7'),
        "file queue arguments: {}",
        arguments[0]
    );
    ensure!(
        arguments[1].contains("x-queue-type") && arguments[1].contains("quorum"),
        "flag queue arguments: {}",
        arguments[1]
    );
    for queue in [&from_file, &from_flag] {
        client.broker().delete_queue(queue).await?;
        client.broker().delete_exchange(queue).await?;
    }
    client.close().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_override_the_code_and_leave_it_where_absent() -> Result<()> {
    let code = || {
        App::builder()
            .broker_url(broker_url())
            .result_backend("rpc://")
    };
    let untouched = settings(&[])?.app.apply(code()).build().await?;
    ensure!(
        untouched.result_backend().is_some(),
        "without a flag the program's own rpc:// backend stays"
    );
    untouched.close().await;
    let overridden = settings(&["--result-backend", "disabled"])?
        .app
        .apply(code())
        .build()
        .await?;
    ensure!(
        overridden.result_backend().is_none(),
        "a flag wins over the program's code"
    );
    overridden.close().await;
    let typed = settings(&[
        "--default-queue-type",
        "quorum",
        "--queue-max-priority",
        "3",
    ])?;
    ensure!(typed.app.default_queue_type == Some(QueueType::Quorum));
    let app = typed.app.apply(code()).build().await?;
    let queue = app.router().default_queue();
    ensure!(queue.arguments.queue_type == Some(QueueType::Quorum));
    ensure!(queue.arguments.max_priority == Some(3));
    app.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_that_are_not_configured_can_be_refused() -> Result<()> {
    let app = App::builder()
        .broker_url(broker_url())
        .create_missing_queues(false)
        .build()
        .await?;
    let missing = unique("not-configured");
    let err = app
        .send_task("demo.add")
        .queue(missing.clone())
        .apply()
        .await
        .expect_err("a queue that is not configured is refused");
    ensure!(
        matches!(&err, Error::Route(RouteError::QueueNotFound { queue, .. }) if *queue == missing),
        "{err}"
    );
    ensure!(
        app.broker().queue_counts(&missing).await?.is_none(),
        "nothing was declared"
    );
    let config = celeriac_worker::WorkerConfig {
        queues: vec![missing.clone()],
        ..celeriac_worker::WorkerConfig::default()
    };
    let refused = celeriac_worker::Worker::new(app.clone(), config)
        .run_until(std::future::pending())
        .await;
    ensure!(refused.is_err(), "a worker refuses to consume it too");
    app.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_chain_is_routed_by_task_routes_alone() -> Result<()> {
    let rust_queue = unique("routes-rust");
    let python_queue = unique("routes-python");
    let python =
        PythonWorker::start_with_routes(&python_queue, &json!({"demo.*": {"queue": rust_queue}}))
            .await?;
    let route = format!("interop.*={python_queue}");
    let worker_settings = settings(&["-Q", &rust_queue, "--route", &route])?;
    let worker_app = worker_settings
        .app
        .apply(celeriac_demo::tasks::register(App::builder()))
        .broker_url(broker_url())
        .result_backend("rpc://")
        .build()
        .await?;
    let worker = RunningWorker::run(worker_app, worker_settings.worker);
    let client = App::builder()
        .broker_url(broker_url())
        .result_backend("rpc://")
        .route(
            "demo.*",
            RouteOptions {
                queue: Some(rust_queue.clone()),
                ..RouteOptions::default()
            },
        )
        .build()
        .await?;
    let reply_to = reply_queue(&client)?;
    let last = unique("last-step");
    let step = |task: &str, arg: i64| {
        Signature::new(task)
            .with_args(vec![json!(arg)])
            .with_option("reply_to", reply_to.clone())
    };
    let chain = Signature::chain(vec![
        Signature::new("demo.add")
            .with_args(vec![json!(1), json!(2)])
            .with_option("reply_to", reply_to.clone()),
        step("interop.add", 10),
        step("demo.add", 100),
        step("interop.add", 1000).with_option("task_id", last.clone()),
    ]);
    client
        .apply_signature(&chain, celeriac::Apply::default())
        .await?;
    let result = client
        .async_result::<i64>(last.clone())
        .get(Duration::from_secs(60))
        .await;
    if result.is_err() {
        println!("--- Python worker log ---\n{}", python.log());
    }
    let value = result?;
    ensure!(value == 1113, "the chain computed {value}, not 1113");
    worker.stop().await?;
    drop(python);
    cleanup(&client, &python_queue).await;
    let rust = App::builder().broker_url(broker_url()).build().await?;
    cleanup(&rust, &rust_queue).await;
    Ok(())
}
