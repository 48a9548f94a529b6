//! What happens to one delivery, from its admission to its single outcome:
//! success, retry, failure (dead-lettered), dead letter for a message that
//! cannot run, revoked (expired, revoked or terminated by remote control),
//! postponed, or requeued at shutdown. Every
//! path ends in exactly one settlement of the delivery, and only after its
//! outcome is durable (result stored, retry or dead letter confirmed).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use celeriac::broker::Delivery;
use celeriac::protocol::TaskMessage;
use celeriac::protocol::event::Event;
use celeriac::protocol::time::now;
use celeriac::{State, Task};
use chrono::{DateTime, FixedOffset};
use serde_json::json;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument as _, debug, info, warn};

use crate::admission::{Admission, Gate, admit, is_expired};
use crate::context::Context;
use crate::divert::{
    REDELIVERIES_HEADER, Revocation, count_redelivery, dead_letter, defer_for_limit,
    defer_for_rate, postpone, revoke, skip_if_succeeded, unregistered,
};
use crate::eta_holds::EtaHold;
use crate::execute::{Ran, execute};
use crate::global_limits::{self, Lease, Limited};
use crate::isolation;
use crate::outcome::finish;
use crate::pacer::Pacer;
use crate::rate_limits::{Micros, Pace};
use crate::settle::{Settle, settle};
use crate::task_span;
use crate::tracker::Tracked;

/// Handles one delivery to the end and settles it. It counts as in hand
/// (see [`crate::isolation`]) from this call, before the future is spawned.
///
/// The future comes boxed. It holds the whole run of a task (about 3 KB;
/// cold paths are boxed where they are taken, so keep new ones so), and
/// tokio moves a spawned future by value several times (into its task
/// cell, then through the cell's stages); copying it was 40 % of the
/// worker's instructions per no-op task when it was 8.8 KB. Boxed, it is
/// copied once and tokio moves a pointer.
pub(crate) fn handle(
    ctx: Arc<Context>,
    delivery: Delivery,
) -> std::pin::Pin<Box<impl Future<Output = ()>>> {
    let in_hand = ctx.isolation.hold();
    Box::pin(async move {
        let outcome = process(&ctx, &delivery).await;
        settle(&ctx, &delivery, outcome).await;
        drop(in_hand);
    })
}

/// Decides a delivery's outcome. This future is spawned for every delivery
/// (prefetched ones wait in it for a permit), so the cold paths are boxed:
/// their state is allocated only when taken, which keeps the future small.
async fn process(ctx: &Context, delivery: &Delivery) -> Settle {
    let gate = Gate {
        registry: &ctx.tasks,
        decode: &ctx.decode,
        eta_horizon: ctx.config.eta_horizon,
        holds: &ctx.eta_holds,
        now: now(),
    };
    let admission = admit(&delivery.message, delivery.redelivered, &gate);
    if !matches!(admission, Admission::Postpone(_)) {
        ctx.bursts.not_moved();
    }
    match admission {
        Admission::Run {
            message,
            task,
            wait,
            hold,
        } => run_admitted(ctx, delivery, message, task, wait, hold).await,
        Admission::Undecodable { reason, detail } => {
            warn!(queue = %delivery.queue, reason = %reason, error = %detail, "undecodable message; dead-lettering it");
            Box::pin(dead_letter(ctx, delivery, reason, None, detail)).await
        }
        Admission::Redelivered(message) => {
            Box::pin(count_redelivery(ctx, delivery, &message)).await
        }
        Admission::Unregistered(message) => Box::pin(unregistered(ctx, delivery, &message)).await,
        Admission::Expired(message) => {
            let request = ctx.request_for(delivery, &message);
            Box::pin(revoke(
                ctx,
                &delivery.queue,
                &request,
                &message,
                Revocation::Expired,
            ))
            .await
        }
        Admission::Postpone(wait) => Box::pin(postpone(ctx, delivery, wait)).await,
    }
}

