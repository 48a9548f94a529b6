//! Scale figures for a RabbitMQ cluster (docs/scaling.md): publishing with
//! confirms and draining no-op tasks through `celeriac-demo worker`
//! processes, on a quorum queue of one node against the same on a 3-node
//! cluster (`scripts/cluster up`), with one and with two worker processes;
//! rounds interleaved, medians and ratios printed.
//!
//! ```sh
//! scripts/cluster up
//! cargo build --release -p celeriac-demo -p celeriac-bench
//! target/release/cluster_scale --cluster "$(scripts/cluster urls)"
//! ```
//!
//! On one machine the nodes share its cores, so the absolute numbers say
//! little about a real cluster; the ratios say what replication costs and
//! whether a second worker process helps.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use celeriac_broker::url::rotated;
use celeriac_broker::{Broker, BrokerConfig, Destination, Queue, QueueType};
use celeriac_protocol::TaskMessage;
use clap::Parser;
use serde_json::json;
use tokio::process::{Child, Command};

#[derive(Debug, Parser)]
struct Args {
    /// The single node.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672//")]
    single: String,
    /// The cluster's URL list (`scripts/cluster urls`).
    #[arg(long)]
    cluster: String,
    /// Tasks per measurement.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Rounds of each measurement.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrency of each worker process.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// One target's medians.
#[derive(Debug, Default)]
struct Figures {
    publish: Vec<f64>,
    drain_one: Vec<f64>,
    drain_two: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Fills a fresh quorum queue with `messages` no-op tasks (confirmed),
/// returning the queue and the publish rate.
async fn fill(broker: &Broker, messages: usize) -> Result<(Queue, f64)> {
    let mut queue = Queue::celery_default(format!("celeriac-scale.{}", uuid::Uuid::new_v4()));
    queue.arguments.queue_type = Some(QueueType::Quorum);
    broker.declare(&queue).await?;
    let to = Destination {
        exchange: String::new(),
        routing_key: queue.name.clone(),
        priority: None,
        queue: None,
    };
    let batch: Vec<_> = (0..messages)
        .map(|i| {
            let message = TaskMessage::new("demo.add", format!("scale-{i}"))
                .with_args(vec![json!(i), json!(1)])
                .encode()?;
            Ok((to.clone(), message))
        })
        .collect::<Result<_>>()?;
    let started = Instant::now();
    broker.send_many(&batch).await?;
    Ok((queue, messages as f64 / started.elapsed().as_secs_f64()))
}

/// Starts `count` worker processes on `queue`, times the drain, stops them.
async fn drain(
    args: &Args,
    urls: &str,
    broker: &Broker,
    queue: &Queue,
    count: usize,
) -> Result<f64> {
    let binary = std::env::current_exe()?.with_file_name("celeriac-demo");
    let mut workers: Vec<Child> = Vec::new();
    let started = Instant::now();
    for n in 0..count {
        workers.push(
            Command::new(&binary)
                .args(["worker", "--broker", &rotated(urls, n), "-Q", &queue.name])
                .args(["--default-queue-type", "quorum", "--loglevel", "error"])
                .args([
                    "-c",
                    &args.concurrency.to_string(),
                    "-n",
                    &format!("scale{n}@%h"),
                ])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}: build celeriac-demo", binary.display()))?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (ready, _) = broker.queue_counts(&queue.name).await?.unwrap_or_default();
        if ready == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("{ready} tasks still waiting after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    for worker in &mut workers {
        if let Some(pid) = worker.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await;
    }
    Ok(args.messages as f64 / took.as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let targets = [
        ("one node", args.single.clone()),
        ("3-node cluster", args.cluster.clone()),
    ];
    let mut figures: Vec<Figures> = targets.iter().map(|_| Figures::default()).collect();
    for round in 1..=args.rounds {
        for ((label, urls), figures) in targets.iter().zip(&mut figures) {
            eprintln!("round {round}/{}: {label}", args.rounds);
            let broker = Broker::connect(BrokerConfig::from_url(urls)?).await?;
            for workers in [1, 2] {
                let (queue, published) = fill(&broker, args.messages).await?;
                let drained = drain(&args, urls, &broker, &queue, workers).await?;
                if workers == 1 {
                    figures.publish.push(published);
                    figures.drain_one.push(drained);
                } else {
                    figures.drain_two.push(drained);
                }
                broker.delete_queue(&queue.name).await?;
                let _ = broker.delete_exchange(&queue.name).await;
            }
            broker.close().await;
        }
    }
    println!(
        "\n{} tasks per measurement, {} rounds (medians), quorum queues, -c {} per worker process",
        args.messages, args.rounds, args.concurrency
    );
    println!(
        "{:<16} {:>14} {:>16} {:>16} {:>10}",
        "", "publish/s", "drain/s, 1 proc", "drain/s, 2 procs", "2 / 1"
    );
    for ((label, _), f) in targets.iter().zip(&figures) {
        println!(
            "{label:<16} {:>14.0} {:>16.0} {:>16.0} {:>9.2}×",
            median(&f.publish),
            median(&f.drain_one),
            median(&f.drain_two),
            median(&f.drain_two) / median(&f.drain_one)
        );
    }
    let (one, three) = (&figures[0], &figures[1]);
    println!(
        "cluster / one node: publish {:.2}×, drain with 1 process {:.2}×, with 2 processes {:.2}×",
        median(&three.publish) / median(&one.publish),
        median(&three.drain_one) / median(&one.drain_one),
        median(&three.drain_two) / median(&one.drain_two)
    );
    Ok(())
}
