//! The quick start: starts a worker with the demo tasks and a producer in
//! one process, sends a few tasks (one retrying, one failing into the
//! dead-letter queue), prints what happens, and cleans up its queues.

use std::process::ExitCode;
use std::time::Duration;

use celeriac::broker::dead_letter::REASON_HEADER;
use celeriac::broker::{BrokerError, ConsumeOptions};
use celeriac::{App, ResultError};
use celeriac_worker::cli::init_logging;
use celeriac_worker::{Worker, WorkerConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::tasks as demo;

const WAIT: Duration = Duration::from_secs(20);

/// The quick start's settings.
// These doc comments are the `--help` text; their `[default: ...]` notes
// are not intra-doc links.
#[allow(rustdoc::broken_intra_doc_links)]
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Broker URL(s), `;`-separated for failover [default: Celery's
    /// amqp://guest:guest@localhost:5672//]
    #[arg(short = 'b', long, env = "CELERIAC_BROKER_URL")]
    pub broker: Option<String>,
}

/// Runs the quick start; the exit code says whether every step worked.
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
    match runtime.block_on(quickstart(args.broker)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            if matches!(
                e.downcast_ref::<celeriac::Error>(),
                Some(celeriac::Error::Broker(BrokerError::Connect { .. }))
            ) {
                eprintln!(
                    "No RabbitMQ? Start one with `docker compose up -d rabbitmq` (Celery's default URL), or pass --broker."
                );
            }
            ExitCode::FAILURE
        }
    }
}

async fn app(broker: &Option<String>, queue: &str, tasks: bool) -> Result<App, celeriac::Error> {
    let mut builder = App::builder().result_backend("rpc://").default_queue(queue);
    if let Some(url) = broker {
        builder = builder.broker_url(url.clone());
    }
    if tasks {
        builder = demo::register(builder);
    }
    builder.build().await
}

async fn quickstart(
    broker: Option<String>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let queue = format!("celeriac-demo.{}", std::process::id());
    let worker_app = app(&broker, &queue, true).await?;
    let client = app(&broker, &queue, false).await?;
    println!("RabbitMQ: {}", client.broker().config().urls);
    println!(
        "worker:   queue {queue}, tasks {:?}",
        worker_app.registry().names().collect::<Vec<_>>()
    );

    let stop = CancellationToken::new();
    let config = WorkerConfig {
        queues: vec![queue.clone()],
        // Its own node name, so a `celeriac-demo worker` running beside it
        // keeps answering remote control under the default one.
        hostname: celeriac_worker::expand_hostname(&format!(
            "quickstart-{}@%h",
            std::process::id()
        )),
        concurrency: 4,
        ..WorkerConfig::default()
    };
    let worker = tokio::spawn(
        Worker::new(worker_app.clone(), config).run_until(stop.clone().cancelled_owned()),
    );

    let add = client.send_task("demo.add").args((2, 3)).apply().await?;
    let echo = client
        .send_task("demo.echo")
        .args((json!({"hello": ["world", 1, null]}),))
        .apply()
        .await?;
    let later = client
        .send_task("demo.now")
        .countdown(Duration::from_secs(1))
        .apply()
        .await?;
    let flaky = client.send_task("demo.flaky").args((2,)).apply().await?;
    let failing = client
        .send_task("demo.fail")
        .args(("bad input",))
        .apply()
        .await?;

    println!(
        "demo.add(2, 3)         -> {}",
        add.get_as::<i64>(WAIT).await?
    );
    println!("demo.echo({{...}})       -> {}", echo.get(WAIT).await?);
    println!(
        "demo.now() +1s         -> ran at {:.3}",
        later.get_as::<f64>(WAIT).await?
    );
    let flaky_value: String = flaky.get_as(WAIT).await?;
    println!(
        "demo.flaky(2)          -> {flaky_value} (states {:?})",
        flaky.history()
    );
    match failing.get(WAIT).await {
        Err(ResultError::Failed(failure)) => println!("demo.fail(\"bad input\") -> {failure}"),
        other => return Err(format!("demo.fail should have failed, got {other:?}").into()),
    }

    let dead = client.broker().config().dead_letter.queue_for(&queue);
    let mut dlq = client
        .broker()
        .consume(ConsumeOptions {
            queues: vec![dead.clone()],
            prefetch: 1,
        })
        .await?;
    let Ok(Some(letter)) = tokio::time::timeout(WAIT, dlq.next()).await else {
        return Err(format!("no dead letter arrived in {} within {WAIT:?}", dead.name).into());
    };
    let reason = letter
        .message
        .headers
        .get(REASON_HEADER)
        .and_then(|v| v.as_str())
        .unwrap_or("?");
    println!(
        "dead-letter queue {}: a demo.fail message, reason {reason}",
        dead.name
    );
    letter.ack().await?;
    dlq.stop();

    stop.cancel();
    let summary = worker.await??;
    println!("worker summary: {summary:?}");
    for name in [queue.as_str(), dead.name.as_str()] {
        client.broker().delete_queue(name).await?;
    }
    client.broker().delete_exchange(&queue).await?;
    client.close().await;
    worker_app.close().await;
    Ok(())
}
