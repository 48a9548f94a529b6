//! Shared helpers for Celeriac's cross-crate and Python interop tests:
//! loading the fixtures captured from Python Celery, and finding the interop
//! virtualenv with the pinned Celery.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use celeriac_protocol::{HeaderValue, Headers, Properties, RawMessage};
use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A message captured from Python Celery by `protocol-fixtures/generate.py`.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Case name (the file stem).
    pub name: String,
    /// `task_v2`, `task_v1` or `result`.
    pub kind: String,
    /// Exchange Python published to.
    pub exchange: String,
    /// Routing key Python published with.
    pub routing_key: String,
    /// The message as it went on the wire, headers read from the typed JSON.
    pub raw: RawMessage,
    /// The py-amqp-encoded header table bytes.
    pub headers_amqp: Vec<u8>,
    /// Python's own decoding of the body (kombu JSON), or null.
    pub decoded: Value,
    /// The refusal reason expected from our decoder, if any.
    pub expect_error: Option<String>,
}

/// Loads every fixture, sorted by name. Fails if there are none.
pub fn all_fixtures() -> Result<Vec<Fixture>> {
    let dir = repo_root().join("protocol-fixtures/fixtures");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!(
            "no fixtures in {}; run protocol-fixtures/generate.py",
            dir.display()
        );
    }
    paths.iter().map(|p| load_path(p)).collect()
}

/// Loads one fixture by name.
pub fn fixture(name: &str) -> Result<Fixture> {
    load_path(&repo_root().join(format!("protocol-fixtures/fixtures/{name}.json")))
}

fn load_path(path: &Path) -> Result<Fixture> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let s = |key: &str| {
        doc[key]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{}: missing {key}", path.display()))
    };
    let b64 = |key: &str| -> Result<Vec<u8>> {
        Ok(base64::engine::general_purpose::STANDARD.decode(s(key)?)?)
    };
    let headers = match &doc["headers"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), typed_header(v)?)))
            .collect::<Result<Headers>>()?,
        other => bail!("{}: headers is {other}", path.display()),
    };
    Ok(Fixture {
        name: s("name")?,
        kind: s("kind")?,
        exchange: s("exchange")?,
        routing_key: s("routing_key")?,
        raw: RawMessage {
            properties: properties(&doc["properties"])?,
            headers,
            body: b64("body")?,
        },
        headers_amqp: b64("headers_amqp")?,
        decoded: doc["decoded"].clone(),
        expect_error: doc["expect_error"].as_str().map(str::to_owned),
    })
}

/// Reads the fixture's typed header notation, e.g. `{"I": 5}`.
pub fn typed_header(value: &Value) -> Result<HeaderValue> {
    let (letter, inner) = value
        .as_object()
        .and_then(|m| m.iter().next())
        .with_context(|| format!("typed header {value} is not a one-key object"))?;
    let int = || {
        inner
            .as_i64()
            .with_context(|| format!("{letter}: {inner} is not an integer"))
    };
    Ok(match letter.as_str() {
        "V" => HeaderValue::Void,
        "t" => HeaderValue::Bool(inner.as_bool().context("t: not a bool")?),
        "S" | "s" => HeaderValue::Str(inner.as_str().context("S: not a string")?.to_owned()),
        "b" | "B" | "U" | "u" | "I" | "i" | "L" | "l" => HeaderValue::Int(int()?),
        "d" | "f" => HeaderValue::Float(inner.as_f64().context("d: not a number")?),
        "T" => HeaderValue::Timestamp(inner.as_u64().context("T: not a timestamp")?),
        "x" => HeaderValue::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(inner.as_str().context("x: not base64")?)?,
        ),
        "D" => HeaderValue::Decimal {
            scale: u8::try_from(inner[0].as_u64().context("D scale")?)?,
            value: i32::try_from(inner[1].as_i64().context("D value")?)?,
        },
        "A" => HeaderValue::Array(
            inner
                .as_array()
                .context("A: not a list")?
                .iter()
                .map(typed_header)
                .collect::<Result<_>>()?,
        ),
        "F" => HeaderValue::Table(
            inner
                .as_object()
                .context("F: not an object")?
                .iter()
                .map(|(k, v)| Ok((k.clone(), typed_header(v)?)))
                .collect::<Result<_>>()?,
        ),
        other => bail!("unknown AMQP type letter {other:?}"),
    })
}

fn properties(value: &Value) -> Result<Properties> {
    let s = |key: &str| value[key].as_str().map(str::to_owned);
    let byte = |key: &str| -> Result<Option<u8>> {
        value[key]
            .as_u64()
            .map(u8::try_from)
            .transpose()
            .map_err(Into::into)
    };
    Ok(Properties {
        content_type: s("content_type"),
        content_encoding: s("content_encoding"),
        correlation_id: s("correlation_id"),
        reply_to: s("reply_to"),
        delivery_mode: byte("delivery_mode")?,
        priority: byte("priority")?,
        expiration: s("expiration"),
    })
}

/// The interop virtualenv's Python, or an error that says how to create it.
pub fn interop_python() -> Result<PathBuf> {
    let python = repo_root().join(".venv-interop/bin/python");
    let works = python.exists()
        && Command::new(&python)
            .args(["-c", "import celery, kombu, amqp"])
            .status()
            .is_ok_and(|s| s.success());
    if !works {
        bail!(
            "the Python interop environment is missing: run `scripts/setup-interop` \
             (it creates .venv-interop with the Celery pinned in tests/interop/requirements.txt)"
        );
    }
    Ok(python)
}

