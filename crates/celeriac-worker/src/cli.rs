//! The worker CLI: flags named like `celery worker`, each also read from the
//! environment, plus an optional TOML file. Precedence: flag, environment,
//! file, default.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use celeriac::AppBuilder;
use clap::Parser;
use tracing::error;
use tracing_subscriber::EnvFilter;

use crate::config::{ConfigFile, expand_hostname};
use crate::{Worker, WorkerConfig};

/// Runs Celery tasks from RabbitMQ: late acks, retries, dead letters, ETA,
/// time limits and graceful shutdown (SIGTERM/SIGINT; a second signal exits
/// at once and leaves unacked messages to RabbitMQ).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Args {
    /// Broker URL(s), `;`-separated for failover [default: Celery's
    /// amqp://guest:guest@localhost:5672//]
    #[arg(short = 'b', long, env = "CELERIAC_BROKER_URL")]
    pub broker: Option<String>,

    /// Result backend: rpc:// [default: none]
    #[arg(long, env = "CELERIAC_RESULT_BACKEND")]
    pub result_backend: Option<String>,

    /// Queues to consume, comma-separated [default: celery]
    #[arg(short = 'Q', long, env = "CELERIAC_QUEUES", value_delimiter = ',')]
    pub queues: Option<Vec<String>>,

    /// Tasks run at the same time [default: number of CPUs]
    #[arg(short = 'c', long, env = "CELERIAC_CONCURRENCY")]
    pub concurrency: Option<usize>,

    /// Prefetch = concurrency × this (0: unlimited) [default: 4]
    #[arg(long, env = "CELERIAC_PREFETCH_MULTIPLIER")]
    pub prefetch_multiplier: Option<u16>,

    /// Node name; %h is the host name, %n the short host name
    /// [default: celeriac@%h]
    #[arg(short = 'n', long, env = "CELERIAC_HOSTNAME")]
    pub hostname: Option<String>,

    /// Log level: error, warn, info, debug or trace; RUST_LOG wins if set
    /// [default: info]
    #[arg(short = 'l', long, env = "CELERIAC_LOGLEVEL")]
    pub loglevel: Option<String>,

    /// Seconds running tasks may take to finish on shutdown [default: 30]
    #[arg(long, env = "CELERIAC_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<f64>,

    /// ETAs further out than this many seconds leave the worker through the
    /// delay queues instead of being held unacked [default: 600]
    #[arg(long, env = "CELERIAC_ETA_HORIZON")]
    pub eta_horizon: Option<f64>,

    /// Deliveries of one message before it is dead-lettered as a crash loop
    /// [default: 10]
    #[arg(long, env = "CELERIAC_REDELIVERY_LIMIT")]
    pub redelivery_limit: Option<u32>,

    /// Dead-letter tasks that fail for good (true/false) [default: true]
    #[arg(long, env = "CELERIAC_DEAD_LETTER_FAILURES")]
    pub dead_letter_failures: Option<bool>,

    /// x-queue-type of the delay queues: quorum (Celery's) or classic
    /// [default: quorum]
    #[arg(long, env = "CELERIAC_DELAY_QUEUE_TYPE")]
    pub delay_queue_type: Option<String>,

    /// Finished deliveries acked with one `multiple` ack; 1 acks each
    /// message on its own [default: 32]
    #[arg(long, env = "CELERIAC_ACK_BATCH")]
    pub ack_batch: Option<u16>,

    /// Longest wait, in milliseconds, before coalesced acks are sent
    /// [default: 5]
    #[arg(long, env = "CELERIAC_ACK_FLUSH_MS")]
    pub ack_flush_ms: Option<u64>,

    /// TOML file with any of these settings (keys named like the flags)
    #[arg(long, env = "CELERIAC_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Settings resolved from flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The worker settings.
    pub worker: WorkerConfig,
    /// Broker URL, if given.
    pub broker: Option<String>,
    /// Result backend, if given.
    pub result_backend: Option<String>,
    /// Log level.
    pub loglevel: String,
}

