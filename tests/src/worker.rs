//! Celeriac apps and workers for the tests: producer apps, workers running
//! in the test's process or as `celeriac-demo worker` processes, reading
//! dead letters, and cleaning up a test's queues.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use celeriac::broker::{ConsumeOptions, Delivery};
use celeriac::protocol::HeaderValue;
use celeriac::{App, AppBuilder, AsyncResult, Queue, ResultError, TaskCall, TaskFailure};
use celeriac_worker::{Summary, Worker, WorkerConfig, WorkerError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker_url;

/// An app on the test broker with `rpc://` results whose default queue is
/// `queue` (declared as given).
pub async fn client(queue: &Queue) -> Result<App> {
    Ok(App::builder()
        .broker_url(broker_url())
        .result_backend("rpc://")
        .queue(queue.clone())
        .default_queue(queue.name.clone())
        .build()
        .await?)
}

/// The reply queue of an app with `rpc://` results: what a signature's
/// `reply_to` option names so its result comes back to this app.
pub fn reply_queue(app: &App) -> Result<String> {
    Ok(app
        .result_backend()
        .and_then(|backend| backend.reply_to())
        .context("the app has no rpc:// reply queue (build it with result_backend(\"rpc://\"))")?
        .to_owned())
}

/// A worker running in the test's process; stopped gracefully by `stop()`.
#[derive(Debug)]
pub struct RunningWorker {
    stop: CancellationToken,
    handle: JoinHandle<Result<Summary, WorkerError>>,
}

impl RunningWorker {
    /// Starts a worker for the demo tasks plus those on `builder`, consuming
    /// `queue` (concurrency 4, `rpc://` results); `configure` adjusts the
    /// settings.
    pub async fn start(
        builder: AppBuilder,
        queue: &Queue,
        configure: impl FnOnce(&mut WorkerConfig),
    ) -> Result<RunningWorker> {
        let app = celeriac_demo::tasks::register(builder)
            .broker_url(broker_url())
            .result_backend("rpc://")
            .queue(queue.clone())
            .default_queue(queue.name.clone())
            .build()
            .await?;
        let mut config = WorkerConfig {
            queues: vec![queue.name.clone()],
            concurrency: 4,
            hostname: format!("test@{}", queue.name),
            mingle: false,
            ..WorkerConfig::default()
        };
        configure(&mut config);
        Ok(RunningWorker::run(app, config))
    }

    /// Runs a worker over `app` with `config`; the app is closed when the
    /// worker stops. A config that keeps the default node name gets one of
    /// its own (`test@<first queue>`), so workers of tests running at once
    /// each hold their own control queue.
    pub fn run(app: App, mut config: WorkerConfig) -> RunningWorker {
        if config.hostname == WorkerConfig::default().hostname {
            let queue = config.queues.first().map_or("celery", String::as_str);
            config.hostname = format!("test@{queue}");
        }
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let worker = Worker::new(app.clone(), config);
        let handle = tokio::spawn(async move {
            let summary = worker.run_until(shutdown).await;
            app.close().await;
            summary
        });
        RunningWorker { stop, handle }
    }

    /// Awaits `work` (a driver talking to this worker) unless the worker
    /// stops first: then `work` is dropped and the worker's own error is
    /// returned, instead of every scenario of the driver timing out one
    /// after another.
    pub async fn while_running<T>(&mut self, work: impl Future<Output = T>) -> Result<T> {
        tokio::select! {
            output = work => Ok(output),
            ended = &mut self.handle => match ended? {
                Ok(summary) => bail!("the worker stopped before the test was done: {summary:?}"),
                Err(e) => Err(anyhow::Error::new(e).context("the worker stopped with an error")),
            },
        }
    }

    /// Stops the worker gracefully and returns what it did.
    pub async fn stop(self) -> Result<Summary> {
        self.stop.cancel();
        Ok(self.handle.await??)
    }
}

/// A Celeriac binary built in this workspace (`celeriac-demo`,
/// `celeriac-beat`, `celeriac`), next to the test executable.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable is not in target/<profile>/deps")?;
    let binary = profile_dir.join(name);
    if !binary.exists() {
        bail!(
            "{} is missing: build the binaries first with `cargo build --workspace --bins` \
             (scripts/test does)",
            binary.display()
        );
    }
    Ok(binary)
}

