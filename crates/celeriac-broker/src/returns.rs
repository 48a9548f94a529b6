//! Which publish a `basic.return` belongs to.
//!
//! RabbitMQ answers an unroutable `mandatory` message with a `basic.return`
//! and then the message's confirm. A return names no delivery tag, and lapin
//! (4.12) hands each return to the next confirm it completes: with several
//! publishes in flight on a channel that is often another message's (one
//! acked in between, or one of those a `multiple` ack completes, which lapin
//! takes in hash order). Left there, an unroutable message is reported
//! routed (and the broker has dropped it) while a routed one is reported
//! unroutable.
//!
//! A [`ReturnDesk`] (one per publishing channel) gives each return back to
//! its own publish, recognised by what the return carries ([`Mark`]), and
//! holds a publish's "routed" until every return that could be its own has
//! been looked at:
//!
//! - Each confirm is polled with a waker of the desk's, so each completion
//!   gets its place in the order lapin completed them (lapin wakes a
//!   confirm as it completes it, one after another on its I/O thread).
//! - A return arrives before its own message's confirm. If that confirm
//!   carries nothing, lapin had no return waiting, so the message's return
//!   (if any) went to a confirm completed earlier: the publish is decided
//!   once every confirm completed before its own has been looked at
//!   ([`Tracked::returned_by`]). Whoever waits for that looks at those
//!   confirms itself when their publishers have not yet; it does wait for
//!   publishes registered before its confirm completed whose frames are
//!   still being written (below).
//! - A confirm that carries another message's return leaves any return of
//!   its own queued in lapin behind it; the publisher then sends probes (see
//!   `publish.rs`), each completing one more confirm, until one carries
//!   nothing.
//! - A confirm still being written when another completes may be the one
//!   lapin completed first: it holds the other's decision until it is
//!   polled.
//! - A publish dropped while its frames were being written (its caller
//!   gave up, or a timeout) leaves lapin a confirm the desk never sees,
//!   which may take a return: the desk is then blind
//!   ([`ReturnDesk::is_blind`]); every decision on it is
//!   [`Verdict::Unknown`] (sent again, at least once, as after a lost
//!   connection) and the session replaces the channel.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};

use lapin::message::BasicReturnMessage;
use lapin::types::ShortString;
use lapin::{Confirmation, PublisherConfirm};
use tracing::error;

/// What a returned message is recognised by: a hash of its exchange,
/// routing key, correlation id, body length and the first and last bytes of
/// its body (the whole body of a small message).
///
/// Two messages with the same mark go the same way (same exchange and
/// routing key), so taking one's return for the other's changes nothing,
/// unless the route changed between the two (the same message sent twice
/// at once, around the declaration or deletion of its queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark(u64);

/// Bytes of each end of a body a [`Mark`] covers.
const MARKED_ENDS: usize = 64;

impl Mark {
    /// The mark of a message about to be published.
    pub(crate) fn of(
        exchange: &str,
        routing_key: &str,
        correlation_id: Option<&str>,
        body: &[u8],
    ) -> Mark {
        let mut hasher = DefaultHasher::new();
        exchange.hash(&mut hasher);
        routing_key.hash(&mut hasher);
        correlation_id.hash(&mut hasher);
        body.len().hash(&mut hasher);
        let head = body.len().min(MARKED_ENDS);
        hasher.write(&body[..head]);
        let tail = body.len().saturating_sub(MARKED_ENDS).max(head);
        hasher.write(&body[tail..]);
        Mark(hasher.finish())
    }

    /// The mark of a message the broker returned.
    fn of_return(message: &BasicReturnMessage) -> Mark {
        Mark::of(
            message.exchange.as_str(),
            message.routing_key.as_str(),
            message
                .properties
                .correlation_id()
                .as_ref()
                .map(ShortString::as_str),
            &message.data,
        )
    }
}

