//! What happens to one delivery, from decoding to its single outcome:
//! success, retry, failure (dead-lettered), dead letter for a message that
//! cannot run, revoked (expired), or requeued at shutdown. Every path ends in
//! exactly one settlement of the delivery, and only after its outcome is
//! durable (result stored, retry or dead letter confirmed).

use std::sync::Arc;
use std::time::Duration;

use celeriac::{
    Apply, Arguments, DeliveryInfo, ExceptionInfo, Request, ResultMeta, State, Task, TaskError,
    TaskErrorKind, TaskOptions,
};
use celeriac_broker::{BrokerError, DeadLetter, DeadLetterReason, Delivery};
use celeriac_protocol::time::now;
use celeriac_protocol::{DecodeOptions, HeaderValue, TaskMessage};
use serde_json::{Value, json};
use tracing::{debug, error, info, warn};

use crate::delay;
use crate::worker::Context;

/// Header counting how often a message was delivered again (crash loops).
pub const REDELIVERIES_HEADER: &str = "x-celeriac-redeliveries";

/// How a delivery is settled once its outcome is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Done with it (success, stored failure); the ack may be coalesced.
    Ack,
    /// Done with it, and a copy now lives elsewhere (confirmed retry, delay
    /// queue, counted redelivery, dead letter): acked at once, so a crash
    /// cannot bring back both the original and the copy.
    AckNow,
    /// Give it back unstarted (shutdown): republished unchanged, then acked.
    Requeue,
    /// Reject it (into a broker-native dead-letter exchange, or requeue).
    Reject { requeue: bool },
    /// Already acked when the task started (`acks_late = false`).
    AckedEarly,
}

/// Handles one delivery to the end and settles it.
pub(crate) async fn handle(ctx: Arc<Context>, delivery: Delivery) {
    let settle = process(&ctx, &delivery).await;
    let outcome = match settle {
        Settle::Ack => delivery.ack().await,
        Settle::AckNow => delivery.ack_now().await,
        Settle::Reject { requeue } => delivery.reject(requeue).await,
        Settle::Requeue => requeue(&ctx, &delivery).await,
        Settle::AckedEarly => Ok(celeriac_broker::AckOutcome::Done),
    };
    if let Err(e) = outcome {
        warn!(error = %e, "settling a delivery failed; the broker will deliver it again");
    }
}

/// Gives an unstarted delivery back: a copy is republished (so it does not
/// count as a redelivery) and the original acked; if that fails, a plain
/// requeue.
async fn requeue(
    ctx: &Context,
    delivery: &Delivery,
) -> Result<celeriac_broker::AckOutcome, celeriac_broker::BrokerError> {
    match ctx
        .app
        .broker()
        .publish("", &delivery.queue, &delivery.message)
        .await
    {
        Ok(()) => delivery.ack_now().await,
        Err(_) => delivery.reject(true).await,
    }
}

