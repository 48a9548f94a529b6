//! The worker against the real RabbitMQ, run in-process with the demo tasks:
//! every outcome (success, retry, failure, dead letters for messages that
//! cannot run, expiry), time limits, panics, ETA (held and through the delay
//! queues), crash-loop accounting, priorities and CPU-bound tasks.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::{App, Request, State, TaskError, TaskResult, task};
use celeriac_broker::dead_letter::{
    EXCEPTION_MESSAGE_HEADER, EXCEPTION_TYPE_HEADER, ORIGIN_QUEUE_HEADER, REASON_HEADER,
};
use celeriac_broker::{ConsumeOptions, Queue, QueueArguments};
use celeriac_protocol::{Bytes, TaskMessage};
use celeriac_tests::worker::{RunningWorker, cleanup, client, dead_letters, failure, header};
use celeriac_tests::{broker_url, queue_stats, unique};
use celeriac_worker::WorkerConfig;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

#[task(name = "test.panics")]
async fn panics() -> u32 {
    panic!("deliberate panic")
}

#[task(
    name = "test.soft_limit",
    bind = true,
    soft_time_limit = 0.2,
    time_limit = 5
)]
async fn soft_limit(request: Request) -> TaskResult<String> {
    tokio::select! {
        () = request.soft_limit.reached() => Ok("stopped at the soft limit".into()),
        () = tokio::time::sleep(Duration::from_secs(3)) => Ok("ran to the end".into()),
    }
}

#[task(name = "test.hard_limit", time_limit = 0.3)]
async fn hard_limit() -> u32 {
    tokio::time::sleep(Duration::from_secs(5)).await;
    1
}

/// The app `test.sends_child` sends with (a program keeps its own so).
static SENDER: std::sync::OnceLock<App> = std::sync::OnceLock::new();

/// Sends `demo.trace_id` from inside the task and returns the child's id.
#[task(name = "test.sends_child")]
async fn sends_child() -> TaskResult<String> {
    let app = SENDER
        .get()
        .ok_or_else(|| TaskError::new("SENDER is not set"))?;
    let child = app
        .send_task("demo.trace_id")
        .apply()
        .await
        .map_err(|e| TaskError::new(e.to_string()))?;
    Ok(child.id().to_owned())
}

#[task(name = "test.early_ack", acks_late = false)]
async fn early_ack() -> u32 {
    7
}

/// Asks to be retried every time, at once: its second request for a retry
/// is past `max_retries`.
#[task(name = "test.retries_forever", bind = true, max_retries = 1)]
async fn retries_forever(request: Request) -> TaskResult<u32> {
    let cause = TaskError::python("builtins", "ConnectionError", "the service is down");
    Err(request.retry().countdown(Duration::ZERO).because(cause))
}

/// Rejects its message without requeueing it.
#[task(name = "test.rejects")]
async fn rejects() -> TaskResult<u32> {
    Err(TaskError::reject(
        false,
        "not a message this worker can ever run",
    ))
}

/// A worker with the demo tasks and this file's tasks on `queue`.
async fn start(queue: &Queue, configure: impl FnOnce(&mut WorkerConfig)) -> Result<RunningWorker> {
    let builder = App::builder()
        .task(sends_child)
        .task(panics)
        .task(soft_limit)
        .task(hard_limit)
        .task(early_ack)
        .task(retries_forever)
        .task(rejects);
    RunningWorker::start(builder, queue, configure).await
}

/// A task run under a `traceparent` carries the trace on to the tasks it
/// sends from inside; a task sent with none runs outside any trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_sent_from_inside_a_traced_task_continues_the_trace() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-trace"));
    let app = client(&queue).await?;
    let worker = start(&queue, |_| {}).await?;
    let _ = SENDER.set(client(&queue).await?);
    let sender = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let parent = app
        .send_task("test.sends_child")
        .header("traceparent", sender)
        .apply()
        .await?;
    let child_id: String = parent.get_as(WAIT).await?;
    // Over rpc:// the child's result goes to the app that sent it.
    let sent_by = SENDER.get().context("SENDER is set above")?;
    let seen = sent_by
        .async_result::<Option<String>>(child_id)
        .get(WAIT)
        .await?;
    ensure!(
        seen.as_deref() == Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        "the child ran in trace {seen:?}"
    );
    let untraced: Option<String> = app
        .send_task("demo.trace_id")
        .apply()
        .await?
        .get_as(WAIT)
        .await?;
    ensure!(
        untraced.is_none(),
        "a message without traceparent ran in {untraced:?}"
    );
    worker.stop().await?;
    cleanup(&app, &queue.name).await;
    Ok(())
}