/// The broker's answer to one publish, once looked at.
#[derive(Debug)]
pub(crate) struct Seen {
    /// What the confirm said.
    pub(crate) confirmed: Confirmed,
    /// Whose return, if any, lapin handed to this confirm.
    pub(crate) carried: Carried,
    /// This confirm's place in the order lapin completed confirms: those
    /// completed before it have a smaller or equal place, or are still
    /// blockers of the desk.
    pub(crate) place: u64,
}

/// What a confirm said, without the return lapin attached to it.
#[derive(Debug)]
pub(crate) enum Confirmed {
    /// `basic.ack`.
    Ack,
    /// `basic.nack`.
    Nack,
    /// The channel was not in confirm mode.
    NotRequested,
    /// The channel or connection failed before the confirm arrived.
    Failed(lapin::Error),
}

/// Whose return lapin handed to a confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carried {
    /// None.
    Nothing,
    /// This message's own: it was unroutable.
    Own,
    /// Another message's, now given to that message's publish.
    Another,
}

/// A confirm as the desk polls it: lapin's, or a stand-in in unit tests.
pub(crate) trait Confirm:
    Future<Output = Result<Confirmation, lapin::Error>> + Unpin + Send + 'static
{
}

impl<F> Confirm for F where
    F: Future<Output = Result<Confirmation, lapin::Error>> + Unpin + Send + 'static
{
}

/// The returns of one publishing channel, matched to their publishes (see
/// the module documentation).
pub(crate) struct ReturnDesk<C: Confirm = PublisherConfirm> {
    state: Mutex<State<C>>,
}

struct State<C> {
    /// Completions seen so far; the last one's place.
    completions: u64,
    next_id: u64,
    entries: HashMap<u64, Entry<C>, BuildHasherDefault<IdHasher>>,
    /// Confirms that may carry a return nobody has looked at, by the
    /// earliest place their completion can have: those being written
    /// (keyed by the completions before they were registered) and those
    /// completed but not looked at (keyed by their place).
    blockers: BTreeSet<(u64, u64)>,
    /// Decisions waiting for every blocker before their place, by
    /// (place, waiter id).
    waiters: BTreeMap<(u64, u64), Waker>,
    next_waiter: u64,
    /// A publish was dropped mid-write: lapin holds a confirm the desk
    /// cannot see.
    blind: bool,
}

struct Entry<C> {
    /// What this message's return would be recognised by; `None` for a
    /// probe, which is never returned.
    mark: Option<Mark>,
    phase: Phase,
    /// This entry's key in `blockers`, while it is one.
    blocker: Option<u64>,
    /// Set once a return of this message's was looked at.
    returned: bool,
    /// lapin's confirm, unless it is being polled or was looked at.
    confirm: Option<C>,
    /// The answer, once looked at, until its publisher takes it.
    seen: Option<Seen>,
    /// The desk's waker for this confirm.
    signal: Waker,
    /// The publisher's task, to wake when someone else looked.
    owner: Option<Waker>,
    /// The publisher is gone; the entry stays only until its confirm has
    /// been looked at (it may carry another message's return).
    abandoned: bool,
}

/// Hashes the desk's entry ids, which count up from zero: one multiply
/// spreads them (std's default hasher costs more than the rest of a look-up).
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(self.0.rotate_left(8) ^ u64::from(*byte));
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Registered, its frames being written; no confirm to poll yet.
    Writing,
    /// Polled at least once, not completed.
    InFlight,
    /// lapin completed it at this place; not yet looked at.
    Completed(u64),
    /// Looked at.
    Looked,
}