/// Decides a delivery's outcome. This future is spawned for every delivery
/// (prefetched ones wait in it for a permit), so the cold paths are boxed:
/// their state is allocated only when taken, which keeps the future small.
async fn process(ctx: &Context, delivery: &Delivery) -> Settle {
    let message = match delivery.task(&DecodeOptions::default()) {
        Ok(message) => message,
        Err(err) => {
            warn!(queue = %delivery.queue, reason = err.reason(), error = %err, "undecodable message; dead-lettering it");
            let reason = DeadLetterReason::from_decode_reason(err.reason());
            return Box::pin(dead_letter(ctx, delivery, reason, None, err.to_string())).await;
        }
    };
    if delivery.redelivered {
        return Box::pin(count_redelivery(ctx, delivery, &message)).await;
    }
    let name = message.headers.task.clone();
    let Some(task) = ctx.app.registry().get(&name).cloned() else {
        warn!(task = %name, id = %message.headers.id, "received an unregistered task; dead-lettering it");
        let request = request_for(ctx, delivery, &message);
        let exc = ExceptionInfo::new("celery.exceptions", "NotRegistered", name.clone());
        Box::pin(store(
            ctx,
            &request,
            &message,
            ResultMeta::new(&request.id, State::Failure, exc.to_json()),
        ))
        .await;
        let detail = format!("task {name} is not registered on this worker");
        return Box::pin(dead_letter(
            ctx,
            delivery,
            DeadLetterReason::UnknownTask,
            Some("NotRegistered"),
            detail,
        ))
        .await;
    };
    let request = request_for(ctx, delivery, &message);
    let options = ctx.app.task_options(&name);

    if expired(&message) {
        return Box::pin(revoke_expired(ctx, &request, &message)).await;
    }
    if let Some(eta) = message.headers.eta {
        let wait = (eta - now()).to_std().unwrap_or(Duration::ZERO);
        if wait > ctx.config.eta_horizon {
            return Box::pin(postpone(ctx, delivery, wait)).await;
        }
        if !wait.is_zero() {
            debug!(id = %request.id, ?wait, "holding an ETA task until it is due");
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = ctx.shutdown.cancelled() => return Settle::Requeue,
            }
        }
    }
    let permit = tokio::select! {
        permit = ctx.permits.clone().acquire_owned() => match permit {
            Ok(permit) => permit,
            Err(_) => return Settle::Requeue,
        },
        () = ctx.shutdown.cancelled() => return Settle::Requeue,
    };
    if expired(&message) {
        return Box::pin(revoke_expired(ctx, &request, &message)).await;
    }
    if delivery.message.headers.contains_key(REDELIVERIES_HEADER) {
        // This message was running when a worker died. Should it take this
        // one down too, finished tasks must not go with it.
        delivery.flush_pending_acks().await;
    }
    let acks_late = options.acks_late.unwrap_or(true);
    if !acks_late {
        // Celery's default: ack when the task starts (at-most-once).
        let _ = delivery.ack_now().await;
    }
    info!(task = %name, id = %request.id, retries = request.retries, "task started");
    let result = run(task, &request, &message, &options).await;
    drop(permit);
    let settle = match result {
        Ok(value) => succeed(ctx, &request, &message, value).await,
        Err(err) => match err.kind() {
            TaskErrorKind::Retry(_) => {
                Box::pin(retry(ctx, delivery, &request, &message, &options, err)).await
            }
            TaskErrorKind::Reject { requeue } => {
                let requeue = *requeue;
                warn!(task = %name, id = %request.id, requeue, "task rejected its message");
                if requeue {
                    Settle::Reject { requeue: true }
                } else {
                    Box::pin(fail(
                        ctx,
                        delivery,
                        &request,
                        &message,
                        &err,
                        DeadLetterReason::Other("rejected".into()),
                    ))
                    .await
                }
            }
            TaskErrorKind::Failure if options.should_autoretry(&err) => {
                Box::pin(retry(ctx, delivery, &request, &message, &options, err)).await
            }
            TaskErrorKind::Failure => {
                Box::pin(fail(
                    ctx,
                    delivery,
                    &request,
                    &message,
                    &err,
                    DeadLetterReason::Failed,
                ))
                .await
            }
        },
    };
    if acks_late {
        settle
    } else {
        Settle::AckedEarly
    }
}

/// The request context of a delivery.
fn request_for(ctx: &Context, delivery: &Delivery, message: &TaskMessage) -> Request {
    let info = DeliveryInfo {
        exchange: delivery.exchange.clone(),
        routing_key: delivery.routing_key.clone(),
        priority: delivery.priority(),
        redelivered: delivery.redelivered,
    };
    Request::from_message(message, info, ctx.config.hostname.clone())
}

fn expired(message: &TaskMessage) -> bool {
    message
        .headers
        .expires
        .is_some_and(|expires| expires <= now())
}

/// Runs the task with its time limits; a panic is a failure.
async fn run(
    task: Arc<dyn Task>,
    request: &Request,
    message: &TaskMessage,
    options: &TaskOptions,
) -> Result<Value, TaskError> {
    let limits = &message.headers.timelimit;
    let hard = limits
        .hard
        .and_then(|s| s.as_duration())
        .or(options.time_limit);
    let soft = limits
        .soft
        .and_then(|s| s.as_duration())
        .or(options.soft_time_limit);
    let args = Arguments::new(
        &message.headers.task,
        message.body.args.clone(),
        message.body.kwargs.clone(),
    );
    let future = celeriac::request::scope(
        request.clone(),
        celeriac::catch_panic(task.call(request.clone(), args)),
    );
    let soft_timer = soft.map(|limit| {
        let signal = request.soft_limit.clone();
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            signal.signal();
        })
    });
    let result = match hard {
        Some(limit) => match tokio::time::timeout(limit, future).await {
            Ok(result) => result,
            Err(_) => Err(TaskError::python(
                "celery.exceptions",
                "TimeLimitExceeded",
                format!("TimeLimitExceeded({})", limit.as_secs_f64()),
            )),
        },
        None => future.await,
    };
    if let Some(timer) = soft_timer {
        timer.abort();
    }
    result
}

