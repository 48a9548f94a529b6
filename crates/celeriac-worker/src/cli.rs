//! The worker CLI: flags named like `celery worker`, each also read from the
//! environment, plus an optional TOML file ([`ConfigFile`]).
//!
//! **Precedence**, for every setting: flag > environment variable > config
//! file > what the program set in code on its `AppBuilder` > built-in
//! default. (A program that builds its `App` without this CLI reads the
//! environment only where its code sets nothing.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use celeriac::{AppBuilder, Queue, QueueType, ResultColumn, RouteOptions, Security};
use clap::Parser;
use tracing::error;

pub use crate::cli_monitoring::MonitoringArgs;
use crate::config::expand_hostname;
use crate::config_file::{ConfigFile, QueueSpec, RouteSpec};
use crate::logging::init_logging_for_worker;
pub use crate::logging::{LogFormat, init_logging, init_logging_as};
use crate::{Worker, WorkerConfig};

/// Runs Celery tasks from RabbitMQ: late acks, retries, dead letters, ETA,
/// time limits and graceful shutdown (SIGTERM/SIGINT; a second signal exits
/// at once and leaves unacked messages to RabbitMQ).
///
/// Every setting comes from, in this order: its flag, its environment
/// variable, the --config file, the program's own code, the default shown.
// These doc comments are the `--help` text; their `[default: ...]` notes
// are not intra-doc links.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about)]
pub struct Args {
    /// Broker URL(s), `;`-separated for failover [default: the app's, else
    /// CELERY_BROKER_URL, else Celery's amqp://guest:guest@localhost:5672//]
    #[arg(short = 'b', long, env = "CELERIAC_BROKER_URL")]
    pub broker: Option<String>,

    /// Result backend: redis://, rediss://, redis+socket://, sentinel://,
    /// rpc://, or `disabled` [default: the app's, else
    /// CELERY_RESULT_BACKEND, else none]
    #[arg(long, env = "CELERIAC_RESULT_BACKEND")]
    pub result_backend: Option<String>,

    /// PEM private key to sign task messages and results with, as Celery's
    /// security_key; with --security-certificate and --security-cert-store
    /// the worker accepts signed messages only [default: no signing]
    #[arg(long, env = "CELERIAC_SECURITY_KEY")]
    pub security_key: Option<String>,

    /// Password of an encrypted --security-key (prefer the environment
    /// variable: command lines are visible to other users)
    #[arg(long, env = "CELERIAC_SECURITY_KEY_PASSWORD", hide_env_values = true)]
    pub security_key_password: Option<String>,

    /// PEM certificate of --security-key (security_certificate)
    #[arg(long, env = "CELERIAC_SECURITY_CERTIFICATE")]
    pub security_certificate: Option<String>,

    /// Certificates of trusted signers: a PEM file, a directory of them or
    /// a glob pattern (security_cert_store)
    #[arg(long, env = "CELERIAC_SECURITY_CERT_STORE")]
    pub security_cert_store: Option<String>,

    /// Signature digest (security_digest) [default: sha256]
    #[arg(long, env = "CELERIAC_SECURITY_DIGEST")]
    pub security_digest: Option<String>,

    /// Write signed envelopes as this Celery version does: 5.5 (5.5 and
    /// later) or 5.4 (5.3 and 5.4, whose layout differs); both are read
    /// [default: 5.5]
    #[arg(long, env = "CELERIAC_SECURITY_ENVELOPE")]
    pub security_envelope: Option<String>,

    /// With signing set up, also accept unsigned messages (signed ones are
    /// still verified), while producers move to signing
    #[arg(long, env = "CELERIAC_SECURITY_ACCEPT_UNSIGNED")]
    pub security_accept_unsigned: bool,

    /// Queues to consume, comma-separated [default: celery]
    #[arg(short = 'Q', long, env = "CELERIAC_QUEUES", value_delimiter = ',')]
    pub queues: Option<Vec<String>>,

    /// Tasks run at the same time [default: the number of CPUs]
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