impl<C: Confirm> ReturnDesk<C> {
    /// A desk for a fresh channel.
    pub(crate) fn new() -> Arc<ReturnDesk<C>> {
        Arc::new(ReturnDesk {
            state: Mutex::new(State {
                completions: 0,
                next_id: 0,
                entries: HashMap::default(),
                blockers: BTreeSet::new(),
                waiters: BTreeMap::new(),
                next_waiter: 0,
                blind: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<C>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a publish on this channel was dropped while its frames were
    /// being written: its confirm, which lapin still completes, may take
    /// another message's return unseen, so nothing on this channel can be
    /// decided routed any more.
    pub(crate) fn is_blind(&self) -> bool {
        self.lock().blind
    }

    /// Whether every publish registered here has been decided or dropped.
    pub(crate) fn is_idle(&self) -> bool {
        self.lock().entries.is_empty()
    }

    /// Registers a publish before its frames are handed to the channel, so
    /// that a return of its own cannot be looked at before the desk knows
    /// the message. `mark` is `None` for a probe. The caller hands the
    /// frames over right after (no `.await` between): a ticket dropped
    /// before it is tracked makes the desk blind.
    pub(crate) fn register(self: &Arc<Self>, mark: Option<Mark>) -> Ticket<C> {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        let since = state.completions;
        state.blockers.insert((since, id));
        let signal = Waker::from(Arc::new(Signal {
            desk: Arc::downgrade(self),
            id,
        }));
        state.entries.insert(
            id,
            Entry {
                mark,
                phase: Phase::Writing,
                blocker: Some(since),
                returned: false,
                confirm: None,
                seen: None,
                signal,
                owner: None,
                abandoned: false,
            },
        );
        Ticket {
            desk: self.clone(),
            id,
            signal: state.entries[&id].signal.clone(),
        }
    }

    /// lapin completed confirm `id`: it gets the next place.
    fn completed(&self, id: u64) {
        let wake = {
            let mut state = self.lock();
            state.completions += 1;
            let place = state.completions;
            let Some(entry) = state.entries.get_mut(&id) else {
                return;
            };
            if matches!(entry.phase, Phase::Looked | Phase::Completed(_)) {
                return;
            }
            entry.phase = Phase::Completed(place);
            let previous = entry.blocker.replace(place);
            let owner = entry.owner.clone();
            if let Some(key) = previous {
                state.blockers.remove(&(key, id));
            }
            state.blockers.insert((place, id));
            // Its publisher looks at it. It holds no decision waiting now:
            // those have smaller places; a later one looks at it itself.
            owner
        };
        wake.into_iter().for_each(Waker::wake);
    }

    /// Polls confirm `id` if nobody else is polling it and it has not been
    /// looked at; looks at it if it is ready. Never called with the lock
    /// held: lapin wakes confirms with its own locks held, and the desk's
    /// waker takes this lock.
    fn poll_confirm(&self, id: u64) {
        let (confirm, signal) = {
            let mut state = self.lock();
            let Some(entry) = state.entries.get_mut(&id) else {
                return;
            };
            let Some(confirm) = entry.confirm.take() else {
                return;
            };
            (confirm, entry.signal.clone())
        };
        self.poll_taken(id, confirm, &signal);
    }

    /// [`poll_confirm`](Self::poll_confirm) with the confirm taken out of
    /// its entry (or not yet put in), and its signal.
    fn poll_taken(&self, id: u64, mut confirm: C, signal: &Waker) {
        let mut context = Context::from_waker(signal);
        let mut polls = 0;
        let (wake, leftover) = loop {
            let polled = Pin::new(&mut confirm).poll(&mut context);
            polls += 1;
            let mut state = self.lock();
            let Some(entry) = state.entries.get_mut(&id) else {
                break (Wakes::default(), Some(confirm));
            };
            match polled {
                Poll::Ready(result) => break (state.look(id, result), Some(confirm)),
                // Completed while that poll ran (lapin wakes a confirm
                // after it sets its answer): ready now. It stays a
                // blocker meanwhile: its completion has a place.
                Poll::Pending if matches!(entry.phase, Phase::Completed(_)) && polls == 1 => {}
                Poll::Pending => {
                    // In flight, holding nothing (a second pending poll
                    // after a wake means the wake came without a
                    // completion).
                    entry.confirm = Some(confirm);
                    entry.phase = Phase::InFlight;
                    break (Wakes::released(state.unblock(id)), None);
                }
            }
        };
        // Dropped without the lock: dropping a lapin confirm takes lapin's.
        drop(leftover);
        wake.wake();
    }
}

/// Tasks to wake once the desk's lock is released.
#[derive(Default)]
struct Wakes {
    /// The publisher of a confirm just looked at.
    owner: Option<Waker>,
    /// Decisions no blocker holds any more.
    released: Vec<Waker>,
}

impl Wakes {
    fn released(released: Vec<Waker>) -> Wakes {
        Wakes {
            owner: None,
            released,
        }
    }

    fn wake(self) {
        self.owner
            .into_iter()
            .chain(self.released)
            .for_each(Waker::wake);
    }
}

impl<C> State<C> {
    /// Looks at confirm `id`'s result: gives a carried return to its
    /// publish, records the answer for the publisher. Returns the tasks to
    /// wake.
    fn look(&mut self, id: u64, result: Result<Confirmation, lapin::Error>) -> Wakes {
        let (confirmed, returned) = match result {
            Ok(Confirmation::Ack(returned)) => (Confirmed::Ack, returned),
            Ok(Confirmation::Nack(returned)) => (Confirmed::Nack, returned),
            Ok(Confirmation::NotRequested) => (Confirmed::NotRequested, None),
            Err(e) => (Confirmed::Failed(e), None),
        };
        let carried = match returned {
            None => Carried::Nothing,
            Some(message) => self.give_back(id, &message),
        };
        let mut wake = Wakes {
            owner: None,
            released: self.unblock(id),
        };
        let Some(entry) = self.entries.get_mut(&id) else {
            return wake;
        };
        // A confirm found ready before its waker ran completed before
        // anything completes from now on: it takes the next place.
        let place = match entry.phase {
            Phase::Completed(place) => place,
            _ => {
                self.completions += 1;
                self.completions
            }
        };
        entry.phase = Phase::Looked;
        if entry.abandoned {
            self.entries.remove(&id);
        } else {
            entry.seen = Some(Seen {
                confirmed,
                carried,
                place,
            });
            wake.owner = entry.owner.clone();
        }
        wake
    }

    /// Marks the publish `message` belongs to as returned; says whose it
    /// was from confirm `looking`'s point of view.
    fn give_back(&mut self, looking: u64, message: &BasicReturnMessage) -> Carried {
        let mark = Mark::of_return(message);
        if let Some(entry) = self.entries.get_mut(&looking)
            && entry.mark == Some(mark)
            && !entry.returned
        {
            entry.returned = true;
            return Carried::Own;
        }
        // The oldest publish of this message still waiting for its return.
        let owner = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.mark == Some(mark) && !entry.returned)
            .map(|(id, _)| *id)
            .min();
        match owner.and_then(|id| self.entries.get_mut(&id)) {
            Some(entry) => entry.returned = true,
            None => error!(
                exchange = message.exchange.as_str(),
                routing_key = message.routing_key.as_str(),
                "RabbitMQ returned a message no publish in flight sent; \
                 its publish may have been reported routed"
            ),
        }
        Carried::Another
    }

    /// Takes confirm `id`'s answer if it was looked at; otherwise
    /// remembers `owner` as the task to wake once it is, and takes the
    /// confirm to poll if nobody else is polling it.
    fn answer(&mut self, id: u64, owner: &Waker) -> Answer<C> {
        let entry = self
            .entries
            .get_mut(&id)
            .expect("a tracked publish's entry lives as long as its ticket");
        if let Some(seen) = entry.seen.take() {
            return Answer::Seen(seen);
        }
        if !entry.owner.as_ref().is_some_and(|w| w.will_wake(owner)) {
            entry.owner = Some(owner.clone());
        }
        match entry.confirm.take() {
            Some(confirm) => Answer::Poll(confirm),
            None => Answer::OthersPolling,
        }
    }

    /// `id` holds no decision any more. Returns the decisions it released.
    fn unblock(&mut self, id: u64) -> Vec<Waker> {
        let Some(key) = self
            .entries
            .get_mut(&id)
            .and_then(|entry| entry.blocker.take())
        else {
            return Vec::new();
        };
        self.blockers.remove(&(key, id));
        if self.waiters.is_empty() {
            return Vec::new();
        }
        let first_blocker = self.blockers.first().map_or(u64::MAX, |(key, _)| *key);
        let released: Vec<(u64, u64)> = self
            .waiters
            .range(..=(first_blocker, u64::MAX))
            .map(|(key, _)| *key)
            .collect();
        released
            .into_iter()
            .filter_map(|key| self.waiters.remove(&key))
            .collect()
    }

    /// The first confirm completed before `place` that nobody is polling,
    /// or `Err(())` if only confirms being written or polled hold `place`.
    fn lookable_before(&self, place: u64) -> Result<Option<u64>, ()> {
        let mut held = false;
        for (_, id) in self.blockers.range(..(place, 0)) {
            let entry = &self.entries[id];
            if matches!(entry.phase, Phase::Completed(_)) && entry.confirm.is_some() {
                return Ok(Some(*id));
            }
            held = true;
        }
        if held { Err(()) } else { Ok(None) }
    }
}

/// The desk's waker for one confirm.
struct Signal<C: Confirm> {
    desk: Weak<ReturnDesk<C>>,
    id: u64,
}

impl<C: Confirm> Wake for Signal<C> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(desk) = self.desk.upgrade() {
            desk.completed(self.id);
        }
    }
}

/// One registered publish; dropping it tells the desk its publisher is
/// gone.
pub(crate) struct Ticket<C: Confirm = PublisherConfirm> {
    desk: Arc<ReturnDesk<C>>,
    id: u64,
    /// The desk's waker for this publish's confirm.
    signal: Waker,
}

impl<C: Confirm> Ticket<C> {
    /// Hands the desk the publish's confirm and polls it once, so that its
    /// completion from now on wakes the desk.
    pub(crate) fn track(self, confirm: C) -> Tracked<C> {
        self.desk.poll_taken(self.id, confirm, &self.signal);
        Tracked { ticket: self }
    }
}

impl<C: Confirm> Drop for Ticket<C> {
    fn drop(&mut self) {
        let (wake, leftover) = {
            let mut state = self.desk.lock();
            let Some(entry) = state.entries.get_mut(&self.id) else {
                return;
            };
            let entry_phase = entry.phase;
            match entry_phase {
                // Dropped mid-write (a publisher registers right before it
                // hands its frames to lapin), or already looked at.
                Phase::Writing | Phase::Looked => {
                    let mut wake = state.unblock(self.id);
                    let leftover = state.entries.remove(&self.id).and_then(|e| e.confirm);
                    if matches!(entry_phase, Phase::Writing) {
                        // Its frames may have gone out, and lapin may hand its
                        // confirm a return the desk never sees.
                        state.blind = true;
                        wake.extend(std::mem::take(&mut state.waiters).into_values());
                    }
                    (wake, leftover)
                }
                // Stays until its confirm has been looked at.
                Phase::InFlight | Phase::Completed(_) => {
                    entry.abandoned = true;
                    entry.owner = None;
                    (Vec::new(), None)
                }
            }
        };
        drop(leftover);
        wake.into_iter().for_each(Waker::wake);
    }
}

/// A publish whose confirm the desk tracks.
pub(crate) struct Tracked<C: Confirm = PublisherConfirm> {
    ticket: Ticket<C>,
}

impl<C: Confirm> Future for Tracked<C> {
    type Output = Seen;

    /// The broker's answer, looked at.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Seen> {
        let Ticket { desk, id, signal } = &self.ticket;
        // The answer is taken before polling: a guard in a `match` head
        // would be held through the arms.
        let answer = desk.lock().answer(*id, cx.waker());
        match answer {
            Answer::Seen(seen) => Poll::Ready(seen),
            Answer::OthersPolling => Poll::Pending,
            Answer::Poll(confirm) => {
                desk.poll_taken(*id, confirm, signal);
                let seen = desk.lock().entries.get_mut(id).and_then(|e| e.seen.take());
                seen.map_or(Poll::Pending, Poll::Ready)
            }
        }
    }
}

/// Where a publisher's answer is.
enum Answer<C> {
    /// Looked at.
    Seen(Seen),
    /// Someone else is polling the confirm; they wake the publisher.
    OthersPolling,
    /// Not looked at: the confirm, taken out of its entry to be polled.
    Poll(C),
}

impl<C: Confirm> Tracked<C> {
    /// Whether this publish's message was returned, decided once every
    /// confirm completed before `place` has been looked at: `place` is the
    /// place of a confirm that carried nothing, completed after this
    /// message's own return arrived (its own confirm, or a probe's).
    pub(crate) fn returned_by(self, place: u64) -> Decision<C> {
        Decision {
            tracked: self,
            place,
            waiter: None,
        }
    }
}

/// The future of [`Tracked::returned_by`].
pub(crate) struct Decision<C: Confirm = PublisherConfirm> {
    tracked: Tracked<C>,
    place: u64,
    waiter: Option<u64>,
}

/// Whether a publish's message was returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Routed: no return of its own came.
    Routed,
    /// Returned: no queue took it.
    Returned,
    /// Cannot tell: the desk lost sight of a confirm that may have taken
    /// the return ([`ReturnDesk::is_blind`]).
    Unknown,
}

