//! Outcome counts, for logs and the shutdown summary.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of outcomes, updated as deliveries settle.
#[derive(Debug, Default)]
pub struct Stats {
    succeeded: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    redelivered: AtomicU64,
    revoked: AtomicU64,
    rate_deferred: AtomicU64,
    skipped_succeeded: AtomicU64,
    limit_deferred: AtomicU64,
}

impl Stats {
    pub(crate) fn succeeded(&self) {
        self.succeeded.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn redelivered(&self) {
        self.redelivered.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn revoked(&self) {
        self.revoked.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn rate_deferred(&self) {
        self.rate_deferred.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn skipped_succeeded(&self) {
        self.skipped_succeeded.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn limit_deferred(&self) {
        self.limit_deferred.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot of the counts.
    pub fn summary(&self) -> Summary {
        Summary {
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            revoked: self.revoked.load(Ordering::Relaxed),
            rate_deferred: self.rate_deferred.load(Ordering::Relaxed),
            skipped_succeeded: self.skipped_succeeded.load(Ordering::Relaxed),
            limit_deferred: self.limit_deferred.load(Ordering::Relaxed),
        }
    }
}

/// What a worker did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Tasks that succeeded.
    pub succeeded: u64,
    /// Tasks that failed for good.
    pub failed: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Messages dead-lettered (failures and messages that could not run).
    pub dead_lettered: u64,
    /// Redelivered messages counted.
    pub redelivered: u64,
    /// Tasks revoked (expired, or revoked by a control command).
    pub revoked: u64,
    /// Deliveries deferred through the delay queues for their rate limit.
    pub rate_deferred: u64,
    /// Deliveries acked without running: their task had `skip_succeeded`
    /// and their id had already succeeded.
    pub skipped_succeeded: u64,
    /// Deliveries deferred through the delay queues because their global
    /// limit was full.
    pub limit_deferred: u64,
}
