//! `celeriac-beat --metrics-addr`: ticks sent and their lateness, the
//! leader gauge, and the probes, read over HTTP from a running beat.

use std::time::Duration;

use anyhow::{Result, ensure};
use celeriac::App;
use celeriac_beat::{Beat, schedule};
use celeriac_tests::scrape::{free_local_addr, http_get, sample, wait_for_listener};
use celeriac_tests::{broker_url, unique};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_metrics_count_its_ticks_and_say_it_leads() -> Result<()> {
    let queue = unique("beat-metrics");
    let entries = schedule::parse(&format!(
        "[entries.tick]\ntask = \"demo.add\"\nevery = 0.5\nargs = [1, 2]\noptions = {{ queue = \"{queue}\" }}\n"
    ))
    .map_err(anyhow::Error::msg)?;
    let app = App::builder().broker_url(broker_url()).build().await?;
    let addr = free_local_addr()?;
    let stop = CancellationToken::new();
    let cluster = unique("beat-metrics-cluster");
    let beat = Beat::new(app.clone(), entries, cluster.clone()).metrics_addr(addr);
    let metrics = beat.metrics();
    let beat = tokio::spawn(beat.run_until(stop.clone().cancelled_owned()));
    wait_for_listener(addr).await?;

    // Read until three ticks are counted (every 0.5 s).
    let sent = r#"celeriac_beat_ticks_sent_total{entry="tick"}"#;
    let mut text = String::new();
    for _ in 0..100 {
        text = http_get(addr, "/metrics").await?.1;
        if sample(&text, sent).is_some_and(|n| n >= 3.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ticks = sample(&text, sent);
    ensure!(
        ticks.is_some_and(|n| n >= 3.0),
        "ticks sent: {ticks:?}\n{text}"
    );
    ensure!(sample(&text, "celeriac_beat_leader") == Some(1.0), "{text}");
    let (status, body) = http_get(addr, "/readyz").await?;
    ensure!(status == 200, "/readyz: {status} {body}");

    // Stopped, the counts hold still: one lateness observation per tick.
    stop.cancel();
    beat.await??;
    let text = metrics.render();
    let ticks = sample(&text, sent);
    ensure!(
        ticks.is_some() && sample(&text, "celeriac_beat_lateness_seconds_count") == ticks,
        "one lateness observation per tick sent:\n{text}"
    );
    ensure!(
        sample(&text, r#"celeriac_beat_send_failures_total{entry="tick"}"#).is_none(),
        "a send failed:\n{text}"
    );
    ensure!(
        sample(&text, "celeriac_beat_leader") == Some(0.0),
        "a stopped beat still says it leads:\n{text}"
    );
    let _ = app.broker().delete_queue(&queue).await;
    let _ = app.broker().delete_exchange(&queue).await;
    let _ = app
        .broker()
        .delete_queue(&format!("celeriac.beat.{cluster}.state"))
        .await;
    app.close().await;
    Ok(())
}
