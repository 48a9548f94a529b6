//! Ack coalescing: one `basic.ack(multiple=true)` for a run of finished
//! deliveries instead of one ack each. RabbitMQ's per-ack cost dominates a
//! busy consumer, so this is where a worker's throughput headroom is.
//!
//! Rules that keep it safe:
//! - a multiple ack only ever covers a *contiguous* run of delivery tags, from
//!   the oldest unsettled one, that have all finished — never a delivery still
//!   running or waiting (an ETA task, say);
//! - the run is flushed when it reaches `max_batch`, or after `max_delay`;
//! - a finished delivery stuck behind an unfinished one (the head) waits
//!   while the head is young: tasks finish slightly out of order all the
//!   time (the runtime does not start them in strict delivery order), and
//!   acking those one by one would cost more than the per-message acks
//!   coalescing saves. Once the head has been out for
//!   `STRAGGLER_DELAY_FACTOR × max_delay` (at least `MIN_STRAGGLER_AGE`, the
//!   straggler age) it is a long task or a held one (an ETA task, a rate
//!   limit's turn), no multiple ack can pass it until it ends, and every
//!   finished delivery behind it is acked on its own at the next flush, so
//!   it does not hold a prefetch slot;
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

/// An unfinished delivery out for this many flush intervals is a long one:
/// the finished deliveries behind it are acked one by one...
const STRAGGLER_DELAY_FACTOR: u32 = 20;
/// ...and one out for less than this never is.
const MIN_STRAGGLER_AGE: Duration = Duration::from_millis(100);

struct Entry {
    acker: Acker,
    times: Times,
}

/// When a delivery came and when it finished (if it has).
#[derive(Debug, Clone, Copy)]
struct Times {
    delivered: Instant,
    finished: Option<Instant>,
}

/// What one flush acks: the contiguous finished run from the oldest
/// delivery through `run_through` (one multiple ack), and `singles` one by
/// one.
#[derive(Debug, PartialEq, Eq)]
struct Choice {
    run_through: Option<u64>,
    singles: Vec<u64>,
}

