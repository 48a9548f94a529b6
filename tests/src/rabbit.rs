//! The RabbitMQ the tests run against: its URL, connections, `rabbitmqctl`,
//! broker-wide settings restored on drop, and the guard that keeps the
//! tests that disturb the broker from running at the same time.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// The RabbitMQ the tests use: `CELERIAC_TEST_BROKER`, default
/// `amqp://guest:guest@127.0.0.1:5672//`.
pub fn broker_url() -> String {
    std::env::var("CELERIAC_TEST_BROKER")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672//".into())
}

/// The Redis the tests store results in: `CELERIAC_TEST_REDIS`, default
/// `redis://127.0.0.1:6379/0`.
pub fn redis_url() -> String {
    std::env::var("CELERIAC_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// [`redis_url`], or an error saying what to start if nothing answers there.
pub fn require_redis() -> Result<String> {
    let url = redis_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    let address = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:6379")
    };
    std::net::TcpStream::connect(&address).with_context(|| {
        format!(
            "these tests need Redis at {address} (set CELERIAC_TEST_REDIS, or run \
             scripts/ensure-redis, which starts `redis-server --daemonize yes`)"
        )
    })?;
    Ok(url)
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

/// Deletes a queue and its dead-letter queue, where they exist (cleanup):
/// a worker that dead-lettered something from `queue` declared the latter.
pub fn delete_queue(queue: &str) {
    let dead = celeriac_broker::DeadLetterTopology::default().queue_for(queue);
    let _ = rabbitmqctl(&["delete_queue", queue]);
    let _ = rabbitmqctl(&["delete_queue", &dead.name]);
}

/// Runs a `rabbitmqctl` command that puts the broker back as the tests
/// found it (from a guard's `drop`). If it fails, every later test would
/// run against a disturbed broker: it panics saying so, or, when the test
/// is already failing, prints it (a second panic would abort the run).
pub fn restore_broker(args: &[&str]) {
    if let Err(e) = rabbitmqctl(args) {
        let message = format!(
            "could not restore RabbitMQ (rabbitmqctl {}): {e:#}; later tests run against a \
             disturbed broker, so fix it by hand before trusting them",
            args.join(" ")
        );
        if std::thread::panicking() {
            eprintln!("{message}");
        } else {
            panic!("{message}");
        }
    }
}

/// Sets RabbitMQ's `consumer_timeout`, and the channel tick that checks it
/// (60 s by default), for channels opened from now on; restores both when
/// dropped.
#[derive(Debug)]
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
            restore_broker(&["eval", &restore]);
        }
    }
}

/// Held by every test that disturbs the broker (restarts it, closes all
/// connections, sets alarms or timeouts, purges shared queues), or whose
/// timings other tests beside it would distort, so that no two run at once
/// within a test binary. Such tests live in the `faults`
/// binary only, which cargo runs after and apart from the others.
pub async fn disturbing() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}
