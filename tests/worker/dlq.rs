//! The operator commands behind `celeriac dlq ...` and `celeriac queues`,
//! against the real RabbitMQ.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac_broker::dead_letter::{FIRST_TIME_HEADER, REASON_HEADER};
use celeriac_broker::{ConsumeOptions, DeadLetter, DeadLetterReason, Queue};
use celeriac_cli::dlq::{self, Filter, QUEUE_DELETED, Shelf};
use celeriac_protocol::{DecodeOptions, HeaderValue, TaskMessage};
use celeriac_tests::worker::fill_dead_letters;
use celeriac_tests::{connect, unique};
use serde_json::json;

#[tokio::test]
async fn dead_letters_are_listed_shown_requeued_and_purged() -> Result<()> {
    let broker = connect().await?;
    let queue = Queue::celery_default(unique("admin"));
    let shelf = Shelf::Queue(queue.name.clone());
    broker.declare(&queue).await?;
    let mut sent = Vec::new();
    for (i, task) in ["proj.fails", "proj.fails", "proj.unknown"]
        .into_iter()
        .enumerate()
    {
        let mut message = TaskMessage::new(task, format!("admin-{i}")).with_args(vec![json!(i)]);
        message.headers.retries = 3;
        broker.publish("", &queue.name, &message.encode()?).await?;
        sent.push(message.headers.id);
    }
    // Dead-letter them as a worker would.
    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![queue.clone()],
            prefetch: 10,
        })
        .await?;
    for _ in 0..3 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await?
            .context("no delivery")?;
        let task = delivery.task(&DecodeOptions::default())?;
        let reason = if task.headers.task == "proj.unknown" {
            DeadLetterReason::UnknownTask
        } else {
            DeadLetterReason::Failed
        };
        broker
            .dead_letter(&delivery, &DeadLetter::new(reason, "boom"))
            .await?;
        delivery.ack().await?;
    }
    consumer.stop();

    let listed = dlq::list(&broker, &shelf, 100).await?;
    ensure!(listed.len() == 3, "{listed:?}");
    ensure!(
        listed.iter().filter(|l| l.reason == "failed").count() == 2,
        "{listed:?}"
    );
    ensure!(
        listed
            .iter()
            .all(|l| l.origin_queue == queue.name && l.error == "boom"),
        "{listed:?}"
    );
    // Listing leaves them in place.
    ensure!(dlq::list(&broker, &shelf, 100).await?.len() == 3);

    let (view, raw) = dlq::show(&broker, &shelf, "admin-2")
        .await?
        .context("admin-2 not found")?;
    ensure!(
        view.task == "proj.unknown" && view.args.starts_with("(2,)"),
        "{view:?}"
    );
    ensure!(raw.headers[REASON_HEADER] == HeaderValue::Str("unknown_task".into()));

    let report = dlq::requeue(&broker, &shelf, &Filter::reason("unknown_task")).await?;
    ensure!(report.requeued == 1 && report.kept == 2, "{report:?}");
    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![queue.clone()],
            prefetch: 10,
        })
        .await?;
    let back = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await?
        .context("not requeued")?;
    let task = back.task(&DecodeOptions::default())?;
    ensure!(
        task.headers.id == "admin-2" && task.headers.retries == 0,
        "retries reset: {:?}",
        task.headers
    );
    // Why it died is gone; when it first died stays, for the next time.
    let kept: Vec<&String> = back
        .message
        .headers
        .keys()
        .filter(|k| k.starts_with("x-celeriac-"))
        .collect();
    ensure!(
        kept == [FIRST_TIME_HEADER],
        "dead-letter headers other than the first failure's time kept: {kept:?}"
    );
    back.ack().await?;
    consumer.stop();

    ensure!(
        broker
            .queue_counts(&dlq::dead_letter_queue(&broker, &queue.name).name)
            .await?
            == Some((2, 0))
    );
    ensure!(dlq::purge(&broker, &shelf).await? == 2);
    ensure!(dlq::list(&broker, &shelf, 100).await?.is_empty());
    ensure!(
        broker.queue_counts(&unique("absent")).await?.is_none(),
        "absent queues are reported as such"
    );

    let _ = broker.delete_queue(&queue.name).await;
    let _ = broker
        .delete_queue(&dlq::dead_letter_queue(&broker, &queue.name).name)
        .await;
    let _ = broker.delete_exchange(&queue.name).await;
    broker.close().await;
    Ok(())
}