    /// Log lines as text or JSON (one object per line, with the running
    /// task's task_id and trace_id) [default: text]
    #[arg(long, env = "CELERIAC_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Export each task run's span to this OpenTelemetry collector
    /// (OTLP/HTTP, e.g. http://127.0.0.1:4318); needs the `otel` feature
    /// [default: no export]
    #[arg(long, env = "CELERIAC_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Seconds running tasks may take to finish on shutdown [default: 30]
    #[arg(long, env = "CELERIAC_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<f64>,

    /// ETAs further out than this many seconds leave the worker through the
    /// delay queues instead of being held unacked [default: 600]
    #[arg(long, env = "CELERIAC_ETA_HORIZON")]
    pub eta_horizon: Option<f64>,

    /// ETA tasks held unacked at once; more leave through the delay queues
    /// [default: half the prefetch window]
    #[arg(long, env = "CELERIAC_ETA_HOLD_LIMIT")]
    pub eta_hold_limit: Option<usize>,

    /// Deliveries the temporary consumer that moves a burst of ETA tasks to
    /// the delay queues may hold at once; also the most of the tasks behind
    /// a burst this worker may take as it ends; 0 opens none [default: 4000]
    #[arg(long, env = "CELERIAC_ETA_BURST_WINDOW")]
    pub eta_burst_window: Option<u16>,

    /// A task's rate limit on this worker, as TASK=RATE in Celery's syntax
    /// (images.resize=10/s, mail.send=100/m; =0 lifts the task's own);
    /// repeat for more tasks [default: each task's own rate_limit]
    #[arg(long = "rate-limit", value_name = "TASK=RATE")]
    pub rate_limits: Vec<String>,

    /// Seconds a global concurrency limit's lease lasts unless renewed; a
    /// killed worker's leases free up after this [default: 60]
    #[arg(long, env = "CELERIAC_GLOBAL_LEASE")]
    pub global_lease: Option<f64>,

    /// While the store of global limits is unreachable: wait (never exceed
    /// a limit) or run (unlimited) [default: wait]
    #[arg(long, env = "CELERIAC_GLOBAL_LIMITS_OUTAGE")]
    pub global_limits_outage: Option<String>,

    /// Deliveries of one message before it is dead-lettered as a crash loop
    /// [default: 10]
    #[arg(long, env = "CELERIAC_REDELIVERY_LIMIT")]
    pub redelivery_limit: Option<u32>,

    /// Dead-letter tasks that fail for good (true/false) [default: true]
    #[arg(long, env = "CELERIAC_DEAD_LETTER_FAILURES")]
    pub dead_letter_failures: Option<bool>,

    /// x-queue-type of the delay queues: quorum (Celery's) or classic
    /// [default: the app's, else quorum]
    #[arg(long, env = "CELERIAC_DELAY_QUEUE_TYPE")]
    pub delay_queue_type: Option<QueueType>,

    /// Finished deliveries acked with one `multiple` ack; 1 acks each
    /// message on its own [default: 32]
    #[arg(long, env = "CELERIAC_ACK_BATCH")]
    pub ack_batch: Option<u16>,

    /// Longest wait, in milliseconds, before coalesced acks are sent
    /// [default: 5]
    #[arg(long, env = "CELERIAC_ACK_FLUSH_MS")]
    pub ack_flush_ms: Option<u64>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub monitoring: MonitoringArgs,

    /// Store STARTED when a task starts, for tasks that do not say
    /// otherwise (Celery's task_track_started) [default: false]
    #[arg(long, env = "CELERIAC_TRACK_STARTED")]
    pub track_started: Option<bool>,

    /// Seconds a task's result may keep retrying an unreachable result
    /// store before its message goes back to the queue [default: 60]
    #[arg(long, env = "CELERIAC_RESULT_STORE_TIMEOUT")]
    pub result_store_timeout: Option<f64>,

    /// Seconds results are kept (Celery's result_expires; 0: until
    /// forgotten) [default: the app's, else 86400]
    #[arg(long, env = "CELERIAC_RESULT_EXPIRES")]
    pub result_expires: Option<f64>,

    /// Store the task's name, args, kwargs, worker, retries and queue with
    /// its result (Celery's result_extended) [default: the app's, else true]
    #[arg(long, env = "CELERIAC_RESULT_EXTENDED")]
    pub result_extended: Option<bool>,