/// Runs an admitted task: waits for its turn (its ETA, in its hold slot,
/// then its rate limit and a concurrency slot), then runs it and settles by
/// its result. While it is held, `inspect` sees it.
async fn run_admitted(
    ctx: &Context,
    delivery: &Delivery,
    message: Arc<TaskMessage>,
    task: Arc<dyn Task>,
    wait: Duration,
    hold: Option<EtaHold<'_>>,
) -> Settle {
    let request = ctx.request_for(delivery, &message);
    if ctx.revoked.contains(&message) {
        return Box::pin(revoke(
            ctx,
            &delivery.queue,
            &request,
            &message,
            Revocation::Revoked,
        ))
        .await;
    }
    let options = ctx.options_of(&message.headers.task);
    if options.skip_succeeded == Some(true)
        && let Some(settled) = Box::pin(skip_if_succeeded(ctx, delivery, &message)).await
    {
        return settled;
    }
    // A task not waiting for an ETA takes its rate-limit turn before it is
    // seen as received: one deferred now is received when it comes back.
    // (One deferred later, by its ETA's turn, a full global limit or the
    // start check, was received already and is received again when back.)
    let pacer = Pacer::new(task.as_ref(), &options, &message, delivery);
    let wait = if wait.is_zero() {
        match pacer.pace(ctx).await {
            (Pace::Run, _) => Wait::Nothing,
            (Pace::Hold(wait, hold), _) => Wait::RateSlot(wait, hold),
            (Pace::Defer { delay, slot }, header) => {
                let deferred = defer_for_rate(ctx, delivery, &message, delay, (header, slot));
                return Box::pin(deferred).await;
            }
        }
    } else {
        Wait::Eta(wait, hold)
    };
    let tracked = ctx.tracker.accept(delivery, &message, task.is_blocking());
    ctx.events.task(|| Event::task_received(&message));
    ctx.metrics.received(&delivery.queue, &message.headers.task);
    // A message that keeps coming back runs alone (`crate::isolation`);
    // one not yet due waits for its ETA as any other would.
    let alone = if matches!(wait, Wait::Nothing | Wait::RateSlot(..))
        && isolation::must_run_alone(delivery)
    {
        match isolation::begin(ctx, delivery, &message.headers.id).await {
            Some(alone) => Some(alone),
            None => return Settle::Requeue,
        }
    } else {
        None
    };
    let hand_back = alone.is_none().then(|| ctx.isolation.generation());
    let (permit, lease) = match wait_turn(ctx, &pacer, &tracked, wait, hand_back).await {
        Ok(held) => held,
        Err(Turn::Shutdown | Turn::HandBack) => return Settle::Requeue,
        Err(Turn::Defer { delay, slot }) => {
            return Box::pin(defer_for_rate(ctx, delivery, &message, delay, slot)).await;
        }
        Err(Turn::LimitFull { delay, waits }) => {
            return Box::pin(defer_for_limit(ctx, delivery, &message, delay, waits)).await;
        }
        Err(Turn::Revoked) => {
            return Box::pin(revoke(
                ctx,
                &delivery.queue,
                &request,
                &message,
                Revocation::Revoked,
            ))
            .await;
        }
        Err(Turn::Expired) => {
            return Box::pin(revoke(
                ctx,
                &delivery.queue,
                &request,
                &message,
                Revocation::Expired,
            ))
            .await;
        }
    };
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
    let span = task_span::open(&request, &delivery.queue);
    #[cfg(feature = "otel")]
    let request = {
        let mut request = request;
        crate::otel::continue_trace(&span, &message.headers, &mut request);
        request
    };
    // Shared with the task's scope (`execute`), so that it is not copied.
    let request = Arc::new(request);
    let outcome = async {
        info!("task started");
        tracked.started();
        ctx.events.task(|| Event::task_started(&request.id));
        let wait = queue_wait(&message, now());
        ctx.metrics
            .started(&delivery.queue, &message.headers.task, wait);
        if options.track_started.unwrap_or(ctx.config.track_started) && !ctx.ignores_result(&message) {
            let started = json!({"pid": std::process::id(), "hostname": ctx.config.hostname});
            ctx.outbox
                .store_progress(&request, &request.result_meta(State::Started, started))
                .await;
        }
        let overrides = ctx.limits.time_limits(&message.headers.task);
        let ran = execute(
            task,
            &request,
            &message,
            &options,
            overrides,
            &tracked.terminate,
        )
        .await;
        drop((permit, lease));
        task_span::record_outcome(&span, &ran);
        match ran {
            Ran::Finished(result) => {
                let runtime = tracked.runtime();
                finish(ctx, delivery, &request, &message, &options, result, runtime).await
            }
            Ran::Terminated => {
                warn!(task = %message.headers.task, id = %request.id, "task terminated by remote control");
                Box::pin(revoke(
                    ctx,
                    &delivery.queue,
                    &request,
                    &message,
                    Revocation::Terminated,
                ))
                .await
            }
        }
    }
    .instrument(span.clone())
    .await;
    let outcome = if acks_late {
        outcome
    } else {
        Settle::AckedEarly
    };
    if let Some(alone) = alone {
        // Settled (not left in the coalescing window) before the worker
        // consumes again, so a crash right after cannot bring it back.
        let outcome = match outcome {
            Settle::Ack => Settle::AckNow,
            other => other,
        };
        settle(ctx, delivery, outcome).await;
        drop(alone);
        return Settle::AckedEarly;
    }
    outcome
}

