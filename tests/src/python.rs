//! The pinned Python Celery: the interop virtualenv, Python scripts and
//! Python Celery workers.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::{broker_url, repo_root};

/// The interop virtualenv's Python, or an error that says how to create it:
/// `.venv-interop` (the Celery of `tests/interop/requirements.txt`), or the
/// venv `CELERIAC_INTEROP_VENV` names (`scripts/interop-matrix` sets it to
/// `.venv-interop-5.3` and so on).
pub fn interop_python() -> Result<PathBuf> {
    let venv = std::env::var("CELERIAC_INTEROP_VENV")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| ".venv-interop".into());
    let python = repo_root().join(&venv).join("bin/python");
    let works = python.exists()
        && Command::new(&python)
            .args(["-c", "import celery, kombu, amqp"])
            .status()
            .is_ok_and(|s| s.success());
    if !works {
        bail!(
            "the Python interop environment {venv} is missing: run `scripts/setup-interop` \
             (it creates .venv-interop with the Celery pinned in tests/interop/requirements.txt; \
             `scripts/setup-interop 5.3` creates .venv-interop-5.3)"
        );
    }
    Ok(python)
}

/// The `(major, minor)` version of the Celery in the interop venv: tests
/// whose expectations differ between versions (docs/interop-python.md lists
/// each difference) ask it.
pub fn celery_version() -> Result<(u32, u32)> {
    static VERSION: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    if let Some(version) = VERSION.get() {
        return Ok(*version);
    }
    let output = Command::new(interop_python()?)
        .args(["-c", "import celery; print(celery.__version__)"])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut parts = text.trim().split('.').map(str::parse::<u32>);
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else {
        bail!("cannot read the interop venv's Celery version from {text:?}");
    };
    Ok(*VERSION.get_or_init(|| (major, minor)))
}

/// How Rust must write the database backend's `result` column for the
/// interop venv's Celery to read it: a pickle up to 5.6, JSON from 5.7.
pub fn interop_result_column() -> Result<celeriac::ResultColumn> {
    Ok(if celery_version()? < (5, 7) {
        celeriac::ResultColumn::Pickle
    } else {
        celeriac::ResultColumn::Json
    })
}

/// The flags of a worker that keeps to itself: no mingle, gossip or
/// heartbeats from other tests' workers.
const QUIET: [&str; 3] = [
    "--without-mingle",
    "--without-gossip",
    "--without-heartbeat",
];

/// A Python Celery worker consuming `queue`, killed on drop (and exiting by
/// itself if the test process dies first).
#[derive(Debug)]
pub struct PythonWorker {
    child: tokio::process::Child,
    log: PathBuf,
}

impl PythonWorker {
    /// Starts a Celery 5.7 worker for `tests/interop/tasks.py` on `queue`.
    pub async fn start(queue: &str) -> Result<PythonWorker> {
        PythonWorker::start_with_routes(queue, &serde_json::json!({})).await
    }

    /// Like [`start`](Self::start), with Celery `task_routes` (as JSON) for
    /// the workflow steps this worker sends on.
    pub async fn start_with_routes(
        queue: &str,
        routes: &serde_json::Value,
    ) -> Result<PythonWorker> {
        PythonWorker::start_with(queue, routes, "rpc://").await
    }

    /// Like [`start_with_routes`](Self::start_with_routes), storing results
    /// in `backend` (a Celery `result_backend` URL).
    pub async fn start_with(
        queue: &str,
        routes: &serde_json::Value,
        backend: &str,
    ) -> Result<PythonWorker> {
        let node = format!("{queue}@%h");
        PythonWorker::spawn(queue, &node, routes, backend, &QUIET, &[])
    }

    /// A worker on `queue` traced with `opentelemetry-instrumentation-celery`
    /// (`CELERIAC_TEST_OTEL=1` in `tasks.py`): it continues the trace of the
    /// tasks it runs and carries it on to the tasks it sends.
    pub async fn start_traced(queue: &str) -> Result<PythonWorker> {
        let node = format!("{queue}@%h");
        let routes = serde_json::json!({});
        let env = [("CELERIAC_TEST_OTEL", "1")];
        PythonWorker::spawn(queue, &node, &routes, "rpc://", &QUIET, &env)
    }

