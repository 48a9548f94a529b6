//! Soak test: many tasks through several worker processes (`celeriac-demo
//! worker`) while one worker is SIGKILLed and restarted every `--kill-every`
//! seconds and the broker restarts once; then every task id is accounted for, and the
//! workers' memory over time is printed.
//!
//! ```sh
//! cargo build --release -p celeriac-demo
//! cargo run --release -p celeriac-bench --bin soak -- --tasks 1000000 --json soak.json
//! ```
//!
//! On a RabbitMQ cluster (`scripts/cluster up`), give `--broker` the URL
//! list (`scripts/cluster urls`), `--queue-type quorum`, and
//! `--kill-leader-at S`: the node leading the task queue is SIGKILLed at
//! `S` seconds and started again `--node-down-for` seconds later; each
//! worker gets the list rotated, so they start on different nodes.
//!
//! Every task id is tracked: a task counts as sent once its publish is
//! confirmed, as completed once its result arrives, and as dead-lettered
//! once its id is read from the dead-letter queue; lost is sent but
//! neither. Exits non-zero when a task is lost, when fewer than
//! `--min-kills` kills happened, or when `rabbitmqctl` could not restart
//! the broker. Needs the local RabbitMQ and `rabbitmqctl`. `scripts/test`
//! runs a short version (20,000 tasks); `docs/reliability.md` records a
//! long one.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use celeriac_broker::{
    Broker, BrokerConfig, ConsumeOptions, Exchange, Queue, QueueArguments, QueueType,
};
use celeriac_protocol::{DecodeOptions, ResultMeta, TaskMessage};
use clap::Parser;
use serde_json::json;

#[derive(Debug, Parser)]
struct Args {
    /// Tasks to send.
    #[arg(long, default_value_t = 1_000_000)]
    tasks: u64,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Concurrency of each worker.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Seconds between killing (SIGKILL) and restarting a worker (0: never).
    #[arg(long, default_value_t = 30)]
    kill_every: u64,
    /// Seconds after the start to restart the broker (0: never).
    #[arg(long, default_value_t = 45)]
    restart_broker_at: u64,
    /// Broker URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672//")]
    broker: String,
    /// Seconds between progress lines (and fault checks).
    #[arg(long, default_value_t = 5)]
    tick: u64,
    /// Fail unless at least this many worker kills happened.
    #[arg(long, default_value_t = 0)]
    min_kills: usize,
    /// Stop and account after this many seconds without progress.
    #[arg(long, default_value_t = 180)]
    stall_timeout: u64,
    /// Concurrent publishers (each waits for its confirm before the next).
    #[arg(long, default_value_t = 64)]
    producers: usize,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// x-queue-type of the task queue: classic or quorum (as the workers
    /// are told with --default-queue-type).
    #[arg(long, default_value = "classic")]
    queue_type: QueueType,
    /// Seconds after the start to SIGKILL the cluster node leading the task
    /// queue (0: never; needs `scripts/cluster up` and `--queue-type quorum`).
    #[arg(long, default_value_t = 0)]
    kill_leader_at: u64,
    /// Seconds the killed node stays down before it is started again.
    #[arg(long, default_value_t = 10)]
    node_down_for: u64,
    /// The script that manages the cluster's nodes.
    #[arg(long, default_value = "scripts/cluster")]
    cluster_script: std::path::PathBuf,
}

impl Args {
    /// The broker URL list rotated by `by`, so workers start on different
    /// nodes of a cluster (a single URL stays as it is).
    fn broker_for(&self, by: usize) -> String {
        celeriac_broker::url::rotated(&self.broker, by)
    }
}

/// Runs the cluster script with `args`; its standard output, or why not.
fn cluster(script: &std::path::Path, args: &[&str]) -> Result<String, String> {
    let output = Command::new(script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{} {args:?} did not run: {e}", script.display()))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(format!("{} {args:?} failed", script.display()))
    }
}

fn worker_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.with_file_name("celeriac-demo")
}

/// Numbers the worker processes, so each has its own node name.
static NEXT_WORKER: AtomicUsize = AtomicUsize::new(1);

