//! What follows a task's run: success (callbacks, next chain step, result),
//! retry (republished, then `RETRY` stored), or failure (`FAILURE` stored,
//! errbacks sent, dead-lettered). Each returns how the delivery is settled,
//! and only once what it published is confirmed.

use std::time::Duration;

use celeriac::broker::{DeadLetter, DeadLetterReason, Delivery, delay};
use celeriac::protocol::event::Event;
use celeriac::protocol::repr::exception_repr;
use celeriac::protocol::time::now;
use celeriac::protocol::{Signature, SignatureKind, TaskMessage};
use celeriac::{Apply, Request, State, TaskError, TaskErrorKind, TaskOptions};
use serde_json::{Value, json};
use tracing::{error, info, warn};

use crate::chord;

/// The Python repr of a task's error, as events show it: `ValueError('boom')`.
fn exception_repr_of(err: &TaskError) -> String {
    let info = err.exception_info();
    exception_repr(&info.exc_type, &info.exc_message)
}
use crate::context::Context;
use crate::divert::{REDELIVERIES_HEADER, dead_letter_with};
use crate::eta_holds::DELAY_RESOLUTION;
use crate::global_limits::LIMIT_WAITS_HEADER;
use crate::global_rates::GLOBAL_SLOT_HEADER;
use crate::rate_limits::RATE_SLOT_HEADER;
use crate::settle::Settle;

/// Settles a finished run (of `runtime` seconds) by its result.
pub(crate) async fn finish(
    ctx: &Context,
    delivery: &Delivery,
    request: &Request,
    message: &TaskMessage,
    options: &TaskOptions,
    result: Result<Value, TaskError>,
    runtime: f64,
) -> Settle {
    let err = match result {
        Ok(value) => return succeed(ctx, delivery, request, message, value, runtime).await,
        Err(err) => err,
    };
    match err.kind() {
        TaskErrorKind::Retry(_) => {
            Box::pin(retry(ctx, delivery, request, message, options, err)).await
        }
        TaskErrorKind::Reject { requeue: true } => {
            warn!(task = %message.headers.task, id = %request.id, "task rejected its message; requeueing it");
            ctx.events.task(|| Event::task_rejected(&request.id, true));
            ctx.metrics.rejected(&delivery.queue, &message.headers.task);
            Settle::Reject { requeue: true }
        }
        TaskErrorKind::Reject { requeue: false } => {
            warn!(task = %message.headers.task, id = %request.id, "task rejected its message");
            let reason = DeadLetterReason::Other("rejected".into());
            Box::pin(fail(ctx, delivery, request, message, &err, reason)).await
        }
        TaskErrorKind::Failure if options.should_autoretry(&err) => {
            Box::pin(retry(ctx, delivery, request, message, options, err)).await
        }
        TaskErrorKind::Failure => {
            let reason = DeadLetterReason::Failed;
            Box::pin(fail(ctx, delivery, request, message, &err, reason)).await
        }
    }
}

/// Success: callbacks and the next chain step are sent, then the result is
/// stored. If a workflow message cannot be sent for a reason that may pass,
/// the delivery is requeued rather than losing the rest of the workflow.
async fn succeed(
    ctx: &Context,
    delivery: &Delivery,
    request: &Request,
    message: &TaskMessage,
    value: Value,
    runtime: f64,
) -> Settle {
    info!("task succeeded");
    let embed = &message.body.embed;
    for callback in embed.callbacks.iter().flatten() {
        let apply = Apply {
            prepend: vec![value.clone()],
            parent: Some(request),
            chain: None,
        };
        if let Err(e) = ctx.outbox.apply(callback, apply).await {
            error!(id = %request.id, callback = %callback.task, error = %e, "sending a callback failed");
            if e.is_retryable() {
                return Settle::Reject { requeue: true };
            }
        }
    }
    if let Some((next, rest)) = embed.chain.as_deref().and_then(<[_]>::split_last) {
        let apply = Apply {
            prepend: vec![value.clone()],
            parent: Some(request),
            chain: (!rest.is_empty()).then(|| rest.to_vec()),
        };
        if let Err(e) = ctx.outbox.apply(next, apply).await {
            error!(id = %request.id, next = %next.task, error = %e, "sending the next chain step failed");
            if e.is_retryable() {
                return Settle::Reject { requeue: true };
            }
        }
    }
    if !ctx.ignores_result(message) {
        let meta = request.result_meta(State::Success, value.clone());
        if ctx.outbox.store(request, &meta).await.is_err() {
            return Settle::Reject { requeue: true };
        }
    }
    if chord::part_return(ctx, request, message, State::Success, &value)
        .await
        .is_err()
    {
        return Settle::Reject { requeue: true };
    }
    ctx.outbox.release_unique(message).await;
    ctx.events
        .task(|| Event::task_succeeded(&request.id, &value, runtime));
    ctx.metrics
        .succeeded(&delivery.queue, &message.headers.task, runtime);
    ctx.stats.succeeded();
    Settle::Ack
}