impl<C: Confirm> Future for Decision<C> {
    type Output = Verdict;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Verdict> {
        let this = &mut *self;
        let desk = this.tracked.ticket.desk.clone();
        let id = this.tracked.ticket.id;
        loop {
            let lookable = {
                let mut state = desk.lock();
                if let Some(waiter) = this.waiter.take() {
                    state.waiters.remove(&(this.place, waiter));
                }
                if state.entries.get(&id).is_some_and(|e| e.returned) {
                    return Poll::Ready(Verdict::Returned);
                }
                if state.blind {
                    return Poll::Ready(Verdict::Unknown);
                }
                match state.lookable_before(this.place) {
                    Ok(Some(other)) => other,
                    Ok(None) => return Poll::Ready(Verdict::Routed),
                    Err(()) => {
                        let waiter = state.next_waiter;
                        state.next_waiter += 1;
                        state
                            .waiters
                            .insert((this.place, waiter), cx.waker().clone());
                        this.waiter = Some(waiter);
                        return Poll::Pending;
                    }
                }
            };
            desk.poll_confirm(lookable);
        }
    }
}

impl<C: Confirm> Drop for Decision<C> {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            self.tracked
                .ticket
                .desk
                .lock()
                .waiters
                .remove(&(self.place, waiter));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{block_on, poll_once};
    use lapin::BasicProperties;
    use lapin::message::Delivery;