/// Waits until the orphans queue holds at least `count` ready messages: it
/// is a quorum queue, and the messages a read held come back a moment after
/// the read's channel closed.
async fn orphans_back(broker: &celeriac_broker::Broker, count: u32) -> Result<()> {
    let orphans = Shelf::Orphans.queue(broker).name;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while broker.queue_counts(&orphans).await?.map_or(0, |c| c.0) < count {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the orphans a read held did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn delayed_messages_whose_queue_was_deleted_are_kept_and_requeued_once_it_is_back()
-> Result<()> {
    let broker = connect().await?;
    let queue = Queue::celery_default(unique("orphaned"));
    // A task name of this test's own: other tests' orphans share the shelf.
    let task = unique("proj.orphaned");
    broker.declare(&queue).await?;
    for i in 0..3 {
        let message = TaskMessage::new(&task, format!("{task}-{i}")).with_args(vec![json!(i)]);
        broker
            .publish_delayed(&queue.name, Duration::from_secs(1), &message.encode()?)
            .await?;
    }
    broker.delete_queue(&queue.name).await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ours = loop {
        let listed = dlq::list(&broker, &Shelf::Orphans, 1_000).await?;
        let ours: Vec<_> = listed.into_iter().filter(|l| l.task == task).collect();
        if ours.len() == 3 || tokio::time::Instant::now() > deadline {
            break ours;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(ours.len() == 3, "3 orphans expected, found {ours:?}");
    ensure!(
        ours.iter()
            .all(|l| l.reason == QUEUE_DELETED && l.origin_queue == queue.name),
        "{ours:?}"
    );

    // While the queue is missing, a requeue keeps them.
    orphans_back(&broker, 3).await?;
    let only_ours = Filter::task(task.clone());
    let report = dlq::requeue(&broker, &Shelf::Orphans, &only_ours).await?;
    ensure!(report.requeued == 0 && report.no_queue == 3, "{report:?}");
    orphans_back(&broker, 3).await?;

    broker.declare(&queue).await?;
    let report = dlq::requeue(&broker, &Shelf::Orphans, &only_ours).await?;
    ensure!(report.requeued == 3, "{report:?}");
    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![queue.clone()],
            prefetch: 10,
        })
        .await?;
    for _ in 0..3 {
        let back = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await?
            .context("an orphan was not requeued")?;
        ensure!(back.task(&DecodeOptions::default())?.headers.task == task);
        back.ack().await?;
    }
    consumer.stop();
    let _ = broker.delete_queue(&queue.name).await;
    let _ = broker.delete_exchange(&queue.name).await;
    broker.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeue_gets_past_the_read_window_and_reports_what_it_could_not_reach() -> Result<()> {
    let broker = connect().await?;
    let queue = Queue::celery_default(unique("deep"));
    broker.declare(&queue).await?;
    let shelf = Shelf::Queue(queue.name.clone());
    let window = dlq::SCAN_DEPTH;

    // More dead letters than one read holds, all taken: each requeued one
    // makes room for the next, so all of them go back.
    fill_dead_letters(&broker, &queue.name, "deep", window + 500, |_| {
        ("proj.deep", "unknown_task")
    })
    .await?;
    let report = dlq::requeue(&broker, &shelf, &Filter::reason("unknown_task")).await?;
    ensure!(
        report.requeued == window + 500 && report.beyond == 0,
        "{report:?}"
    );
    broker.purge_queue(&queue.name).await?;

    // A full window of dead letters left in place ahead of the ones asked
    // for: those cannot be reached, and the report says how many.
    fill_dead_letters(&broker, &queue.name, "held", window + 100, |i| {
        if i < window {
            ("proj.kept", "failed")
        } else {
            ("proj.deep", "unknown_task")
        }
    })
    .await?;
    let report = dlq::requeue(&broker, &shelf, &Filter::reason("unknown_task")).await?;
    ensure!(
        report.requeued == 0 && report.kept == window && report.beyond == 100,
        "{report:?}"
    );
    // Nothing was lost on the way: everything is back where it was.
    let dead = dlq::dead_letter_queue(&broker, &queue.name).name;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while broker.queue_counts(&dead).await?.map(|c| c.0) != Some((window + 100) as u32) {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the dead letters held by the read did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    broker.delete_queue(&dead).await?;
    broker.delete_queue(&queue.name).await?;
    Ok(())
}