    /// A prefix for every result store key (Celery's global_keyprefix)
    /// [default: the app's, else none]
    #[arg(long, env = "CELERIAC_RESULT_KEY_PREFIX")]
    pub result_key_prefix: Option<String>,

    /// How the database backend writes its result column: json (Celery
    /// 5.7 and later) or pickle (when Python processes of Celery 5.0 to
    /// 5.6 share the tables); both are read [default: the app's, else json]
    #[arg(long, env = "CELERIAC_DATABASE_RESULT_COLUMN")]
    pub database_result_column: Option<ResultColumn>,

    /// A queue definition, as an entry of Celery's task_queues:
    /// NAME[:key=value,...] with the keys of the config file's
    /// [task_queues] (queue_type, max_priority, dead_letter, exchange,
    /// exchange_type, routing_key, delivery_limit, message_ttl, ...);
    /// repeatable, e.g. `--task-queue images:queue_type=quorum,max_priority=10`
    #[arg(
        long = "task-queue",
        env = "CELERIAC_TASK_QUEUES",
        value_delimiter = ';'
    )]
    pub task_queues: Vec<String>,

    /// A task route, as Celery's task_routes: PATTERN=QUEUE with an exact
    /// task name or a glob; repeatable, tried before the file's routes,
    /// first match wins, e.g. `--route 'images.*=images'`
    #[arg(long = "route", env = "CELERIAC_ROUTES", value_delimiter = ';')]
    pub routes: Vec<String>,

    /// x-queue-type of queues that do not set one (Celery's
    /// task_default_queue_type) [default: the app's, else classic]
    #[arg(long, env = "CELERIAC_DEFAULT_QUEUE_TYPE")]
    pub default_queue_type: Option<QueueType>,

    /// x-max-priority of queues that do not set one (Celery's
    /// task_queue_max_priority) [default: the app's, else none]
    #[arg(long, env = "CELERIAC_QUEUE_MAX_PRIORITY")]
    pub queue_max_priority: Option<u8>,

    /// Declare queues that are not configured on first use (Celery's
    /// task_create_missing_queues); false makes them an error
    /// [default: the app's, else true]
    #[arg(long, env = "CELERIAC_CREATE_MISSING_QUEUES")]
    pub create_missing_queues: Option<bool>,

    /// TOML file with any of these settings (keys named like the flags,
    /// plus [task_queues] and [task_routes] tables)
    #[arg(long, env = "CELERIAC_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Settings resolved from flags, environment, file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The worker's runtime settings.
    pub worker: WorkerConfig,
    /// What to set on the program's `AppBuilder`.
    pub app: AppSettings,
    /// Log level.
    pub loglevel: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Where task spans are exported over OTLP, if anywhere.
    pub otlp_endpoint: Option<String>,
}

/// App-level settings from flags, environment and file. Each one given
/// overrides what the program set in code; each one absent leaves it.
#[derive(Debug, Clone, Default)]
pub struct AppSettings {
    /// Broker URL.
    pub broker: Option<String>,
    /// Result backend URL.
    pub result_backend: Option<String>,
    /// Message signing (`setup_security()`).
    pub security: Option<Security>,
    /// Queue definitions (`task_queues`).
    pub queues: Vec<Queue>,
    /// Routes, in order (`task_routes`).
    pub routes: Vec<(String, RouteOptions)>,
    /// `task_default_queue_type`.
    pub default_queue_type: Option<QueueType>,
    /// `task_queue_max_priority`.
    pub queue_max_priority: Option<u8>,
    /// `task_create_missing_queues`.
    pub create_missing_queues: Option<bool>,
    /// The delay queues' type.
    pub delay_queue_type: Option<QueueType>,
    /// `result_expires`.
    pub result_expires: Option<Duration>,
    /// `result_extended`.
    pub result_extended: Option<bool>,
    /// `global_keyprefix`.
    pub result_key_prefix: Option<String>,
    /// The database backend's `result` column format.
    pub database_result_column: Option<ResultColumn>,
}