    /// A confirm completed by the test, waking its waker at once as lapin's
    /// I/O thread does.
    #[derive(Clone, Default)]
    struct FakeConfirm(Arc<Mutex<Fake>>);

    #[derive(Default)]
    struct Fake {
        answer: Option<Result<Confirmation, lapin::Error>>,
        waker: Option<Waker>,
    }

    impl FakeConfirm {
        fn complete(&self, answer: Confirmation) {
            let waker = {
                let mut fake = self.0.lock().unwrap();
                fake.answer = Some(Ok(answer));
                fake.waker.take()
            };
            waker.into_iter().for_each(Waker::wake);
        }
    }

    impl Future for FakeConfirm {
        type Output = Result<Confirmation, lapin::Error>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let mut fake = self.0.lock().unwrap();
            match fake.answer.take() {
                Some(answer) => Poll::Ready(answer),
                None => {
                    fake.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        }
    }

    /// A message as published: its mark, and the return the broker would
    /// send for it.
    struct Message {
        mark: Mark,
        routing_key: &'static str,
    }

    fn message(routing_key: &'static str) -> Message {
        Message {
            mark: Mark::of("amq.direct", routing_key, Some("id-1"), b"[[], {}, {}]"),
            routing_key,
        }
    }

    impl Message {
        fn returned(&self) -> BasicReturnMessage {
            let mut delivery = Delivery::mock(
                0,
                "amq.direct".into(),
                self.routing_key.into(),
                false,
                b"[[], {}, {}]".to_vec(),
            );
            delivery.properties = BasicProperties::default().with_correlation_id("id-1".into());
            BasicReturnMessage {
                delivery,
                reply_code: 312,
                reply_text: "NO_ROUTE".into(),
            }
        }
    }

