//! A node lost on a 3-node RabbitMQ cluster (`scripts/cluster`), with
//! quorum queues: a delayed task waiting in the delay queues survives the
//! loss of the node leading its delay queue (and the worker's own node);
//! a producer that loses the task queue leader's node goes on publishing
//! through another while that node is down; and with two beats exactly
//! one stays active when the node holding the lock dies, with no tick
//! skipped and none sent twice beyond the one documented repeat. The task queue's
//! leader killed mid-stream under load is the cluster soak in
//! `scripts/test`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::broker::url::rotated;
use celeriac::broker::{BrokerConfig, ConsumeOptions, Queue, QueueType};
use celeriac::{App, AppBuilder, State};
use celeriac_demo::tasks as demo;
use celeriac_tests::cluster::Cluster;
use celeriac_tests::ticks::Ticks;
use celeriac_tests::worker::{RunningWorker, binary};
use celeriac_tests::{disturbing, require_redis, unique};
use celeriac_worker::WorkerConfig;

/// A quorum queue named after `what`.
fn quorum_queue(what: &str) -> Queue {
    let mut queue = Queue::celery_default(unique(what));
    queue.arguments.queue_type = Some(QueueType::Quorum);
    queue
}

/// `builder` on `urls` with results in `redis`, quorum queues, and `queue`
/// as its default.
fn on_quorum(builder: AppBuilder, urls: &str, redis: &str, queue: &Queue) -> AppBuilder {
    builder
        .broker_url(urls)
        .result_backend(redis)
        .default_queue_type(QueueType::Quorum)
        .queue(queue.clone())
        .default_queue(queue.name.clone())
}

/// The delay queue (`celery_delayed_<n>`) holding a message now.
fn occupied_delay_queue(cluster: &Cluster) -> Result<Option<String>> {
    let listing = cluster.ctl(&["list_queues", "name", "messages"])?;
    Ok(listing.lines().find_map(|line| {
        let mut columns = line.split_whitespace();
        let name = columns.next()?;
        let messages: u64 = columns.next()?.parse().ok()?;
        (name.starts_with("celery_delayed_") && messages > 0).then(|| name.to_owned())
    }))
}