/// Takes the global limit's lease for a delivery holding `permit`. With
/// the limit full it gives the permit back while it asks again, then takes
/// a permit anew; or the delivery is to be deferred (`Turn::LimitFull`).
async fn global_lease(
    ctx: &Context,
    pacer: &Pacer<'_>,
    permit: OwnedSemaphorePermit,
) -> Result<(OwnedSemaphorePermit, Option<Lease>), Turn> {
    let decided = match global_limits::take(ctx, pacer).await {
        Limited::Run(lease) => return Ok((permit, lease)),
        Limited::Full => {
            drop(permit);
            global_limits::ask_again(ctx, pacer).await
        }
        deferred @ Limited::Defer { .. } => {
            drop(permit);
            deferred
        }
    };
    match decided {
        Limited::Run(lease) => {
            let permit = tokio::select! {
                permit = ctx.pool.permits().clone().acquire_owned() => {
                    permit.map_err(|_| Turn::Shutdown)?
                }
                () = ctx.shutdown.cancelled() => return Err(Turn::Shutdown),
            };
            Ok((permit, lease))
        }
        Limited::Defer { delay, waits } => Err(Turn::LimitFull { delay, waits }),
        // `ask_again` decides; a full limit is never its answer.
        Limited::Full => Err(Turn::Shutdown),
    }
}

/// How long a task waited to start: from when it was enqueued (its
/// `timestamp_in_ms` header) or, for an ETA task, from when it was due if
/// that is later. `None` for a message that does not say when it was
/// enqueued.
fn queue_wait(message: &TaskMessage, now: DateTime<FixedOffset>) -> Option<Duration> {
    let enqueued = message.headers.enqueued_at()?;
    let since = message
        .headers
        .eta
        .map_or(enqueued, |eta| eta.max(enqueued));
    (now - since).to_std().ok()
}