    /// A worker on `queue` with signed messages set up
    /// (`app.setup_security()`) from the keys and certificates that
    /// `tests/interop/make_certs.py` wrote to `certs`: it signs with
    /// `python.key` and accepts only tasks signed by a certificate in
    /// `certs/store`; results go to `backend`, signed.
    pub async fn start_signed(
        queue: &str,
        certs: &std::path::Path,
        backend: &str,
    ) -> Result<PythonWorker> {
        let node = format!("{queue}@%h");
        let certs = certs.to_string_lossy();
        let env = [("CELERIAC_TEST_SECURITY", certs.as_ref())];
        PythonWorker::spawn(queue, &node, &serde_json::json!({}), backend, &QUIET, &env)
    }

    /// A worker named `node` on `queue` that mingles and sends heartbeats
    /// as a default Celery worker does: for remote control and event tests.
    pub async fn start_node(queue: &str, node: &str, backend: &str) -> Result<PythonWorker> {
        let routes = serde_json::json!({});
        PythonWorker::spawn(queue, node, &routes, backend, &["--without-gossip"], &[])
    }

    /// A worker whose queue subscribes to the topic `exchange` with
    /// `pattern` (a Python `task_queues` entry with a topic `Exchange`); its
    /// `events.order_created` appends the order ids it handles to the list
    /// `events_key` in Redis at `redis`.
    pub async fn start_subscriber(
        queue: &str,
        exchange: &str,
        pattern: &str,
        redis: &str,
        events_key: &str,
    ) -> Result<PythonWorker> {
        let subscribe = format!("{queue} {exchange} {pattern}");
        let queues = ("CELERIAC_TEST_SUBSCRIBE", subscribe.as_str());
        PythonWorker::start_event_handler(queue, queues, redis, events_key)
    }

    /// A worker consuming the broadcast queue `name` (`Broadcast(name)` in
    /// its `task_queues`); its `events.order_created` appends the order ids
    /// it handles to the list `events_key` in Redis at `redis`.
    pub async fn start_broadcast(
        name: &str,
        redis: &str,
        events_key: &str,
    ) -> Result<PythonWorker> {
        let queues = ("CELERIAC_TEST_BROADCAST", name);
        PythonWorker::start_event_handler(name, queues, redis, events_key)
    }

    /// A quiet worker on `queue`, its `task_queues` set by the `queues`
    /// variable, recording the events it handles in Redis.
    fn start_event_handler(
        queue: &str,
        queues: (&str, &str),
        redis: &str,
        events_key: &str,
    ) -> Result<PythonWorker> {
        let env = [
            queues,
            ("CELERIAC_TEST_REDIS", redis),
            ("CELERIAC_TEST_EVENTS_KEY", events_key),
        ];
        let node = format!("{queue}@%h");
        PythonWorker::spawn(queue, &node, &serde_json::json!({}), "rpc://", &QUIET, &env)
    }

    fn spawn(
        queue: &str,
        node: &str,
        routes: &serde_json::Value,
        backend: &str,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Result<PythonWorker> {
        let python = interop_python()?;
        let log = std::env::temp_dir().join(format!("{queue}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(python)
            .args([
                "-m", "celery", "-A", "tasks", "worker", "-Q", queue, "-P", "threads", "-c", "8",
            ])
            .args(flags)
            .args(["--loglevel", "INFO", "-n", node])
            .current_dir(repo_root().join("tests/interop"))
            .env("CELERIAC_TEST_BROKER", broker_url())
            .env("CELERIAC_TEST_ROUTES", routes.to_string())
            .env("CELERIAC_TEST_BACKEND", backend)
            .env("CELERIAC_EXIT_WITH_PARENT", "1")
            .envs(env.iter().copied())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the Python Celery worker")?;
        Ok(PythonWorker { child, log })
    }

    /// The worker's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
