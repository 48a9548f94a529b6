//! Faults that break Celery deployments, against the real broker and
//! `celeriac-demo worker` processes, with every task id accounted for: each
//! test sends a known set of ids, injects its fault, prints a tally (sent
//! and confirmed / succeeded / failed / duplicates / lost) and fails unless
//! every task succeeded with its own value; the dead letters a test expects
//! are checked by task id and reason.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::{App, AsyncResult, BrokerConfig, State};
use celeriac_broker::dead_letter::REASON_HEADER;
use celeriac_broker::{BrokerError, ConsumeOptions, Queue};
use celeriac_protocol::TaskMessage;
use celeriac_tests::scrape::{free_local_addr, http_get, wait_for_listener};
use celeriac_tests::worker::{cleanup, demo_worker, demo_worker_with, reply_queue};
use celeriac_tests::{
    ConsumerTimeout, broker_url, disturbing, queue_stats, rabbitmqctl, require_redis,
    restore_broker, unique,
};
use serde_json::{Value, json};
use tokio::process::Child;

const WAIT: Duration = Duration::from_secs(60);

/// Concurrent producers in the tests that keep publishing through a fault.
const PRODUCERS: usize = 4;

async fn client(queue: &str) -> Result<App> {
    client_with(queue, "rpc://").await
}

/// A producer app sending to `queue` that reconnects fast and waits long
/// for the broker, reading results from `backend`.
async fn client_with(queue: &str, backend: &str) -> Result<App> {
    let mut config = BrokerConfig::from_url(&broker_url())?;
    config.reconnect_max = Duration::from_millis(500);
    config.publish_wait = Duration::from_secs(90);
    Ok(App::builder()
        .broker_config(config)
        .result_backend(backend)
        .default_queue(queue)
        .build()
        .await?)
}

fn worker(queue: &str, extra: &[&str]) -> Result<Child> {
    demo_worker(queue, extra)
}

/// How many of `tasks` have a final state.
async fn ready(tasks: &[Sent]) -> usize {
    let mut done = 0;
    for task in tasks {
        if task.result.ready().await.unwrap_or(false) {
            done += 1;
        }
    }
    done
}

/// A task sent (and confirmed by the broker), with the value it must
/// return.
struct Sent {
    result: AsyncResult<Value>,
    expect: Value,
}

impl Sent {
    /// Sends `demo.add(i, 1)`, which must return `i + 1`.
    async fn add(app: &App, i: i64) -> Result<Sent> {
        Ok(Sent {
            result: app.send_task("demo.add").args((i, 1)).apply().await?,
            expect: json!(i + 1),
        })
    }
}

/// Waits for every task and prints the tally; fails unless each one
/// succeeded with its own value. A FAILURE or REVOKED counts as failed, not
/// as done; no result at all is lost. Duplicates (a task run twice, which
/// at-least-once delivery allows after a fault) are counted and shown.
async fn account(label: &str, tasks: &[Sent]) -> Result<()> {
    let mut succeeded = 0;
    let mut duplicates = 0;
    let mut failed = Vec::new();
    let mut lost = Vec::new();
    // One deadline for them all: a fault that loses many must not make the
    // test wait a minute for each.
    let deadline = tokio::time::Instant::now() + WAIT;
    for task in tasks {
        let id = task.result.id().to_owned();
        let left = deadline
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_millis(100));
        match task.result.wait(left).await {
            Ok(meta) if meta.status == State::Success && meta.result == task.expect => {
                succeeded += 1;
            }
            Ok(meta) => failed.push(format!("{id}: {} {}", meta.status, meta.result)),
            Err(_) => lost.push(id),
        }
        let finals = task
            .result
            .history()
            .iter()
            .filter(|s| s.is_ready())
            .count();
        duplicates += finals.saturating_sub(1);
    }
    println!(
        "{label}: sent and confirmed {}, succeeded {succeeded}, failed {}, duplicates {duplicates}, lost {}",
        tasks.len(),
        failed.len(),
        lost.len()
    );
    ensure!(
        failed.is_empty(),
        "{label}: {} tasks did not succeed with their value, e.g. {}",
        failed.len(),
        failed[0]
    );
    ensure!(
        lost.is_empty(),
        "{label}: {} tasks lost, e.g. {}",
        lost.len(),
        lost[0]
    );
    Ok(())
}

