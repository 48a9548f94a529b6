//! The `celeriac-worker` binary: the standard worker CLI over the demo tasks
//! (`demo.add`, `demo.sleep`, `demo.fail`, `demo.flaky`, `demo.echo`,
//! `demo.cpu`, `demo.now`, `demo.crash`).
//!
//! `celeriac-worker demo` runs the quick start instead: a worker and a
//! producer in one process against RabbitMQ, printing what happens.

use std::process::ExitCode;

use clap::Parser;

mod quickstart;

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("demo") {
        argv.remove(1);
        let args = celeriac_worker::cli::Args::parse_from(argv);
        return quickstart::run(args);
    }
    let args = celeriac_worker::cli::Args::parse_from(argv);
    celeriac_worker::cli::run_with(
        args,
        celeriac_worker::demo::register(celeriac::App::builder()),
    )
}
