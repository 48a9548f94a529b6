//! Global limits. Concurrency: a cap per key holds across two workers,
//! every key progresses, and the leases of a worker killed with SIGKILL
//! free up when they expire. Rate: two workers together keep one rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use celeriac::{App, TaskCall, task};
use celeriac_demo::tasks as demo;
use celeriac_tests::worker::{RunningWorker, binary, cleanup};
use celeriac_tests::{broker_url, require_redis, unique};
use celeriac_worker::{Summary, WorkerConfig};
use serde_json::{Value, json};

/// The cap per account.
const CAP: u32 = 3;
/// Runs of the hot account, queued first: at three at a time, 2.4 s of
/// work.
const HOT_BACKLOG: u32 = 48;

/// One account's runs: going on now, the most at once, when the last ended.
type Runs = (u32, u32, Option<Instant>);

/// Per account, its runs.
static RUNNING: Mutex<Option<HashMap<u32, Runs>>> = Mutex::new(None);

/// Records a run of `account` starting (`+1`) or ending (`-1`).
fn record(account: u32, change: i32) {
    let mut running = RUNNING.lock().unwrap();
    let entry = running
        .get_or_insert_with(HashMap::new)
        .entry(account)
        .or_insert((0, 0, None));
    if change > 0 {
        entry.0 += 1;
        entry.1 = entry.1.max(entry.0);
    } else {
        entry.0 -= 1;
        entry.2 = Some(Instant::now());
    }
}

/// Work that must not run more than three at once per account.
#[task(
    name = "tests.limits.sync_account",
    global_concurrency = 3,
    limit_key = "account"
)]
async fn sync_account(account: u32, order: u32) -> u32 {
    record(account, 1);
    tokio::time::sleep(Duration::from_millis(150)).await;
    record(account, -1);
    order
}

