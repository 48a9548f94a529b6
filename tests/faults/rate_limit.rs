//! Rate limits measured alone: a limited task keeps its rate on this
//! worker without holding up the task types queued with it, and nothing is
//! lost on the way through the delay queues it waits in. (Its checks are
//! timings; `tests/worker/rate_limit.rs` has the rest of the rate-limit
//! tests.)

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::{App, TaskCall};
use celeriac_demo::tasks as demo;
use celeriac_tests::worker::{RunningWorker, busiest_second, cleanup};
use celeriac_tests::{broker_url, disturbing, require_redis, unique};
use celeriac_worker::WorkerConfig;
use serde_json::{Value, json};

/// The limited task's rate, per second.
const RATE: f64 = 20.0;
/// Runs of the limited task: ten seconds' worth.
const LIMITED: usize = 200;
/// Runs of the unlimited task sent behind them.
const OTHERS: usize = 2_000;

/// The demo app storing results in `redis`.
async fn demo_app(redis: &str) -> Result<App> {
    Ok(demo::register(App::builder())
        .broker_url(broker_url())
        .result_backend(redis)
        .build()
        .await?)
}

/// Wall-clock now, in Unix seconds (as `demo.now` reports).
fn unix_now() -> f64 {
    chrono::Utc::now().timestamp_micros() as f64 / 1e6
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_task_keeps_its_rate_and_holds_up_no_other_task() -> Result<()> {
    // Alone: its checks are timings, and beside the worker binary's other
    // tests a slow 2-core host hands deferred deliveries back late (before
    // starts were checked, that bunched them to 25.7/s over the middle
    // 80 %, 57 runs in one second).
    let _alone = disturbing().await;
    let redis = require_redis()?;
    let queue = unique("rate-limit");
    let app = demo_app(&redis).await?;
    let config = WorkerConfig {
        queues: vec![queue.clone()],
        concurrency: 8,
        rate_limits: [("demo.now".to_owned(), format!("{RATE}/s"))].into(),
        ..WorkerConfig::default()
    };
    let worker = RunningWorker::run(app.clone(), config);
    let reader = demo_app(&redis).await?;
    // A worker that has been up a moment: its delay topology is declared
    // (in the background as it starts, about a second).
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The limited tasks first, so that a worker keeping them in its
    // prefetch window would have nothing else to run for ten seconds.
    let limited = reader
        .send_many((0..LIMITED).map(|_| TaskCall::<f64>::new("demo.now", vec![]).queue(&queue)))
        .await?;
    let others =
        reader
            .send_many((0..OTHERS).map(|i| {
                TaskCall::<Value>::new("demo.add", vec![json!(i), json!(1)]).queue(&queue)
            }))
            .await?;

    for (i, other) in others.iter().enumerate() {
        let sum = other
            .get(Duration::from_secs(60))
            .await
            .with_context(|| format!("demo.add #{i} has no result"))?;
        ensure!(sum == json!(i + 1), "demo.add #{i} returned {sum}");
    }
    let others_done = unix_now();

    let mut times = Vec::with_capacity(LIMITED);
    for (i, task) in limited.iter().enumerate() {
        let ran = task
            .get(Duration::from_secs(60))
            .await
            .with_context(|| format!("demo.now #{i} has no result"))?;
        times.push(ran);
    }
    times.sort_by(f64::total_cmp);
    let before_others_done = times.iter().filter(|&&ran| ran <= others_done).count();
    let span = times[LIMITED - 1] - times[0];
    let overall = (LIMITED - 1) as f64 / span;
    // The first second's runs were held in the worker; the slots between
    // them and the first deferred one (1.5 s out) go unused, so the rate
    // is measured from the first deferred run on.
    let deferred = &times[times.partition_point(|&ran| ran < times[0] + 1.0)..];
    // Between the deferred runs' 10th and 90th percentiles: the delay
    // queues hand some deliveries back late on a loaded host, and a late
    // one runs at once, so a late first (or last) run alone would shrink
    // (or stretch) the whole span (seen in CI: 22.1/s from the first
    // deferred run to the last).
    let (from, to) = (deferred.len() / 10, deferred.len() * 9 / 10);
    let steady = (to - from) as f64 / (deferred[to] - deferred[from]);
    let busiest = busiest_second(&times);
    let summary = worker.stop().await?;
    println!(
        "{LIMITED} runs limited to {RATE}/s took {span:.2} s ({overall:.2}/s; {steady:.2}/s \
         after the first second, middle 80 %; at most {busiest} in one second); {before_others_done} of \
         them had run when the {OTHERS} others were done; {} deferrals",
        summary.rate_deferred
    );
    ensure!(
        (RATE * 0.9..=RATE * 1.1).contains(&steady),
        "the limited task ran at {steady:.2}/s, not within 10% of {RATE}/s"
    );
    // And no burst at either end that the middle would not show: from the
    // first deferred run to the last, late hand-backs allowed for (the CI
    // run above measured 22.1/s).
    let end_to_end = (deferred.len() - 1) as f64 / (deferred[deferred.len() - 1] - deferred[0]);
    ensure!(
        end_to_end <= RATE * 1.25,
        "the limited task ran at {end_to_end:.2}/s from its first deferred run to its last, \
         over {RATE}/s by more than late hand-backs explain"
    );
    // However late the delay queues hand deliveries back, starts stay an
    // interval apart (less up to half an interval a late waiter is
    // credited): at most 21 in a second at 20/s, one more allowed for a
    // task reading the clock a moment after its start. (Before starts were
    // checked, 57 in one second were seen on a loaded host.)
    ensure!(
        busiest <= RATE as usize + 2,
        "{busiest} runs of the limited task started within one second at {RATE}/s"
    );
    ensure!(
        before_others_done < LIMITED / 2,
        "the other tasks waited for the limited ones: {before_others_done} of {LIMITED} \
         limited runs came before the last of the {OTHERS} others"
    );
    ensure!(
        summary.succeeded == (LIMITED + OTHERS) as u64
            && summary.failed == 0
            && summary.dead_lettered == 0
            && summary.redelivered == 0,
        "expected {} runs, nothing failed, dead-lettered or redelivered; the worker says \
         {summary:?}",
        LIMITED + OTHERS
    );
    ensure!(
        summary.rate_deferred > 0,
        "no limited task was deferred: they all waited in the prefetch window ({summary:?})"
    );
    cleanup(&reader, &queue).await;
    Ok(())
}
