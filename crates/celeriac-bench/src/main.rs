//! `celeriac-bench`: Celeriac's throughput, latency and CPU cost against raw
//! lapin and Python Celery, measured side by side in one run.
//!
//! ```sh
//! cargo run --release -p celeriac-bench            # full run (minutes)
//! cargo run --release -p celeriac-bench -- --quick # smoke run (seconds)
//! ```
//!
//! Every scenario runs its variants interleaved (A B C, A B C, ...) and
//! reports medians, so that noise on a shared machine hits all of them
//! alike. See `docs/performance.md` for what each number means.

mod beat;
mod checks;
mod document;
mod library;
mod measure;
mod memory;
mod plan;
mod python;
mod raw;
mod report;
mod scenarios;
mod spans;

use std::path::PathBuf;

use clap::Parser;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Benchmarks Celeriac against raw lapin and Python Celery"
)]
struct Args {
    /// Broker URL (a RabbitMQ the benchmark may fill and drain).
    #[arg(
        long,
        env = "CELERIAC_BROKER_URL",
        default_value = "amqp://guest:guest@localhost:5672//"
    )]
    broker: String,
    /// Small sizes and one round: checks the harness works, in seconds.
    #[arg(long)]
    quick: bool,
    /// Messages per throughput measurement (default 50000; 2000 with --quick).
    #[arg(long)]
    messages: Option<u64>,
    /// Rounds of each scenario (default 3; 1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Countdown tasks in each burst of the `eta` scenario, comma-separated
    /// (default 2000,100000; 500 with --quick).
    #[arg(long, value_delimiter = ',')]
    eta_bursts: Vec<u64>,
    /// Burst consumer windows (`--eta-burst-window`) the `eta` scenario's
    /// worker runs with, comma-separated, each in every round beside raw
    /// lapin's relay with the same window (default: the worker's default;
    /// 0, which turns burst consumers off, has no relay to compare with).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    eta_burst_windows: Vec<u16>,
    /// Concurrency of the Celeriac worker (prefetch = 4 ×).
    #[arg(long, default_value_t = 100)]
    concurrency: usize,
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<plan::Scenario>,
    /// The Redis the `redis` scenario stores results in (a Redis the
    /// benchmark may write to; its keys expire after ten minutes).
    #[arg(
        long,
        env = "CELERIAC_BENCH_REDIS",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    redis: String,
    /// The PostgreSQL server the `postgres` scenario creates its scratch
    /// database on (and drops it from afterwards).
    #[arg(
        long,
        env = "CELERIAC_BENCH_POSTGRES",
        default_value = "postgresql://postgres@127.0.0.1:5432/postgres"
    )]
    postgres: String,
    /// Skip the Python Celery baselines even if the interop venv exists.
    #[arg(long)]
    no_python: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let sizes = plan::Sizes::new(
        args.quick,
        args.messages,
        args.rounds,
        args.eta_bursts,
        args.eta_burst_windows,
    );
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = if args.no_python {
        None
    } else {
        let found = python::PythonCelery::find(&workspace);
        if found.is_none() {
            eprintln!(
                "note: Python Celery baselines skipped: run scripts/setup-interop to create .venv-interop"
            );
        }
        found
    };
    let stores = scenarios::ResultStores {
        redis: args.redis,
        postgres: args.postgres,
    };
    let mut bench =
        scenarios::Bench::connect(&args.broker, sizes, args.concurrency, python, &stores).await?;
    let outcome = bench.run(&args.scenarios).await;
    bench.clean_up().await;
    outcome?;
    let results = bench.into_results();
    print!("{}", report::table(&results));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
        println!("JSON summary written to {}", path.display());
    }
    Ok(())
}