/// Success: callbacks and the next chain step are sent, then the result is
/// stored. If a workflow message cannot be sent, the delivery is requeued
/// rather than losing the rest of the workflow.
async fn succeed(ctx: &Context, request: &Request, message: &TaskMessage, value: Value) -> Settle {
    info!(task = %message.headers.task, id = %request.id, "task succeeded");
    let embed = &message.body.embed;
    for callback in embed.callbacks.iter().flatten() {
        let apply = Apply {
            prepend: vec![value.clone()],
            parent: Some(request),
            chain: None,
        };
        if let Err(e) = Box::pin(ctx.app.apply_signature(callback, apply)).await {
            error!(id = %request.id, callback = %callback.task, error = %e, "sending a callback failed");
            if e.is_retryable() {
                return Settle::Reject { requeue: true };
            }
        }
    }
    if let Some((next, rest)) = embed.chain.as_deref().and_then(<[_]>::split_last) {
        let chain = (!rest.is_empty()).then(|| rest.to_vec());
        let apply = Apply {
            prepend: vec![value.clone()],
            parent: Some(request),
            chain,
        };
        if let Err(e) = Box::pin(ctx.app.apply_signature(next, apply)).await {
            error!(id = %request.id, next = %next.task, error = %e, "sending the next chain step failed");
            if e.is_retryable() {
                return Settle::Reject { requeue: true };
            }
        }
    }
    if !ignores_result(ctx, message) {
        let mut meta = ResultMeta::new(&request.id, State::Success, value);
        meta.date_done = Some(now());
        Box::pin(store(ctx, request, message, meta)).await;
    }
    ctx.stats.succeeded();
    Settle::Ack
}

/// Retry: a new message (same id, `retries + 1`, new eta, same headers and
/// routing) is published and confirmed before the original is acked; then
/// `RETRY` is stored. Past `max_retries`, the task fails for good.
async fn retry(
    ctx: &Context,
    delivery: &Delivery,
    request: &Request,
    message: &TaskMessage,
    options: &TaskOptions,
    err: TaskError,
) -> Settle {
    let asked = match err.kind() {
        TaskErrorKind::Retry(asked) => asked.clone(),
        _ => celeriac::RetryRequest::default(),
    };
    let max = asked.max_retries.or(options.max_retries).unwrap_or(3);
    if request.retries >= max {
        warn!(task = %message.headers.task, id = %request.id, max, "task used up its retries");
        return fail(
            ctx,
            delivery,
            request,
            message,
            &err,
            DeadLetterReason::MaxRetriesExceeded,
        )
        .await;
    }
    let delay = match (asked.eta, asked.countdown) {
        (Some(eta), _) => (eta - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
        (None, Some(countdown)) => countdown,
        (None, None) => options.retry_delay(request.retries),
    };
    let mut next = message.clone();
    next.headers.retries += 1;
    next.headers.eta =
        Some(now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX));
    next.headers.extra.retain(|key, _| {
        !key.starts_with("x-death")
            && !key.starts_with("x-first-death")
            && !key.starts_with("x-last-death")
            && key != REDELIVERIES_HEADER
    });
    if let Some(expires) = next.headers.expires {
        next.properties.expiration = Some((expires - now()).num_milliseconds().max(0).to_string());
    }
    let raw = match next.encode() {
        Ok(raw) => raw,
        Err(e) => {
            return fail(
                ctx,
                delivery,
                request,
                message,
                &TaskError::new(e.to_string()),
                DeadLetterReason::Failed,
            )
            .await;
        }
    };
    let (exchange, routing_key) = retry_route(delivery);
    if let Err(e) = ctx
        .app
        .broker()
        .publish(&exchange, &routing_key, &raw)
        .await
    {
        error!(id = %request.id, error = %e, "publishing the retry failed; requeueing the original");
        return Settle::Reject { requeue: true };
    }
    info!(task = %message.headers.task, id = %request.id, retry = request.retries + 1, ?delay, "task will be retried");
    if !ignores_result(ctx, message) {
        let meta = ResultMeta::new(&request.id, State::Retry, err.exception_info().to_json());
        store(ctx, request, message, meta).await;
    }
    ctx.stats.retried();
    Settle::AckNow
}