/// A worker of its own app (its own connections and leases) on `queue`.
async fn limited_worker(queue: &str, redis: &str, name: &str) -> Result<RunningWorker> {
    let app = App::builder()
        .broker_url(broker_url())
        .result_backend(redis)
        .task(sync_account)
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![queue.to_owned()],
        concurrency: 8,
        hostname: format!("{name}@{queue}"),
        ..WorkerConfig::default()
    };
    Ok(RunningWorker::run(app, config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_per_key_holds_across_two_workers_and_every_key_progresses() -> Result<()> {
    let redis = require_redis()?;
    let queue = unique("global-limits");
    let first = limited_worker(&queue, &redis, "first").await?;
    let second = limited_worker(&queue, &redis, "second").await?;
    let producer = App::builder()
        .broker_url(broker_url())
        .result_backend(&redis)
        .build()
        .await?;
    // Workers that have been up a moment (consuming, connected to Redis).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Accounts of this run only (leases are kept by account across runs).
    let hot = std::process::id() * 10;
    let light = [hot + 1, hot + 2, hot + 3];
    // The hot account's backlog first: the light accounts queue behind it.
    let mut calls = Vec::new();
    for order in 0..HOT_BACKLOG {
        calls.push((hot, order));
    }
    for order in 0..4 {
        for account in light {
            calls.push((account, order));
        }
    }
    let started = Instant::now();
    let sent = producer
        .send_many(calls.iter().map(|&(account, order)| {
            TaskCall::<Value>::new(
                "tests.limits.sync_account",
                vec![json!(account), json!(order)],
            )
            .queue(&queue)
        }))
        .await?;
    for (result, &(account, order)) in sent.iter().zip(&calls) {
        let value = result
            .get(Duration::from_secs(60))
            .await
            .with_context(|| format!("account {account} order {order} has no result"))?;
        ensure!(
            value == json!(order),
            "account {account} order {order} returned {value}"
        );
    }
    let summaries: Vec<Summary> = vec![first.stop().await?, second.stop().await?];

    let running = RUNNING.lock().unwrap().clone().unwrap_or_default();
    let done_after = |account: u32| {
        running
            .get(&account)
            .and_then(|entry| entry.2)
            .map_or(f64::NAN, |at| at.duration_since(started).as_secs_f64())
    };
    println!(
        "the most at once: hot account {}, light accounts {:?}; last done after: hot {:.2} s, \
         light {:?}; deferrals {}",
        running.get(&hot).map_or(0, |e| e.1),
        light.map(|a| running.get(&a).map_or(0, |e| e.1)),
        done_after(hot),
        light.map(|a| format!("{:.2} s", done_after(a))),
        summaries.iter().map(|s| s.limit_deferred).sum::<u64>()
    );
    for (account, (_, most, _)) in &running {
        if *account == hot || light.contains(account) {
            ensure!(
                *most <= CAP,
                "account {account} ran {most} at once across the two workers (cap {CAP})"
            );
        }
    }
    ensure!(
        running.get(&hot).is_some_and(|e| e.1 == CAP),
        "the hot account never reached its cap: the test did not exercise the limit"
    );
    // Fairness: the light accounts, queued behind the hot one's backlog,
    // are done before it (its runs at three at a time take 2.4 s).
    for account in light {
        ensure!(
            done_after(account) < done_after(hot),
            "light account {account} waited for the hot account's backlog"
        );
    }
    let succeeded: u64 = summaries.iter().map(|s| s.succeeded).sum();
    ensure!(
        succeeded == calls.len() as u64 && summaries.iter().all(|s| s.dead_lettered == 0),
        "{summaries:?}"
    );
    cleanup(&producer, &queue).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leases_of_a_killed_worker_free_up_when_they_expire() -> Result<()> {
    let redis = require_redis()?;
    let queue = unique("global-leases");
    let key = unique("k");
    let lease = "3";
    let mut killed = tokio::process::Command::new(binary("celeriac-demo")?)
        .args([
            "limits-worker",
            "--broker",
            &broker_url(),
            "--result-backend",
            &redis,
        ])
        .args(["-Q", &queue, "--loglevel", "error", "--global-lease", lease])
        .args(["-n", &format!("killed@{queue}")])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting celeriac-demo limits-worker")?;
    let producer = demo::register_limited(App::builder())
        .broker_url(broker_url())
        .result_backend(&redis)
        .build()
        .await?;
    let leases = producer
        .result_backend()
        .and_then(|backend| backend.leases())
        .context("the Redis backend keeps no leases")?;
    let limit = format!("demo.hold:key={key}");

    let held = [
        demo::hold::new(key.clone(), 4.0)
            .queue(&queue)
            .apply_async(&producer)
            .await?,
        demo::hold::new(key.clone(), 4.0)
            .queue(&queue)
            .apply_async(&producer)
            .await?,
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    while leases.held(&limit).await? < 2 {
        ensure!(
            Instant::now() < deadline,
            "the worker never took its two leases"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed.start_kill()?;
    killed.wait().await?;
    let killed_at = Instant::now();
    ensure!(
        leases.held(&limit).await? == 2,
        "the killed worker's leases vanished with it, so this test proves nothing"
    );

    // Another worker gets the two tasks back, and runs them once the dead
    // worker's leases have expired.
    let app = demo::register_limited(App::builder())
        .broker_url(broker_url())
        .result_backend(&redis)
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![queue.clone()],
        global_lease: Duration::from_secs(3),
        ..WorkerConfig::default()
    };
    let worker = RunningWorker::run(app, config);
    let mut first_done = None;
    for task in &held {
        task.get(Duration::from_secs(60))
            .await
            .context("a task whose lease a killed worker held never ran")?;
        first_done.get_or_insert_with(|| killed_at.elapsed());
    }
    let summary = worker.stop().await?;
    let first_done = first_done.unwrap_or_default();
    println!("first task done {first_done:?} after the kill; {summary:?}");
    // The dead worker renewed its leases every second: they expired 2 to
    // 3 s after the kill, and the 4 s tasks could not start before. Run at
    // once, ignoring them, the first would be done about 4 s after it.
    ensure!(
        first_done >= Duration::from_millis(5_500),
        "a task ran {first_done:?} after the kill: it did not wait for the dead worker's leases"
    );
    ensure!(summary.succeeded == 2, "{summary:?}");
    // Leases are given back as their runs end, in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while leases.held(&limit).await? > 0 {
        ensure!(
            Instant::now() < deadline,
            "leases are still held 10 s after every task finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cleanup(&producer, &queue).await;
    Ok(())
}

/// The global rate of `call_partner`, per second.
const GLOBAL_RATE: f64 = 10.0;

/// When each `call_partner` ran (Unix seconds).
static CALLS: Mutex<Vec<f64>> = Mutex::new(Vec::new());

/// A partner API allowing ten calls a second per tenant, whichever worker
/// makes them.
#[task(
    name = "tests.limits.call_partner",
    global_rate_limit = "10/s",
    limit_key = "tenant"
)]
async fn call_partner(tenant: u32, order: u32) -> u32 {
    let _ = tenant;
    CALLS
        .lock()
        .unwrap()
        .push(chrono::Utc::now().timestamp_micros() as f64 / 1e6);
    order
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_together_keep_one_global_rate() -> Result<()> {
    let redis = require_redis()?;
    let queue = unique("global-rate");
    let mut workers = Vec::new();
    for name in ["first", "second"] {
        let app = App::builder()
            .broker_url(broker_url())
            .result_backend(&redis)
            .task(call_partner)
            .build()
            .await?;
        let config = WorkerConfig {
            queues: vec![queue.clone()],
            concurrency: 8,
            hostname: format!("{name}@{queue}"),
            ..WorkerConfig::default()
        };
        workers.push(RunningWorker::run(app, config));
    }
    let producer = App::builder()
        .broker_url(broker_url())
        .result_backend(&redis)
        .build()
        .await?;
    // Workers that have been up a moment (their delay queues declared).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // A tenant of this run only (schedules are kept by tenant).
    let tenant = std::process::id();
    let count = 60;
    let sent = producer
        .send_many((0..count).map(|order| {
            TaskCall::<Value>::new(
                "tests.limits.call_partner",
                vec![json!(tenant), json!(order)],
            )
            .queue(&queue)
        }))
        .await?;
    for result in &sent {
        result.get(Duration::from_secs(60)).await?;
    }
    let mut summaries = Vec::new();
    for worker in workers {
        summaries.push(worker.stop().await?);
    }
    let mut times = CALLS.lock().unwrap().clone();
    times.sort_by(f64::total_cmp);
    // Runs are one interval apart, but for one gap: as for a per-worker
    // limit, the slots between the last held one and the first deferred
    // one (1.5 s out) go unused. So the rate is read from the median gap,
    // and the whole span must not be faster than the limit.
    let mut gaps: Vec<f64> = times.windows(2).map(|pair| pair[1] - pair[0]).collect();
    gaps.sort_by(f64::total_cmp);
    let steady = 1.0 / gaps[gaps.len() / 2];
    let overall = (times.len() - 1) as f64 / (times[times.len() - 1] - times[0]);
    let busiest = celeriac_tests::worker::busiest_second(&times);
    let ran_on: Vec<u64> = summaries.iter().map(|s| s.succeeded).collect();
    println!(
        "{count} calls limited to {GLOBAL_RATE}/s across two workers: {steady:.2}/s (median \
         gap), {overall:.2}/s over the whole run, at most {busiest} in one second; runs per \
         worker {ran_on:?}"
    );
    ensure!(times.len() == count as usize, "{} calls ran", times.len());
    ensure!(
        (GLOBAL_RATE * 0.9..=GLOBAL_RATE * 1.1).contains(&steady),
        "two workers ran {steady:.2}/s together, not within 10% of {GLOBAL_RATE}/s"
    );
    ensure!(
        busiest as f64 <= GLOBAL_RATE * 1.25 && overall <= GLOBAL_RATE * 1.1,
        "faster than the limit: {busiest} calls within one second, {overall:.2}/s overall"
    );
    ensure!(
        ran_on.iter().all(|&runs| runs > 0),
        "one worker ran every call, so the rate was not shared: {ran_on:?}"
    );
    cleanup(&producer, &queue).await;
    Ok(())
}

/// The header a delivery deferred for its global rate limit carries its
/// slot in (microseconds since the Unix epoch, the store's clock).
const GLOBAL_SLOT_HEADER: &str = "x-celeriac-global-slot";

/// A partner API call that says when it ran (Unix seconds).
#[task(
    name = "tests.limits.timed_partner_call",
    global_rate_limit = "10/s",
    limit_key = "tenant"
)]
async fn timed_partner_call(tenant: u32) -> f64 {
    let _ = tenant;
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_back_late_for_their_global_slots_start_one_interval_apart() -> Result<()> {
    // As for a per-worker rate (tests/worker/rate_limit.rs): thirty
    // deliveries come back together with their slots (in the store's
    // schedule) already passed, 2 s to 0.55 s ago. Each may run as far as
    // its slot goes; on one worker, their starts must still be spaced.
    const RUNS: usize = 30;
    let redis = require_redis()?;
    let queue = unique("global-rate-late");
    let app = App::builder()
        .broker_url(broker_url())
        .result_backend(&redis)
        .task(timed_partner_call)
        .build()
        .await?;
    // A tenant of this run only (schedules are kept by tenant).
    let tenant = std::process::id() ^ 0x5a5a;
    let sent = celeriac_tests::worker::send_back_late(&app, RUNS, GLOBAL_SLOT_HEADER, || {
        TaskCall::new("tests.limits.timed_partner_call", vec![json!(tenant)]).queue(&queue)
    })
    .await?;
    let config = WorkerConfig {
        queues: vec![queue.clone()],
        concurrency: 8,
        ..WorkerConfig::default()
    };
    let worker = RunningWorker::run(app.clone(), config);
    // Unspaced, all thirty start at once.
    let spaced = celeriac_tests::worker::ensure_starts_spaced(
        "late deliveries (global)",
        &sent,
        GLOBAL_RATE,
    )
    .await;
    let summary = worker.stop().await?;
    spaced?;
    ensure!(
        summary.succeeded == RUNS as u64 && summary.failed == 0 && summary.dead_lettered == 0,
        "expected {RUNS} runs, none failed or dead-lettered; the worker says {summary:?}"
    );
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_refuses_global_limits_it_cannot_keep() -> Result<()> {
    let redis = require_redis()?;
    // (backend, register the rated task rather than the capped one,
    // expected refusal)
    let cases = [
        (
            "rpc://",
            false,
            "tests.limits.sync_account has global_concurrency",
        ),
        (
            "rpc://",
            true,
            "tests.limits.call_partner has global_rate_limit",
        ),
        (
            redis.as_str(),
            true,
            "both a global_rate_limit and a per-worker rate_limit",
        ),
    ];
    for (backend, rated, expected) in cases {
        let builder = App::builder()
            .broker_url(broker_url())
            .result_backend(backend);
        let builder = if rated {
            builder.task(call_partner)
        } else {
            builder.task(sync_account)
        };
        let app = builder.build().await?;
        let local_rate = (rated && backend != "rpc://").then_some("tests.limits.call_partner");
        let config = WorkerConfig {
            queues: vec![unique("global-refused")],
            rate_limits: local_rate
                .map(|task| (task.to_owned(), "1/s".to_owned()))
                .into_iter()
                .collect(),
            ..WorkerConfig::default()
        };
        let started = celeriac_worker::Worker::new(app.clone(), config)
            .run_until(async {})
            .await;
        match started {
            Err(celeriac_worker::WorkerError::Config(why)) if why.contains(expected) => {}
            other => anyhow::bail!("expected a refusal saying {expected:?}, got {other:?}"),
        }
        app.close().await;
    }
    Ok(())
}