/// Chooses what a flush at `now` acks, from the window's deliveries in tag
/// order: the finished run from the oldest, and, once the oldest unfinished
/// delivery (the head) has been out `long_after`, every finished delivery
/// behind it.
///
/// While the head is young, a finished delivery behind it waits: the head
/// will most likely finish soon, and one multiple ack then covers both.
/// Once it has been out for the straggler age it is a long task or a held
/// one (an ETA task, a rate limit's turn); no multiple ack can pass it until
/// it ends, so waiting would only hold prefetch slots. (A delivery behind
/// the head finished after the head came, so it never waits longer than
/// the straggler age either.)
fn choose(
    entries: impl Iterator<Item = (u64, Times)>,
    now: Instant,
    long_after: Duration,
) -> Choice {
    let mut entries = entries.peekable();
    let mut run_through = None;
    while let Some((tag, _)) = entries.next_if(|(_, times)| times.finished.is_some()) {
        run_through = Some(tag);
    }
    let head_is_long = entries
        .peek()
        .is_some_and(|(_, head)| now.saturating_duration_since(head.delivered) >= long_after);
    let singles = if head_is_long {
        entries
            .filter(|(_, times)| times.finished.is_some())
            .map(|(tag, _)| tag)
            .collect()
    } else {
        Vec::new()
    };
    Choice {
        run_through,
        singles,
    }
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
                tokio::select! {
                    () = tokio::time::sleep(max_delay) => {}
                    () = batch_ready.notified() => {}
                }
                let Some(window) = weak.upgrade() else { return };
                window.flush().await;
            }
        });
        window
    }

    /// Finished deliveries whose ack has not been sent yet.
    pub(crate) fn pending(&self) -> usize {
        lock(&self.entries)
            .values()
            .filter(|e| e.times.finished.is_some())
            .count()
    }

    /// Registers a delivery as unacked.
    pub(crate) fn delivered(&self, tag: u64, acker: Acker) {
        lock(&self.entries).insert(
            tag,
            Entry {
                acker,
                times: Times {
                    delivered: Instant::now(),
                    finished: None,
                },
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
                entry.times.finished = Some(Instant::now());
            }
            entries
                .values()
                .take_while(|e| e.times.finished.is_some())
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
        self.flush_behind_heads_older_than(Duration::ZERO).await;
    }

    /// Acks the contiguous finished run with one multiple ack, and, one by
    /// one, the finished deliveries behind an unfinished one that has been
    /// out for the straggler age.
    async fn flush(&self) {
        self.flush_behind_heads_older_than(self.straggler_age).await;
    }

    async fn flush_behind_heads_older_than(&self, long_after: Duration) {
        let _sending = self.sending.lock().await;
        let (run, singles) = {
            let mut entries = lock(&self.entries);
            let choice = choose(
                entries.iter().map(|(tag, entry)| (*tag, entry.times)),
                Instant::now(),
                long_after,
            );
            let run = choice.run_through.and_then(|last| {
                let rest = entries.split_off(&(last + 1));
                std::mem::replace(&mut *entries, rest)
                    .remove(&last)
                    .map(|entry| entry.acker)
            });
            let singles: Vec<Acker> = choice
                .singles
                .iter()
                .filter_map(|tag| entries.remove(tag).map(|entry| entry.acker))
                .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    const STRAGGLER_AGE: Duration = Duration::from_millis(100);

    /// Deliveries tagged 1.. that came `delivered` ms after `t0` and
    /// finished `finished` ms after it, where given.
    fn window(t0: Instant, deliveries: &[(u64, Option<u64>)]) -> Vec<(u64, Times)> {
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        (1..)
            .zip(deliveries)
            .map(|(tag, &(delivered, finished))| {
                let times = Times {
                    delivered: at(delivered),
                    finished: finished.map(at),
                };
                (tag, times)
            })
            .collect()
    }

    fn choose_at_ms(entries: &[(u64, Times)], t0: Instant, ms: u64) -> Choice {
        let now = t0 + Duration::from_millis(ms);
        choose(entries.iter().copied(), now, STRAGGLER_AGE)
    }

    #[test]
    fn the_finished_run_from_the_oldest_is_one_multiple_ack() {
        let t0 = Instant::now();
        let entries = window(t0, &[(0, Some(1)), (0, Some(2)), (0, None), (0, Some(3))]);
        let expected = Choice {
            run_through: Some(2),
            singles: vec![],
        };
        assert_eq!(choose_at_ms(&entries, t0, 10), expected);
    }

    #[test]
    fn behind_a_young_delivery_a_finished_one_waits() {
        let t0 = Instant::now();
        // 1 came at 50 ms and runs; 2 finished at 60 ms behind it.
        let entries = window(t0, &[(50, None), (50, Some(60))]);
        assert_eq!(choose_at_ms(&entries, t0, 149).singles, Vec::<u64>::new());
        assert_eq!(choose_at_ms(&entries, t0, 150).singles, vec![2]);
    }

    #[test]
    fn behind_a_long_held_delivery_every_finished_one_is_acked_at_once() {
        let t0 = Instant::now();
        // 1 and 3 are ETA tasks held since 0 ms; 2, 4 and 5 finished just
        // now, 6 still runs.
        let entries = window(
            t0,
            &[
                (0, None),
                (0, Some(199)),
                (0, None),
                (150, Some(200)),
                (190, Some(200)),
                (190, None),
            ],
        );
        let expected = Choice {
            run_through: None,
            singles: vec![2, 4, 5],
        };
        assert_eq!(choose_at_ms(&entries, t0, 200), expected);
    }

    #[test]
    fn a_flush_of_everything_takes_every_finished_delivery() {
        let t0 = Instant::now();
        let entries = window(t0, &[(0, Some(1)), (0, None), (0, Some(2)), (0, Some(3))]);
        let now = t0 + Duration::from_millis(3);
        let expected = Choice {
            run_through: Some(1),
            singles: vec![3, 4],
        };
        assert_eq!(choose(entries.into_iter(), now, Duration::ZERO), expected);
    }
}
