//! Global concurrency limits (`global_concurrency`, optionally counted per
//! value of a `limit_key` parameter): at most that many runs at once across
//! every worker, held as leases in the result store.
//!
//! A delivery takes its lease once it has a concurrency slot here, just
//! before it runs, and gives it back when the run ends. While the task
//! runs the lease is renewed every third of its time to live; a worker
//! killed mid-task stops renewing, and its leases free up when they expire
//! (`global_lease`, 60 s by default).
//!
//! A delivery that finds every lease held gives its concurrency slot back
//! and, in one of the worker's hold slots (shared with ETA and rate-limited
//! tasks), asks again every 50 ms for up to a second, so a busy key keeps
//! its cap in use. Without a hold slot, or after that second, it is
//! deferred through the delay topology for 1 s, then 2, 4 and at most 8 s
//! on each return (counted in a header): a busy key costs the broker at
//! most one move per waiting message every 8 s, and other keys run at
//! once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use celeriac::broker::Delivery;
use celeriac::protocol::{HeaderValue, TaskMessage};
use celeriac::{BackendError, ResultBackend, Task, TaskOptions};
use serde_json::Value;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::warn;

use crate::LimitOutage;
use crate::context::Context;
use crate::pacer::Pacer;

/// Numbers each lease this worker takes, so that every holder is distinct.
static NEXT_HOLDER: AtomicU64 = AtomicU64::new(0);

/// Header counting how often a delivery found its global limit full.
pub(crate) const LIMIT_WAITS_HEADER: &str = "x-celeriac-limit-waits";

/// The longest a delivery is deferred for a full limit at once.
const LONGEST_DEFERRAL: Duration = Duration::from_secs(8);

/// How long a delivery under a global limit is deferred while the store of
/// global limits is unreachable (with `global_limits_outage = wait`).
pub(crate) const OUTAGE_DEFERRAL: Duration = Duration::from_secs(5);

/// How long a delivery that found its limit full asks again, in a hold
/// slot, before it is deferred.
const ASK_AGAIN_FOR: Duration = Duration::from_secs(1);

/// How often it asks again meanwhile.
const ASK_AGAIN_EVERY: Duration = Duration::from_millis(50);

/// What a delivery under a global limit does now.
pub(crate) enum Limited {
    /// Run, holding this lease (none if the task has no global limit, or
    /// the store is unreachable and the worker runs unlimited then).
    Run(Option<Lease>),
    /// Every lease is held: [`ask_again`] for a moment, or defer.
    Full,
    /// Defer it this long; `waits` is the count to carry in
    /// [`LIMIT_WAITS_HEADER`].
    Defer {
        /// How long it stays in the delay topology.
        delay: Duration,
        /// How often it has found the limit full, this time included.
        waits: i64,
    },
}

/// A held lease: renewed while alive, given back when dropped.
pub(crate) struct Lease {
    _renewing: DropGuard,
}

/// Takes the global limit's lease for `message`'s task, if it has a
/// global limit.
pub(crate) async fn take(ctx: &Context, pacer: &Pacer<'_>) -> Limited {
    let Pacer {
        options,
        message,
        delivery,
        ..
    } = *pacer;
    let Some(cap) = options.global_concurrency else {
        return Limited::Run(None);
    };
    // The worker refuses to start without a backend that keeps leases.
    let Some(backend) = ctx.app.result_backend().cloned() else {
        return Limited::Run(None);
    };
    let Some(leases) = backend.leases() else {
        return Limited::Run(None);
    };
    let key = pacer.limit_key();
    // One holder per run: two deliveries of one id on one worker (a
    // duplicate) each hold a lease of their own.
    let run = NEXT_HOLDER.fetch_add(1, Ordering::Relaxed);
    let holder = format!("{}:{}:{run}", ctx.config.hostname, message.headers.id);
    let ttl = ctx.config.global_lease;
    match leases.acquire(key, &holder, cap, ttl).await {
        Ok(true) => Limited::Run(Some(Lease::keep(backend, key.to_owned(), holder, ttl))),
        Ok(false) => Limited::Full,
        Err(e) => outage(ctx, key, &e, delivery),
    }
}

