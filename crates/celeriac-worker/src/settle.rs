//! How a delivery ends: acked (perhaps coalesced), acked at once, rejected,
//! or handed back unstarted, once its outcome is durable.

use celeriac::broker::{AckOutcome, BrokerError, Delivery};
use tracing::warn;

use crate::context::Context;

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
    /// Already settled: acked when the task started (`acks_late = false`),
    /// or settled by its handler before the worker consumed again (a
    /// message run alone).
    AckedEarly,
}

/// Settles `delivery` as `settle` says; a failure to settle is logged (the
/// broker delivers the message again).
pub(crate) async fn settle(ctx: &Context, delivery: &Delivery, settle: Settle) {
    let outcome = match settle {
        Settle::Ack => delivery.ack().await,
        Settle::AckNow => delivery.ack_now().await,
        Settle::Reject { requeue } => delivery.reject(requeue).await,
        // Only at shutdown: boxed, so its state is not part of every task's.
        Settle::Requeue => Box::pin(requeue(ctx, delivery)).await,
        Settle::AckedEarly => Ok(AckOutcome::Done),
    };
    if let Err(e) = outcome {
        warn!(error = %e, "settling a delivery failed; the broker will deliver it again");
    }
}

/// Gives an unstarted delivery back: a copy is republished (so it does not
/// count as a redelivery) and the original acked; if that fails, a plain
/// requeue.
async fn requeue(ctx: &Context, delivery: &Delivery) -> Result<AckOutcome, BrokerError> {
    match ctx
        .outbox
        .republish("", &delivery.queue, &delivery.message)
        .await
    {
        Ok(()) => delivery.ack_now().await,
        Err(_) => delivery.reject(true).await,
    }
}