    /// Registers and hands over a publish of `message`.
    fn publish(
        desk: &Arc<ReturnDesk<FakeConfirm>>,
        message: &Message,
    ) -> (Tracked<FakeConfirm>, FakeConfirm) {
        let confirm = FakeConfirm::default();
        let tracked = desk.register(Some(message.mark)).track(confirm.clone());
        (tracked, confirm)
    }

    /// The decision, if it can be made now.
    fn decide(tracked: Tracked<FakeConfirm>, place: u64) -> Option<Verdict> {
        block_on(poll_once(tracked.returned_by(place)))
    }

    fn answer(tracked: &mut Tracked<FakeConfirm>) -> Seen {
        block_on(poll_once(tracked)).expect("the confirm was completed")
    }

    #[test]
    fn a_return_handed_to_an_earlier_confirm_reaches_its_own_publish() {
        let desk = ReturnDesk::new();
        let (routed, unroutable) = (message("queue"), message("nowhere"));
        let (mut first, first_confirm) = publish(&desk, &routed);
        let (mut second, second_confirm) = publish(&desk, &unroutable);
        // lapin completes the routed publish first, with the other's return.
        first_confirm.complete(Confirmation::Ack(Some(unroutable.returned())));
        second_confirm.complete(Confirmation::Ack(None));

        // The unroutable one decides before the routed one's publisher has
        // looked at its confirm: its decision looks at it.
        let seen = answer(&mut second);
        assert_eq!(seen.carried, Carried::Nothing);
        assert_eq!(decide(second, seen.place), Some(Verdict::Returned));

        let seen = answer(&mut first);
        assert_eq!(seen.carried, Carried::Another);
        assert!(matches!(seen.confirmed, Confirmed::Ack));
        assert_eq!(decide(first, seen.place), Some(Verdict::Routed));
        assert!(desk.lock().entries.is_empty());
    }