/// A `celeriac-demo worker` process on the test broker consuming `queue`
/// with `rpc://` results, quiet, killed when dropped; `extra` adds flags.
pub fn demo_worker(queue: &str, extra: &[&str]) -> Result<tokio::process::Child> {
    demo_worker_with(queue, "rpc://", extra)
}

/// Like [`demo_worker`], storing results in `backend`.
pub fn demo_worker_with(
    queue: &str,
    backend: &str,
    extra: &[&str],
) -> Result<tokio::process::Child> {
    tokio::process::Command::new(binary("celeriac-demo")?)
        .args([
            "worker",
            "--broker",
            &broker_url(),
            "--result-backend",
            backend,
        ])
        .args(["-Q", queue, "--loglevel", "error"])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting `celeriac-demo worker`")
}

/// A `celeriac-demo worker` process consuming `queue` with `rpc://`
/// results and no mingle, named `test@<queue>`, logging JSON lines at
/// `loglevel` to a fresh file; `extra` adds flags. Returns it (killed when
/// dropped) and the log file's path.
pub fn json_logging_worker(
    queue: &str,
    loglevel: &str,
    extra: &[&str],
) -> Result<(tokio::process::Child, PathBuf)> {
    let log_path = std::env::temp_dir().join(format!("{queue}.log"));
    let log = std::fs::File::create(&log_path)?;
    let worker = tokio::process::Command::new(binary("celeriac-demo")?)
        .args([
            "worker",
            "--broker",
            &broker_url(),
            "--result-backend",
            "rpc://",
        ])
        .args([
            "-Q",
            queue,
            "-n",
            &format!("test@{queue}"),
            "--without-mingle",
        ])
        .args(["--loglevel", loglevel, "--log-format", "json"])
        .args(extra)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting `celeriac-demo worker`")?;
    Ok((worker, log_path))
}

/// Reads `count` dead letters of `queue`, acking them; fails if they do
/// not all arrive within 15 s of each other.
pub async fn dead_letters(app: &App, queue: &str, count: usize) -> Result<Vec<Delivery>> {
    let dead = app.broker().config().dead_letter.queue_for(queue);
    let mut consumer = app
        .broker()
        .consume(ConsumeOptions {
            queues: vec![dead],
            prefetch: 50,
        })
        .await?;
    let mut letters = Vec::new();
    while letters.len() < count {
        match tokio::time::timeout(Duration::from_secs(15), consumer.next()).await {
            Ok(Some(letter)) => {
                letter.ack().await?;
                letters.push(letter);
            }
            _ => bail!("only {} of {count} dead letters arrived", letters.len()),
        }
    }
    consumer.stop();
    Ok(letters)
}