async fn delayed_task_survives_losing_its_delay_queue_leader(
    cluster: &Cluster,
    redis: &str,
) -> Result<()> {
    let queue = quorum_queue("cluster-eta");
    let app = on_quorum(demo::register(App::builder()), &cluster.urls, redis, &queue)
        .build()
        .await?;
    let worker = RunningWorker::run(
        app,
        WorkerConfig {
            queues: vec![queue.name.clone()],
            // Anything due later than this goes to the delay queues.
            eta_horizon: Duration::from_secs(1),
            mingle: false,
            ..WorkerConfig::default()
        },
    );
    // The client on the last node, which is not the one killed below.
    let client = on_quorum(App::builder(), &rotated(&cluster.urls, 2), redis, &queue)
        .build()
        .await?;
    let sent_at = celeriac::protocol::time::now().timestamp_micros() as f64 / 1e6;
    let delayed = client
        .send_task("demo.now")
        .countdown(Duration::from_secs(15))
        .apply()
        .await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let level = loop {
        if let Some(level) = occupied_delay_queue(cluster)? {
            break level;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the task never reached the delay queues"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let node = cluster.leader(&level)?;
    cluster.script(&["kill", &node])?;
    println!("the delayed task waits in {level}; its leader, node {node}, was SIGKILLed");

    let ran: f64 = client
        .async_result::<f64>(delayed.id().to_owned())
        .get(Duration::from_secs(90))
        .await
        .context("the delayed task did not run after its delay queue's leader died")?;
    ensure!(
        ran >= sent_at + 15.0,
        "it ran {:.2} s early",
        sent_at + 15.0 - ran
    );
    println!("it ran {:.2} s after it was due", ran - (sent_at + 15.0));
    ensure!(
        client
            .async_result::<f64>(delayed.id().to_owned())
            .state()
            .await?
            == State::Success
    );
    cluster.script(&["start", &node])?;
    let summary = worker.stop().await?;
    ensure!(summary.succeeded == 1, "the worker says {summary:?}");
    let _ = client.broker().delete_queue(&queue.name).await;
    client.close().await;
    Ok(())
}

/// A producer whose node led the task queue loses that node: it moves to
/// another node and its publishes are confirmed there while the lost node
/// is still down. On RabbitMQ 3.10 the channel it first publishes on after
/// the move is nacked until the old leader's node returns, even once a new
/// leader is elected (a Python publisher on py-amqp shows the same), so the
/// producer renews its channel on a nack. Without that, every send below
/// waits out `publish_wait` and fails, since the node is never restarted
/// before they finish.
async fn publishes_go_on_while_the_old_leaders_node_is_down(cluster: &Cluster) -> Result<()> {
    let queue = quorum_queue("cluster-publish");
    let mut config = BrokerConfig::from_url(&cluster.urls)?;
    config.publish_wait = Duration::from_secs(30);
    let app = App::builder()
        .broker_config(config)
        .default_queue_type(QueueType::Quorum)
        .queue(queue.clone())
        .default_queue(queue.name.clone())
        .build()
        .await?;
    app.send_task("demo.add").args((0, 0)).apply().await?;
    // Declared through the first node, which leads it (RabbitMQ's
    // client-local placement): the node this producer is connected to.
    let leader = cluster.leader(&queue.name)?;
    ensure!(
        leader == "1",
        "node {leader} leads {}, not the declaring node 1",
        queue.name
    );

    // A producer sending one task after another, as under load, so that
    // it moves to another node and sends there at once.
    let killed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (app, killed) = (app.clone(), killed.clone());
        tokio::spawn(async move {
            let (mut sent, mut after_kill) = (1u32, 0u32);
            while after_kill < 300 {
                let down = killed.load(std::sync::atomic::Ordering::SeqCst);
                app.send_task("demo.add")
                    .args((sent, sent))
                    .apply()
                    .await
                    .with_context(|| format!("send {sent} ({after_kill} after the kill)"))?;
                sent += 1;
                after_kill += u32::from(down);
            }
            anyhow::Ok(sent)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let resent_before = app.broker().publishes_resent();
    cluster.script(&["kill", &leader])?;
    killed.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent = sender.await??;
    let (ready, _) = app
        .broker()
        .queue_counts(&queue.name)
        .await?
        .context("the queue is there")?;
    println!(
        "{sent} sends confirmed, the last 300 with node {leader} down ({} sent again after a \
         nack or a lost connection); the queue holds {ready}",
        app.broker().publishes_resent() - resent_before
    );
    ensure!(ready >= sent, "the queue holds {ready} of the {sent} sent");
    cluster.script(&["start", &leader])?;
    let _ = app.broker().delete_queue(&queue.name).await;
    app.close().await;
    Ok(())
}

/// A `celeriac-beat` process, killed if the test ends early.
struct BeatProcess(Child);

impl Drop for BeatProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_beat(schedule: &std::path::Path, name: &str, urls: &str) -> Result<BeatProcess> {
    Ok(BeatProcess(
        Command::new(binary("celeriac-beat")?)
            .args(["--broker", urls, "--name", name, "--loglevel", "warn"])
            .args(["--default-queue-type", "quorum", "--schedule"])
            .arg(schedule)
            .stdin(Stdio::null())
            .spawn()?,
    ))
}

/// The node (`celeriac-test-cN@localhost`) holding the exclusive queue
/// `lock`.
fn lock_node(cluster: &Cluster, lock: &str) -> Result<String> {
    let listing = cluster.ctl(&["list_queues", "name", "pid"])?;
    listing
        .lines()
        .find_map(|line| {
            let (name, pid) = line.split_once(char::is_whitespace)?;
            // A pid reads `<rabbit@host.1234.0>`, named by its node.
            (name == lock).then(|| {
                pid.trim()
                    .trim_start_matches('<')
                    .split('.')
                    .next()
                    .map(str::to_owned)
            })?
        })
        .with_context(|| format!("no lock queue {lock}: {listing}"))
}

async fn one_beat_stays_active_when_the_lock_holders_node_dies(cluster: &Cluster) -> Result<()> {
    let queue = quorum_queue("cluster-beat");
    let name = unique("cluster").replace('.', "-");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir)?;
    let schedule = dir.join("beat.toml");
    std::fs::write(
        &schedule,
        format!(
            "[entries.tick]\ntask = \"beat.tick\"\nevery = 1.0\noptions = {{ queue = \"{}\" }}\n",
            queue.name
        ),
    )?;
    // The reader on the last node, which is not the one killed below.
    let reader = App::builder()
        .broker_url(rotated(&cluster.urls, 2))
        .build()
        .await?;
    reader.broker().declare(&queue).await?;
    let mut ticks = reader
        .broker()
        .consume(ConsumeOptions {
            queues: vec![queue.clone()],
            prefetch: 100,
        })
        .await?;
    let mut received = Ticks::default();
    let mut receive = async |received: &mut Ticks, count: usize| -> Result<()> {
        for _ in 0..count {
            let tick = tokio::time::timeout(Duration::from_secs(60), ticks.next())
                .await
                .context("no tick for 60 s")?
                .context("the tick consumer closed")?;
            received.add(&tick.message);
            tick.ack().await?;
        }
        Ok(())
    };

    // The first beat on node 1 takes the lock; the second, on node 2,
    // stands by.
    let mut first = start_beat(&schedule, &name, &cluster.urls)?;
    receive(&mut received, 3).await?;
    let mut second = start_beat(&schedule, &name, &rotated(&cluster.urls, 1))?;
    receive(&mut received, 2).await?;
    let lock = format!("celeriac.beat.{name}.lock");
    let holder = lock_node(cluster, &lock)?;
    let node = Cluster::number_of(&holder)
        .with_context(|| format!("the lock is on {holder}, not a cluster node"))?
        .to_owned();
    cluster.script(&["kill", &node])?;
    let before = received.due_times();
    receive(&mut received, 8).await?;
    let after_holder = lock_node(cluster, &lock)?;
    for beat in [&mut first, &mut second] {
        let _ = Command::new("kill")
            .args(["-TERM", &beat.0.id().to_string()])
            .status();
        let _ = beat.0.wait();
    }
    cluster.script(&["start", &node])?;

    println!(
        "{} ticks: {before} before the lock's node ({holder}) was killed, {} after (lock now on {after_holder})",
        received.due_times(),
        received.due_times() - before
    );
    ensure!(
        after_holder != holder,
        "the lock did not move off the killed node"
    );
    received.ensure_each_once_without_a_hole(chrono::Duration::seconds(1))?;
    ticks.stop();
    let _ = reader.broker().delete_queue(&queue.name).await;
    let _ = reader
        .broker()
        .delete_queue(&format!("celeriac.beat.{name}.state"))
        .await;
    reader.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Each scenario loses a node and starts it again; they share one cluster,
/// since starting one takes about 20 s. The beat scenario once failed in CI
/// under load, before the publisher's channel was renewed on a nack:
/// RabbitMQ nacked the new active beat's saves to the state slot (whose
/// leader was on the killed node) for the whole `publish_wait`, so ticks
/// came 30 s apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_a_cluster_node_loses_no_task_and_stalls_no_producer_or_beat() -> Result<()> {
    let _serial = disturbing().await;
    let redis = require_redis()?;
    let cluster = tokio::task::spawn_blocking(Cluster::up).await??;
    println!("--- a delayed task whose delay queue's leader dies");
    delayed_task_survives_losing_its_delay_queue_leader(&cluster, &redis)
        .await
        .context("the delayed task scenario")?;
    println!("--- a producer whose node led the task queue");
    publishes_go_on_while_the_old_leaders_node_is_down(&cluster)
        .await
        .context("the producer scenario")?;
    println!("--- two beats; the lock holder's node dies");
    one_beat_stays_active_when_the_lock_holders_node_dies(&cluster)
        .await
        .context("the beat scenario")?;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}
