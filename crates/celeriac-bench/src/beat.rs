//! Scenario 6: how late periodic sends arrive, measured on many
//! every-second entries at once instead of minutes of one entry: the
//! Celeriac beat against a raw lapin loop that sleeps until each second and
//! publishes the same number of messages with confirms.

// The raw-lapin baselines: the one place outside celeriac-broker that
// uses lapin (see clippy.toml).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;

use anyhow::{Context as _, bail};
use celeriac::App;
use celeriac_beat::{Beat, DUE_HEADER};
use celeriac_broker::{Broker, ConsumeOptions, Consumer, Queue};
use celeriac_protocol::HeaderValue;
use celeriac_protocol::time::{format_time, parse_time};
use chrono::{DateTime, Utc};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tokio::sync::oneshot;

use crate::plan::task_message;
use crate::raw::check_ack;

/// The longest wait for the next send before the scenario gives up.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a beat with `entries` entries of `every = 1` sending to `queue`
/// until `sends` messages have arrived; returns, per message, the time from
/// its due time (the beat's due header) to its delivery to a consumer on
/// `queue`, in milliseconds.
pub(crate) async fn beat_lateness_ms(
    url: &str,
    broker: &Broker,
    queue: &str,
    entries: usize,
    sends: u64,
) -> anyhow::Result<Vec<f64>> {
    let consumer = consume(broker, queue).await?;
    let app = App::builder()
        .broker_url(url)
        .default_queue(queue)
        .build()
        .await?;
    let cluster = format!("celeriac-bench.{}", std::process::id());
    let schedule = celeriac_beat::schedule::parse(&schedule_toml(entries, queue))
        .map_err(anyhow::Error::msg)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let beat = tokio::spawn(Beat::new(app.clone(), schedule, cluster.clone()).run_until(
        async move {
            let _ = stopped.await;
        },
    ));

    let samples = collect_lateness(consumer, sends).await;
    let _ = stop.send(());
    let beat_outcome = beat.await;
    app.close().await;
    let state_queue = format!("celeriac.beat.{cluster}.state");
    if let Err(e) = broker.delete_queue(&state_queue).await {
        eprintln!("warning: could not delete the beat's state queue {state_queue}: {e}");
    }
    let samples = samples?;
    match beat_outcome {
        Ok(Ok(())) => Ok(samples),
        Ok(Err(e)) => bail!("the beat failed: {e}"),
        Err(e) => bail!("the beat panicked: {e}"),
    }
}

/// The baseline: lapin alone sleeps until each whole second after the
/// start and publishes `per_second` persistent task messages with confirms
/// (all in flight at once), until `sends` have arrived on `queue`; returns
/// the same due → delivered times as [`beat_lateness_ms`].
pub(crate) async fn raw_lateness_ms(
    raw: &lapin::Connection,
    broker: &Broker,
    queue: &str,
    per_second: usize,
    sends: u64,
) -> anyhow::Result<Vec<f64>> {
    let consumer = consume(broker, queue).await?;
    let channel = raw.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let message = task_message("bench.beat")?;
    let publisher = async {
        let start = Utc::now();
        let mut published = 0;
        for second in 1.. {
            if published >= sends {
                break;
            }
            let due = start + chrono::Duration::seconds(second);
            let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            let mut tagged = message.clone();
            tagged
                .headers
                .insert(DUE_HEADER.to_owned(), HeaderValue::Str(format_time(&due)));
            let properties = crate::raw::basic_properties(&tagged)?;
            let mut confirms = Vec::with_capacity(per_second);
            for _ in 0..per_second {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &tagged.body,
                        properties.clone(),
                    )
                    .await?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                check_ack(confirm.await?)?;
            }
            published += per_second as u64;
        }
        anyhow::Ok(())
    };
    let (published, samples) = tokio::join!(publisher, collect_lateness(consumer, sends));
    channel.close(200, "done".into()).await?;
    published?;
    samples
}

/// A consumer of `queue` with no prefetch limit.
async fn consume(broker: &Broker, queue: &str) -> anyhow::Result<Consumer> {
    Ok(broker
        .consume(ConsumeOptions {
            queues: vec![Queue::celery_default(queue)],
            prefetch: 0,
        })
        .await?)
}

/// Receives `sends` messages carrying the due header; returns each one's
/// delivery time minus its due time, in milliseconds.
async fn collect_lateness(mut consumer: Consumer, sends: u64) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::new();
    while (samples.len() as u64) < sends {
        let delivery = tokio::time::timeout(SEND_TIMEOUT, consumer.next())
            .await
            .context("nothing was sent for 30 s")?
            .context("the consumer stopped")?;
        let arrived = Utc::now();
        let due: DateTime<Utc> = delivery
            .message
            .headers
            .get(DUE_HEADER)
            .and_then(HeaderValue::as_str)
            .and_then(parse_time)
            .with_context(|| format!("a message without a valid {DUE_HEADER} header"))?
            .with_timezone(&Utc);
        samples.push((arrived - due).as_seconds_f64() * 1e3);
        // Acked off this loop, so that a burst's later deliveries are timed
        // when they arrive, not after the earlier ones' acks.
        tokio::spawn(async move { delivery.ack().await });
    }
    consumer.cancel().await;
    Ok(samples)
}

/// A schedule of `entries` entries, each sending `bench.beat` to `queue`
/// every second.
fn schedule_toml(entries: usize, queue: &str) -> String {
    (0..entries)
        .map(|i| {
            format!(
                "[entries.every-second-{i}]\ntask = \"bench.beat\"\nevery = 1\n\
                 options = {{ queue = \"{queue}\" }}\n"
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_parses_into_every_second_entries() {
        let entries = celeriac_beat::schedule::parse(&schedule_toml(3, "q")).unwrap();
        assert_eq!(entries.len(), 3);
        assert!(
            entries
                .iter()
                .all(|e| e.options.queue.as_deref() == Some("q"))
        );
    }
}
