//! How many ETA tasks the worker holds unacked at once.
//!
//! A held ETA task occupies one delivery of the prefetch window until it is
//! due, and RabbitMQ's per-consumer prefetch cannot be raised for a running
//! consumer (quorum queues refuse the channel-wide prefetch Celery raises
//! instead). Held without a bound, a burst of countdown tasks fills the
//! window and the ordinary tasks queued behind them wait until the burst
//! comes due. So holding takes one of a fixed number of slots (half the
//! window by default): an ETA task that finds none free leaves through the
//! delay topology and comes back when due, and the other half of the window
//! keeps the live traffic flowing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The delay topology counts whole seconds: an ETA due sooner than this is
/// always held (sending it round would not bring it back any earlier).
pub(crate) const DELAY_RESOLUTION: Duration = Duration::from_secs(1);

/// The slots for held ETA tasks.
#[derive(Debug)]
pub(crate) struct EtaHolds {
    held: AtomicUsize,
    limit: usize,
}

impl EtaHolds {
    /// At most `limit` ETA tasks held at once.
    pub(crate) fn new(limit: usize) -> EtaHolds {
        EtaHolds {
            held: AtomicUsize::new(0),
            limit,
        }
    }

    /// ETA tasks held now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// A slot to hold one ETA task in, freed when the guard drops; `None`
    /// when all are taken.
    pub(crate) fn try_hold(&self) -> Option<EtaHold<'_>> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.limit).then_some(held + 1)
            })
            .ok()
            .map(|_| EtaHold { holds: self })
    }
}

/// One held ETA task's slot.
#[derive(Debug)]
pub(crate) struct EtaHold<'a> {
    holds: &'a EtaHolds,
}

impl Drop for EtaHold<'_> {
    fn drop(&mut self) {
        self.holds.held.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_at_the_limit_and_come_back_when_released() {
        let holds = EtaHolds::new(2);
        let first = holds.try_hold().expect("first slot");
        let second = holds.try_hold().expect("second slot");
        assert!(holds.try_hold().is_none(), "a third hold past the limit");
        drop(first);
        let third = holds.try_hold().expect("a released slot is free again");
        assert!(holds.try_hold().is_none(), "still two held");
        drop((second, third));
        assert!(holds.try_hold().is_some() && holds.try_hold().is_some());
    }

    #[test]
    fn a_zero_limit_holds_nothing() {
        assert!(EtaHolds::new(0).try_hold().is_none());
    }
}