async fn wait_done(tasks: &[Sent], at_least: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while ready(tasks).await < at_least && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_task_loses_nothing() -> Result<()> {
    let _serial = disturbing().await;
    let queue = unique("fault-sigkill");
    let app = client(&queue).await?;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let seconds = 0.5 + f64::from(i) / 1000.0;
        tasks.push(Sent {
            result: app.send_task("demo.sleep").args((seconds,)).apply().await?,
            expect: json!(seconds),
        });
    }
    let mut first = worker(&queue, &["-c", "4"])?;
    wait_done(&tasks, 2).await;
    first.kill().await?; // SIGKILL: late-acked tasks in flight go back to the queue
    let _second = worker(&queue, &["-c", "4"])?;
    account("SIGKILL mid-task", &tasks).await?;
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_task_is_dead_lettered_and_the_queue_keeps_flowing() -> Result<()> {
    let _serial = disturbing().await;
    let queue = unique("fault-crashloop");
    let app = client(&queue).await?;
    let crash = app.send_task("demo.crash").apply().await?;
    let mut tasks = Vec::new();
    for i in 0..10 {
        tasks.push(Sent::add(&app, i).await?);
    }
    let flags = [
        "-c",
        "1",
        "--prefetch-multiplier",
        "1",
        "--redelivery-limit",
        "2",
    ];
    let deaths = supervise_crash_loop(&app, &queue, &tasks, &flags, 10).await?;
    expect_only_crash_letter(&app, &queue, crash.id()).await?;
    println!("crash loop: the worker died {deaths} times; the task was dead-lettered");
    account("crash loop", &tasks).await?;
    cleanup(&app, &queue).await;
    Ok(())
}

/// The default prefetch (4 per slot) keeps three healthy tasks unstarted
/// beside the crashing one in every crash until the crashing one runs
/// alone (docs/reliability.md, "Crash loops are bounded"): none of them
/// may reach the redelivery limit with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_at_the_default_prefetch_takes_no_neighbour_with_it() -> Result<()> {
    let _serial = disturbing().await;
    let queue = unique("fault-crashloop-prefetch");
    let app = client(&queue).await?;
    let crash = app.send_task("demo.crash").apply().await?;
    let mut tasks = Vec::new();
    for i in 0..10 {
        tasks.push(Sent::add(&app, i).await?);
    }
    // Default prefetch multiplier and redelivery limit (10): the crashing
    // task is delivered 11 times, each time killing the worker.
    let deaths =
        supervise_crash_loop(&app, &queue, &tasks, &["-c", "1", "--without-mingle"], 20).await?;
    expect_only_crash_letter(&app, &queue, crash.id()).await?;
    ensure!(
        deaths == 11,
        "the worker died {deaths} times: the crashing task should be delivered 11 times \
         (the first run and the limit of 10 redeliveries)"
    );
    account("crash loop at the default prefetch", &tasks).await?;
    cleanup(&app, &queue).await;
    Ok(())
}