impl AppSettings {
    /// Sets what was given on `app`, which keeps its own value for the rest.
    pub fn apply(self, mut app: AppBuilder) -> AppBuilder {
        if let Some(url) = self.broker {
            app = app.broker_url(url);
        }
        if let Some(backend) = self.result_backend {
            app = app.result_backend(backend);
        }
        if let Some(security) = self.security {
            app = app.security(security);
        }
        for queue in self.queues {
            app = app.queue(queue);
        }
        app = app.routes_first(self.routes);
        if let Some(t) = self.default_queue_type {
            app = app.default_queue_type(t);
        }
        if let Some(n) = self.queue_max_priority {
            app = app.queue_max_priority(n);
        }
        if let Some(create) = self.create_missing_queues {
            app = app.create_missing_queues(create);
        }
        if let Some(t) = self.delay_queue_type {
            app = app.delay_queue_type(t);
        }
        if let Some(expires) = self.result_expires {
            app = app.result_expires(expires);
        }
        if let Some(extended) = self.result_extended {
            app = app.result_extended(extended);
        }
        if let Some(prefix) = self.result_key_prefix {
            app = app.result_key_prefix(prefix);
        }
        if let Some(column) = self.database_result_column {
            app = app.database_result_column(column);
        }
        app
    }
}

impl Args {
    /// Message signing from the `--security-*` flags over the file's keys:
    /// none, or all three of key, certificate and store.
    fn security(&self, file: &ConfigFile) -> Result<Option<Security>, String> {
        let pick = |flag: &Option<String>, key: &Option<String>| flag.clone().or(key.clone());
        let key = pick(&self.security_key, &file.security_key);
        let certificate = pick(&self.security_certificate, &file.security_certificate);
        let store = pick(&self.security_cert_store, &file.security_cert_store);
        let (key, certificate, store) = match (key, certificate, store) {
            (None, None, None) => return Ok(None),
            (Some(key), Some(certificate), Some(store)) => (key, certificate, store),
            _ => {
                return Err("message signing needs all three of --security-key, \
                     --security-certificate and --security-cert-store (as Celery's \
                     setup_security)"
                    .into());
            }
        };
        let digest =
            pick(&self.security_digest, &file.security_digest).unwrap_or_else(|| "sha256".into());
        let security = Security::from_files(
            &key,
            self.security_key_password.as_deref(),
            &certificate,
            &store,
            &digest,
        )
        .map_err(|e| e.to_string())?;
        let security = match pick(&self.security_envelope, &file.security_envelope) {
            Some(version) => security.envelope_for(&version).map_err(|e| e.to_string())?,
            None => security,
        };
        let accept_unsigned =
            self.security_accept_unsigned || file.security_accept_unsigned.unwrap_or(false);
        Ok(Some(if accept_unsigned {
            security.accept_unsigned()
        } else {
            security
        }))
    }