fn start_worker(args: &Args, queue: &str) -> Child {
    let number = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
    Command::new(worker_binary())
        .args([
            "worker",
            "--broker",
            &args.broker_for(number),
            "--result-backend",
            "rpc://",
            "--default-queue-type",
            &args.queue_type.to_string(),
            "-Q",
            queue,
        ])
        .args(["-c", &args.concurrency.to_string(), "--loglevel", "error"])
        .args(["-n", &format!("soak{number}-{}@%h", std::process::id())])
        .stdin(Stdio::null())
        .spawn()
        .expect("build the worker first: cargo build --release -p celeriac-demo")
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Runs `rabbitmqctl`; an error says which command failed and why.
fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("rabbitmqctl {args:?} did not run: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The index in `soak-<index>`, the task ids this program sends.
fn index_of(task_id: &str) -> Option<usize> {
    task_id.strip_prefix("soak-")?.parse().ok()
}

/// Reads the ids of every message in the dead-letter queue `name` (acking
/// them), as indexes.
async fn dead_lettered_ids(broker: &Broker, name: &str) -> HashSet<usize> {
    let mut ids = HashSet::new();
    let Ok(Some((count, _))) = broker.queue_counts(name).await else {
        return ids;
    };
    let dead = Queue::celery_default(name.to_owned());
    let Ok(mut letters) = broker
        .consume(ConsumeOptions {
            queues: vec![dead],
            prefetch: 1_000,
        })
        .await
    else {
        return ids;
    };
    for _ in 0..count {
        let Ok(Some(letter)) = tokio::time::timeout(Duration::from_secs(10), letters.next()).await
        else {
            break;
        };
        if let Ok(message) = letter.task(&DecodeOptions::default())
            && let Some(index) = index_of(&message.headers.id)
        {
            ids.insert(index);
        }
        let _ = letter.ack().await;
    }
    letters.stop();
    ids
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    // The broker client's own log, when asked for (`RUST_LOG=celeriac_broker=debug`).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let queue_name = format!("celeriac-soak.{}", std::process::id());
    let replies_name = format!("{queue_name}.results");
    let mut config = BrokerConfig::from_url(&args.broker).expect("broker URL");
    config.publish_wait = Duration::from_secs(300);
    config.reconnect_max = Duration::from_millis(500);
    let broker = Broker::connect(config).await.expect("RabbitMQ reachable");
    let mut queue = Queue::celery_default(queue_name.clone());
    queue.arguments.queue_type = Some(args.queue_type);
    broker.declare(&queue).await.expect("queue");
    // The results come back as rpc:// replies, which are transient (as in
    // Celery): a broker restart drops those waiting in a classic queue, and
    // the tasks would look lost though they ran. A quorum queue stores
    // every message durably, so the count survives the restart.
    let replies = Queue {
        name: replies_name.clone(),
        exchange: Exchange::direct(""),
        routing_key: replies_name.clone(),
        durable: true,
        exclusive: false,
        auto_delete: false,
        arguments: QueueArguments {
            queue_type: Some(QueueType::Quorum),
            ..QueueArguments::default()
        },
    };
    broker.declare(&replies).await.expect("the replies queue");

    // Results: one per completed task (the worker publishes to reply_to).
    // Each slot holds the run's `date_done` (in microseconds; 0: none yet),
    // which tells a task that ran twice (another date) from its one result
    // delivered twice (the same date: the results consumer lost its
    // connection before acking it).
    let completed = Arc::new(std::sync::Mutex::new(vec![0i64; args.tasks as usize]));
    let done = Arc::new(AtomicU64::new(0));
    let duplicates = Arc::new(AtomicU64::new(0));
    let replies_again = Arc::new(AtomicU64::new(0));
    let mut results = broker
        .consume(ConsumeOptions {
            queues: vec![replies],
            prefetch: 1_000,
        })
        .await
        .expect("results");
    {
        let (completed, done, duplicates, replies_again) = (
            completed.clone(),
            done.clone(),
            duplicates.clone(),
            replies_again.clone(),
        );
        tokio::spawn(async move {
            while let Some(delivery) = results.next().await {
                if let Ok(meta) = ResultMeta::decode(&delivery.message, &DecodeOptions::default())
                    && let Some(index) = index_of(&meta.task_id)
                {
                    let run = meta.date_done.map_or(1, |d| d.timestamp_micros().max(1));
                    let mut seen = completed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(slot) = seen.get_mut(index) {
                        match *slot {
                            0 => {
                                done.fetch_add(1, Ordering::Relaxed);
                                *slot = run;
                            }
                            earlier if earlier == run => {
                                replies_again.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
                let _ = delivery.ack().await;
            }
        });
    }

    let started = Instant::now();
    let mut workers: Vec<Child> = (0..args.workers)
        .map(|_| start_worker(&args, &queue_name))
        .collect();

    // Producers: confirmed publishes, many in flight. A task is sent once
    // its publish is confirmed (its flag set), not when it was attempted.
    let confirmed: Arc<Vec<AtomicBool>> =
        Arc::new((0..args.tasks).map(|_| AtomicBool::new(false)).collect());
    let sent = Arc::new(AtomicU64::new(0));
    let publish_errors = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for _ in 0..args.producers {
        let (broker, queue_name, replies_name, sent, errors, next, total) = (
            broker.clone(),
            queue_name.clone(),
            replies_name.clone(),
            sent.clone(),
            publish_errors.clone(),
            next.clone(),
            args.tasks,
        );
        let confirmed = confirmed.clone();
        producers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let mut message = TaskMessage::new("demo.add", format!("soak-{i}"))
                    .with_args(vec![json!(i), json!(1)]);
                message.properties.reply_to = Some(replies_name.clone());
                let raw = message.encode().expect("encodes");
                match broker.publish("", &queue_name, &raw).await {
                    Ok(()) => {
                        confirmed[i as usize].store(true, Ordering::Relaxed);
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first publish error: {e}");
                        }
                    }
                }
            }
        }));
    }

    // Faults and sampling.
    let mut leader_kill: Option<LeaderKill> = None;
    let mut last_kill = Instant::now();
    let mut broker_restarted = args.restart_broker_at == 0;
    let mut kills = 0;
    let mut rss_samples: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut last_progress = (0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_secs(args.tick)).await;
        let elapsed = started.elapsed().as_secs();
        let now_done = done.load(Ordering::Relaxed);
        rss_samples.push((
            elapsed,
            workers.iter().filter_map(|w| rss_kib(w.id())).collect(),
        ));
        println!(
            "t={elapsed:>4}s sent {} completed {now_done} duplicates {} worker RSS KiB {:?}",
            sent.load(Ordering::Relaxed),
            duplicates.load(Ordering::Relaxed),
            rss_samples.last().map(|s| &s.1)
        );
        if now_done >= args.tasks {
            // A node loss is only proven once the node is back: if every
            // task finished while it was down, wait for its restart.
            match &mut leader_kill {
                Some(kill) if kill.restart.is_none() => kill.restart_when_due(&args),
                _ => break,
            }
            continue;
        }
        if now_done > last_progress.0 {
            last_progress = (now_done, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(args.stall_timeout) {
            println!(
                "no progress for {} s; stopping to account",
                args.stall_timeout
            );
            break;
        }
        if args.kill_every > 0 && last_kill.elapsed() >= Duration::from_secs(args.kill_every) {
            let victim = kills % workers.len();
            let _ = workers[victim].kill();
            let _ = workers[victim].wait();
            workers[victim] = start_worker(&args, &queue_name);
            kills += 1;
            last_kill = Instant::now();
            println!("t={elapsed:>4}s killed and restarted worker {victim} (SIGKILL #{kills})");
        }
        if args.kill_leader_at > 0 && leader_kill.is_none() && elapsed >= args.kill_leader_at {
            match LeaderKill::start(&args, &queue_name, &sent, &done).await {
                Ok(kill) => {
                    println!(
                        "t={elapsed:>4}s SIGKILLed cluster node {}, the task queue's leader",
                        kill.node
                    );
                    leader_kill = Some(kill);
                }
                Err(e) => {
                    eprintln!("killing the leader failed, so this run proves nothing: {e}");
                    for worker in &mut workers {
                        let _ = worker.kill();
                    }
                    std::process::exit(2);
                }
            }
        }
        if let Some(kill) = &mut leader_kill {
            kill.restart_when_due(&args);
        }
        if !broker_restarted && elapsed >= args.restart_broker_at {
            println!("t={elapsed:>4}s restarting the broker (stop_app/start_app)");
            let restarted = tokio::task::spawn_blocking(|| {
                rabbitmqctl(&["stop_app"])?;
                rabbitmqctl(&["start_app"])
            })
            .await
            .expect("joined");
            if let Err(e) = restarted {
                eprintln!("the broker restart failed, so this run proves nothing about it: {e}");
                std::process::exit(2);
            }
            broker_restarted = true;
        }
    }
    for producer in producers {
        producer.abort();
    }
    for worker in &mut workers {
        let _ = Command::new("kill")
            .args(["-TERM", &worker.id().to_string()])
            .status();
        let _ = worker.wait();
    }

    let node_loss = match leader_kill {
        Some(kill) => match kill.finish().await {
            Ok(report) => Some(report),
            Err(e) => {
                eprintln!("{e}, so this run proves nothing about a node loss");
                std::process::exit(2);
            }
        },
        None if args.kill_leader_at > 0 => {
            eprintln!(
                "the run ended before --kill-leader-at {} s: send more tasks",
                args.kill_leader_at
            );
            std::process::exit(2);
        }
        None => None,
    };

    let dead = broker.config().dead_letter.queue_for(&queue_name);
    let dead_ids = dead_lettered_ids(&broker, &dead.name).await;
    let completed_count = done.load(Ordering::Relaxed);
    let sent_count = sent.load(Ordering::Relaxed);
    let seen = completed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let lost: Vec<usize> = (0..seen.len())
        .filter(|&i| confirmed[i].load(Ordering::Relaxed) && seen[i] == 0 && !dead_ids.contains(&i))
        .collect();
    println!(
        "\n== soak: {} s, {kills} worker kills, broker restart: {}",
        started.elapsed().as_secs(),
        match (args.restart_broker_at, broker_restarted) {
            (0, _) => "not asked",
            (_, true) => "done",
            (_, false) => "not reached",
        }
    );
    println!(
        "sent {} (publish errors {}, sent again after a nack or a lost connection {}), confirmed {sent_count}, succeeded {completed_count}, duplicates {} (run twice; and {} results delivered twice), dead-lettered {}, lost {}",
        next.load(Ordering::Relaxed).min(args.tasks),
        publish_errors.load(Ordering::Relaxed),
        broker.publishes_resent(),
        duplicates.load(Ordering::Relaxed),
        replies_again.load(Ordering::Relaxed),
        dead_ids.len(),
        lost.len()
    );
    if let Some(report) = &node_loss {
        println!(
            "node {} (the task queue's leader) SIGKILLed, back after {} s: confirms paused at \
             most {:.1} s and results at most {:.1} s in the 30 s after the kill",
            report.node,
            args.node_down_for,
            report.longest_publish_pause.as_secs_f64(),
            report.longest_result_pause.as_secs_f64()
        );
    }
    if let Some(first) = lost.first() {
        println!("lost, e.g. soak-{first}");
    }
    let max_rss: Vec<u64> = rss_samples
        .iter()
        .flat_map(|s| s.1.iter().copied())
        .collect();
    println!(
        "worker RSS KiB: min {} max {}",
        max_rss.iter().min().unwrap_or(&0),
        max_rss.iter().max().unwrap_or(&0)
    );
    if let Some(path) = &args.json {
        let summary = json!({
            "tasks": args.tasks,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "seconds": started.elapsed().as_secs(),
            "worker_kills": kills,
            "broker_restarted": broker_restarted,
            "sent": sent_count,
            "publish_errors": publish_errors.load(Ordering::Relaxed),
            "completed": completed_count,
            "duplicates": duplicates.load(Ordering::Relaxed),
            "results_delivered_twice": replies_again.load(Ordering::Relaxed),
            "dead_lettered": dead_ids.len(),
            "lost": lost.len(),
            "node_loss": node_loss.as_ref().map(|r| json!({
                "node": r.node,
                "down_for_s": args.node_down_for,
                "longest_publish_pause_s": r.longest_publish_pause.as_secs_f64(),
                "longest_result_pause_s": r.longest_result_pause.as_secs_f64(),
            })),
            "worker_rss_kib": {"min": max_rss.iter().min(), "max": max_rss.iter().max()},
        });
        let text = serde_json::to_string_pretty(&summary).expect("JSON");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("cannot write {}: {e}", path.display());
        }
    }
    for name in [&queue_name, &replies_name, &dead.name] {
        let _ = broker.delete_queue(name).await;
    }
    let _ = broker.delete_exchange(&queue_name).await;
    broker.close().await;
    if !lost.is_empty() {
        std::process::exit(1);
    }
    if kills < args.min_kills {
        eprintln!(
            "only {kills} worker kills happened (--min-kills {}): the run was too short to prove it",
            args.min_kills
        );
        std::process::exit(2);
    }
}

/// A cluster node SIGKILLed because it leads the task queue, started again
/// later, and how long progress paused around it.
struct LeaderKill {
    node: String,
    at: Instant,
    restart: Option<std::thread::JoinHandle<Result<String, String>>>,
    pauses: tokio::task::JoinHandle<(Duration, Duration)>,
}

/// What a node loss cost.
struct NodeLoss {
    node: String,
    longest_publish_pause: Duration,
    longest_result_pause: Duration,
}

impl LeaderKill {
    /// Finds the task queue's leader, kills it, and starts timing pauses
    /// in confirms (`sent`) and results (`done`).
    async fn start(
        args: &Args,
        queue: &str,
        sent: &Arc<AtomicU64>,
        done: &Arc<AtomicU64>,
    ) -> Result<LeaderKill, String> {
        let (script, queue) = (args.cluster_script.clone(), queue.to_owned());
        let node = tokio::task::spawn_blocking(move || {
            let node = cluster(&script, &["leader", &queue])?;
            cluster(&script, &["kill", &node])?;
            Ok::<_, String>(node)
        })
        .await
        .map_err(|e| e.to_string())??;
        Ok(LeaderKill {
            node,
            at: Instant::now(),
            restart: None,
            pauses: tokio::spawn(longest_pauses(sent.clone(), done.clone(), args.tasks)),
        })
    }

    /// Starts the node again once it has been down `--node-down-for`.
    fn restart_when_due(&mut self, args: &Args) {
        if self.restart.is_none() && self.at.elapsed() >= Duration::from_secs(args.node_down_for) {
            let (script, node) = (args.cluster_script.clone(), self.node.clone());
            println!("starting cluster node {node} again");
            self.restart = Some(std::thread::spawn(move || {
                cluster(&script, &["start", &node])
            }));
        }
    }

    /// Waits for the restart (an error if it never started or failed) and
    /// the pause timing.
    async fn finish(self) -> Result<NodeLoss, String> {
        let restart = self.restart.ok_or(
            "the killed node was never started again (the run was shorter than --node-down-for)",
        )?;
        tokio::task::spawn_blocking(move || restart.join())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|_| "the node restart panicked".to_owned())??;
        let (longest_publish_pause, longest_result_pause) =
            self.pauses.await.map_err(|e| e.to_string())?;
        Ok(NodeLoss {
            node: self.node,
            longest_publish_pause,
            longest_result_pause,
        })
    }
}

/// The longest time, over the next 30 s, that `sent` and `done` each went
/// without growing (sampled every 50 ms; a counter that reached `total` is
/// finished, not paused).
async fn longest_pauses(
    sent: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    total: u64,
) -> (Duration, Duration) {
    let window = Instant::now() + Duration::from_secs(30);
    let mut watched = [
        (sent, 0, Instant::now(), Duration::ZERO),
        (done, 0, Instant::now(), Duration::ZERO),
    ];
    for (counter, last, since, _) in &mut watched {
        *last = counter.load(Ordering::Relaxed);
        *since = Instant::now();
    }
    while Instant::now() < window {
        tokio::time::sleep(Duration::from_millis(50)).await;
        for (counter, last, since, longest) in &mut watched {
            let now = counter.load(Ordering::Relaxed);
            if now != *last {
                *longest = (*longest).max(since.elapsed());
                *last = now;
                *since = Instant::now();
            }
        }
    }
    for (counter, _, since, longest) in &mut watched {
        if counter.load(Ordering::Relaxed) < total {
            *longest = (*longest).max(since.elapsed());
        }
    }
    (watched[0].3, watched[1].3)
}