/// After [`take`] found the limit full: asks again every 50 ms for up to a
/// second in a hold slot (none free: at once deferred), then defers the
/// delivery for longer each time it comes back.
pub(crate) async fn ask_again(ctx: &Context, pacer: &Pacer<'_>) -> Limited {
    if let Some(_hold) = ctx.eta_holds.try_hold() {
        let until = tokio::time::Instant::now() + ASK_AGAIN_FOR;
        while tokio::time::Instant::now() < until && !ctx.shutdown.is_cancelled() {
            tokio::time::sleep(ASK_AGAIN_EVERY).await;
            match take(ctx, pacer).await {
                Limited::Full => {}
                decided => return decided,
            }
        }
    }
    let waits = waits_so_far(pacer.delivery).saturating_add(1);
    let exponent = u32::try_from(waits - 1).unwrap_or(u32::MAX).min(3);
    Limited::Defer {
        delay: Duration::from_secs(1 << exponent).min(LONGEST_DEFERRAL),
        waits,
    }
}

/// What a delivery does while the lease store is unreachable: the
/// worker's `global_limits_outage`.
fn outage(ctx: &Context, key: &str, error: &BackendError, delivery: &Delivery) -> Limited {
    match outage_policy(ctx, key, error) {
        LimitOutage::Wait => Limited::Defer {
            delay: OUTAGE_DEFERRAL,
            waits: waits_so_far(delivery),
        },
        LimitOutage::Run => Limited::Run(None),
    }
}

/// The worker's `global_limits_outage`, logged for a delivery under the
/// limit `key` that found the store of global limits unreachable.
pub(crate) fn outage_policy(ctx: &Context, key: &str, error: &BackendError) -> LimitOutage {
    let policy = ctx.config.global_limits_outage;
    match policy {
        LimitOutage::Wait => {
            warn!(key = %key, error = %error, "the store of global limits is unreachable; deferring the task");
        }
        LimitOutage::Run => {
            warn!(key = %key, error = %error, "the store of global limits is unreachable; running the task unlimited");
        }
    }
    policy
}

/// How often `delivery` found its limit full before.
fn waits_so_far(delivery: &Delivery) -> i64 {
    match delivery.message.headers.get(LIMIT_WAITS_HEADER) {
        Some(HeaderValue::Int(waits)) => *waits,
        _ => 0,
    }
}

/// The key a task's global limit is counted by: the task name, and the
/// value of its `limit_key` parameter if it has one (by keyword, else by
/// position among the task's parameters).
pub(crate) fn limit_key(task: &dyn Task, options: &TaskOptions, message: &TaskMessage) -> String {
    let name = &message.headers.task;
    let Some(parameter) = &options.limit_key else {
        return name.clone();
    };
    let body = &message.body;
    // Only this argument is read as a value, even from a body kept as text.
    let value = body.kwargs.value(parameter).or_else(|| {
        let index = task
            .parameters()
            .iter()
            .position(|p| *p == parameter.as_str())?;
        body.args.value(index)
    });
    match value.as_deref() {
        Some(Value::String(text)) => format!("{name}:{parameter}={text}"),
        Some(other) => format!("{name}:{parameter}={other}"),
        None => format!("{name}:{parameter}=(missing)"),
    }
}

impl Lease {
    /// Keeps `holder`'s lease on `key` renewed every third of `ttl` until
    /// dropped, then gives it back.
    fn keep(backend: Arc<dyn ResultBackend>, key: String, holder: String, ttl: Duration) -> Lease {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let Some(leases) = backend.leases() else {
                return;
            };
            let mut renewals =
                tokio::time::interval_at(tokio::time::Instant::now() + ttl / 3, ttl / 3);
            loop {
                tokio::select! {
                    () = stopped.cancelled() => break,
                    _ = renewals.tick() => match leases.renew(&key, &holder, ttl).await {
                        Ok(true) => {}
                        Ok(false) => warn!(key = %key, "a global limit's lease expired while its task ran; the limit may be exceeded"),
                        Err(e) => warn!(key = %key, error = %e, "could not renew a global limit's lease"),
                    },
                }
            }
            if let Err(e) = leases.release(&key, &holder).await {
                warn!(key = %key, error = %e, "could not give a global limit's lease back; it expires on its own");
            }
        });
        Lease {
            _renewing: stop.drop_guard(),
        }
    }
}