/// What a delivery waits for before it takes a concurrency slot.
enum Wait<'a> {
    /// Nothing: it takes a slot at once.
    Nothing,
    /// Its ETA (in a hold slot if a second or more away), then its
    /// rate-limit turn.
    Eta(Duration, Option<EtaHold<'a>>),
    /// Its rate-limit slot, under a second away (in a hold slot, unless it
    /// came back from the delay queues for it).
    RateSlot(Duration, Option<EtaHold<'a>>),
}

/// Why a held task will not run now.
enum Turn {
    /// The worker is shutting down: hand it back unstarted.
    Shutdown,
    /// Another message is about to run alone: hand it back unstarted.
    HandBack,
    /// It was revoked while it waited.
    Revoked,
    /// Its `expires` passed while it waited.
    Expired,
    /// Its rate-limit turn, taken once its ETA came, or its start (under a
    /// rate of less than one a second), is a second or more away: defer
    /// it.
    Defer {
        /// How long it stays in the delay topology.
        delay: Duration,
        /// The header to carry its slot in, and the slot it was given.
        slot: (&'static str, Option<Micros>),
    },
    /// Its global concurrency limit stayed full: defer it.
    LimitFull {
        /// How long it stays in the delay topology.
        delay: Duration,
        /// How often it has found the limit full, this time included.
        waits: i64,
    },
}

/// Waits for what `wait` says (an ETA, in its hold slot, then the rate
/// limit; or a rate-limit slot) and a concurrency slot, with its global
/// limit's lease if it has one, until its rate limit lets it start; the
/// slot and lease, or why it must not run. Unless it runs alone, it is
/// handed back once another message must run alone (`hand_back` is the
/// isolation generation it was admitted in).
async fn wait_turn(
    ctx: &Context,
    pacer: &Pacer<'_>,
    tracked: &Tracked<'_>,
    wait: Wait<'_>,
    hand_back: Option<u64>,
) -> Result<(OwnedSemaphorePermit, Option<Lease>), Turn> {
    let message = pacer.message;
    let handed_back = async {
        match hand_back {
            Some(admitted) => ctx.isolation.hand_back_requested(admitted).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(handed_back);
    // Sleeps for `$wait` unless something ends the turn first.
    macro_rules! hold_for {
        ($wait:expr) => {
            tokio::select! {
                () = tokio::time::sleep($wait) => {}
                () = ctx.shutdown.cancelled() => return Err(Turn::Shutdown),
                () = &mut handed_back => return Err(Turn::HandBack),
                () = tracked.revoked.cancelled() => return Err(Turn::Revoked),
            }
        };
    }
    match wait {
        Wait::Nothing => {}
        Wait::RateSlot(wait, hold) => {
            debug!(id = %message.headers.id, ?wait, "holding a task until its rate-limit slot");
            hold_for!(wait);
            drop(hold);
        }
        Wait::Eta(wait, hold) => {
            debug!(id = %message.headers.id, ?wait, "holding an ETA task until it is due");
            if let Some(eta) = message.headers.eta {
                tracked.scheduled(eta);
            }
            hold_for!(wait);
            tracked.reserved();
            drop(hold);
            match pacer.pace(ctx).await {
                (Pace::Run, _) => {}
                (Pace::Hold(wait, hold), _) => {
                    hold_for!(wait);
                    drop(hold);
                }
                (Pace::Defer { delay, slot }, header) => {
                    return Err(Turn::Defer {
                        delay,
                        slot: (header, slot),
                    });
                }
            }
        }
    }
    // The run's concurrency slot, its global concurrency lease if it has a
    // limit, the checks; last, its rate limit is asked once more whether it
    // may start (`RateLimits::start`), so that waits for a slot or a lease,
    // or late hand-backs, do not bunch starts. Not yet: the slot and lease
    // go back while it waits, and it takes them again.
    loop {
        // A free slot is taken without looking at the other branches (they
        // would each register a waiter, per task); the checks below catch
        // what they would have said.
        let permit = tokio::select! {
            biased;
            permit = ctx.pool.permits().clone().acquire_owned() => permit.map_err(|_| Turn::Shutdown)?,
            () = ctx.shutdown.cancelled() => return Err(Turn::Shutdown),
            () = &mut handed_back => return Err(Turn::HandBack),
            () = tracked.revoked.cancelled() => return Err(Turn::Revoked),
        };
        // Under a global concurrency limit, the lease comes with the slot
        // (it may wait for one, and the checks below then cover that wait
        // too).
        let (permit, lease) = match pacer.options.global_concurrency {
            Some(_) => Box::pin(global_lease(ctx, pacer, permit)).await?,
            None => (permit, None),
        };
        if ctx.shutdown.is_cancelled() {
            return Err(Turn::Shutdown);
        }
        if hand_back.is_some_and(|admitted| ctx.isolation.must_hand_back(admitted)) {
            return Err(Turn::HandBack);
        }
        if is_expired(message, now()) {
            return Err(Turn::Expired);
        }
        if tracked.revoked.is_cancelled() {
            return Err(Turn::Revoked);
        }
        match pacer.start(ctx) {
            (Pace::Run, _) => return Ok((permit, lease)),
            (Pace::Hold(wait, _), _) => {
                drop((permit, lease));
                hold_for!(wait);
            }
            (Pace::Defer { delay, slot }, header) => {
                return Err(Turn::Defer {
                    delay,
                    slot: (header, slot),
                });
            }
        }
    }
}