/// The RabbitMQ the tests use: `CELERIAC_TEST_BROKER`, default
/// `amqp://guest:guest@127.0.0.1:5672//`.
pub fn broker_url() -> String {
    std::env::var("CELERIAC_TEST_BROKER")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672//".into())
}

/// A name no other test (or test run) uses: `celeriac-test.<what>.<random>`.
pub fn unique(what: &str) -> String {
    format!("celeriac-test.{what}.{:016x}", fastrand::u64(..))
}

/// Connects to the test broker with fast reconnects, or fails saying what to start.
pub async fn connect() -> Result<celeriac_broker::Broker> {
    let mut config = celeriac_broker::BrokerConfig::from_url(&broker_url())?;
    config.reconnect_max = std::time::Duration::from_millis(500);
    celeriac_broker::Broker::connect(config).await.with_context(|| {
        format!(
            "these tests need RabbitMQ at {} (set CELERIAC_TEST_BROKER, or run scripts/ensure-rabbitmq)",
            celeriac_broker::url::redact(&broker_url())
        )
    })
}

/// Runs `rabbitmqctl` with `args`, returning its standard output.
pub fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let output = Command::new("rabbitmqctl").args(args).output().context(
        "running rabbitmqctl: these tests drive the local RabbitMQ and need rabbitmqctl on PATH",
    )?;
    if !output.status.success() {
        bail!(
            "rabbitmqctl {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One line of `rabbitmqctl list_queues name <columns>` for `queue`, split.
pub fn queue_stats(queue: &str, columns: &[&str]) -> Result<Vec<String>> {
    let mut args = vec!["list_queues", "-q", "--no-table-headers", "name"];
    args.extend_from_slice(columns);
    let out = rabbitmqctl(&args)?;
    out.lines()
        .map(|line| {
            line.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .find(|fields| fields.first().map(String::as_str) == Some(queue))
        .map(|fields| fields[1..].to_vec())
        .with_context(|| format!("queue {queue} not listed by rabbitmqctl"))
}

/// Deletes a queue if it exists (cleanup).
pub fn delete_queue(queue: &str) {
    let _ = rabbitmqctl(&["delete_queue", queue]);
}

/// A Python Celery worker consuming `queue`, killed on drop (and exiting by
/// itself if the test process dies first).
pub struct PythonWorker {
    child: tokio::process::Child,
    log: std::path::PathBuf,
}

impl PythonWorker {
    /// Starts a Celery 5.7 worker for `tests/interop/tasks.py` on `queue`.
    pub async fn start(queue: &str) -> Result<PythonWorker> {
        let python = interop_python()?;
        let log = std::env::temp_dir().join(format!("{queue}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(python)
            .args([
                "-m", "celery", "-A", "tasks", "worker", "-Q", queue, "-P", "threads", "-c", "8",
            ])
            .args([
                "--without-mingle",
                "--without-gossip",
                "--without-heartbeat",
                "--loglevel",
                "INFO",
            ])
            .args(["-n", &format!("{queue}@%h")])
            .current_dir(repo_root().join("tests/interop"))
            .env("CELERIAC_TEST_BROKER", broker_url())
            .env("CELERIAC_EXIT_WITH_PARENT", "1")
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

/// Sets RabbitMQ's `consumer_timeout`, and the channel tick that checks it
/// (60 s by default), for channels opened from now on; restores both when
/// dropped.
pub struct ConsumerTimeout(Vec<(&'static str, String)>);

impl ConsumerTimeout {
    /// Sets it to `millis`.
    pub fn set(millis: u64) -> Result<ConsumerTimeout> {
        let mut previous = Vec::new();
        for (key, value) in [("consumer_timeout", millis), ("channel_tick_interval", 500)] {
            let old = rabbitmqctl(&["eval", &format!("application:get_env(rabbit, {key}).")])?;
            previous.push((key, old.trim().to_owned()));
            rabbitmqctl(&[
                "eval",
                &format!("application:set_env(rabbit, {key}, {value})."),
            ])?;
        }
        Ok(ConsumerTimeout(previous))
    }
}

impl Drop for ConsumerTimeout {
    fn drop(&mut self) {
        for (key, old) in &self.0 {
            let restore = match old.strip_prefix("{ok,").and_then(|v| v.strip_suffix('}')) {
                Some(value) => format!("application:set_env(rabbit, {key}, {value})."),
                None => format!("application:unset_env(rabbit, {key})."),
            };
            let _ = rabbitmqctl(&["eval", &restore]);
        }
    }
}

/// The `celeriac-worker` binary built alongside the tests (cargo builds it
/// for the worker crate's own tests), or `CELERIAC_WORKER_BIN`.
pub fn worker_binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("CELERIAC_WORKER_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable is not in target/<profile>/deps")?;
    let binary = profile_dir.join("celeriac-worker");
    if !binary.exists() {
        bail!(
            "{} is missing: build it with `cargo build -p celeriac-worker` (cargo test --workspace does), \
             or set CELERIAC_WORKER_BIN",
            binary.display()
        );
    }
    Ok(binary)
}
