//! `celeriac-beat`: the periodic scheduler's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use celeriac::App;
use celeriac::protocol::time::format_time;
use celeriac_beat::Beat;
use celeriac_beat::schedule::{self, Schedule};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Sends scheduled tasks (Celery crontab, intervals, one-off times) to
/// RabbitMQ. Run several for high availability: one is active, the others
/// stand by and take over within seconds. SIGHUP reloads the schedule file;
/// SIGTERM stops.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Broker URL(s), `;`-separated for failover [default: Celery's
    /// amqp://guest:guest@localhost:5672//]
    #[arg(short = 'b', long, env = "CELERIAC_BROKER_URL")]
    broker: Option<String>,

    /// The workers' result backend URL. When its results do not expire by
    /// themselves (db+postgresql://), beat adds Celery's daily
    /// `celery.backend_cleanup` entry (04:00 UTC) unless the schedule
    /// already sends that task.
    #[arg(long, env = "CELERIAC_RESULT_BACKEND")]
    result_backend: Option<String>,

    /// x-queue-type of the queues beat sends to when they do not set one,
    /// and of its shared state slot (Celery's task_default_queue_type):
    /// quorum on a RabbitMQ cluster, so the state outlives any one node
    /// [default: classic]
    #[arg(long, env = "CELERIAC_DEFAULT_QUEUE_TYPE")]
    default_queue_type: Option<celeriac::QueueType>,

    /// The schedule file (TOML; see docs/beat.md)
    #[arg(short = 's', long, env = "CELERIAC_SCHEDULE")]
    schedule: PathBuf,

    /// Also keep the state in this file (written atomically on every send)
    #[arg(long, env = "CELERIAC_BEAT_STATE")]
    state: Option<PathBuf>,

    /// Beats with the same name elect one active member
    #[arg(long, env = "CELERIAC_BEAT_NAME", default_value = "default")]
    name: String,

    /// Serve Prometheus /metrics and the /healthz and /readyz probes on
    /// this HOST:PORT, e.g. 0.0.0.0:9809 [default: none]
    #[arg(long, env = "CELERIAC_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,

    /// Log level; RUST_LOG wins if set
    #[arg(short = 'l', long, env = "CELERIAC_LOGLEVEL", default_value = "info")]
    loglevel: String,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print each entry and its next run times, then exit
    List {
        /// How many run times to show per entry
        #[arg(short = 'n', long, default_value_t = 3)]
        count: usize,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let entries = match schedule::load(&args.schedule) {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::List { count }) = args.command {
        list(&entries, count);
        return ExitCode::SUCCESS;
    }
    // The AMQP client logs every refused lock attempt of a standby beat;
    // Celeriac reports what matters (`RUST_LOG=lapin=debug` shows them).
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::new(spec),
        _ => EnvFilter::new(format!("{},lapin=off", args.loglevel)),
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        eprintln!("error: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let mut app = App::builder();
        if let Some(url) = args.broker {
            app = app.broker_url(url);
        }
        if let Some(url) = args.result_backend {
            app = app.result_backend(url);
        }
        if let Some(queue_type) = args.default_queue_type {
            app = app.default_queue_type(queue_type);
        }
        let app = match app.build().await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let mut beat = Beat::new(app.clone(), entries, args.name).schedule_file(args.schedule);
        if let Some(state) = args.state {
            beat = beat.state_file(state);
        }
        if let Some(addr) = args.metrics_addr {
            beat = beat.metrics_addr(addr);
        }
        let outcome = beat.run_until(terminate()).await;
        app.close().await;
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn list(entries: &[schedule::Entry], count: usize) {
    let now = chrono::Utc::now();
    for entry in entries {
        let (when, tz) = match &entry.schedule {
            Schedule::Every(period) => (format!("every {period:?}"), chrono_tz::Tz::UTC),
            Schedule::Crontab(crontab, tz) => (format!("{crontab} in {}", tz.name()), *tz),
            Schedule::At(at) => (format!("once at {}", format_time(at)), chrono_tz::Tz::UTC),
        };
        let catch_up = match entry.catch_up {
            schedule::CatchUp::RunOnce => "run_once",
            schedule::CatchUp::Skip => "skip",
        };
        println!(
            "{}: {} ({when}; catch_up = {catch_up})",
            entry.name, entry.task
        );
        let mut next = Some(now);
        for _ in 0..count {
            next = next.and_then(|t| entry.schedule.next_after(t));
            match next {
                Some(t) => println!("    {}", format_time(&t.with_timezone(&tz))),
                None => {
                    println!("    (no further runs)");
                    break;
                }
            }
        }
    }
}

async fn terminate() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