/// A retry without a countdown may run (and store its outcome) at once:
/// the first run's `RETRY` must not land after it and hide the outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immediate_retry_outcome_is_not_hidden_by_the_retry_state() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-immediate-retry"));
    let app = client(&queue).await?;
    let worker = start(&queue, |_| {}).await?;
    let mut retried = Vec::new();
    for _ in 0..20 {
        retried.push(
            app.send_task("demo.retry_once")
                .args((0.0,))
                .apply()
                .await?,
        );
    }
    for result in &retried {
        result.get_as::<f64>(WAIT).await?;
        ensure!(
            result.history() == [State::Retry, State::Success],
            "{:?}",
            result.history()
        );
    }
    let summary = worker.stop().await?;
    ensure!(
        summary.retried == 20 && summary.succeeded == 20,
        "{summary:?}"
    );
    cleanup(&app, &queue.name).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_stored_and_settled() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-outcomes"));
    let app = client(&queue).await?;
    let worker = start(&queue, |_| {}).await?;

    let ok = app.send_task("demo.add").args((2, 3)).apply().await?;
    ensure!(ok.get_as::<i64>(WAIT).await? == 5);

    let flaky = app.send_task("demo.flaky").args((2,)).apply().await?;
    ensure!(flaky.get_as::<String>(WAIT).await? == "succeeded after 2 retries");
    ensure!(
        flaky.history() == [State::Retry, State::Retry, State::Success],
        "{:?}",
        flaky.history()
    );

    let failed = failure(
        app.send_task("demo.fail")
            .args(("bad input",))
            .apply()
            .await?
            .get(WAIT)
            .await,
    )?;
    ensure!(
        failed.exc_type == "ValueError" && failed.message == "bad input",
        "{failed}"
    );

    let bad_args = failure(
        app.send_task("demo.add")
            .args(("two", 3))
            .apply()
            .await?
            .get(WAIT)
            .await,
    )?;
    ensure!(
        bad_args.exc_type == "TypeError" && bad_args.message.contains("argument 'x' must be i64"),
        "{bad_args}"
    );

    let panicked = failure(app.send_task("test.panics").apply().await?.get(WAIT).await)?;
    ensure!(
        panicked.exc_type == "TaskPanicked" && panicked.message.contains("deliberate panic"),
        "{panicked}"
    );

    let unknown = failure(
        app.send_task("test.not_registered")
            .apply()
            .await?
            .get(WAIT)
            .await,
    )?;
    ensure!(
        unknown.exc_type == "NotRegistered" && unknown.message == "test.not_registered",
        "{unknown}"
    );

    let expired = app
        .send_task("demo.now")
        .countdown(Duration::from_secs(2))
        .expires_in(Duration::from_millis(500))
        .apply()
        .await?;
    let revoked = failure(expired.get(WAIT).await)?;
    ensure!(
        revoked.state == State::Revoked && revoked.message == "expired",
        "{revoked}"
    );

    let early = app.send_task("test.early_ack").apply().await?;
    ensure!(early.get_as::<u32>(WAIT).await? == 7);

    // The worker kept going through all of that.
    ensure!(
        app.send_task("demo.add")
            .args((1, 1))
            .apply()
            .await?
            .get_as::<i64>(WAIT)
            .await?
            == 2
    );

    // Three final failures, plus the unknown task, are in the dead-letter queue.
    let letters = dead_letters(&app, &queue.name, 4).await?;
    let mut reasons: Vec<String> = letters.iter().map(|l| header(l, REASON_HEADER)).collect();
    reasons.sort();
    ensure!(
        reasons == ["failed", "failed", "failed", "unknown_task"],
        "{reasons:?}"
    );
    ensure!(
        letters
            .iter()
            .any(|l| header(l, EXCEPTION_TYPE_HEADER) == "ValueError")
    );

    let summary = worker.stop().await?;
    ensure!(
        summary.succeeded == 4
            && summary.retried == 2
            && summary.failed == 3
            && summary.revoked == 1,
        "{summary:?}"
    );
    cleanup(&app, &queue.name).await;
    Ok(())
}

