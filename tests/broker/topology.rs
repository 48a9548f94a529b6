//! Declarations (and their compatibility with Python's, in both orders),
//! topic routing and both dead-letter paths.

use anyhow::{Context as _, Result, bail, ensure};
use celeriac_broker::dead_letter::{ORIGIN_QUEUE_HEADER, REASON_HEADER};
use celeriac_broker::{
    Broker, BrokerConfig, BrokerError, ConsumeOptions, DeadLetter, DeadLetterReason,
    DeadLetterTopology, Exchange, Inequivalent, Queue, QueueArguments, QueueType, RouteOptions,
    Router,
};
use celeriac_protocol::{HeaderValue, RawMessage, TaskMessage};
use celeriac_tests::{broker_url, connect, interop_python, queue_stats, repo_root, unique};

use crate::{Cleanup, next, task};

#[tokio::test]
async fn an_inequivalent_declaration_names_the_argument_and_the_fix() -> Result<()> {
    let broker = connect().await?;
    let name = unique("inequivalent");
    let _cleanup = Cleanup(vec![name.clone()]);
    let priority = Queue::celery_default(name.clone()).with_arguments(QueueArguments {
        max_priority: Some(10),
        ..QueueArguments::default()
    });
    broker.declare(&priority).await?;
    let err = broker
        .declare(&Queue::celery_default(name.clone()))
        .await
        .unwrap_err();
    let BrokerError::Inequivalent(details) = &err else {
        bail!("expected Inequivalent, got {err:?}");
    };
    let Inequivalent {
        argument,
        broker_has,
        we_asked,
        python,
        ..
    } = details.as_ref();
    ensure!(argument == "x-max-priority", "{err}");
    ensure!(
        broker_has.contains("10") && we_asked.contains("none"),
        "{err}"
    );
    ensure!(python.starts_with(&format!("Queue('{name}'")), "{err}");
    ensure!(err.to_string().contains("task_queues"), "{err}");
    println!("{err}");
    // The connection survives the refusal.
    broker.publish("", &name, &task("t").encode()?).await?;
    Ok(())
}

/// Declares with Python's kombu (through Celery's own `task_queues`
/// handling) and with Celeriac, in both orders.

#[tokio::test]
async fn declarations_match_python_celery_in_both_orders() -> Result<()> {
    let python = interop_python()?;
    let script = repo_root().join("tests/interop/declare_with_kombu.py");
    let kombu = |queue: String, variant: &'static str| {
        let python = python.clone();
        let script = script.clone();
        async move {
            let out = tokio::process::Command::new(&python)
                .arg(&script)
                .args([broker_url(), queue, variant.to_owned()])
                .output()
                .await?;
            Ok::<_, anyhow::Error>((
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ))
        }
    };
    let broker = connect().await?;
    let variants: [(&str, QueueArguments); 3] = [
        ("default", QueueArguments::default()),
        (
            "priority",
            QueueArguments {
                max_priority: Some(10),
                ..QueueArguments::default()
            },
        ),
        (
            "quorum",
            QueueArguments {
                queue_type: Some(QueueType::Quorum),
                ..QueueArguments::default()
            },
        ),
    ];
    let mut names = Vec::new();
    for (variant, arguments) in variants {
        // Python first, then Celeriac.
        let first = unique(&format!("kombu-first-{variant}"));
        names.push(first.clone());
        let (code, out) = kombu(first.clone(), variant).await?;
        ensure!(code == Some(0), "kombu declare {variant}: {out}");
        broker
            .declare(&Queue::celery_default(first).with_arguments(arguments.clone()))
            .await
            .with_context(|| format!("Celeriac after kombu ({variant})"))?;
        // Celeriac first, then Python.
        let second = unique(&format!("celeriac-first-{variant}"));
        names.push(second.clone());
        broker
            .declare(&Queue::celery_default(second.clone()).with_arguments(arguments))
            .await?;
        let (code, out) = kombu(second, variant).await?;
        ensure!(code == Some(0), "kombu after Celeriac ({variant}): {out}");
    }
    // Control: a mismatch is caught, so the checks above can fail.
    let mismatch = unique("mismatch");
    names.push(mismatch.clone());
    broker
        .declare(
            &Queue::celery_default(mismatch.clone()).with_arguments(QueueArguments {
                max_priority: Some(10),
                ..QueueArguments::default()
            }),
        )
        .await?;
    let (code, out) = kombu(mismatch, "default").await?;
    ensure!(
        code == Some(3) && out.contains("PRECONDITION_FAILED"),
        "kombu accepted a mismatch: {out}"
    );
    let _cleanup = Cleanup(names);
    Ok(())
}