/// A string header of a delivery (`""` if absent).
pub fn header(letter: &Delivery, name: &str) -> String {
    letter
        .message
        .headers
        .get(name)
        .and_then(HeaderValue::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Deletes a test's queue, its dead-letter queue and its exchange, and
/// closes the app.
pub async fn cleanup(app: &App, queue: &str) {
    let dead = app.broker().config().dead_letter.queue_for(queue);
    let _ = app.broker().delete_queue(queue).await;
    let _ = app.broker().delete_queue(&dead.name).await;
    let _ = app.broker().delete_exchange(queue).await;
    app.close().await;
}

/// How many of `results` are finished.
pub async fn count_ready<T: serde::de::DeserializeOwned>(results: &[AsyncResult<T>]) -> usize {
    let mut ready = 0;
    for result in results {
        if result.ready().await.unwrap_or(false) {
            ready += 1;
        }
    }
    ready
}

/// The remote failure in `result`, or an error if it is not one.
pub fn failure<T: std::fmt::Debug>(result: Result<T, ResultError>) -> Result<TaskFailure> {
    match result {
        Err(ResultError::Failed(failure)) => Ok(*failure),
        other => bail!("expected a failure, got {other:?}"),
    }
}

/// Fills `queue`'s dead-letter queue with `count` dead letters as a worker
/// leaves them (reason, message, origin queue, time headers), in batches
/// of confirmed publishes: number `i` is task `kind(i).0`, id `<prefix>-<i>`,
/// dead-lettered for reason `kind(i).1`.
pub async fn fill_dead_letters(
    broker: &celeriac::broker::Broker,
    queue: &str,
    prefix: &str,
    count: usize,
    kind: impl Fn(usize) -> (&'static str, &'static str),
) -> Result<()> {
    use celeriac::broker::Destination;
    use celeriac::broker::dead_letter::{
        EXCEPTION_MESSAGE_HEADER, ORIGIN_QUEUE_HEADER, REASON_HEADER, TIME_HEADER,
    };
    use celeriac::protocol::TaskMessage;

    let dead = broker.config().dead_letter.queue_for(queue);
    broker.declare(&dead).await?;
    let to = Destination {
        exchange: String::new(),
        routing_key: dead.name.clone(),
        priority: None,
        queue: None,
    };
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..count {
        let (task, reason) = kind(i);
        let mut message = TaskMessage::new(task, format!("{prefix}-{i}"))
            .with_args(vec![
                serde_json::json!(i),
                serde_json::json!("some text to make it a realistic size"),
            ])
            .encode()?;
        for (key, value) in [
            (REASON_HEADER, reason),
            (EXCEPTION_MESSAGE_HEADER, "boom"),
            (ORIGIN_QUEUE_HEADER, queue),
            (TIME_HEADER, "2026-12-06T03:00:00+00:00"),
        ] {
            message
                .headers
                .insert(key.into(), HeaderValue::Str(value.into()));
        }
        batch.push((to.clone(), message));
        if batch.len() == 10_000 || i + 1 == count {
            broker.send_many(&batch).await?;
            batch.clear();
        }
    }
    Ok(())
}

/// The most runs within any one second of `times` (sorted).
pub fn busiest_second(times: &[f64]) -> usize {
    let mut most = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= 1.0 {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

/// Sends `runs` calls made by `call`, each carrying in `header` a
/// rate-limit slot that has already passed (2 s ago for the first, 50 ms
/// later for each next one, the newest 0.55 s ago for thirty): deliveries
/// as a loaded host hands them back late from the delay queues.
pub async fn send_back_late(
    app: &App,
    runs: usize,
    header: &str,
    call: impl Fn() -> TaskCall<f64>,
) -> Result<Vec<AsyncResult<f64>>> {
    let oldest = chrono::Utc::now().timestamp_micros() - 2_000_000;
    let calls = (0..runs).map(|k| {
        let slot = oldest + i64::try_from(k).unwrap_or(0) * 50_000;
        call().header(header, HeaderValue::Int(slot))
    });
    Ok(app.send_many(calls).await?)
}

/// Waits for each of `sent`, a task that returns when it ran (Unix
/// seconds), and checks that their starts were spaced as a rate of `rate`
/// a second spaces them: at most `rate + 2` within any one second (runs an
/// interval apart, less up to half an interval the start check credits a
/// late waiter, put `rate + 1` in a second; one more allows for a task
/// reading the clock a moment after its start), and over at least 90 % of
/// the span `rate` gives them. Returns the sorted start times.
pub async fn ensure_starts_spaced(
    label: &str,
    sent: &[AsyncResult<f64>],
    rate: f64,
) -> Result<Vec<f64>> {
    let mut times = Vec::with_capacity(sent.len());
    for (i, run) in sent.iter().enumerate() {
        let ran = run
            .get(Duration::from_secs(60))
            .await
            .with_context(|| format!("{label} #{i} has no result"))?;
        times.push(ran);
    }
    times.sort_by(f64::total_cmp);
    let busiest = busiest_second(&times);
    let span = times.last().unwrap_or(&0.0) - times.first().unwrap_or(&0.0);
    let runs = times.len();
    println!(
        "{runs} {label} at {rate}/s started over {span:.2} s, at most {busiest} in one second"
    );
    ensure!(
        busiest as f64 <= rate + 2.0,
        "{busiest} {label} started within one second at {rate}/s"
    );
    ensure!(
        span >= runs.saturating_sub(1) as f64 / rate * 0.9,
        "{runs} {label} at {rate}/s started over only {span:.2} s"
    );
    Ok(times)
}