/// Retry: `RETRY` is stored, then a new message (same id, `retries + 1`,
/// new eta, same headers and routing) is published and confirmed before
/// the original is acked. A delay of a second or more goes through the delay
/// topology back to the delivery's queue. Past `max_retries`, the task
/// fails for good.
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
        let reason = DeadLetterReason::MaxRetriesExceeded;
        return fail(ctx, delivery, request, message, &err, reason).await;
    }
    let delay = match (asked.eta, asked.countdown) {
        (Some(eta), _) => (eta - chrono::Utc::now())
            .to_std()
            .unwrap_or(Duration::ZERO),
        (None, Some(countdown)) => countdown,
        (None, None) => options.retry_delay(request.retries),
    };
    let signer = ctx.app.security().map(celeriac::Security::signer);
    let raw = match retry_message(message, delay).into_signed(signer) {
        Ok(raw) => raw,
        Err(e) => {
            let err = TaskError::new(e.to_string());
            return fail(
                ctx,
                delivery,
                request,
                message,
                &err,
                DeadLetterReason::Failed,
            )
            .await;
        }
    };
    // RETRY is stored before the retry is published: published first, the
    // retry could run and store its outcome before this RETRY lands, which
    // would then hide that outcome from every reader.
    if !ctx.ignores_result(message) {
        let mut meta = request.result_meta(State::Retry, err.exception_info().to_json());
        meta.traceback = Some(err.traceback(&message.headers.task));
        ctx.outbox.store_progress(request, &meta).await;
    }
    let published = if delay >= DELAY_RESOLUTION {
        // The backoff waits in the delay queues, not in some worker's
        // prefetch window where a retry storm would stall fresh tasks.
        ctx.outbox.delay(&delivery.queue, delay, &raw).await
    } else {
        let (exchange, routing_key) =
            retry_route(delivery, ctx.is_broadcast_queue(&delivery.queue));
        ctx.outbox.republish(&exchange, &routing_key, &raw).await
    };
    if let Err(e) = published {
        error!(id = %request.id, error = %e, "publishing the retry failed; requeueing the original");
        return Settle::Reject { requeue: true };
    }
    info!(retry = request.retries + 1, ?delay, "task will be retried");
    ctx.events.task(|| {
        let traceback = err.traceback(&message.headers.task);
        Event::task_retried(&request.id, &exception_repr_of(&err), &traceback)
    });
    ctx.metrics.retried(&delivery.queue, &message.headers.task);
    ctx.stats.retried();
    Settle::AckNow
}

/// The retry of `message` (§3.7): same id, `retries + 1`, due after `delay`,
/// without the broker's dead-letter history, our redelivery count, or the
/// rate-limit slot and limit waits of the run that failed (the retry takes
/// its own turn).
fn retry_message(message: &TaskMessage, delay: Duration) -> TaskMessage {
    let mut next = message.clone();
    next.headers.retries += 1;
    next.headers.eta =
        Some(now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX));
    next.headers.extra.retain(|key, _| {
        !key.starts_with("x-death")
            && !key.starts_with("x-first-death")
            && !key.starts_with("x-last-death")
            && ![
                REDELIVERIES_HEADER,
                RATE_SLOT_HEADER,
                GLOBAL_SLOT_HEADER,
                LIMIT_WAITS_HEADER,
            ]
            .contains(&key.as_str())
    });
    if let Some(expires) = next.headers.expires {
        next.properties.expiration = Some((expires - now()).num_milliseconds().max(0).to_string());
    }
    next
}

/// Where a retry goes (§3.7, as Celery's `Task.retry`): back where the
/// delivery came from. From the default exchange (or the delay topology),
/// or from a broadcast queue (whose fanout exchange would hand it to every
/// worker again), to its queue; otherwise to the same exchange and routing
/// key, without a delay prefix.
fn retry_route(delivery: &Delivery, broadcast: bool) -> (String, String) {
    if broadcast || delivery.exchange.is_empty() || delay::is_delay_exchange(&delivery.exchange) {
        (String::new(), delivery.queue.clone())
    } else {
        (
            delivery.exchange.clone(),
            delay::strip_prefix(&delivery.routing_key).to_owned(),
        )
    }
}