#[tokio::test]
async fn topic_routes_publish_to_their_exchange() -> Result<()> {
    let broker = connect().await?;
    let name = unique("images");
    let exchange = unique("tasks-exchange");
    let _cleanup = Cleanup(vec![name.clone(), exchange.clone()]);
    let queue =
        Queue::celery_default(name.clone()).bound_to(Exchange::topic(exchange.clone()), "images.#");
    let router = Router::default().queue(queue.clone()).route(
        "images.*",
        RouteOptions {
            queue: Some(name.clone()),
            routing_key: Some("images.resize".into()),
            ..RouteOptions::default()
        },
    )?;
    let destination = router.resolve("images.resize", &RouteOptions::default())?;
    ensure!(destination.exchange == exchange, "{destination:?}");
    broker
        .send(&destination, &task("images.resize").encode()?)
        .await?;
    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![queue],
            prefetch: 1,
        })
        .await?;
    let delivery = next(&mut consumer).await?;
    ensure!(delivery.exchange == exchange && delivery.routing_key == "images.resize");
    delivery.ack().await?;
    Ok(())
}

#[tokio::test]
async fn worker_published_dead_letters_keep_the_message_and_say_why() -> Result<()> {
    let broker = connect().await?;
    let name = unique("dlq-worker");
    let dead = DeadLetterTopology::default().queue_for(&name);
    let _cleanup = Cleanup(vec![name.clone(), dead.name.clone()]);
    let sent = dead_letter_one(&broker, &name).await?;

    let mut dlq = broker
        .consume(ConsumeOptions {
            queues: vec![dead],
            prefetch: 1,
        })
        .await?;
    let lettered = next(&mut dlq).await?;
    ensure!(lettered.message.body == sent.body, "body changed");
    let h = &lettered.message.headers;
    ensure!(
        h[REASON_HEADER] == HeaderValue::Str("unknown_task".into()),
        "{h:?}"
    );
    ensure!(h[ORIGIN_QUEUE_HEADER] == HeaderValue::Str(name.clone()));
    ensure!(
        h["task"] == HeaderValue::Str("proj.unknown".into()),
        "Celery headers kept"
    );
    lettered.ack().await?;
    Ok(())
}

/// Dead-letters one `proj.unknown` task from queue `name` (declared)
/// through `broker`, as a worker does; returns the message sent.
async fn dead_letter_one(broker: &Broker, name: &str) -> Result<RawMessage> {
    let queue = Queue::celery_default(name.to_owned());
    broker.declare(&queue).await?;
    let sent = task("proj.unknown").encode()?;
    broker.publish("", name, &sent).await?;
    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![queue],
            prefetch: 1,
        })
        .await?;
    let delivery = next(&mut consumer).await?;
    let letter = DeadLetter::new(
        DeadLetterReason::UnknownTask,
        "task proj.unknown is not registered",
    );
    broker.dead_letter(&delivery, &letter).await?;
    delivery.ack().await?;
    consumer.close().await;
    Ok(sent)
}

