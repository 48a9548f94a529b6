//! Ack coalescing: one `basic.ack(multiple=true)` for a run of finished
//! deliveries instead of one ack each. RabbitMQ's per-ack cost dominates a
//! busy consumer, so this is where a worker's throughput headroom is.
//!
//! Rules that keep it safe:
//! - a multiple ack only ever covers a *contiguous* run of delivery tags, from
//!   the oldest unsettled one, that have all finished — never a delivery still
//!   running or waiting (an ETA task, say);
//! - the run is flushed when it reaches `max_batch`, or after `max_delay`;
//! - a finished delivery stuck behind an unfinished one (a long task, an ETA
//!   task being held) is acked on its own once it has waited
//!   `STRAGGLER_DELAY_FACTOR × max_delay` (at least `MIN_STRAGGLER_AGE`), so
//!   it does not hold a prefetch slot for long. Not sooner: tasks finish
//!   slightly out of order all the time (the runtime does not start them in
//!   strict delivery order), and acking those one by one would cost more
//!   than the per-message acks coalescing saves;
//! - rejects, nacks and immediate acks are sent at once, individually;
//! - every frame of a window is chosen and sent under one async lock, so
//!   acks leave in tag order: two flushes racing could otherwise send the
//!   later multiple ack first, and the earlier one would then name a tag the
//!   broker no longer knows (`PRECONDITION_FAILED - unknown delivery tag`,
//!   which closes the channel); and a multiple ack could reach the broker
//!   before a reject of a tag it covers, acking a message meant for the
//!   dead-letter queue.
//!
//! The at-least-once consequence: a process that dies re-delivers the tasks
//! that had finished but whose ack was not yet sent: at most one flush
//! window of them, plus stragglers younger than the straggler age.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use lapin::Acker;
use lapin::options::BasicAckOptions;
use tokio::sync::Notify;

/// How a consumer acknowledges deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPolicy {
    /// One `basic.ack` per delivery, sent when the delivery is acked.
    EachMessage,
    /// Coalesced `basic.ack(multiple=true)`: at most `max_batch` deliveries
    /// or `max_delay` per flush.
    Coalesce {
        /// Flush once this many contiguous deliveries have finished.
        max_batch: u16,
        /// Flush at least this often.
        max_delay: Duration,
    },
}

impl Default for AckPolicy {
    fn default() -> Self {
        AckPolicy::Coalesce {
            max_batch: 32,
            max_delay: Duration::from_millis(5),
        }
    }
}

/// A finished delivery behind an unfinished one is acked alone after this
/// many flush intervals...
const STRAGGLER_DELAY_FACTOR: u32 = 20;
/// ...and never sooner than this.
const MIN_STRAGGLER_AGE: Duration = Duration::from_millis(100);

struct Entry {
    acker: Acker,
    finished: Option<Instant>,
}

/// The longest a flush waits for its acks to be handed to the connection
/// (a connection that died meanwhile must not hold the window forever).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The unacked deliveries of one channel, by delivery tag.
pub(crate) struct AckWindow {
    entries: Mutex<BTreeMap<u64, Entry>>,
    /// Held while frames are chosen and sent, so they leave in order.
    sending: tokio::sync::Mutex<()>,
    /// Wakes the flusher when a full batch is ready.
    batch_ready: Arc<Notify>,
    max_batch: usize,
    straggler_age: Duration,
}