    /// Resolves the settings (flag > environment > file > default).
    pub fn settings(self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        let app = self.app_settings(&file)?;
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
        // Events, heartbeats, remote control, mingle and the state db.
        let mut monitored = WorkerConfig::default();
        self.monitoring.apply(&file, &mut monitored)?;
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
            eta_hold_limit: self.eta_hold_limit.or(file.eta_hold_limit),
            eta_burst_window: self
                .eta_burst_window
                .or(file.eta_burst_window)
                .unwrap_or(defaults.eta_burst_window),
            rate_limits: rate_limits(file.rate_limits.unwrap_or_default(), &self.rate_limits)?,
            global_lease: secs(
                self.global_lease.or(file.global_lease),
                "global_lease",
                defaults.global_lease,
            )?,
            global_limits_outage: self
                .global_limits_outage
                .or(file.global_limits_outage)
                .as_deref()
                .map(str::parse)
                .transpose()?
                .unwrap_or_default(),
            redelivery_limit: self
                .redelivery_limit
                .or(file.redelivery_limit)
                .unwrap_or(defaults.redelivery_limit),
            dead_letter_failures: self
                .dead_letter_failures
                .or(file.dead_letter_failures)
                .unwrap_or(defaults.dead_letter_failures),
            ack_batch: self
                .ack_batch
                .or(file.ack_batch)
                .unwrap_or(defaults.ack_batch),
            ack_flush: self
                .ack_flush_ms
                .or(file.ack_flush_ms)
                .map_or(defaults.ack_flush, Duration::from_millis),
            result_store_timeout: secs(
                self.result_store_timeout.or(file.result_store_timeout),
                "result_store_timeout",
                defaults.result_store_timeout,
            )?,
            track_started: self
                .track_started
                .or(file.track_started)
                .unwrap_or(defaults.track_started),
            ..monitored
        };
        if worker.queues.is_empty() || worker.queues.iter().any(String::is_empty) {
            return Err("queues must name at least one queue".into());
        }
        Ok(Settings {
            worker,
            app,
            loglevel: self
                .loglevel
                .or(file.loglevel)
                .unwrap_or_else(|| "info".into()),
            log_format: match self.log_format {
                Some(format) => format,
                None => file
                    .log_format
                    .as_deref()
                    .map(str::parse)
                    .transpose()?
                    .unwrap_or_default(),
            },
            otlp_endpoint: self.otlp_endpoint.or(file.otlp_endpoint),
        })
    }

    /// The app-level settings: flags (and environment) first, then the file.
    fn app_settings(&self, file: &ConfigFile) -> Result<AppSettings, String> {
        let parse_type = |text: &Option<String>, key: &str| {
            text.as_deref()
                .map(str::parse::<QueueType>)
                .transpose()
                .map_err(|e| format!("{key}: {e}"))
        };
        let mut queues = file.queues()?;
        for flag in &self.task_queues {
            let (name, spec) = QueueSpec::parse_flag(flag)?;
            queues.retain(|q| q.name != name);
            queues.push(
                spec.to_queue(&name)
                    .map_err(|e| format!("--task-queue {flag:?}: {e}"))?,
            );
        }
        let mut routes = Vec::new();
        for flag in &self.routes {
            let (pattern, spec) = RouteSpec::parse_flag(flag)?;
            routes.push((pattern, spec.into_options()));
        }
        routes.extend(file.routes()?);
        Ok(AppSettings {
            security: self.security(file)?,
            broker: self.broker.clone().or_else(|| file.broker.clone()),
            result_backend: self
                .result_backend
                .clone()
                .or_else(|| file.result_backend.clone()),
            queues,
            routes,
            default_queue_type: self
                .default_queue_type
                .or(parse_type(&file.default_queue_type, "default_queue_type")?),
            queue_max_priority: self.queue_max_priority.or(file.queue_max_priority),
            create_missing_queues: self.create_missing_queues.or(file.create_missing_queues),
            delay_queue_type: self
                .delay_queue_type
                .or(parse_type(&file.delay_queue_type, "delay_queue_type")?),
            result_expires: match self.result_expires.or(file.result_expires) {
                Some(s) if s.is_finite() && s >= 0.0 => Some(Duration::from_secs_f64(s)),
                Some(s) => {
                    return Err(format!(
                        "result_expires must be a non-negative number of seconds, got {s}"
                    ));
                }
                None => None,
            },
            result_extended: self.result_extended.or(file.result_extended),
            result_key_prefix: self
                .result_key_prefix
                .clone()
                .or_else(|| file.result_key_prefix.clone()),
            database_result_column: match self.database_result_column {
                Some(column) => Some(column),
                None => file
                    .database_result_column
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(|e| format!("database_result_column: {e}"))?,
            },
        })
    }
}

/// The file's `[rate_limits]` with each `--rate-limit TASK=RATE` over it.
fn rate_limits(
    mut from_file: BTreeMap<String, String>,
    flags: &[String],
) -> Result<BTreeMap<String, String>, String> {
    for flag in flags {
        let Some((task, rate)) = flag.split_once('=') else {
            return Err(format!(
                "--rate-limit {flag:?}: write it as TASK=RATE, e.g. images.resize=10/s"
            ));
        };
        from_file.insert(task.trim().to_owned(), rate.trim().to_owned());
    }
    Ok(from_file)
}