/// A supervisor restarting a worker (with `flags`) each time the crashing
/// task kills it, until `tasks` all have results and a dead letter is on
/// `queue`'s dead-letter queue; fails after `max_deaths` restarts or 120 s.
/// Returns how often the worker died.
async fn supervise_crash_loop(
    app: &App,
    queue: &str,
    tasks: &[Sent],
    flags: &[&str],
    max_deaths: usize,
) -> Result<usize> {
    let dlq = app.broker().config().dead_letter.queue_for(queue);
    let settled = async || loop {
        let lettered = app
            .broker()
            .queue_counts(&dlq.name)
            .await
            .ok()
            .flatten()
            .is_some_and(|(n, _)| n >= 1);
        if lettered && ready(tasks).await == tasks.len() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut deaths = 0;
    let supervise = async {
        loop {
            ensure!(deaths < max_deaths, "not settled after {deaths} restarts");
            let mut w = worker(queue, flags)?;
            tokio::select! {
                _ = w.wait() => deaths += 1,
                () = settled() => return Ok(()),
            }
        }
    };
    if let Ok(supervised) = tokio::time::timeout(Duration::from_secs(120), supervise).await {
        supervised?;
    } else {
        let missing = tasks.len() - ready(tasks).await;
        anyhow::bail!(
            "not settled within 120 s: {missing} of {} healthy tasks without a result \
             (dead-lettered with the crashing one?)",
            tasks.len()
        );
    }
    Ok(deaths)
}

/// Fails unless `queue`'s dead-letter queue holds exactly one letter: task
/// `crash_id`'s, with reason `redelivery_limit`.
async fn expect_only_crash_letter(app: &App, queue: &str, crash_id: &str) -> Result<()> {
    let dlq = app.broker().config().dead_letter.queue_for(queue);
    let (letters, _) = app
        .broker()
        .queue_counts(&dlq.name)
        .await?
        .unwrap_or_default();
    ensure!(
        letters == 1,
        "{letters} dead letters: only the crashing task should be dead-lettered, once"
    );
    let mut consumer = app
        .broker()
        .consume(ConsumeOptions {
            queues: vec![dlq],
            prefetch: 10,
        })
        .await?;
    let letter = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await?
        .context("no dead letter")?;
    ensure!(
        letter.message.headers[REASON_HEADER].as_str() == Some("redelivery_limit"),
        "{:?}",
        letter.message.headers
    );
    ensure!(letter.task(&Default::default())?.headers.id == crash_id);
    letter.ack().await?;
    consumer.stop();
    Ok(())
}

/// Streams tasks through a worker while `fault` hits the broker `times`
/// times. The producer keeps publishing through each fault (a publish
/// waiting for its confirm is cut off by it); at each fault the worker must
/// hold unacked deliveries (tasks running or prefetched); afterwards the
/// producer and the worker must both have reconnected, and every task must
/// have succeeded with its value.
async fn through_fault(
    label: &str,
    fault: fn() -> Result<()>,
    times: usize,
    backend: &str,
) -> Result<()> {
    let queue = unique(label);
    let app = client_with(&queue, backend).await?;
    let metrics = free_local_addr()?;
    let mut worker = demo_worker_with(
        &queue,
        backend,
        &["-c", "8", "--metrics-addr", &metrics.to_string()],
    )?;
    wait_for_listener(metrics).await?;

    // Four producers publish until the last fault is over, then 100 more
    // in all: with four publishes awaiting their confirms at any moment, a
    // fault cuts some off before their confirm.
    let sent = Arc::new(AtomicUsize::new(0));
    let stop_after = Arc::new(AtomicUsize::new(usize::MAX));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|_| {
            let (app, sent, stop_after) = (app.clone(), sent.clone(), stop_after.clone());
            tokio::spawn(async move {
                let mut tasks = Vec::new();
                loop {
                    let n = sent.fetch_add(1, Ordering::Relaxed);
                    if n >= stop_after.load(Ordering::Relaxed) {
                        break;
                    }
                    // 10 ms each on 8 slots: deliveries stay in flight while
                    // the producers publish. The value names the task.
                    let seconds = 0.01 + n as f64 / 1e6;
                    tasks.push(Sent {
                        result: app.send_task("demo.sleep").args((seconds,)).apply().await?,
                        expect: json!(seconds),
                    });
                }
                anyhow::Ok(tasks)
            })
        })
        .collect();
    for round in 1..=times {
        let start = sent.load(Ordering::Relaxed);
        while sent.load(Ordering::Relaxed) < start + 100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let unacked = unacked_deliveries(&queue).await?;
        ensure!(
            unacked > 0,
            "{label}: no delivery in flight at fault {round}; the test would prove nothing"
        );
        println!(
            "{label}: fault {round} with {} tasks sent and {unacked} deliveries unacked",
            sent.load(Ordering::Relaxed)
        );
        tokio::task::spawn_blocking(fault).await??;
    }
    stop_after.store(sent.load(Ordering::Relaxed) + 100, Ordering::Relaxed);
    let mut tasks = Vec::new();
    for producer in producers {
        tasks.extend(producer.await??);
    }
    account(label, &tasks).await?;

    let resent = app.broker().publishes_resent();
    println!("{label}: {resent} publishes cut off before their confirm and sent again");
    ensure!(
        resent > 0,
        "{label}: no publish was cut off before its confirm; the test did not cover that path"
    );
    let producer_reconnects = app.broker().reconnects();
    let (_, page) = http_get(metrics, "/metrics").await?;
    let reconnect_line = page
        .lines()
        .find(|line| line.starts_with("celeriac_broker_reconnects_total{"))
        .unwrap_or_default();
    let worker_reconnects = reconnect_line
        .rsplit(' ')
        .next()
        .and_then(|value| value.parse::<f64>().ok())
        .unwrap_or(0.0);
    println!("{label}: reconnects: producer {producer_reconnects}, worker {worker_reconnects}");
    ensure!(
        producer_reconnects >= times as u64 && worker_reconnects >= times as f64,
        "{label}: {times} faults, but the producer reconnected {producer_reconnects} times \
         and the worker {worker_reconnects} ({reconnect_line:?})"
    );
    // Stop the worker first, or it declares the queue again after cleanup.
    worker.kill().await?;
    cleanup(&app, &queue).await;
    Ok(())
}

