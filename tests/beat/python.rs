//! celeriac-beat sending to the real RabbitMQ, and a Python Celery 5.7
//! worker running what it sends.

use std::time::Duration;

use anyhow::{Result, ensure};
use celeriac::App;
use celeriac_beat::{Beat, schedule};
use celeriac_tests::{PythonWorker, broker_url, unique};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_runs_what_beat_sends() -> Result<()> {
    let queue = unique("beat-python");
    let worker = PythonWorker::start(&queue).await?;
    let entries = schedule::parse(&format!(
        "[entries.add]\ntask = \"interop.add\"\nevery = 0.5\nargs = [20, 22]\noptions = {{ queue = \"{queue}\" }}\n"
    ))
    .map_err(anyhow::Error::msg)?;
    let app = App::builder().broker_url(broker_url()).build().await?;
    let cluster = unique("beat-cluster");
    let stop = CancellationToken::new();
    let beat = tokio::spawn(
        Beat::new(app.clone(), entries, cluster.clone()).run_until(stop.clone().cancelled_owned()),
    );

    // The Python worker logs each task it runs; wait for three.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let succeeded = loop {
        let log = worker.log();
        let done = log
            .lines()
            .filter(|l| {
                l.contains("interop.add[") && l.contains("succeeded") && l.ends_with(": 42")
            })
            .count();
        if done >= 3 || tokio::time::Instant::now() > deadline {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.cancel();
    beat.await?.map_err(anyhow::Error::msg)?;
    if succeeded < 3 {
        println!("--- Python worker log ---\n{}", worker.log());
    }
    let _ = app.broker().delete_queue(&queue).await;
    let _ = app.broker().delete_exchange(&queue).await;
    let _ = app
        .broker()
        .delete_queue(&format!("celeriac.beat.{cluster}.state"))
        .await;
    app.close().await;
    ensure!(
        succeeded >= 3,
        "the Python worker ran {succeeded} of the beat's tasks"
    );
    Ok(())
}

/// Runs a beat (own connection) until `ticks` messages arrived on `queue`,
/// then stops it and closes its connection (releasing the lock).
async fn run_beat_for(
    consumer: &mut celeriac_broker::Consumer,
    entries: Vec<schedule::Entry>,
    cluster: &str,
    state: &std::path::Path,
    ticks: usize,
    dues: &mut Vec<String>,
) -> Result<()> {
    let app = App::builder().broker_url(broker_url()).build().await?;
    let stop = CancellationToken::new();
    let beat = Beat::new(app.clone(), entries, cluster).state_file(state.to_path_buf());
    let running = tokio::spawn(beat.run_until(stop.clone().cancelled_owned()));
    for _ in 0..ticks {
        let delivery = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))?;
        let due = delivery
            .message
            .headers
            .get(celeriac_beat::DUE_HEADER)
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        dues.push(due.to_owned());
        delivery.ack().await?;
    }
    stop.cancel();
    running.await?.map_err(anyhow::Error::msg)?;
    app.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_beat_neither_repeats_nor_loses_its_place() -> Result<()> {
    let queue = celeriac_broker::Queue::celery_default(unique("beat-restart"));
    let cluster = unique("beat-restart-cluster");
    let state = std::env::temp_dir().join(format!("{cluster}.json"));
    let entries = schedule::parse(&format!(
        "[entries.tick]\ntask = \"beat.tick\"\nevery = 0.3\noptions = {{ queue = \"{}\" }}\n",
        queue.name
    ))
    .map_err(anyhow::Error::msg)?;
    let app = App::builder().broker_url(broker_url()).build().await?;
    app.broker().declare(&queue).await?;
    let mut consumer = app
        .broker()
        .consume(celeriac_broker::ConsumeOptions {
            queues: vec![queue.clone()],
            prefetch: 50,
        })
        .await?;
    let mut dues = Vec::new();
    run_beat_for(
        &mut consumer,
        entries.clone(),
        &cluster,
        &state,
        4,
        &mut dues,
    )
    .await?;
    let before_restart = dues.len();
    // Down for a while: ticks come due meanwhile.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    run_beat_for(&mut consumer, entries, &cluster, &state, 4, &mut dues).await?;

    let mut sorted = dues.clone();
    sorted.sort();
    sorted.dedup();
    ensure!(
        sorted.len() == dues.len(),
        "a tick was sent twice: {dues:?}"
    );
    ensure!(
        dues.windows(2).all(|w| w[0] < w[1]),
        "ticks out of order: {dues:?}"
    );
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis());
    let (last_before, first_after) = (
        parse(&dues[before_restart - 1])?,
        parse(&dues[before_restart])?,
    );
    // The missed ticks are sent once (catch_up = run_once), on the 0.3 s grid.
    ensure!(
        (first_after - last_before) % 300 == 0,
        "the restart lost the schedule's grid: {dues:?}"
    );
    ensure!(
        std::fs::read_to_string(&state)?.contains("tick"),
        "the state file was written"
    );

    consumer.stop();
    let _ = app.broker().delete_queue(&queue.name).await;
    let _ = app.broker().delete_exchange(&queue.name).await;
    let _ = app
        .broker()
        .delete_queue(&format!("celeriac.beat.{cluster}.state"))
        .await;
    app.close().await;
    let _ = std::fs::remove_file(&state);
    Ok(())
}
