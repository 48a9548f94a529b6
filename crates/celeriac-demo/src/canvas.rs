//! The canvas tour: a worker with the demo tasks storing results in Redis,
//! and a producer that builds a chain, a group, a chord, a chord with a
//! failing member and, with `--python-queue`, a chord whose header runs on
//! Python Celery workers and whose body runs on the Rust worker.

use std::process::ExitCode;
use std::time::Duration;

use celeriac::{App, ResultError, Signature, Step, chain, chord, group};
use celeriac_worker::cli::init_logging;
use celeriac_worker::{Worker, WorkerConfig};
use tokio_util::sync::CancellationToken;

use crate::tasks as demo;

const WAIT: Duration = Duration::from_secs(30);

/// The canvas tour's settings.
// These doc comments are the `--help` text; their `[default: ...]` notes
// are not intra-doc links.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Broker URL(s), `;`-separated for failover [default: Celery's
    /// amqp://guest:guest@localhost:5672//]
    #[arg(short = 'b', long, env = "CELERIAC_BROKER_URL")]
    pub broker: Option<String>,
    /// Where results and chord bookkeeping live (chords need Redis)
    #[arg(
        long,
        env = "CELERIAC_RESULT_BACKEND",
        default_value = "redis://127.0.0.1:6379/0"
    )]
    pub result_backend: String,
    /// A queue served by a Python Celery worker running
    /// `tests/interop/tasks.py` with the same broker and result backend:
    /// adds a chord whose header (`interop.add`) runs there and whose body
    /// (`demo.tsum`) runs on this Rust worker
    #[arg(long)]
    pub python_queue: Option<String>,
}

/// Runs the canvas tour; the exit code says whether every step worked.
pub fn run(args: Args) -> ExitCode {
    init_logging(if std::env::var_os("RUST_LOG").is_some() {
        "info"
    } else {
        "warn"
    });
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        eprintln!("error: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    match runtime.block_on(tour(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn app(args: &Args, queue: &str, tasks: bool) -> Result<App, celeriac::Error> {
    let mut builder = App::builder()
        .result_backend(args.result_backend.clone())
        .default_queue(queue);
    if let Some(url) = &args.broker {
        builder = builder.broker_url(url.clone());
    }
    if tasks {
        builder = demo::register(builder);
    }
    builder.build().await
}

async fn tour(args: Args) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let queue = format!("celeriac-demo.canvas.{}", std::process::id());
    let worker_app = app(&args, &queue, true).await?;
    let client = app(&args, &queue, false).await?;
    println!("worker: queue {queue}, results in {}", args.result_backend);
    let stop = CancellationToken::new();
    let config = WorkerConfig {
        queues: vec![queue.clone()],
        // Its own node name, so a `celeriac-demo worker` running beside it
        // keeps answering remote control under the default one.
        hostname: celeriac_worker::expand_hostname(&format!("canvas-{}@%h", std::process::id())),
        concurrency: 8,
        ..WorkerConfig::default()
    };
    let worker = tokio::spawn(
        Worker::new(worker_app.clone(), config).run_until(stop.clone().cancelled_owned()),
    );

    // A chain passes each result on as the next task's first argument;
    // `si` (immutable) ignores it.
    let chained = chain([demo::add::s(2, 2), demo::add::si(5, 5)])
        .then(Signature::new("demo.add").with_arg(4))
        .apply_async(&client)
        .await?;
    println!(
        "chain(add(2, 2), add.si(5, 5), add(4))  -> {}",
        chained.get_as::<i64>(WAIT).await?
    );

    let doubled = group((0..5).map(|i| demo::add::s(i, i)))
        .apply_async(&client)
        .await?;
    println!(
        "group(add(i, i) for i in 0..5)           -> {:?}",
        doubled.join::<i64>(WAIT).await?
    );

    let summed = chord(
        (1..=10).map(|i| demo::add::s(i, 0)),
        Signature::new("demo.tsum"),
    )
    .apply_async(&client)
    .await?;
    println!(
        "chord(add(i, 0) for 1..=10)(tsum)        -> {}",
        summed.get_as::<i64>(WAIT).await?
    );

    let broken = chord(
        [
            Step::from(demo::add::s(1, 1)),
            Step::from(demo::fail::s("member broke".into())),
        ],
        Signature::new("demo.tsum"),
    )
    .apply_async(&client)
    .await?;
    match broken.get(WAIT).await {
        Err(ResultError::Failed(failure)) => {
            println!("chord with a failing member             -> {failure}");
        }
        other => return Err(format!("the broken chord should fail, got {other:?}").into()),
    }

    if let Some(python_queue) = &args.python_queue {
        // Each step names its queue, so whichever worker applies the body
        // (the one finishing the last header member) sends it to Rust.
        let header = (1..=5).map(|i| {
            Signature::new("interop.add")
                .with_arg(i)
                .with_arg(i)
                .with_queue(python_queue.clone())
        });
        let body = Signature::new("demo.tsum").with_queue(queue.clone());
        let mixed = chord(header, body).apply_async(&client).await?;
        println!(
            "chord(Python interop.add)(Rust tsum)     -> {}",
            mixed.get_as::<i64>(WAIT).await?
        );
    }

    stop.cancel();
    worker.await??;
    // demo.fail's message went to the dead-letter queue, as failures do.
    let dead = client.broker().config().dead_letter.queue_for(&queue);
    for name in [queue.as_str(), dead.name.as_str()] {
        client.broker().delete_queue(name).await?;
    }
    client.broker().delete_exchange(&queue).await?;
    client.close().await;
    worker_app.close().await;
    Ok(())
}