/// Runs a worker with the standard CLI over the tasks registered on `app`:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     celeriac_worker::main(celeriac::App::builder() /* .task(resize) */)
/// }
/// ```
///
/// To run a worker inside a program that does other things (an HTTP
/// service that also sends tasks), use [`Worker`] instead.
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
    let export = match init_logging_for_worker(
        &settings.loglevel,
        settings.log_format,
        settings.otlp_endpoint.as_deref(),
        &settings.worker.hostname,
    ) {
        Ok(export) => export,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let code = run_worker(settings, app);
    if let Some(export) = export {
        // After the runtime is gone: the exporter's thread sends the last
        // batch with a blocking HTTP client.
        export.shutdown();
    }
    code
}

/// Runs the worker of `app` as `settings` say, until a shutdown signal.
fn run_worker(settings: Settings, app: AppBuilder) -> ExitCode {
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
        let app = match settings.app.apply(app).build().await {
            Ok(app) => app,
            Err(e) => {
                error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let outcome = Worker::new(app.clone(), settings.worker)
            .run_until(shutdown_signal())
            .await;
        app.close().await;
        match outcome {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("worker").chain(argv.iter().copied())).unwrap()
    }

    /// A `worker.toml` holding `contents` in a directory of its own,
    /// removed when dropped (also when an assertion fails).
    struct TomlFile(PathBuf);

    impl TomlFile {
        fn new(tag: &str, contents: &str) -> TomlFile {
            let dir = std::env::temp_dir().join(format!("celeriac-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let file = TomlFile(dir);
            file.write(contents);
            file
        }

        fn write(&self, contents: &str) {
            std::fs::write(self.0.join("worker.toml"), contents).unwrap();
        }

        fn path(&self) -> String {
            self.0.join("worker.toml").to_str().unwrap().to_owned()
        }
    }

    impl Drop for TomlFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file = TomlFile::new(
            "cli",
            "concurrency = 3\nprefetch_multiplier = 2\nqueue_max_priority = 5\n\
             [task_routes]\n\"a.*\" = \"from-file\"\n",
        );
        let config = &file.path();
        let settings = parse(&["--config", config, "-c", "7", "--route", "a.*=from-flag"])
            .settings()
            .unwrap();
        assert_eq!(settings.worker.concurrency, 7, "flag over file");
        assert_eq!(settings.worker.prefetch_multiplier, 2, "file over default");
        assert_eq!(
            settings.worker.shutdown_timeout,
            Duration::from_secs(30),
            "default"
        );
        assert_eq!(settings.app.queue_max_priority, Some(5));
        let queues: Vec<_> = settings
            .app
            .routes
            .iter()
            .map(|r| r.1.queue.clone())
            .collect();
        assert_eq!(
            queues,
            [Some("from-flag".to_owned()), Some("from-file".to_owned())],
            "flag routes are tried first"
        );
    }

    #[test]
    fn the_eta_burst_window_comes_from_the_flag_or_the_file() {
        let settings = |args: &[&str]| parse(args).settings().unwrap().worker;
        assert_eq!(settings(&[]).eta_burst_window, crate::BURST_WINDOW);
        let file = TomlFile::new("burst", "eta_burst_window = 0\n");
        let config = &file.path();
        assert_eq!(settings(&["--config", config]).eta_burst_window, 0);
        assert_eq!(
            settings(&["--config", config, "--eta-burst-window", "4000"]).eta_burst_window,
            4000
        );
    }

    #[test]
    fn rate_limit_flags_go_over_the_files_table() {
        let file = TomlFile::new(
            "rates",
            "[rate_limits]\n\"mail.send\" = \"100/m\"\n\"images.resize\" = \"5/s\"\n",
        );
        let settings = parse(&[
            "--config",
            &file.path(),
            "--rate-limit",
            "images.resize=10/s",
            "--rate-limit",
            "reports.build = 1/h",
        ])
        .settings()
        .unwrap();
        let rates: Vec<(&str, &str)> = settings
            .worker
            .rate_limits
            .iter()
            .map(|(task, rate)| (task.as_str(), rate.as_str()))
            .collect();
        assert_eq!(
            rates,
            [
                ("images.resize", "10/s"),
                ("mail.send", "100/m"),
                ("reports.build", "1/h")
            ]
        );
        let err = parse(&["--rate-limit", "images.resize"])
            .settings()
            .unwrap_err();
        assert!(err.contains("TASK=RATE"), "{err}");
    }

    #[test]
    fn signing_needs_all_three_files_and_names_them() {
        let err = parse(&["--security-key", "/k.pem"]).settings().unwrap_err();
        assert!(err.contains("--security-certificate"), "{err}");
        let err = parse(&[
            "--security-key",
            "/nonexistent/k.pem",
            "--security-certificate",
            "/nonexistent/c.pem",
            "--security-cert-store",
            "/nonexistent/*.pem",
        ])
        .settings()
        .unwrap_err();
        assert!(
            err.contains("cannot read the security key /nonexistent/k.pem"),
            "{err}"
        );
        assert!(parse(&[]).settings().unwrap().app.security.is_none());
    }

    #[test]
    fn unset_app_settings_leave_the_code_alone() {
        let settings = parse(&[]).settings().unwrap();
        assert!(settings.app.default_queue_type.is_none());
        assert!(settings.app.create_missing_queues.is_none());
    }

    #[test]
    fn the_result_column_comes_from_the_flag_or_the_file() {
        let file = TomlFile::new("cli-column", "database_result_column = \"pickle\"\n");
        let config = &file.path();
        let from_file = parse(&["--config", config]).settings().unwrap();
        assert_eq!(
            from_file.app.database_result_column,
            Some(ResultColumn::Pickle)
        );
        let from_flag = parse(&["--config", config, "--database-result-column", "json"])
            .settings()
            .unwrap();
        assert_eq!(
            from_flag.app.database_result_column,
            Some(ResultColumn::Json)
        );
        assert_eq!(
            parse(&[]).settings().unwrap().app.database_result_column,
            None
        );
        file.write("database_result_column = \"yaml\"\n");
        let bad = parse(&["--config", config]).settings().unwrap_err();
        assert!(
            bad.contains("database_result_column") && bad.contains("pickle"),
            "{bad}"
        );
    }

    #[test]
    fn the_metrics_address_comes_from_the_flag_or_the_file() {
        let file = TomlFile::new("cli-metrics", "metrics_addr = \"0.0.0.0:9808\"\n");
        let config = &file.path();
        let from_file = parse(&["--config", config]).settings().unwrap();
        assert_eq!(
            from_file.worker.metrics_addr,
            Some(([0, 0, 0, 0], 9808).into())
        );
        let from_flag = parse(&["--config", config, "--metrics-addr", "127.0.0.1:9900"])
            .settings()
            .unwrap();
        assert_eq!(
            from_flag.worker.metrics_addr,
            Some(([127, 0, 0, 1], 9900).into())
        );
        assert_eq!(parse(&[]).settings().unwrap().worker.metrics_addr, None);
        let bad = parse(&["--metrics-addr", "9808"]).settings().unwrap_err();
        assert!(bad.contains("0.0.0.0:9808"), "{bad}");
    }

    #[test]
    fn the_otlp_endpoint_comes_from_the_flag_or_the_file() {
        let file = TomlFile::new("cli-otlp", "otlp_endpoint = \"http://collector:4318\"\n");
        let config = &file.path();
        let from_file = parse(&["--config", config]).settings().unwrap();
        assert_eq!(
            from_file.otlp_endpoint.as_deref(),
            Some("http://collector:4318")
        );
        let from_flag = parse(&[
            "--config",
            config,
            "--otlp-endpoint",
            "http://127.0.0.1:4318",
        ])
        .settings()
        .unwrap();
        assert_eq!(
            from_flag.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(parse(&[]).settings().unwrap().otlp_endpoint, None);
    }

    #[test]
    fn queue_flags_are_checked() {
        let err = parse(&["--task-queue", "q:queue_type=fast"])
            .settings()
            .unwrap_err();
        assert!(err.contains("classic"), "{err}");
        assert!(Args::try_parse_from(["worker", "--delay-queue-type", "fast"]).is_err());
    }
}
