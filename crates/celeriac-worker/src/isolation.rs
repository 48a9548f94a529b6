//! Running a message that keeps coming back alone, so that a crash loop
//! takes no healthy neighbour with it.
//!
//! RabbitMQ redelivers every message a dead worker held, whether it was
//! running or only prefetched, and cannot say which. Each redelivery is
//! counted in the message ([`REDELIVERIES_HEADER`]), so a healthy message
//! prefetched beside a crashing one is counted too. Caught in one crash it
//! simply runs again; but if it were caught again and again beside the
//! same crasher, it would reach the redelivery limit and be dead-lettered
//! with it.
//!
//! So a message counted [`ALONE_FROM`] times or more runs alone: the worker
//! stops consuming, hands back every delivery it holds unstarted (a copy
//! republished, the original acked: not a redelivery, not counted), waits
//! until every other delivery is settled and the acks sent (for tasks
//! already running, up to [`ALONE_WAIT`]), runs it, then consumes again. Should it take the worker down, it is the only message
//! the broker brings back and counts. One message runs alone at a time;
//! another arriving meanwhile is handed back and runs alone later.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use celeriac::broker::Delivery;
use celeriac::protocol::HeaderValue;
use tokio::sync::{Notify, OwnedMutexGuard};
use tracing::{info, warn};

use crate::context::Context;
use crate::divert::REDELIVERIES_HEADER;

/// Counted redeliveries from which a message runs alone: once it has been
/// brought back by two deaths, a third would not take others with it.
pub(crate) const ALONE_FROM: u32 = 2;

/// How often a message waiting to run alone looks whether the others
/// have settled.
const SETTLED_POLL: Duration = Duration::from_millis(5);

/// How long a message waits for the tasks already running to finish before
/// it runs beside them: the worker takes no new task meanwhile, and a task
/// that runs for hours must not stall it for as long.
const ALONE_WAIT: Duration = Duration::from_secs(30);

/// The worker's state for running messages alone.
#[derive(Debug, Default)]
pub(crate) struct Isolation {
    /// Held while a message runs alone.
    alone: Arc<tokio::sync::Mutex<()>>,
    /// Raised when a message starts running alone (odd) and when it is done
    /// (even): a delivery waiting for its turn hands itself back if it
    /// changed since it was admitted, or if it was admitted while odd.
    generation: AtomicU64,
    /// Wakes the deliveries that wait (for an ETA, or a slot) when it
    /// changes.
    changed: Notify,
    /// Deliveries received and not yet settled.
    in_hand: Arc<AtomicUsize>,
}

/// Counts a delivery in hand until dropped (after it is settled).
pub(crate) struct InHand(Arc<AtomicUsize>);

impl Drop for InHand {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Isolation {
    /// A delivery is in hand from its receipt until the returned guard
    /// drops.
    pub(crate) fn hold(&self) -> InHand {
        self.in_hand.fetch_add(1, Ordering::AcqRel);
        InHand(self.in_hand.clone())
    }

    /// The generation a delivery is admitted in (see
    /// [`must_hand_back`](Self::must_hand_back)).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether a delivery admitted in generation `admitted` and not started
    /// must be handed back: a message has begun to run alone since, or was
    /// running alone then.
    pub(crate) fn must_hand_back(&self, admitted: u64) -> bool {
        let now = self.generation();
        now != admitted || now % 2 == 1
    }

    /// Completes once a delivery admitted in `admitted` must be handed back.
    pub(crate) async fn hand_back_requested(&self, admitted: u64) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.must_hand_back(admitted) {
                return;
            }
            changed.await;
        }
    }

    /// Whether a message is running alone now.
    pub(crate) fn running_alone(&self) -> bool {
        self.generation() % 2 == 1
    }

    fn hand_back_everything(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    fn consume_again(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// How often `delivery` was counted as redelivered.
pub(crate) fn redeliveries(delivery: &Delivery) -> u32 {
    match delivery.message.headers.get(REDELIVERIES_HEADER) {
        Some(HeaderValue::Int(n)) => u32::try_from(*n).unwrap_or(u32::MAX),
        _ => 0,
    }
}

/// Whether `delivery` must run alone.
pub(crate) fn must_run_alone(delivery: &Delivery) -> bool {
    redeliveries(delivery) >= ALONE_FROM
}

/// A message running alone; dropping it consumes again.
pub(crate) struct Alone<'a> {
    ctx: &'a Context,
    /// Kept until consuming has resumed, so the next message to run alone
    /// cannot pause before this one's resume.
    guard: Option<OwnedMutexGuard<()>>,
}

/// Makes `delivery` the only one in the worker's hands: stops consuming,
/// hands back what waits, and waits until every other delivery is
/// settled. `None` if another message is running alone, or the worker is
/// shutting down: hand this one back then.
pub(crate) async fn begin<'a>(
    ctx: &'a Context,
    delivery: &Delivery,
    id: &str,
) -> Option<Alone<'a>> {
    let guard = ctx.isolation.alone.clone().try_lock_owned().ok()?;
    warn!(
        id,
        redeliveries = redeliveries(delivery),
        "a message that keeps coming back (a worker may have died running it) runs alone"
    );
    // Handing back and the guard that undoes it come together, before any
    // await: however this ends, the generation is raised exactly twice and
    // the consumer resumed.
    ctx.isolation.hand_back_everything();
    let alone = Alone {
        ctx,
        guard: Some(guard),
    };
    ctx.consumer.pause().await;
    // This delivery is the one left in hand; deliveries still on their way
    // from the consumer are admitted in an odd generation and handed back.
    // A burst consumer stops taking and settles what it took. Tasks already
    // running are waited for up to ALONE_WAIT.
    let deadline = tokio::time::Instant::now() + ALONE_WAIT;
    while ctx.isolation.in_hand.load(Ordering::Acquire) > 1
        || ctx.consumer.waiting() > 0
        || ctx.bursts.live() > 0
    {
        if tokio::time::Instant::now() >= deadline {
            warn!(
                id,
                still_in_hand = ctx.isolation.in_hand.load(Ordering::Acquire) - 1,
                "tasks still running after {ALONE_WAIT:?}; running the message beside them"
            );
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(SETTLED_POLL) => {}
            () = ctx.shutdown.cancelled() => return None,
        }
    }
    Some(alone)
}

/// Consumes again, however the run ended (finished, handed back,
/// revoked, or aborted at shutdown).
impl Drop for Alone<'_> {
    fn drop(&mut self) {
        self.ctx.isolation.consume_again();
        let consumer = self.ctx.consumer.clone();
        let guard = self.guard.take();
        tokio::spawn(async move {
            match consumer.resume().await {
                Ok(()) => info!("consuming again after running a message alone"),
                // A failed declaration or consume closes the channel; the
                // consumer then subscribes every queue again on a new one.
                Err(e) => {
                    warn!(error = %e, "could not consume again at once; the consumer re-subscribes");
                }
            }
            drop(guard);
        });
    }
}