/// Deliveries of `queue` the broker has handed out and not yet seen
/// acked, read within a few seconds (0 if none appear).
async fn unacked_deliveries(queue: &str) -> Result<u64> {
    for _ in 0..20 {
        let name = queue.to_owned();
        let stats =
            tokio::task::spawn_blocking(move || queue_stats(&name, &["messages_unacknowledged"]))
                .await??;
        let unacked: u64 = stats.first().map_or(Ok(0), |n| n.parse())?;
        if unacked > 0 {
            return Ok(unacked);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_broker_under_load_lose_nothing() -> Result<()> {
    let _serial = disturbing().await;
    through_fault(
        "fault-close-all",
        || rabbitmqctl(&["close_all_connections", "fault test"]).map(drop),
        3,
        // The reply queue comes back with its client's reconnect: results
        // published meanwhile wait for it (docs/reliability.md).
        "rpc://",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_with_producer_and_worker_running_loses_nothing() -> Result<()> {
    let _serial = disturbing().await;
    through_fault(
        "fault-restart",
        || {
            rabbitmqctl(&["stop_app"])?;
            rabbitmqctl(&["start_app"]).map(drop)
        },
        1,
        // rpc:// replies are transient: a restart drops those still queued
        // (documented), which would count as lost tasks here. Results in
        // Redis outlive the restart, so every task can be accounted for.
        &require_redis()?,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_longer_than_the_consumer_timeout_is_bounded_not_looping() -> Result<()> {
    let _serial = disturbing().await;
    let _timeout = ConsumerTimeout::set(1_000)?;
    let queue = unique("fault-long-task");
    let app = client(&queue).await?;
    let long = app.send_task("demo.sleep").args((3.0,)).apply().await?;
    let mut tasks = Vec::new();
    for i in 0..5 {
        tasks.push(Sent::add(&app, i).await?);
    }
    let _worker = worker(&queue, &["-c", "4", "--redelivery-limit", "1"])?;
    account("long task vs consumer_timeout", &tasks).await?;
    // Each attempt outlives the timeout, RabbitMQ closes the channel and
    // redelivers; the redelivery count stops the loop in the dead-letter queue.
    let dlq = app.broker().config().dead_letter.queue_for(&queue);
    let mut consumer = app
        .broker()
        .consume(ConsumeOptions {
            queues: vec![dlq],
            prefetch: 10,
        })
        .await?;
    let letter = tokio::time::timeout(Duration::from_secs(60), consumer.next())
        .await?
        .context("no dead letter")?;
    ensure!(letter.task(&Default::default())?.headers.id == long.id());
    ensure!(letter.message.headers[REASON_HEADER].as_str() == Some("redelivery_limit"));
    letter.ack().await?;
    consumer.stop();
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_tasks_are_acked_before_a_redelivered_task_runs() -> Result<()> {
    let _serial = disturbing().await;
    let queue = unique("fault-flush-before-suspect");
    let app = client(&queue).await?;
    let mut tasks = Vec::new();
    for i in 0..3 {
        tasks.push(Sent::add(&app, i).await?);
    }
    // Acks are coalesced for up to a minute here, so the three tasks that
    // finish stay unacked until something flushes them: at -c 2 the window
    // is 8 and a batch 4 (half the window), which three do not fill, and
    // the window leaves room for the one that follows.
    let mut w = worker(&queue, &["-c", "2", "--ack-flush-ms", "60000"])?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while ready(&tasks).await < tasks.len() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the healthy tasks did not finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let unacked = queue_stats(&queue, &["messages_unacknowledged"])?;
    ensure!(
        unacked == ["3"],
        "the finished tasks should be waiting for their coalesced ack, got {unacked:?} unacked: \
         the test would prove nothing"
    );
    // A message a worker died on before (it carries the redelivery count)
    // that kills this worker too, as a crash loop does.
    let mut suspect = TaskMessage::new("demo.crash", "flush-suspect");
    suspect.headers.extra.insert(
        celeriac_worker::REDELIVERIES_HEADER.into(),
        celeriac_protocol::HeaderValue::Int(1),
    );
    app.broker().publish("", &queue, &suspect.encode()?).await?;
    tokio::time::timeout(WAIT, w.wait())
        .await
        .context("demo.crash did not end the worker")??;
    // Its acks were sent before it ran: only the crashing message returns.
    let (back, _) = app.broker().queue_counts(&queue).await?.unwrap_or_default();
    ensure!(
        back == 1,
        "{back} messages back on the queue after the crash: the finished tasks' acks were not \
         flushed before the redelivered task ran (only the crashing one should be back)"
    );
    account("flush before a redelivered task", &tasks).await?;
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_delivery_runs_again() -> Result<()> {
    let _serial = disturbing().await;
    let queue = unique("fault-duplicate");
    let app = client(&queue).await?;
    app.broker()
        .declare(&Queue::celery_default(queue.clone()))
        .await?;
    let reply_to = reply_queue(&app)?;
    let mut message =
        TaskMessage::new("demo.add", "the-same-id").with_args(vec![json!(1), json!(2)]);
    message.properties.reply_to = Some(reply_to);
    let raw = message.encode()?;
    let result = app.async_result::<Value>("the-same-id");
    app.result_backend()
        .context("backend")?
        .prepare("the-same-id")
        .await?;
    app.broker().publish("", &queue, &raw).await?;
    app.broker().publish("", &queue, &raw).await?;
    let _worker = worker(&queue, &["-c", "1"])?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while result.history().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // At-least-once: a message delivered twice runs twice (documented).
    ensure!(
        result.history() == [State::Success, State::Success],
        "{:?}",
        result.history()
    );
    cleanup(&app, &queue).await;
    Ok(())
}

/// Restores the memory high watermark when dropped.
struct Watermark(String);

impl Drop for Watermark {
    fn drop(&mut self) {
        restore_broker(&["set_vm_memory_high_watermark", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_to_a_broker_under_a_memory_alarm_is_never_a_false_success() -> Result<()> {
    let _serial = disturbing().await;
    let queue = Queue::celery_default(unique("fault-memory"));
    let mut config = BrokerConfig::from_url(&broker_url())?;
    config.confirm_timeout = Duration::from_secs(3);
    config.publish_wait = Duration::from_secs(3);
    let broker = celeriac_broker::Broker::connect(config).await?;
    broker.declare(&queue).await?;
    let raw = TaskMessage::new("demo.add", "during-alarm").encode()?;
    let outcome = {
        let current = rabbitmqctl(&["eval", "vm_memory_monitor:get_vm_memory_high_watermark()."])?;
        let _restore = Watermark(current.trim().to_owned());
        rabbitmqctl(&["set_vm_memory_high_watermark", "0.00001"])?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        broker.publish("", &queue.name, &raw).await
    };
    let err = outcome
        .err()
        .context("a publish was confirmed while the broker blocked publishers")?;
    println!("under a memory alarm: {err}");
    // Not just any failure: the error must say why (the broker blocked
    // publishing for low memory), so an operator knows what to fix.
    ensure!(
        matches!(
            &err,
            BrokerError::ConfirmTimeout { blocked: Some(reason), .. } if reason.contains("memory")
        ),
        "the error does not say the broker blocked publishing for low memory: {err:?}"
    );
    // Once the alarm clears, publishing works again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match broker.publish("", &queue.name, &raw).await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() < deadline => println!("still recovering: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    let _ = broker.delete_queue(&queue.name).await;
    let _ = broker.delete_exchange(&queue.name).await;
    broker.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_publish_is_an_error() -> Result<()> {
    let _serial = disturbing().await;
    let app = client(&unique("fault-unroutable")).await?;
    let err = app
        .send_task("demo.add")
        .exchange("amq.direct")
        .routing_key(unique("nobody"))
        .apply()
        .await
        .err()
        .context("an unroutable task was reported as sent")?;
    ensure!(err.to_string().contains("unroutable"), "{err}");
    app.close().await;
    Ok(())
}