    #[test]
    fn a_confirm_carrying_its_own_return_says_so() {
        let desk = ReturnDesk::new();
        let unroutable = message("nowhere");
        let (mut tracked, confirm) = publish(&desk, &unroutable);
        confirm.complete(Confirmation::Ack(Some(unroutable.returned())));
        assert_eq!(answer(&mut tracked).carried, Carried::Own);
    }

    #[test]
    fn a_confirm_completed_later_does_not_hold_a_decision() {
        let desk = ReturnDesk::new();
        let (mut first, first_confirm) = publish(&desk, &message("a"));
        let (_second, _in_flight) = publish(&desk, &message("b"));
        first_confirm.complete(Confirmation::Ack(None));
        let seen = answer(&mut first);
        assert_eq!(decide(first, seen.place), Some(Verdict::Routed));
    }

    #[test]
    fn a_confirm_still_being_written_holds_a_decision_until_it_is_polled() {
        let desk = ReturnDesk::new();
        let (routed, unroutable) = (message("queue"), message("nowhere"));
        // Registered; its frames still being written.
        let writing = desk.register(Some(routed.mark));
        let (mut tracked, confirm) = publish(&desk, &unroutable);
        confirm.complete(Confirmation::Ack(None));
        let seen = answer(&mut tracked);
        let mut decision = tracked.returned_by(seen.place);
        assert_eq!(block_on(poll_once(&mut decision)), None);

        // lapin completed it (with the other's return) before it was polled.
        let early = FakeConfirm::default();
        early.complete(Confirmation::Ack(Some(unroutable.returned())));
        let mut written = writing.track(early);
        assert_eq!(block_on(poll_once(&mut decision)), Some(Verdict::Returned));
        assert_eq!(answer(&mut written).carried, Carried::Another);
    }