/// Where a retry goes (§3.7): a delivery from the default exchange (or the
/// delay topology) back to its queue; otherwise the same exchange and
/// routing key, without a delay prefix.
fn retry_route(delivery: &Delivery) -> (String, String) {
    if delivery.exchange.is_empty() || delivery.exchange.starts_with("celery_delayed") {
        (String::new(), delivery.queue.clone())
    } else {
        (
            delivery.exchange.clone(),
            delay::strip_prefix(&delivery.routing_key).to_owned(),
        )
    }
}

/// Final failure: `FAILURE` stored (also for the remaining chain steps, so
/// a client waiting on the chain's id hears of it), errbacks sent with the
/// task id, then the message dead-lettered with the error.
async fn fail(
    ctx: &Context,
    delivery: &Delivery,
    request: &Request,
    message: &TaskMessage,
    err: &TaskError,
    reason: DeadLetterReason,
) -> Settle {
    warn!(task = %message.headers.task, id = %request.id, error = %err, "task failed");
    let exc = err.exception_info();
    let mut meta = ResultMeta::new(&request.id, State::Failure, exc.to_json());
    meta.date_done = Some(now());
    store(ctx, request, message, meta.clone()).await;
    for step in message.body.embed.chain.iter().flatten() {
        if let Some(id) = step.task_id() {
            let mut step_meta = meta.clone();
            step_meta.task_id = id.to_owned();
            let mut step_request = request.clone();
            step_request.id = id.to_owned();
            step_request.correlation_id = Some(id.to_owned());
            if let Some(reply_to) = step.options.get("reply_to").and_then(Value::as_str) {
                step_request.reply_to = Some(reply_to.to_owned());
            }
            store(ctx, &step_request, message, step_meta).await;
        }
    }
    for errback in message.body.embed.errbacks.iter().flatten() {
        let apply = Apply {
            prepend: vec![json!(request.id)],
            parent: Some(request),
            chain: None,
        };
        if let Err(e) = ctx.app.apply_signature(errback, apply).await {
            error!(id = %request.id, errback = %errback.task, error = %e, "sending an errback failed");
        }
    }
    ctx.stats.failed();
    if !ctx.config.dead_letter_failures {
        return Settle::Ack;
    }
    if ctx.native_dead_lettering(&delivery.queue) {
        return Settle::Reject { requeue: false };
    }
    dead_letter(ctx, delivery, reason, Some(&exc.exc_type), exc.message()).await
}

/// `REVOKED` with `TaskRevokedError('expired')`, then ack (§3.5).
async fn revoke_expired(ctx: &Context, request: &Request, message: &TaskMessage) -> Settle {
    info!(task = %message.headers.task, id = %request.id, "task expired before it started; revoking it");
    let exc = ExceptionInfo::new("celery.exceptions", "TaskRevokedError", "expired");
    let mut meta = ResultMeta::new(&request.id, State::Revoked, exc.to_json());
    meta.date_done = Some(now());
    store(ctx, request, message, meta).await;
    ctx.stats.revoked();
    Settle::Ack
}

/// A long ETA leaves through the delay topology; acked once confirmed.
async fn postpone(ctx: &Context, delivery: &Delivery, wait: Duration) -> Settle {
    match ctx
        .delay
        .publish(ctx.app.broker(), &delivery.queue, wait, &delivery.message)
        .await
    {
        Ok(()) => {
            debug!(queue = %delivery.queue, ?wait, "ETA beyond the horizon: moved to the delay queues");
            Settle::AckNow
        }
        Err(e) => {
            error!(error = %e, "moving a long ETA to the delay queues failed; requeueing it");
            Settle::Reject { requeue: true }
        }
    }
}