/// The two dead-letter reasons a task chooses by what it returns, end to
/// end: each letter is the task's own message, with its reason, the
/// exception it ended with and where it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_past_the_limit_and_rejects_are_dead_lettered_with_their_reason() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-task-dead-letters"));
    let app = client(&queue).await?;
    let worker = start(&queue, |_| {}).await?;
    let retried = app.send_task("test.retries_forever").apply().await?;
    let rejected = app.send_task("test.rejects").apply().await?;

    let letters = dead_letters(&app, &queue.name, 2).await?;
    let letter_of = |id: &str| {
        letters
            .iter()
            .find(|letter| letter.message.headers.get("id").and_then(|v| v.as_str()) == Some(id))
            .with_context(|| format!("no dead letter for task {id}"))
    };
    let over = letter_of(retried.id())?;
    let expect = [
        (REASON_HEADER, "max_retries_exceeded"),
        (EXCEPTION_TYPE_HEADER, "ConnectionError"),
        (EXCEPTION_MESSAGE_HEADER, "the service is down"),
        (ORIGIN_QUEUE_HEADER, queue.name.as_str()),
    ];
    for (name, want) in expect {
        ensure!(
            header(over, name) == want,
            "{name} of the retried task: {:?}",
            header(over, name)
        );
    }
    ensure!(
        over.message.headers.get("retries") == Some(&celeriac::HeaderValue::Int(1)),
        "the letter is the last attempt's message (retries=1): {:?}",
        over.message.headers.get("retries")
    );
    let gone = letter_of(rejected.id())?;
    let expect = [
        (REASON_HEADER, "rejected"),
        (EXCEPTION_TYPE_HEADER, "Reject"),
        (
            EXCEPTION_MESSAGE_HEADER,
            "not a message this worker can ever run",
        ),
        (ORIGIN_QUEUE_HEADER, queue.name.as_str()),
    ];
    for (name, want) in expect {
        ensure!(
            header(gone, name) == want,
            "{name} of the rejected task: {:?}",
            header(gone, name)
        );
    }

    let summary = worker.stop().await?;
    ensure!(summary.dead_lettered == 2, "{summary:?}");
    cleanup(&app, &queue.name).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_cannot_run_are_dead_lettered_with_a_reason() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-poison"));
    let app = client(&queue).await?;
    app.broker().declare(&queue).await?;
    let good = TaskMessage::new("demo.add", "poison-neighbour")
        .with_args(vec![json!(1), json!(2)])
        .encode()?;
    let mut bad_json = good.clone();
    bad_json.body = Bytes::from_static(b"[[1, 2], {}, {");
    let mut pickle = good.clone();
    pickle.properties.content_type = Some("application/x-python-serialize".into());
    let mut two_elements = good.clone();
    two_elements.body = Bytes::from_static(b"[[1, 2], {}]");
    let mut no_id = good.clone();
    no_id.headers.remove("id");
    let mut oversized = good.clone();
    oversized.body = vec![b' '; celeriac_protocol::DEFAULT_MAX_BODY_SIZE + 1].into();
    for raw in [&bad_json, &pickle, &two_elements, &no_id, &oversized, &good] {
        app.broker().publish("", &queue.name, raw).await?;
    }
    let worker = start(&queue, |_| {}).await?;
    let letters = dead_letters(&app, &queue.name, 5).await?;
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for letter in &letters {
        *reasons.entry(header(letter, REASON_HEADER)).or_default() += 1;
    }
    ensure!(reasons.get("decode_error") == Some(&1), "{reasons:?}");
    ensure!(reasons.get("content_refused") == Some(&1), "{reasons:?}");
    ensure!(reasons.get("invalid_message") == Some(&2), "{reasons:?}");
    ensure!(reasons.get("too_large") == Some(&1), "{reasons:?}");
    let summary = worker.stop().await?;
    ensure!(
        summary.succeeded == 1 && summary.dead_lettered == 5,
        "the healthy task ran: {summary:?}"
    );
    cleanup(&app, &queue.name).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_limits_are_enforced() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-limits"));
    let app = client(&queue).await?;
    let worker = start(&queue, |_| {}).await?;
    let soft = app.send_task("test.soft_limit").apply().await?;
    ensure!(soft.get_as::<String>(WAIT).await? == "stopped at the soft limit");
    let hard = failure(
        app.send_task("test.hard_limit")
            .apply()
            .await?
            .get(WAIT)
            .await,
    )?;
    ensure!(hard.exc_type == "TimeLimitExceeded", "{hard}");
    // A caller's `timelimit` header overrides the task's own.
    let header_limit = failure(
        app.send_task("demo.sleep")
            .args((5.0,))
            .time_limit(Duration::from_millis(200))
            .apply()
            .await?
            .get(WAIT)
            .await,
    )?;
    ensure!(
        header_limit.exc_type == "TimeLimitExceeded",
        "{header_limit}"
    );
    worker.stop().await?;
    cleanup(&app, &queue.name).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etas_run_on_time_whether_held_or_sent_through_the_delay_queues() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-eta"));
    let app = client(&queue).await?;
    // A horizon of 1 s sends the 4 s ETA through the delay queues.
    let worker = start(&queue, |c| c.eta_horizon = Duration::from_secs(1)).await?;
    for countdown in [3_u64, 4] {
        let sent = chrono::Utc::now();
        let ran: f64 = app
            .send_task("demo.now")
            .countdown(Duration::from_secs(countdown))
            .apply()
            .await?
            .get_as(WAIT)
            .await?;
        let eta =
            (sent + chrono::Duration::seconds(countdown as i64)).timestamp_micros() as f64 / 1e6;
        ensure!(
            ran >= eta - 0.05,
            "countdown {countdown}: ran at {ran}, before its eta {eta}"
        );
        ensure!(
            ran <= eta + 1.5,
            "countdown {countdown}: ran at {ran}, {:.2} s after its eta",
            ran - eta
        );
    }
    worker.stop().await?;
    // Python (kombu's native delayed delivery, since kombu 5.5) declares
    // the very same topology without a 406, so Python workers can share it.
    // Older kombu has no delay topology to compare.
    if celeriac_tests::celery_version()? < (5, 5) {
        println!("this kombu predates native delayed delivery: no topology to compare");
        cleanup(&app, &queue.name).await;
        return Ok(());
    }
    let declared = tokio::process::Command::new(celeriac_tests::interop_python()?)
        .args(["-c", "import sys; from kombu import Connection; \
            from kombu.transport.native_delayed_delivery import declare_native_delayed_delivery_exchanges_and_queues as d; \
            c = Connection(sys.argv[1]); d(c, 'quorum'); c.release()"])
        .arg(broker_url())
        .output()
        .await?;
    ensure!(
        declared.status.success(),
        "kombu could not declare the delay topology: {}",
        String::from_utf8_lossy(&declared.stderr)
    );
    cleanup(&app, &queue.name).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_redelivered_past_the_limit_is_dead_lettered() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-crashloop"));
    let app = client(&queue).await?;
    app.broker().declare(&queue).await?;
    let raw = TaskMessage::new("demo.add", "crash-loop")
        .with_args(vec![json!(1), json!(1)])
        .encode()?;
    app.broker().publish("", &queue.name, &raw).await?;
    // Take the message and let it go unacked: the broker marks it redelivered,
    // as after a worker crash.
    let mut taker = app
        .broker()
        .consume(ConsumeOptions {
            queues: vec![queue.clone()],
            prefetch: 1,
        })
        .await?;
    tokio::time::timeout(WAIT, taker.next())
        .await?
        .context("no delivery")?;
    taker.stop();
    let worker = start(&queue, |c| c.redelivery_limit = 0).await?;
    let letters = dead_letters(&app, &queue.name, 1).await?;
    ensure!(header(&letters[0], REASON_HEADER) == "redelivery_limit");
    let summary = worker.stop().await?;
    ensure!(
        summary.succeeded == 0 && summary.redelivered == 1,
        "{summary:?}"
    );
    cleanup(&app, &queue.name).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urgent_tasks_overtake_a_bulk_backlog_on_a_priority_queue() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-priority")).with_arguments(QueueArguments {
        max_priority: Some(10),
        ..QueueArguments::default()
    });
    let app = client(&queue).await?;
    app.broker().declare(&queue).await?;
    let mut bulk = Vec::new();
    for _ in 0..1_000 {
        bulk.push(app.send_task("demo.now").priority(0).apply().await?);
    }
    let mut urgent = Vec::new();
    for _ in 0..10 {
        urgent.push(app.send_task("demo.now").priority(9).apply().await?);
    }
    // Concurrency 1 and prefetch 1: at most 2 bulk tasks (one running, one
    // prefetched) can start before the urgent ones.
    let worker = start(&queue, |c| {
        c.concurrency = 1;
        c.prefetch_multiplier = 1;
    })
    .await?;
    let mut bulk_times = Vec::new();
    for result in &bulk {
        bulk_times.push(result.get_as::<f64>(WAIT).await?);
    }
    let mut last_urgent = 0.0_f64;
    for result in &urgent {
        last_urgent = last_urgent.max(result.get_as::<f64>(WAIT).await?);
    }
    let bulk_before = bulk_times.iter().filter(|t| **t < last_urgent).count();
    ensure!(
        bulk_before <= 2,
        "{bulk_before} bulk tasks ran before the last urgent one (bound: 2)"
    );
    worker.stop().await?;
    cleanup(&app, &queue.name).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_bound_task_does_not_stall_other_tasks() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-cpu"));
    let app = client(&queue).await?;
    let worker = start(&queue, |c| c.concurrency = 4).await?;
    let cpu = app
        .send_task("demo.cpu")
        .args((3_000_000_000_u64,))
        .apply()
        .await?;
    // Short tasks keep flowing while the CPU-bound one runs.
    let mut flowed = 0;
    while !cpu.ready().await? {
        let sum: i64 = app
            .send_task("demo.add")
            .args((flowed, 1))
            .apply()
            .await?
            .get_as(WAIT)
            .await?;
        ensure!(sum == flowed + 1);
        flowed += 1;
        ensure!(flowed < 100_000, "the CPU task never finished");
    }
    cpu.get(WAIT).await?;
    ensure!(
        flowed >= 3,
        "only {flowed} short tasks ran while the CPU task ran"
    );
    ensure!(app.broker().is_connected(), "the connection survived");
    worker.stop().await?;
    cleanup(&app, &queue.name).await;
    Ok(())
}