    #[test]
    fn an_abandoned_publish_is_still_looked_at_and_then_forgotten() {
        let desk = ReturnDesk::new();
        let (routed, unroutable) = (message("queue"), message("nowhere"));
        let (abandoned, abandoned_confirm) = publish(&desk, &routed);
        drop(abandoned);
        let (mut tracked, confirm) = publish(&desk, &unroutable);
        abandoned_confirm.complete(Confirmation::Ack(Some(unroutable.returned())));
        confirm.complete(Confirmation::Ack(None));
        let seen = answer(&mut tracked);
        assert_eq!(decide(tracked, seen.place), Some(Verdict::Returned));
        assert!(desk.lock().entries.is_empty());
        assert!(desk.lock().blockers.is_empty());
    }

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Counter {
        fn wakes(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[test]
    fn a_publisher_and_a_held_decision_are_woken() {
        let desk = ReturnDesk::new();
        let (routed, unroutable) = (message("queue"), message("nowhere"));
        let writing = desk.register(Some(routed.mark));
        let (mut tracked, confirm) = publish(&desk, &unroutable);

        // The publisher waits for its confirm; lapin's completion wakes it.
        let publisher = Arc::new(Counter::default());
        let waker = Waker::from(publisher.clone());
        let mut context = Context::from_waker(&waker);
        assert!(Pin::new(&mut tracked).poll(&mut context).is_pending());
        confirm.complete(Confirmation::Ack(None));
        assert_eq!(publisher.wakes(), 1);
        let Poll::Ready(seen) = Pin::new(&mut tracked).poll(&mut context) else {
            panic!("completed, yet pending");
        };

        // Its decision waits for the publish still being written, and is
        // woken once that one is in flight.
        let decider = Arc::new(Counter::default());
        let waker = Waker::from(decider.clone());
        let mut context = Context::from_waker(&waker);
        let mut decision = tracked.returned_by(seen.place);
        assert!(Pin::new(&mut decision).poll(&mut context).is_pending());
        let _in_flight = writing.track(FakeConfirm::default());
        assert_eq!(decider.wakes(), 1);
        assert_eq!(
            Pin::new(&mut decision).poll(&mut context),
            Poll::Ready(Verdict::Routed)
        );
    }

    #[test]
    fn a_confirm_found_ready_is_not_held_by_publishes_registered_after_it() {
        let desk = ReturnDesk::new();
        let early = FakeConfirm::default();
        early.complete(Confirmation::Ack(None));
        let mut tracked = desk.register(Some(message("a").mark)).track(early);
        let seen = answer(&mut tracked);
        let _later = desk.register(Some(message("b").mark));
        assert_eq!(decide(tracked, seen.place), Some(Verdict::Routed));
    }

    #[test]
    fn a_publish_dropped_mid_write_leaves_nothing_decided_routed() {
        let desk = ReturnDesk::new();
        let (routed, unroutable) = (message("queue"), message("nowhere"));
        let abandoned = desk.register(Some(routed.mark));
        let (mut tracked, confirm) = publish(&desk, &unroutable);
        confirm.complete(Confirmation::Ack(None));
        let seen = answer(&mut tracked);
        drop(abandoned);
        assert!(desk.is_blind());
        assert_eq!(decide(tracked, seen.place), Some(Verdict::Unknown));
    }

    #[test]
    fn a_mark_tells_apart_messages_that_go_different_ways() {
        let body = vec![b'x'; 1000];
        let mark =
            |exchange, routing_key, id, body: &[u8]| Mark::of(exchange, routing_key, id, body);
        let base = mark("", "images", Some("id-1"), &body);
        assert_eq!(base, mark("", "images", Some("id-1"), &body));
        assert_ne!(base, mark("", "videos", Some("id-1"), &body));
        assert_ne!(base, mark("images", "images", Some("id-1"), &body));
        assert_ne!(base, mark("", "images", Some("id-2"), &body));
        assert_ne!(base, mark("", "images", None, &body));
        assert_ne!(base, mark("", "images", Some("id-1"), &body[1..]));
        let mut last_byte = body;
        last_byte[999] = b'y';
        assert_ne!(base, mark("", "images", Some("id-1"), &last_byte));
        assert_eq!(Mark::of_return(&message("q").returned()), message("q").mark);
    }
}
