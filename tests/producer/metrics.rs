//! A producer's own metrics (`App::metrics`), read back exactly: tasks sent
//! by name and queue, sends that failed by reason, and one confirm-latency
//! observation per send call or batch.

use anyhow::{Result, ensure};
use celeriac::metrics::SendMetrics;
use celeriac::{App, TaskCall};
use celeriac_broker::Queue;
use celeriac_tests::scrape::sample;
use celeriac_tests::worker::cleanup;
use celeriac_tests::{broker_url, unique};
use serde_json::{Value, json};

#[tokio::test]
async fn a_producer_counts_what_it_sent_and_what_failed() -> Result<()> {
    let queue = unique("producer-metrics");
    let app = App::builder()
        .broker_url(broker_url())
        .queue(Queue::celery_default(queue.clone()))
        .default_queue(queue.clone())
        .build()
        .await?;
    let metrics = app.metrics();
    ensure!(metrics.is_enabled(), "App::metrics() turns them on");
    ensure!(
        !SendMetrics::default().is_enabled(),
        "the default records nothing"
    );

    for i in 0..3 {
        app.send_task("metrics.single").args((i,)).apply().await?;
    }
    let batch = (0..2).map(|i| TaskCall::<Value>::new("metrics.batched", vec![json!(i)]));
    app.send_many(batch).await?;
    let not_an_array = app.send_task("metrics.single").args(5).apply().await;
    ensure!(
        matches!(not_an_array, Err(celeriac::Error::Arguments { .. })),
        "{not_an_array:?}"
    );
    let nobody_bound = app
        .send_task("metrics.lost")
        .exchange("amq.direct")
        .routing_key(unique("nobody-bound"))
        .apply()
        .await;
    ensure!(
        nobody_bound
            .as_ref()
            .is_err_and(|err| celeriac::metrics::send_error_reason(err) == "unroutable"),
        "a publish nobody is bound to: {nobody_bound:?}"
    );
    // A unique call this app cannot lock (it has no result store) fails in
    // a batch, and is counted as a failed send there too.
    let unlockable = app
        .send_many([TaskCall::<Value>::new("metrics.unique", vec![])
            .unique_for(std::time::Duration::from_secs(60))])
        .await;
    let Err(unlockable) = unlockable else {
        anyhow::bail!("a unique call without a result store was sent: {unlockable:?}");
    };
    let unlockable_reason = celeriac::metrics::send_error_reason(&unlockable);

    let text = metrics.render();
    let host = app.origin().split_once('@').map_or("", |(_, host)| host);
    let sent = |name: &str| {
        format!(r#"celery_task_sent_total{{name="{name}",hostname="{host}",queue_name="{queue}"}}"#)
    };
    let failed = |name: &str, reason: &str| {
        format!(
            r#"celeriac_task_send_errors_total{{name="{name}",hostname="{host}",reason="{reason}"}}"#
        )
    };
    let latency = |kind: &str| {
        format!(r#"celeriac_task_send_seconds_count{{hostname="{host}",kind="{kind}"}}"#)
    };
    let expected = [
        (sent("metrics.single"), 3.0),
        (sent("metrics.batched"), 2.0),
        (failed("metrics.single", "arguments"), 1.0),
        (failed("metrics.lost", "unroutable"), 1.0),
        (failed("metrics.unique", unlockable_reason), 1.0),
        (latency("task"), 3.0),
        (latency("batch"), 1.0),
        (
            format!(r#"celeriac_broker_reconnects_total{{hostname="{host}"}}"#),
            0.0,
        ),
    ];
    for (series, want) in &expected {
        let got = sample(&text, series);
        ensure!(
            got == Some(*want),
            "{series} = {got:?}, want {want}:\n{text}"
        );
    }
    ensure!(
        !text.contains(r#"celery_task_sent_total{name="metrics.lost""#),
        "an unroutable send is not counted as sent:\n{text}"
    );
    cleanup(&app, &queue).await;
    Ok(())
}
