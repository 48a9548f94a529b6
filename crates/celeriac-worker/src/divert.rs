//! Deliveries that do not run now, each with its one outcome: already
//! succeeded (acked), unregistered
//! (`FAILURE` stored, dead-lettered), revoked or expired (`REVOKED` stored,
//! acked),
//! postponed or deferred for its rate or global limit (moved to the delay
//! topology),
//! redelivered (counted, or
//! dead-lettered as a crash loop), or dead-lettered with a reason.

use std::time::Duration;

use celeriac::broker::{DeadLetter, DeadLetterReason, Delivery};
use celeriac::protocol::event::Event;
use celeriac::protocol::repr::value_repr;
use celeriac::protocol::{HeaderValue, TaskMessage};
use celeriac::{ExceptionInfo, Request, State};
use serde_json::Value;
use tracing::{debug, error, info, warn};

use crate::chord;
use crate::context::Context;
use crate::global_limits::LIMIT_WAITS_HEADER;
use crate::isolation;
use crate::outbox::NotStored;
use crate::rate_limits::Micros;
use crate::settle::Settle;

/// Header counting how often a message was delivered again (crash loops).
pub const REDELIVERIES_HEADER: &str = "x-celeriac-redeliveries";

/// An unregistered task: `FAILURE` with `NotRegistered` stored (as Python
/// does), then dead-lettered.
pub(crate) async fn unregistered(
    ctx: &Context,
    delivery: &Delivery,
    message: &TaskMessage,
) -> Settle {
    let name = &message.headers.task;
    warn!(task = %name, id = %message.headers.id, "received an unregistered task; dead-lettering it");
    let request = ctx.request_for(delivery, message);
    let exc = ExceptionInfo::new("celery.exceptions", "NotRegistered", name.clone());
    let meta = request.result_meta(State::Failure, exc.to_json());
    let told = match ctx.outbox.store(&request, &meta).await {
        Ok(()) => chord::part_return(ctx, &request, message, State::Failure, &exc.to_json()).await,
        Err(e) => Err(e),
    };
    if told.is_err() {
        return Settle::Reject { requeue: true };
    }
    ctx.outbox.release_unique(message).await;
    ctx.events.task(|| {
        let exception = format!(
            "NotRegistered({})",
            value_repr(&Value::String(name.clone()))
        );
        Event::task_failed(&message.headers.id, &exception, None)
    });
    ctx.metrics.failed(&delivery.queue, name, "NotRegistered");
    let detail = format!("task {name} is not registered on this worker");
    let reason = DeadLetterReason::UnknownTask;
    dead_letter(ctx, delivery, reason, Some("NotRegistered"), detail).await
}

/// Why a task is revoked instead of run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revocation {
    /// Its `expires` passed before it started (§3.5).
    Expired,
    /// Revoked by remote control (by id or stamp) before it started.
    Revoked,
    /// Terminated by remote control while it ran.
    Terminated,
}

impl Revocation {
    /// The reason Celery stores in `TaskRevokedError`.
    fn reason(self) -> &'static str {
        match self {
            Revocation::Expired => "expired",
            Revocation::Revoked => "revoked",
            Revocation::Terminated => "terminated",
        }
    }
}

/// `REVOKED` with `TaskRevokedError(<reason>)` stored (and a chord told),
/// a `task-revoked` event, then ack: a revoked task is not dead-lettered.
pub(crate) async fn revoke(
    ctx: &Context,
    queue: &str,
    request: &Request,
    message: &TaskMessage,
    why: Revocation,
) -> Settle {
    let reason = why.reason();
    info!(task = %message.headers.task, id = %request.id, reason, "task revoked");
    let exc = ExceptionInfo::new("celery.exceptions", "TaskRevokedError", reason);
    let meta = request.result_meta(State::Revoked, exc.to_json());
    let told = match ctx.outbox.store(request, &meta).await {
        Ok(()) => chord::part_return(ctx, request, message, State::Revoked, &exc.to_json()).await,
        Err(e) => Err(e),
    };
    if told.is_err() {
        return Settle::Reject { requeue: true };
    }
    ctx.outbox.release_unique(message).await;
    ctx.events.task(|| {
        let terminated = why == Revocation::Terminated;
        Event::task_revoked(
            &request.id,
            terminated,
            terminated.then_some("SIGTERM"),
            why == Revocation::Expired,
        )
    });
    ctx.metrics.revoked(queue, &message.headers.task);
    ctx.stats.revoked();
    Settle::Ack
}

/// An ETA task the worker does not hold (due beyond the horizon, or no hold
/// slot free) leaves through the delay topology; acked once confirmed.
pub(crate) async fn postpone(ctx: &Context, delivery: &Delivery, wait: Duration) -> Settle {
    ctx.bursts.moved(&delivery.queue);
    match ctx
        .outbox
        .delay(&delivery.queue, wait, &delivery.message)
        .await
    {
        Ok(()) => {
            debug!(queue = %delivery.queue, ?wait, "ETA task not held: moved to the delay queues");
            Settle::AckNow
        }
        Err(e) => {
            error!(error = %e, "moving a long ETA to the delay queues failed; requeueing it");
            Settle::Reject { requeue: true }
        }
    }
}

