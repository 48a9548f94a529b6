//! Ack coalescing: one `basic.ack(multiple=true)` for a run of finished
//! deliveries instead of one ack each. RabbitMQ's per-ack cost dominates a
//! busy consumer, so this is where a worker's throughput headroom is.
//!
//! Rules that keep it safe:
//! - a multiple ack only ever covers a *contiguous* run of delivery tags, from
//!   the oldest unsettled one, that have all finished — never a delivery still
//!   running or waiting (an ETA task, say), nor one that has not reached the
//!   window yet (each queue of a channel is forwarded by its own task, so a
//!   lower tag can be registered after a higher one);
//! - the run is flushed when it reaches `max_batch`, or after `max_delay`;
//! - a finished delivery stuck behind an unfinished one (the head) waits
//!   while the head is young: tasks finish slightly out of order all the
//!   time (the runtime does not start them in strict delivery order), and
//!   acking those one by one would cost more than the per-message acks
//!   coalescing saves. Once the head has been the oldest unfinished
//!   delivery for `STRAGGLER_DELAY_FACTOR × max_delay` (at least
//!   `MIN_STRAGGLER_AGE`, the straggler age) it is a long task or a held
//!   one (an ETA task, a rate limit's turn), no multiple ack can pass it
//!   until it ends, and every delivery that finishes behind it is acked on
//!   its own at once, so it does not hold a prefetch slot. However young
//!   the head, a finished delivery is acked on its own once it has waited
//!   the straggler age;
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

use std::collections::{BTreeMap, BTreeSet};
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

/// An unfinished delivery that has been the oldest for this many flush
/// intervals is a long one: the finished deliveries behind it are acked one
/// by one...
const STRAGGLER_DELAY_FACTOR: u32 = 20;
/// ...and one that has been the oldest for less than this never is.
const MIN_STRAGGLER_AGE: Duration = Duration::from_millis(100);

struct Entry {
    acker: Acker,
    /// When it finished, if it has.
    finished: Option<Instant>,
}

/// The oldest unfinished delivery as the window last saw it, and since
/// when it has been the oldest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    tag: u64,
    since: Instant,
}

impl Head {
    /// Whether it has been the oldest unfinished delivery for `long_after`
    /// by `now`.
    fn is_long(&self, now: Instant, long_after: Duration) -> bool {
        now.saturating_duration_since(self.since) >= long_after
    }
}

/// A channel's unacked deliveries by tag, its head, and which tags have
/// reached the window.
struct Deliveries {
    by_tag: BTreeMap<u64, Entry>,
    head: Option<Head>,
    /// The lowest delivery tag not yet registered. The broker numbers a
    /// channel's deliveries 1, 2, 3... across all its consumers, but each
    /// queue's deliveries are registered by that queue's forwarder, so a
    /// tag can reach the window after a higher one from another queue. A
    /// multiple ack must never pass a tag that has not reached the window:
    /// it would ack a task that has not run.
    unregistered_from: u64,
    /// Tags registered above `unregistered_from` (ahead of a missing one).
    registered_ahead: BTreeSet<u64>,
}

impl Default for Deliveries {
    fn default() -> Self {
        Deliveries {
            by_tag: BTreeMap::new(),
            head: None,
            unregistered_from: 1,
            registered_ahead: BTreeSet::new(),
        }
    }
}

impl Deliveries {
    /// Notes that `tag` reached the window.
    fn register(&mut self, tag: u64) {
        if tag == self.unregistered_from {
            self.unregistered_from += 1;
            while self.registered_ahead.remove(&self.unregistered_from) {
                self.unregistered_from += 1;
            }
        } else if tag > self.unregistered_from {
            self.registered_ahead.insert(tag);
        }
    }
}

/// What one flush acks: the contiguous finished run from the oldest
/// delivery through `run_through` (one multiple ack), and `singles` one by
/// one; and the head it leaves.
#[derive(Debug, PartialEq, Eq)]
struct Choice {
    run_through: Option<u64>,
    singles: Vec<u64>,
    head: Option<Head>,
}

