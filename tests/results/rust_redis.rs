//! The Redis backend and the canvas from Rust, with a Rust worker: results
//! any process can read until forgotten, stored exactly as Celery stores
//! them; progress and STARTED states; typed signatures, chains, groups and
//! chords built in Rust; chords refused over `rpc://` before anything is
//! sent.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use celeriac::result::BackendError;
use celeriac::{App, Error, Signature, State, Step, chain, chord, group};
use celeriac_demo::tasks::{self as demo, add};
use celeriac_tests::worker::{RunningWorker, cleanup, failure};
use celeriac_tests::{broker_url, require_redis, unique};
use celeriac_worker::WorkerConfig;
use redis::AsyncCommands as _;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A Rust worker with the demo tasks storing results in Redis, and an app
/// sending to it.
async fn setup(
    queue: &str,
    configure: impl FnOnce(&mut WorkerConfig),
) -> Result<(App, RunningWorker)> {
    let redis = require_redis()?;
    let worker_app = demo::register(App::builder())
        .broker_url(broker_url())
        .result_backend(redis.clone())
        .default_queue(queue)
        .build()
        .await?;
    let mut config = WorkerConfig {
        queues: vec![queue.to_owned()],
        concurrency: 4,
        ..WorkerConfig::default()
    };
    configure(&mut config);
    let worker = RunningWorker::run(worker_app, config);
    let client = App::builder()
        .broker_url(broker_url())
        .result_backend(redis)
        .default_queue(queue)
        .build()
        .await?;
    Ok((client, worker))
}

async fn raw_redis() -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(require_redis()?)?;
    Ok(client.get_multiplexed_async_connection().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_readable_by_any_process_until_forgotten() -> Result<()> {
    let queue = unique("redis-results");
    let (app, worker) = setup(&queue, |_| {}).await?;
    let sent = add::new(20, 22).apply_async(&app).await?;
    ensure!(sent.get(WAIT).await? == 42);

    // Another process (another App) reads the same result, twice.
    let other = App::builder()
        .broker_url(broker_url())
        .result_backend(require_redis()?)
        .build()
        .await?;
    let read = other.async_result::<i64>(sent.id().to_owned());
    ensure!(read.get(WAIT).await? == 42 && read.get(WAIT).await? == 42);
    ensure!(read.state().await? == State::Success);

    // Stored as Celery stores it: the document, with result_expires.
    let mut redis = raw_redis().await?;
    let key = format!("celery-task-meta-{}", sent.id());
    let ttl: i64 = redis.ttl(&key).await?;
    ensure!(
        (1..=86_400).contains(&ttl),
        "TTL {ttl}, expected result_expires (1 day)"
    );
    let raw: String = redis.get(&key).await?;
    ensure!(
        raw.starts_with(r#"{"status": "SUCCESS", "result": 42"#),
        "stored {raw}"
    );
    let document: Value = serde_json::from_str(&raw)?;
    ensure!(document["name"] == "demo.add" && document["args"] == json!([20, 22]));
    ensure!(
        document["queue"] == queue.as_str(),
        "extended fields: {document}"
    );

    read.forget().await?;
    ensure!(redis.get::<_, Option<String>>(&key).await?.is_none());
    ensure!(sent.state().await? == State::Pending);

    let failed = failure(
        app.send_task("demo.fail")
            .args(("broken",))
            .apply()
            .await?
            .get(WAIT)
            .await,
    )?;
    let traceback = failed.traceback.unwrap_or_default();
    ensure!(
        traceback.contains("in demo.fail") && traceback.contains("ValueError: broken"),
        "traceback {traceback:?}"
    );
    worker.stop().await?;
    other.close().await;
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_started_states_are_seen_while_a_task_runs() -> Result<()> {
    let queue = unique("redis-progress");
    let (app, worker) = setup(&queue, |c| c.track_started = true).await?;
    let running = demo::progress::new(4, 0.3).apply_async(&app).await?;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        // One read, so the state and what it carries belong together.
        let (state, info) = running
            .meta()
            .await?
            .map_or((State::Pending, Value::Null), |m| (m.status, m.result));
        if seen.last() != Some(&(state.clone(), info.clone())) {
            seen.push((state.clone(), info));
        }
        if state.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(running.get(WAIT).await? == 4);
    ensure!(
        seen.iter().any(|(s, _)| *s == State::Started),
        "STARTED never seen: {seen:?}"
    );
    let progress: Vec<&Value> = seen
        .iter()
        .filter(|(s, _)| *s == State::Custom("PROGRESS".into()))
        .map(|(_, info)| info)
        .collect();
    ensure!(
        progress.len() >= 2 && progress.iter().all(|i| i["total"] == 4),
        "PROGRESS infos {progress:?}"
    );
    worker.stop().await?;
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_built_in_rust_run_on_a_rust_worker() -> Result<()> {
    let queue = unique("redis-canvas");
    let (app, worker) = setup(&queue, |_| {}).await?;

    let total = chain([add::s(2, 2), add::si(5, 5)])
        .then(Signature::new("demo.add").with_arg(4))
        .apply_async(&app)
        .await?;
    ensure!(
        total.get_as::<i64>(WAIT).await? == 14,
        "(2+2) | si(5+5) | +4"
    );

    let doubled = group((0..10).map(|i| add::s(i, i)))
        .apply_async(&app)
        .await?;
    ensure!(doubled.join::<i64>(WAIT).await? == (0..10).map(|i| 2 * i).collect::<Vec<_>>());

    let summed = chord((0..10).map(|i| add::s(i, 1)), Signature::new("demo.tsum"))
        .apply_async(&app)
        .await?;
    ensure!(summed.get_as::<i64>(WAIT).await? == 55);

    let into_chord = chain([
        Step::from(add::s(1, 1)),
        Step::from(chord(
            [
                Signature::new("demo.add").with_arg(10),
                Signature::new("demo.add").with_arg(20),
            ],
            Signature::new("demo.tsum"),
        )),
    ])
    .apply_async(&app)
    .await?;
    ensure!(
        into_chord.get_as::<i64>(WAIT).await? == 34,
        "2 | chord(+10, +20) | sum"
    );

    let broken = chord(
        [
            Step::from(add::s(1, 1)),
            Step::from(demo::fail::s("member broke".into())),
        ],
        Signature::new("demo.tsum"),
    )
    .apply_async(&app)
    .await?;
    let chord_failure = failure(broken.get_as::<i64>(WAIT).await)?;
    ensure!(
        chord_failure.exc_type == "ChordError" && chord_failure.message.contains("member broke"),
        "{chord_failure}"
    );
    worker.stop().await?;
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chords_over_rpc_are_refused_before_anything_is_sent() -> Result<()> {
    let queue = unique("rpc-chord");
    let app = App::builder()
        .broker_url(broker_url())
        .result_backend("rpc://")
        .default_queue(queue.clone())
        .build()
        .await?;
    match chord([add::s(1, 1)], Signature::new("demo.tsum"))
        .apply_async(&app)
        .await
    {
        Err(Error::Backend(BackendError::Unsupported { what, fix, .. })) => {
            ensure!(what == "chords" && fix.contains("Redis"), "{what}: {fix}");
        }
        other => bail!("expected chords to be refused over rpc://, got {other:?}"),
    }
    let queued = app.broker().queue_counts(&queue).await?;
    ensure!(
        queued.is_none_or(|(messages, _)| messages == 0),
        "something was sent: {queued:?}"
    );
    cleanup(&app, &queue).await;
    Ok(())
}