/// A rate-limited task whose turn is a second or more away leaves through
/// the delay topology for `delay`, carrying the slot it was given in the
/// header named (or none, to take one when it comes back); acked once its
/// copy is confirmed.
pub(crate) async fn defer_for_rate(
    ctx: &Context,
    delivery: &Delivery,
    message: &TaskMessage,
    delay: Duration,
    (name, slot): (&'static str, Option<Micros>),
) -> Settle {
    let header = (name, slot.map(HeaderValue::Int));
    let settled = defer(ctx, delivery, delay, header).await;
    if settled == Settle::AckNow {
        debug!(task = %message.headers.task, id = %message.headers.id, ?delay, "rate-limited task deferred to its turn");
        ctx.metrics
            .rate_deferred(&delivery.queue, &message.headers.task);
        ctx.stats.rate_deferred();
    }
    settled
}

/// A task whose global limit is full leaves through the delay topology for
/// `delay`, counting how often it found the limit full; acked once its
/// copy is confirmed.
pub(crate) async fn defer_for_limit(
    ctx: &Context,
    delivery: &Delivery,
    message: &TaskMessage,
    delay: Duration,
    waits: i64,
) -> Settle {
    let header = (LIMIT_WAITS_HEADER, Some(HeaderValue::Int(waits)));
    let settled = defer(ctx, delivery, delay, header).await;
    if settled == Settle::AckNow {
        debug!(task = %message.headers.task, id = %message.headers.id, ?delay, waits, "global limit full; task deferred");
        ctx.metrics
            .limit_deferred(&delivery.queue, &message.headers.task);
        ctx.stats.limit_deferred();
    }
    settled
}

/// Moves a copy of the delivery, with `header` set (or removed if `None`),
/// to the delay topology for `delay`: `AckNow` once confirmed, else back to
/// the queue.
async fn defer(
    ctx: &Context,
    delivery: &Delivery,
    delay: Duration,
    (name, value): (&str, Option<HeaderValue>),
) -> Settle {
    let mut copy = delivery.message.clone();
    match value {
        Some(value) => {
            copy.headers.insert(name.into(), value);
        }
        None => {
            copy.headers.remove(name);
        }
    }
    match ctx.outbox.delay(&delivery.queue, delay, &copy).await {
        Ok(()) => Settle::AckNow,
        Err(e) => {
            error!(error = %e, "deferring a task failed; requeueing it");
            Settle::Reject { requeue: true }
        }
    }
}

/// A task with `skip_succeeded` whose id already has a `SUCCESS` result
/// is acked without running again (its chord, if it has one, is told of
/// that result, in case the run that stored it died before telling it);
/// `None` when it must run. Reading the
/// result retries an unreachable store as storing one does; giving up
/// sends the delivery back to its queue.
pub(crate) async fn skip_if_succeeded(
    ctx: &Context,
    delivery: &Delivery,
    message: &TaskMessage,
) -> Option<Settle> {
    // The worker refuses to start without a backend that keeps results by id.
    let backend = ctx.app.result_backend()?;
    let id = &message.headers.id;
    let stored = ctx
        .outbox
        .with_store("reading a task's stored result", || backend.get(id))
        .await;
    match stored {
        Ok(Some(meta)) if meta.status == State::Success => {
            // A run that stored SUCCESS and died before its chord heard of
            // it: tell the chord now (counted once per member).
            let request = ctx.request_for(delivery, message);
            let told = chord::part_return(ctx, &request, message, State::Success, &meta.result);
            if told.await.is_err() {
                return Some(Settle::Reject { requeue: true });
            }
            info!(task = %message.headers.task, id = %id, "task already succeeded; acked without running it again");
            ctx.metrics
                .skipped_succeeded(&delivery.queue, &message.headers.task);
            ctx.stats.skipped_succeeded();
            Some(Settle::Ack)
        }
        Ok(_) => None,
        Err(NotStored) => Some(Settle::Reject { requeue: true }),
    }
}

/// A redelivered message is counted in a header (so the count survives a
/// worker that crashes on it): republished with the count and acked, or
/// dead-lettered once the count passes the limit.
pub(crate) async fn count_redelivery(
    ctx: &Context,
    delivery: &Delivery,
    message: &TaskMessage,
) -> Settle {
    let count = isolation::redeliveries(delivery).saturating_add(1);
    ctx.stats.redelivered();
    let limit = ctx.config.redelivery_limit;
    if count > limit {
        warn!(id = %message.headers.id, count, "message redelivered too often (crash loop?); dead-lettering it");
        ctx.metrics.redelivery_limit(&delivery.queue);
        let detail = format!("delivered {count} times without finishing; limit {limit}");
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
    match ctx.outbox.republish("", &delivery.queue, &copy).await {
        Ok(()) => Settle::AckNow,
        Err(e) => {
            error!(error = %e, "re-queueing a redelivered message failed");
            Settle::Reject { requeue: true }
        }
    }
}

/// Dead-letters the delivery (confirmed), then it is acked.
pub(crate) async fn dead_letter(
    ctx: &Context,
    delivery: &Delivery,
    reason: DeadLetterReason,
    exception_type: Option<&str>,
    detail: String,
) -> Settle {
    let mut letter = DeadLetter::new(reason, detail);
    letter.exception_type = exception_type.map(str::to_owned);
    dead_letter_with(ctx, delivery, letter).await
}

/// Dead-letters the delivery with `letter`'s details, then it is acked.
pub(crate) async fn dead_letter_with(
    ctx: &Context,
    delivery: &Delivery,
    mut letter: DeadLetter,
) -> Settle {
    letter.hostname.clone_from(&ctx.config.hostname);
    match ctx.outbox.dead_letter(delivery, &letter).await {
        Ok(()) => {
            ctx.metrics
                .dead_lettered(&delivery.queue, letter.reason.as_str());
            ctx.stats.dead_lettered();
            Settle::AckNow
        }
        Err(e) => {
            error!(error = %e, "dead-lettering failed; leaving the message on its queue");
            Settle::Reject { requeue: true }
        }
    }
}