/// The per-message ack mode (`--ack-batch 1`) settles every kind of outcome:
/// successes running side by side, an early ack, a dead-lettered failure;
/// nothing is redelivered and nothing stays unacked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_ack_mode_settles_every_outcome() -> Result<()> {
    let queue = Queue::celery_default(unique("worker-ack-each"));
    let app = client(&queue).await?;
    let worker = start(&queue, |config| config.ack_batch = 1).await?;
    let mut running = Vec::new();
    for _ in 0..3 {
        running.push(app.send_task("demo.sleep").args((0.5,)).apply().await?);
    }
    let early = app.send_task("test.early_ack").apply().await?;
    ensure!(early.get_as::<u32>(WAIT).await? == 7);
    let failed = app.send_task("demo.fail").args(("boom",)).apply().await?;
    failure(failed.get(WAIT).await)?;
    for result in &running {
        ensure!(result.get_as::<f64>(WAIT).await? == 0.5);
    }
    let summary = worker.stop().await?;
    ensure!(
        summary.redelivered == 0 && summary.succeeded == 4 && summary.dead_lettered == 1,
        "{summary:?}"
    );
    let stats = queue_stats(&queue.name, &["messages_ready", "messages_unacknowledged"])?;
    ensure!(
        stats == ["0", "0"],
        "ready/unacked after the worker stopped: {stats:?}"
    );
    cleanup(&app, &queue.name).await;
    Ok(())
}
