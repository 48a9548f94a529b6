//! Global rate limits (`global_rate_limit`, Celery's syntax, optionally per
//! value of a `limit_key` parameter): at most that many runs per second
//! across every worker. The schedule of each key lives in the result store,
//! on the store's clock; a delivery takes its next slot there and then
//! waits exactly as for a per-worker rate limit ([`crate::rate_limits`]):
//! run now, held under a second in a hold slot, or deferred through the
//! delay topology carrying its slot (in its own header) to run then.

use std::time::Duration;

use celeriac::BackendError;
use celeriac::result::SlotGaps;

use crate::LimitOutage;
use crate::context::Context;
use crate::eta_holds::DELAY_RESOLUTION;
use crate::global_limits::{self, OUTAGE_DEFERRAL};
use crate::pacer::Pacer;
use crate::rate_limits::{
    DEFER_LEAD, Pace, RATE_HORIZON, STALE_SLOT, back_for, carried, defer, micros, now_micros,
    parse_rate, until,
};

/// Header carrying the slot a task deferred for its global rate limit was
/// given (microseconds since the Unix epoch, the store's clock).
pub(crate) const GLOBAL_SLOT_HEADER: &str = "x-celeriac-global-slot";

/// Whether a run of a task with a global rate limit, holding its
/// concurrency slot, may start now: runs of one key start at least one
/// interval apart on this worker ([`crate::starts`]), as the store's slots
/// say they should. [`Pace::Hold`] (no hold slot) until it may, to ask
/// again; or, a second or more away (rates under one a second),
/// [`Pace::Defer`] without a slot, to take one from the store when back.
pub(crate) fn start(ctx: &Context, pacer: &Pacer<'_>) -> Pace<'static> {
    let Some(Ok(Some(per_second))) = pacer.options.global_rate_limit.as_deref().map(parse_rate)
    else {
        return Pace::Run;
    };
    let now = now_micros();
    let Err(earliest) = ctx
        .global_starts
        .take(pacer.limit_key(), 1e6 / per_second, now)
    else {
        return Pace::Run;
    };
    let wait = until(earliest, now);
    if wait < DELAY_RESOLUTION {
        Pace::Hold(wait, None)
    } else {
        Pace::Defer {
            delay: wait,
            slot: None,
        }
    }
}

/// What a delivery of a task with a global rate limit does now.
pub(crate) async fn pace<'a>(ctx: &'a Context, pacer: &Pacer<'_>) -> Pace<'a> {
    let Pacer {
        options, delivery, ..
    } = *pacer;
    // The worker checked at start that the rate reads and the store keeps
    // schedules.
    let Some(Ok(Some(per_second))) = options.global_rate_limit.as_deref().map(parse_rate) else {
        return Pace::Run;
    };
    let Some(slots) = ctx.app.result_backend().and_then(|b| b.slots()) else {
        return Pace::Run;
    };
    let interval = Duration::from_secs_f64(1.0 / per_second);
    let key = pacer.limit_key();
    if let Some(slot) = carried(delivery, GLOBAL_SLOT_HEADER) {
        match slots.honour(key, slot, interval).await {
            Ok(now) if slot >= now.saturating_sub(micros(STALE_SLOT)) => {
                return back_for(slot, now);
            }
            Ok(_) => {}
            Err(e) => return outage(ctx, key, &e),
        }
    }
    let hold = ctx.eta_holds.try_hold();
    let gaps = SlotGaps {
        interval,
        near: if hold.is_some() {
            DELAY_RESOLUTION
        } else {
            Duration::ZERO
        },
        lead: DEFER_LEAD,
        horizon: RATE_HORIZON,
    };
    match slots.take(key, gaps).await {
        Ok(taken) => match taken.at {
            None => Pace::Defer {
                delay: RATE_HORIZON,
                slot: None,
            },
            Some(slot) => {
                let wait = until(slot, taken.now);
                match hold {
                    _ if wait.is_zero() => Pace::Run,
                    Some(hold) if wait < DELAY_RESOLUTION => Pace::Hold(wait, Some(hold)),
                    _ => defer(slot, wait),
                }
            }
        },
        Err(e) => outage(ctx, key, &e),
    }
}

/// What a delivery does while the store is unreachable: the worker's
/// `global_limits_outage`.
fn outage<'a>(ctx: &Context, key: &str, error: &BackendError) -> Pace<'a> {
    match global_limits::outage_policy(ctx, key, error) {
        LimitOutage::Wait => Pace::Defer {
            delay: OUTAGE_DEFERRAL,
            slot: None,
        },
        LimitOutage::Run => Pace::Run,
    }
}
