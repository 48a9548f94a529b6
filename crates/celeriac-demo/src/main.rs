//! `celeriac-demo`: Celeriac's quick start and its demo worker.
//!
//! - `celeriac-demo` (or `celeriac-demo quickstart`): a worker with the demo
//!   tasks and a producer in one process against RabbitMQ, printing what
//!   happens;
//! - `celeriac-demo canvas`: chains, groups and chords from Rust, results
//!   in Redis (`--python-queue` adds a chord across Python and Rust);
//! - `celeriac-demo worker [flags]`: the standard worker CLI (the flags of
//!   `celeriac_worker::cli::Args`) over the demo tasks, for Python callers
//!   and the tests;
//! - `celeriac-demo limits-worker [flags]`: the same over `demo.hold`, a
//!   task under a global concurrency limit (needs a Redis result backend).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// With `--features mimalloc`, the binary allocates with mimalloc: large
/// task bodies are mostly allocation (a tree of their JSON), which it
/// makes cheaper, for a larger resident footprint.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Celeriac's quick start: run it with no arguments to see a worker and a
/// producer at work against RabbitMQ, or `worker` for a worker serving the
/// demo tasks (demo.add, demo.sleep, demo.fail, ...) to any Celery client.
#[derive(Debug, Parser)]
#[command(
    name = "celeriac-demo",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    quickstart: celeriac_demo::quickstart::Args,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The quick start (the default): worker and producer in one process
    Quickstart(celeriac_demo::quickstart::Args),
    /// Chains, groups and chords built in Rust, with results in Redis
    Canvas(celeriac_demo::canvas::Args),
    /// A worker over the demo tasks, with the standard worker flags
    Worker(Box<celeriac_worker::cli::Args>),
    /// A worker over demo.hold (at most two per key across the fleet); needs
    /// --result-backend redis://...
    LimitsWorker(Box<celeriac_worker::cli::Args>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => celeriac_demo::quickstart::run(cli.quickstart),
        Some(Command::Quickstart(args)) => celeriac_demo::quickstart::run(args),
        Some(Command::Canvas(args)) => celeriac_demo::canvas::run(args),
        Some(Command::Worker(args)) => celeriac_worker::cli::run_with(
            *args,
            celeriac_demo::tasks::register(celeriac::App::builder()),
        ),
        Some(Command::LimitsWorker(args)) => celeriac_worker::cli::run_with(
            *args,
            celeriac_demo::tasks::register_limited(celeriac::App::builder()),
        ),
    }
}