#[tokio::test]
async fn dead_letter_queues_follow_the_queue_type_and_keep_the_one_they_have() -> Result<()> {
    let mut config = BrokerConfig::from_url(&broker_url())?;
    config.dead_letter.queue_type = QueueType::Quorum;
    let quorum = Broker::connect(config).await?;
    let classic = connect().await?;

    // A quorum-configured process makes a quorum dead-letter queue.
    let fresh = unique("dlq-quorum");
    let fresh_dead = quorum.config().dead_letter.queue_for(&fresh).name;
    let _cleanup = Cleanup(vec![fresh.clone(), fresh_dead.clone()]);
    dead_letter_one(&quorum, &fresh).await?;
    let kind = queue_stats(&fresh_dead, &["type"])?;
    let counts = classic.queue_counts(&fresh_dead).await?;
    ensure!(
        kind == ["quorum"] && counts.is_some_and(|(ready, _)| ready == 1),
        "{fresh_dead}: {kind:?}, {counts:?}"
    );
    // A classic-configured reader still reads it, as it is.
    let read = classic
        .declare_of_either_type(&classic.config().dead_letter.queue_for(&fresh))
        .await?;
    ensure!(
        read.arguments.queue_type == Some(QueueType::Quorum),
        "{read:?}"
    );

    // A classic dead-letter queue from before the switch keeps working.
    let old = unique("dlq-classic");
    let old_dead = classic.config().dead_letter.queue_for(&old).name;
    let _cleanup_old = Cleanup(vec![old.clone(), old_dead.clone()]);
    dead_letter_one(&classic, &old).await?;
    dead_letter_one(&quorum, &old).await?;
    let kind = queue_stats(&old_dead, &["type"])?;
    let counts = classic.queue_counts(&old_dead).await?;
    ensure!(
        kind == ["classic"] && counts.is_some_and(|(ready, _)| ready == 2),
        "{old_dead}: {kind:?}, {counts:?}"
    );
    quorum.close().await;
    classic.close().await;
    Ok(())
}

#[tokio::test]
async fn broker_native_dead_lettering_routes_rejects_to_the_same_queue() -> Result<()> {
    let broker = connect().await?;
    let name = unique("dlq-native");
    let topology = DeadLetterTopology::default();
    let dead = topology.queue_for(&name);
    let _cleanup = Cleanup(vec![name.clone(), dead.name.clone()]);
    broker.declare(&dead).await?;
    let queue = topology.enable_native(Queue::celery_default(name.clone()));
    broker.declare(&queue).await?;
    broker.publish("", &name, &task("t").encode()?).await?;

    let mut consumer = broker
        .consume(ConsumeOptions {
            queues: vec![queue],
            prefetch: 1,
        })
        .await?;
    next(&mut consumer).await?.reject(false).await?;

    let mut dlq = broker
        .consume(ConsumeOptions {
            queues: vec![dead],
            prefetch: 1,
        })
        .await?;
    let lettered = next(&mut dlq).await?;
    let Some(HeaderValue::Array(deaths)) = lettered.message.headers.get("x-death") else {
        bail!("no x-death header: {:?}", lettered.message.headers);
    };
    let HeaderValue::Table(first) = &deaths[0] else {
        bail!("x-death entry is not a table")
    };
    ensure!(
        first["reason"] == HeaderValue::Str("rejected".into()),
        "{first:?}"
    );
    ensure!(
        first["queue"] == HeaderValue::Str(name.clone()),
        "{first:?}"
    );
    lettered.ack().await?;
    Ok(())
}

#[tokio::test]
async fn a_classic_state_slot_keeps_working_after_a_switch_to_quorum() -> Result<()> {
    let name = unique("slot");
    let _cleanup = Cleanup(vec![name.clone()]);
    let classic = connect().await?;
    let before = TaskMessage::new("beat.state", "before").encode()?;
    classic.save_latest(&name, &before).await?;

    // The same slot, from a process told to use quorum queues: it finds the
    // classic slot, warns, and uses it rather than failing on every save.
    let mut config = BrokerConfig::from_url(&broker_url())?;
    config.state_queue_type = QueueType::Quorum;
    let quorum = Broker::connect(config).await?;
    let loaded = quorum
        .load_latest(&name)
        .await?
        .context("the saved state is gone")?;
    ensure!(loaded.body == before.body, "another state came back");
    let after = TaskMessage::new("beat.state", "after").encode()?;
    quorum.save_latest(&name, &after).await?;
    let loaded = classic
        .load_latest(&name)
        .await?
        .context("the new state is gone")?;
    ensure!(
        loaded.body == after.body,
        "the quorum-configured save did not land"
    );
    Ok(())
}