/// Chooses what a flush at `now` acks, from the window's deliveries in tag
/// order (each with when it finished, if it has), the lowest tag that has
/// not reached the window, and the head the last flush saw: the finished
/// run from the oldest, below the first tag not yet registered; every
/// finished delivery behind the oldest unfinished one (the head) once the
/// head has been the oldest for `long_after`; and, however young the head,
/// any finished delivery that has waited `long_after` itself.
///
/// While the head is young, a finished delivery behind it waits: the head
/// will most likely finish soon, and one multiple ack then covers both.
/// Once it has been the oldest for the straggler age it is a long task or
/// a held one (an ETA task, a rate limit's turn); no multiple ack can pass
/// it until it ends, so waiting would only hold prefetch slots. Its age
/// counts from when it became the oldest, not from its delivery: a
/// delivery that waited in the prefetch window for a concurrency slot is
/// not long for that. And a finished delivery never waits more than
/// `long_after` in all, even behind a run of heads that each finish young.
fn choose(
    entries: impl Iterator<Item = (u64, Option<Instant>)>,
    unregistered_from: u64,
    last_head: Option<Head>,
    now: Instant,
    long_after: Duration,
) -> Choice {
    let mut entries = entries.peekable();
    let mut run_through = None;
    while let Some((tag, _)) =
        entries.next_if(|(tag, finished)| finished.is_some() && *tag < unregistered_from)
    {
        run_through = Some(tag);
    }
    // The head: the first unfinished delivery, or a tag below it that has
    // not reached the window yet.
    let head = entries.peek().map(|&(tag, _)| {
        let tag = tag.min(unregistered_from);
        match last_head {
            Some(last) if last.tag == tag => last,
            _ => Head { tag, since: now },
        }
    });
    let head_is_long = head.is_some_and(|head| head.is_long(now, long_after));
    let singles = entries
        .filter(|(_, finished)| {
            finished
                .is_some_and(|at| head_is_long || now.saturating_duration_since(at) >= long_after)
        })
        .map(|(tag, _)| tag)
        .collect();
    Choice {
        run_through,
        singles,
        head,
    }
}

/// The longest a flush waits for its acks to be handed to the connection
/// (a connection that died meanwhile must not hold the window forever).
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The unacked deliveries of one channel, by delivery tag.
pub(crate) struct AckWindow {
    deliveries: Mutex<Deliveries>,
    /// Held while frames are chosen and sent, so they leave in order.
    sending: tokio::sync::Mutex<()>,
    /// Wakes the flusher when a full batch is ready, or a delivery
    /// finished behind a long head.
    ready: Arc<Notify>,
    max_batch: usize,
    straggler_age: Duration,
}