/// A redelivered message is counted in a header (so the count survives a
/// worker that crashes on it): republished with the count and acked, or
/// dead-lettered once the count passes the limit.
async fn count_redelivery(ctx: &Context, delivery: &Delivery, message: &TaskMessage) -> Settle {
    let count = match delivery.message.headers.get(REDELIVERIES_HEADER) {
        Some(HeaderValue::Int(n)) => u32::try_from(*n).unwrap_or(u32::MAX).saturating_add(1),
        _ => 1,
    };
    ctx.stats.redelivered();
    if count > ctx.config.redelivery_limit {
        warn!(id = %message.headers.id, count, "message redelivered too often (crash loop?); dead-lettering it");
        let detail = format!(
            "delivered {count} times without finishing; limit {}",
            ctx.config.redelivery_limit
        );
        return dead_letter(
            ctx,
            delivery,
            DeadLetterReason::RedeliveryLimit,
            None,
            detail,
        )
        .await;
    }
    let mut copy = delivery.message.clone();
    copy.headers.insert(
        REDELIVERIES_HEADER.into(),
        HeaderValue::Int(i64::from(count)),
    );
    match ctx.app.broker().publish("", &delivery.queue, &copy).await {
        Ok(()) => Settle::AckNow,
        Err(e) => {
            error!(error = %e, "re-queueing a redelivered message failed");
            Settle::Reject { requeue: true }
        }
    }
}

/// Dead-letters the delivery (confirmed), then acks it.
async fn dead_letter(
    ctx: &Context,
    delivery: &Delivery,
    reason: DeadLetterReason,
    exception_type: Option<&str>,
    detail: String,
) -> Settle {
    let mut letter = DeadLetter::new(reason, detail);
    letter.exception_type = exception_type.map(str::to_owned);
    letter.hostname = ctx.config.hostname.clone();
    match ctx.app.broker().dead_letter(delivery, &letter).await {
        Ok(()) => {
            ctx.stats.dead_lettered();
            Settle::AckNow
        }
        Err(e) => {
            error!(error = %e, "dead-lettering failed; leaving the message on its queue");
            Settle::Reject { requeue: true }
        }
    }
}

fn ignores_result(ctx: &Context, message: &TaskMessage) -> bool {
    message
        .headers
        .ignore_result
        .or(ctx.app.task_options(&message.headers.task).ignore_result)
        .unwrap_or(false)
}

/// Stores a result through the app's backend (if any); a result that
/// cannot be delivered (e.g. the caller's reply queue is gone) is logged,
/// not fatal.
async fn store(ctx: &Context, request: &Request, message: &TaskMessage, mut meta: ResultMeta) {
    let Some(backend) = ctx.app.result_backend() else {
        return;
    };
    if meta.parent_id.is_none() {
        meta.parent_id = message.headers.parent_id.clone();
    }
    if meta.group_id.is_none() {
        meta.group_id = message.headers.group.clone();
    }
    let reply_to = request.reply_to.clone().unwrap_or_default();
    let gone = reply_queue_gone(ctx, &reply_to);
    let wait = if gone {
        Duration::ZERO
    } else {
        REPLY_QUEUE_WAIT
    };
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match backend.store(&meta, request).await {
            Ok(()) => {
                if gone {
                    ctx.gone_reply_queues().remove(&reply_to);
                }
                return;
            }
            // An rpc:// reply queue is auto-delete: it vanishes while its
            // client reconnects and comes back when the client re-declares it.
            Err(BrokerError::Unroutable { .. }) if tokio::time::Instant::now() < deadline => {
                debug!(id = %request.id, "the reply queue is missing; waiting for its client to re-declare it");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => {
                if matches!(e, BrokerError::Unroutable { .. }) {
                    ctx.gone_reply_queues()
                        .insert(reply_to, std::time::Instant::now());
                }
                warn!(id = %request.id, state = %meta.status, error = %e, "could not deliver the result");
                return;
            }
        }
    }
}

/// How long a result waits for a missing reply queue to reappear.
const REPLY_QUEUE_WAIT: Duration = Duration::from_secs(10);
/// How long a reply queue that stayed missing is taken to be gone for good:
/// results for it are tried once, without waiting (a client that sent tasks
/// and exited must not slow every one of its tasks down by the wait).
const GONE_REPLY_QUEUE_MEMORY: Duration = Duration::from_secs(300);

/// Whether a result for `reply_to` recently waited in vain.
fn reply_queue_gone(ctx: &Context, reply_to: &str) -> bool {
    let mut gone = ctx.gone_reply_queues();
    gone.retain(|_, since| since.elapsed() < GONE_REPLY_QUEUE_MEMORY);
    gone.contains_key(reply_to)
}