/// Final failure: `FAILURE` stored with a traceback (also under the ids of
/// the chain's remaining steps, so a client waiting on the chain's id hears
/// of it), the chord told, errbacks sent with the task id, then the message
/// dead-lettered with the error. A result that cannot be stored sends the
/// delivery back to its queue instead.
pub(crate) async fn fail(
    ctx: &Context,
    delivery: &Delivery,
    request: &Request,
    message: &TaskMessage,
    err: &TaskError,
    reason: DeadLetterReason,
) -> Settle {
    warn!(task = %message.headers.task, id = %request.id, error = %err, "task failed");
    let exc = err.exception_info();
    let traceback = err.traceback(&message.headers.task);
    ctx.events
        .task(|| Event::task_failed(&request.id, &exception_repr_of(err), Some(&traceback)));
    ctx.metrics
        .failed(&delivery.queue, &message.headers.task, &exc.exc_type);
    let mut meta = request.result_meta(State::Failure, exc.to_json());
    meta.traceback = Some(traceback.clone());
    if ctx.outbox.store(request, &meta).await.is_err() {
        return Settle::Reject { requeue: true };
    }
    for (id, reply_to) in message
        .body
        .embed
        .chain
        .iter()
        .flatten()
        .filter_map(result_of_step)
    {
        let mut step = request.clone();
        step.id.clone_from(&id);
        step.correlation_id = Some(id.clone());
        if reply_to.is_some() {
            step.reply_to = reply_to;
        }
        let mut step_meta = meta.clone();
        step_meta.task_id = id;
        if ctx.outbox.store(&step, &step_meta).await.is_err() {
            return Settle::Reject { requeue: true };
        }
    }
    if chord::part_return(ctx, request, message, State::Failure, &exc.to_json())
        .await
        .is_err()
    {
        return Settle::Reject { requeue: true };
    }
    for errback in message.body.embed.errbacks.iter().flatten() {
        let apply = Apply {
            prepend: vec![json!(request.id)],
            parent: Some(request),
            chain: None,
        };
        if let Err(e) = ctx.outbox.apply(errback, apply).await {
            error!(id = %request.id, errback = %errback.task, error = %e, "sending an errback failed");
        }
    }
    ctx.outbox.release_unique(message).await;
    ctx.stats.failed();
    if !ctx.config.dead_letter_failures {
        return Settle::Ack;
    }
    if ctx.native_dead_lettering(&delivery.queue) {
        ctx.metrics.dead_lettered(&delivery.queue, reason.as_str());
        return Settle::Reject { requeue: false };
    }
    let mut letter = DeadLetter::new(reason, exc.message());
    letter.exception_type = Some(exc.exc_type.clone());
    letter.traceback = Some(traceback);
    dead_letter_with(ctx, delivery, letter).await
}

/// The id (and reply queue) a remaining chain step's result is read by: a
/// task's own, a chord's body's (Celery fails what a waiter waits on).
fn result_of_step(step: &Signature) -> Option<(String, Option<String>)> {
    let target = match step.kind().ok()? {
        SignatureKind::Chord { body, .. } => *body,
        _ => step.clone(),
    };
    let id = target.task_id()?.to_owned();
    let reply_to = target
        .options
        .get("reply_to")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Some((id, reply_to))
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac::protocol::HeaderValue;

    #[test]
    fn a_retry_keeps_the_id_and_headers_and_drops_broker_history() {
        let mut message = TaskMessage::new("t", "id-1");
        message
            .headers
            .extra
            .insert("x-custom".into(), HeaderValue::Str("v".into()));
        message
            .headers
            .extra
            .insert("x-death".into(), HeaderValue::Array(Vec::new()));
        message
            .headers
            .extra
            .insert(REDELIVERIES_HEADER.into(), HeaderValue::Int(2));
        let next = retry_message(&message, Duration::from_secs(5));
        assert_eq!(next.headers.id, "id-1");
        assert_eq!(next.headers.retries, 1);
        assert!(next.headers.eta.is_some_and(|eta| eta > now()));
        assert!(next.headers.extra.contains_key("x-custom"));
        assert!(!next.headers.extra.contains_key("x-death"));
        assert!(!next.headers.extra.contains_key(REDELIVERIES_HEADER));
    }
}