fn lock(entries: &Mutex<BTreeMap<u64, Entry>>) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
    entries
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AckWindow {
    /// A window for one channel, with a background flusher that stops when
    /// the window is dropped.
    pub(crate) fn start(max_batch: u16, max_delay: Duration) -> Arc<AckWindow> {
        let batch_ready = Arc::new(Notify::new());
        let window = Arc::new(AckWindow {
            entries: Mutex::new(BTreeMap::new()),
            sending: tokio::sync::Mutex::new(()),
            batch_ready: batch_ready.clone(),
            max_batch: usize::from(max_batch.max(1)),
            straggler_age: (max_delay * STRAGGLER_DELAY_FACTOR).max(MIN_STRAGGLER_AGE),
        });
        let weak: Weak<AckWindow> = Arc::downgrade(&window);
        tokio::spawn(async move {
            loop {
                let stragglers = tokio::select! {
                    () = tokio::time::sleep(max_delay) => true,
                    () = batch_ready.notified() => false,
                };
                let Some(window) = weak.upgrade() else { return };
                window.flush(stragglers).await;
            }
        });
        window
    }

    /// Finished deliveries whose ack has not been sent yet.
    pub(crate) fn pending(&self) -> usize {
        lock(&self.entries)
            .values()
            .filter(|e| e.finished.is_some())
            .count()
    }

    /// Registers a delivery as unacked.
    pub(crate) fn delivered(&self, tag: u64, acker: Acker) {
        lock(&self.entries).insert(
            tag,
            Entry {
                acker,
                finished: None,
            },
        );
    }

    /// Marks a delivery finished; wakes the flusher if a full batch is
    /// ready. Never waits: the finished task is freed at once, instead of
    /// lingering (with its message) until the ack is on the wire, while the
    /// broker already delivers its replacement.
    pub(crate) fn finished(&self, tag: u64) {
        let ready = {
            let mut entries = lock(&self.entries);
            if let Some(entry) = entries.get_mut(&tag) {
                entry.finished = Some(Instant::now());
            }
            entries
                .values()
                .take_while(|e| e.finished.is_some())
                .count()
        };
        if ready >= self.max_batch {
            self.batch_ready.notify_one();
        }
    }

    /// Settles a delivery on its own (reject, nack, immediate ack): forgets
    /// it and runs `send`, in order with the window's other frames.
    pub(crate) async fn settle_alone<T>(&self, tag: u64, send: impl Future<Output = T>) -> T {
        let _sending = self.sending.lock().await;
        lock(&self.entries).remove(&tag);
        send.await
    }

    /// Acks everything finished now (before closing the channel).
    pub(crate) async fn flush_all(&self) {
        self.flush_older_than(true, Duration::ZERO).await;
    }

    /// Acks the contiguous finished run with one multiple ack; with
    /// `stragglers`, also acks, one by one, finished deliveries stuck behind
    /// an unfinished one for longer than the straggler age.
    async fn flush(&self, stragglers: bool) {
        self.flush_older_than(stragglers, self.straggler_age).await;
    }

    async fn flush_older_than(&self, stragglers: bool, age: Duration) {
        let _sending = self.sending.lock().await;
        let (run, singles) = {
            let mut entries = lock(&self.entries);
            let prefix: Vec<u64> = entries
                .iter()
                .take_while(|(_, e)| e.finished.is_some())
                .map(|(t, _)| *t)
                .collect();
            let run = prefix.last().copied().and_then(|last| {
                let acker = entries.get(&last).map(|e| e.acker.clone());
                for tag in &prefix {
                    entries.remove(tag);
                }
                acker
            });
            let mut singles = Vec::new();
            if stragglers {
                let old: Vec<u64> = entries
                    .iter()
                    .filter(|(_, e)| e.finished.is_some_and(|t| t.elapsed() >= age))
                    .map(|(t, _)| *t)
                    .collect();
                for tag in old {
                    if let Some(entry) = entries.remove(&tag) {
                        singles.push(entry.acker);
                    }
                }
            }
            (run, singles)
        };
        // An ack that fails here failed because the channel is gone: the
        // broker then requeues the deliveries itself.
        if let Some(acker) = run {
            let multiple = acker.ack(BasicAckOptions { multiple: true });
            let _ = tokio::time::timeout(SEND_TIMEOUT, multiple).await;
        }
        for acker in singles {
            let single = acker.ack(BasicAckOptions { multiple: false });
            let _ = tokio::time::timeout(SEND_TIMEOUT, single).await;
        }
    }
}