fn lock(deliveries: &Mutex<Deliveries>) -> MutexGuard<'_, Deliveries> {
    deliveries
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AckWindow {
    /// A window for one channel, with a background flusher that stops when
    /// the window is dropped.
    pub(crate) fn start(max_batch: u16, max_delay: Duration) -> Arc<AckWindow> {
        let ready = Arc::new(Notify::new());
        let window = Arc::new(AckWindow {
            deliveries: Mutex::new(Deliveries::default()),
            sending: tokio::sync::Mutex::new(()),
            ready: ready.clone(),
            max_batch: usize::from(max_batch.max(1)),
            straggler_age: (max_delay * STRAGGLER_DELAY_FACTOR).max(MIN_STRAGGLER_AGE),
        });
        let weak: Weak<AckWindow> = Arc::downgrade(&window);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(max_delay) => {}
                    () = ready.notified() => {}
                }
                let Some(window) = weak.upgrade() else { return };
                window.flush().await;
            }
        });
        window
    }

    /// Finished deliveries whose ack has not been sent yet.
    pub(crate) fn pending(&self) -> usize {
        lock(&self.deliveries)
            .by_tag
            .values()
            .filter(|e| e.finished.is_some())
            .count()
    }

    /// Registers a delivery as unacked.
    pub(crate) fn delivered(&self, tag: u64, acker: Acker) {
        let entry = Entry {
            acker,
            finished: None,
        };
        let mut deliveries = lock(&self.deliveries);
        deliveries.by_tag.insert(tag, entry);
        deliveries.register(tag);
    }

    /// Marks a delivery finished; wakes the flusher if a full batch is
    /// ready, or if it finished behind a long head (its ack then goes out
    /// alone at once, rather than at the next flush interval). Never waits:
    /// the finished task is freed at once, instead of lingering (with its
    /// message) until the ack is on the wire, while the broker already
    /// delivers its replacement.
    pub(crate) fn finished(&self, tag: u64) {
        let wake = {
            let mut deliveries = lock(&self.deliveries);
            let now = Instant::now();
            if let Some(entry) = deliveries.by_tag.get_mut(&tag) {
                entry.finished = Some(now);
            }
            // The head as the last flush saw it.
            let behind_long_head = deliveries
                .head
                .is_some_and(|head| head.tag < tag && head.is_long(now, self.straggler_age));
            behind_long_head
                || deliveries
                    .by_tag
                    .values()
                    .take_while(|e| e.finished.is_some())
                    .count()
                    >= self.max_batch
        };
        if wake {
            self.ready.notify_one();
        }
    }

    /// Settles a delivery on its own (reject, nack, immediate ack): forgets
    /// it and runs `send`, in order with the window's other frames.
    pub(crate) async fn settle_alone<T>(&self, tag: u64, send: impl Future<Output = T>) -> T {
        let _sending = self.sending.lock().await;
        lock(&self.deliveries).by_tag.remove(&tag);
        send.await
    }

    /// Acks everything finished now (before closing the channel).
    pub(crate) async fn flush_all(&self) {
        self.flush_behind_heads_older_than(Duration::ZERO).await;
    }

    /// Acks the contiguous finished run with one multiple ack, and, one by
    /// one, the finished deliveries behind an unfinished one that has been
    /// the oldest for the straggler age.
    async fn flush(&self) {
        self.flush_behind_heads_older_than(self.straggler_age).await;
    }

    async fn flush_behind_heads_older_than(&self, long_after: Duration) {
        let _sending = self.sending.lock().await;
        let (run, singles) = {
            let mut deliveries = lock(&self.deliveries);
            let Deliveries {
                by_tag,
                head,
                unregistered_from,
                ..
            } = &mut *deliveries;
            let choice = choose(
                by_tag.iter().map(|(tag, entry)| (*tag, entry.finished)),
                *unregistered_from,
                *head,
                Instant::now(),
                long_after,
            );
            *head = choice.head;
            let run = choice.run_through.and_then(|last| {
                let rest = by_tag.split_off(&(last + 1));
                std::mem::replace(by_tag, rest)
                    .remove(&last)
                    .map(|entry| entry.acker)
            });
            let singles: Vec<Acker> = choice
                .singles
                .iter()
                .filter_map(|tag| by_tag.remove(tag).map(|entry| entry.acker))
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
    /// Every tag has reached the window.
    const ALL: u64 = u64::MAX;

    /// Deliveries tagged 1.., each finished at `at` or not (`true` or
    /// `false`).
    fn window(at: Instant, finished: &[bool]) -> Vec<(u64, Option<Instant>)> {
        let at = |done: &bool| done.then_some(at);
        (1..).zip(finished.iter().map(at)).collect()
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn the_finished_run_from_the_oldest_is_one_multiple_ack() {
        let t0 = Instant::now();
        let entries = window(t0, &[true, true, false, true]);
        let choice = choose(entries.into_iter(), ALL, None, t0, STRAGGLER_AGE);
        let head = Some(Head { tag: 3, since: t0 });
        let expected = Choice {
            run_through: Some(2),
            singles: vec![],
            head,
        };
        assert_eq!(choice, expected);
    }

    #[test]
    fn behind_a_young_head_a_finished_delivery_waits() {
        let t0 = Instant::now();
        let entries = window(ms(t0, 50), &[false, true]);
        // First seen now: young.
        let first = choose(entries.iter().copied(), ALL, None, t0, STRAGGLER_AGE);
        assert_eq!(first.singles, Vec::<u64>::new());
        // Still the oldest 99 ms later: still young.
        let later = choose(
            entries.iter().copied(),
            ALL,
            first.head,
            ms(t0, 99),
            STRAGGLER_AGE,
        );
        assert_eq!(later.singles, Vec::<u64>::new());
        assert_eq!(later.head, first.head);
        // 100 ms: long; what finished behind it (50 ms ago) goes one by one.
        let long = choose(
            entries.iter().copied(),
            ALL,
            later.head,
            ms(t0, 100),
            STRAGGLER_AGE,
        );
        assert_eq!(long.singles, vec![2]);
    }

    #[test]
    fn a_long_head_acks_every_finished_delivery_behind_it() {
        let t0 = Instant::now();
        // 1 and 3 are held ETA tasks, 1 the oldest since 0 ms; 2, 4 and 5
        // finished, 6 still runs.
        let entries = window(t0, &[false, true, false, true, true, false]);
        let head = Some(Head { tag: 1, since: t0 });
        let choice = choose(entries.into_iter(), ALL, head, ms(t0, 200), STRAGGLER_AGE);
        let expected = Choice {
            run_through: None,
            singles: vec![2, 4, 5],
            head,
        };
        assert_eq!(choice, expected);
    }

    #[test]
    fn a_new_head_is_young_however_long_ago_it_was_delivered() {
        let t0 = Instant::now();
        // 1 was the long head and finished; 2 (delivered long ago, waiting
        // for a slot) is the oldest now.
        let entries = window(ms(t0, 500), &[true, false, true]);
        let last = Some(Head { tag: 1, since: t0 });
        let choice = choose(entries.into_iter(), ALL, last, ms(t0, 500), STRAGGLER_AGE);
        let expected = Choice {
            run_through: Some(1),
            singles: vec![],
            head: Some(Head {
                tag: 2,
                since: ms(t0, 500),
            }),
        };
        assert_eq!(choice, expected);
    }

    #[test]
    fn a_finished_delivery_never_waits_more_than_the_straggler_age() {
        let t0 = Instant::now();
        // 2 finished at 0 ms behind 1, which only now became the oldest.
        let entries = window(t0, &[false, true]);
        let young = choose(
            entries.iter().copied(),
            ALL,
            None,
            ms(t0, 99),
            STRAGGLER_AGE,
        );
        assert_eq!(young.singles, Vec::<u64>::new());
        let waited = choose(
            entries.iter().copied(),
            ALL,
            young.head,
            ms(t0, 100),
            STRAGGLER_AGE,
        );
        assert_eq!(waited.singles, vec![2]);
    }

    #[test]
    fn a_flush_of_everything_takes_every_finished_delivery() {
        let t0 = Instant::now();
        let entries = window(t0, &[true, false, true, true]);
        let choice = choose(entries.into_iter(), ALL, None, t0, Duration::ZERO);
        let expected = Choice {
            run_through: Some(1),
            singles: vec![3, 4],
            head: Some(Head { tag: 2, since: t0 }),
        };
        assert_eq!(choice, expected);
    }

    #[test]
    fn a_multiple_ack_never_passes_a_tag_that_has_not_reached_the_window() {
        let t0 = Instant::now();
        // Tags 1 and 3 (of two queues) finished; 2 is still in its queue's
        // forwarder, not registered.
        let entries = vec![(1, Some(t0)), (3, Some(t0))];
        let choice = choose(entries.iter().copied(), 2, None, t0, STRAGGLER_AGE);
        let expected = Choice {
            run_through: Some(1),
            singles: vec![],
            head: Some(Head { tag: 2, since: t0 }),
        };
        assert_eq!(choice, expected);
        // Missing for the straggler age, it is a long head: 3 goes alone.
        let later = choose(
            entries.into_iter(),
            2,
            choice.head,
            ms(t0, 100),
            STRAGGLER_AGE,
        );
        assert_eq!(later.run_through, Some(1));
        assert_eq!(later.singles, vec![3]);
    }

    #[test]
    fn tags_registered_out_of_order_are_all_counted_once_the_gap_fills() {
        let mut deliveries = Deliveries::default();
        for tag in [1, 3, 4, 6] {
            deliveries.register(tag);
        }
        assert_eq!(deliveries.unregistered_from, 2);
        deliveries.register(2);
        assert_eq!(deliveries.unregistered_from, 5);
        deliveries.register(5);
        assert_eq!(deliveries.unregistered_from, 7);
        assert!(deliveries.registered_ahead.is_empty());
    }
}