impl Args {
    /// Resolves the settings (flag > environment > file > default).
    pub fn settings(self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let defaults = WorkerConfig::default();
        let secs = |v: Option<f64>, name: &str, default: Duration| -> Result<Duration, String> {
            match v {
                None => Ok(default),
                Some(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
                Some(s) => Err(format!(
                    "{name} must be a non-negative number of seconds, got {s}"
                )),
            }
        };
        let worker = WorkerConfig {
            queues: self.queues.or(file.queues).unwrap_or(defaults.queues),
            concurrency: self
                .concurrency
                .or(file.concurrency)
                .unwrap_or(defaults.concurrency),
            prefetch_multiplier: self
                .prefetch_multiplier
                .or(file.prefetch_multiplier)
                .unwrap_or(defaults.prefetch_multiplier),
            hostname: self
                .hostname
                .or(file.hostname)
                .map_or(defaults.hostname, |h| expand_hostname(&h)),
            shutdown_timeout: secs(
                self.shutdown_timeout.or(file.shutdown_timeout),
                "shutdown_timeout",
                defaults.shutdown_timeout,
            )?,
            eta_horizon: secs(
                self.eta_horizon.or(file.eta_horizon),
                "eta_horizon",
                defaults.eta_horizon,
            )?,
            redelivery_limit: self
                .redelivery_limit
                .or(file.redelivery_limit)
                .unwrap_or(defaults.redelivery_limit),
            dead_letter_failures: self
                .dead_letter_failures
                .or(file.dead_letter_failures)
                .unwrap_or(defaults.dead_letter_failures),
            delay_queue_type: self
                .delay_queue_type
                .or(file.delay_queue_type)
                .unwrap_or(defaults.delay_queue_type),
            ack_batch: self
                .ack_batch
                .or(file.ack_batch)
                .unwrap_or(defaults.ack_batch),
            ack_flush: self
                .ack_flush_ms
                .or(file.ack_flush_ms)
                .map_or(defaults.ack_flush, Duration::from_millis),
        };
        if worker.queues.is_empty() || worker.queues.iter().any(String::is_empty) {
            return Err("queues must name at least one queue".into());
        }
        if !matches!(worker.delay_queue_type.as_str(), "quorum" | "classic") {
            return Err(format!(
                "delay_queue_type must be quorum or classic, got {:?}",
                worker.delay_queue_type
            ));
        }
        Ok(Settings {
            worker,
            broker: self.broker.or(file.broker),
            result_backend: self.result_backend.or(file.result_backend),
            loglevel: self
                .loglevel
                .or(file.loglevel)
                .unwrap_or_else(|| "info".into()),
        })
    }
}

/// Sets up logging: `RUST_LOG` if set, else `loglevel` for Celeriac. The
/// AMQP client's own log lines are off by default (Celeriac reports what they
/// mean); `RUST_LOG=lapin=debug` shows them.
pub fn init_logging(loglevel: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(format!("{loglevel},lapin=off")),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// Runs a worker with the standard CLI over the tasks registered on `app`:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     celeriac_worker::main(celeriac::App::builder() /* .task(resize) */)
/// }
/// ```
pub fn main(app: AppBuilder) -> ExitCode {
    run_with(Args::parse(), app)
}

/// Like [`main`], with already parsed arguments.
pub fn run_with(args: Args, app: AppBuilder) -> ExitCode {
    let settings = match args.settings() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&settings.loglevel);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut app = app;
        if let Some(url) = settings.broker {
            app = app.broker_url(url);
        }
        if let Some(backend) = settings.result_backend {
            app = app.result_backend(backend);
        }
        let app = match app.build().await {
            Ok(app) => app,
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        match Worker::new(app, settings.worker)
            .run_until(shutdown_signal())
            .await
        {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Completes on the first SIGTERM or SIGINT; a second one exits at once
/// (unacked messages go back to the queue when the connection drops).
pub async fn shutdown_signal() {
    wait_for_signal().await;
    tracing::info!("shutdown requested; send the signal again to exit at once");
    tokio::spawn(async {
        wait_for_signal().await;
        eprintln!("second signal: exiting now; unacked messages return to their queues");
        std::process::exit(1);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
