//! Per-worker rate limits, in Celery's syntax and with Celery's meaning
//! (`"10/s"`: at most ten runs of that task per second on this worker), but
//! without Celery's cost: a task waiting for its turn does not sit in the
//! prefetch window.
//!
//! Each limited task name keeps a schedule: the earliest moment its next
//! run may start. A delivery takes the next slot of that schedule (which
//! then moves on by one interval) and, by how far off its slot is:
//! - now: it runs;
//! - under a second off: it is held until then in one of the worker's hold
//!   slots (shared with ETA tasks, so held tasks never take more than their
//!   share of the window);
//! - further off, or with no hold slot free: it is deferred through the
//!   delay topology, carrying its slot in a header, and comes back shortly
//!   before the slot to run then without taking another. As the delay
//!   queues count whole seconds and take a moment to hand a message back,
//!   a deferred delivery's slot is at least [`DEFER_LEAD`] away: the slots
//!   before that go unused rather than come back late in a bunch;
//! - beyond the horizon (a minute's worth of slots already given out): it
//!   takes no slot and is deferred for the horizon, to try again.
//!
//! So a backlog of limited tasks leaves the window at once, each delivery
//! moved about once per minute it waits, and other task types keep the
//! window. A delivery back for its slot is held without a hold slot: a
//! second's worth of them comes back at once, up to 1.25 s early.
//!
//! Slots say when runs may start; the start itself is checked once more,
//! when the run has its concurrency slot ([`RateLimits::start`], and
//! [`crate::starts`] for why).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use celeriac::broker::Delivery;
use celeriac::protocol::HeaderValue;

use crate::eta_holds::{DELAY_RESOLUTION, EtaHold, EtaHolds};
use crate::starts::take_start;

/// Header carrying the slot a deferred task was given (microseconds since
/// the Unix epoch).
pub(crate) const RATE_SLOT_HEADER: &str = "x-celeriac-rate-slot";

/// How far ahead slots are given out; a delivery that would wait longer is
/// deferred this long without one.
pub(crate) const RATE_HORIZON: Duration = Duration::from_secs(60);

/// A deferred delivery is sent to come back at least this long before its
/// slot.
pub(crate) const RETURN_MARGIN: Duration = Duration::from_millis(250);

/// The nearest slot a deferred delivery is given: the shortest delay (a
/// second) and what the delay queues may take beyond it to hand a message
/// back (measured here at up to 0.4 s for the one-second level).
pub(crate) const DEFER_LEAD: Duration = Duration::from_millis(1_500);

/// A carried slot older than this is not honoured: the delivery takes a
/// new one (its worker was away, or it sat in a queue with no consumer).
pub(crate) const STALE_SLOT: Duration = Duration::from_secs(5);

/// A moment as microseconds since the Unix epoch: the delay topology sends
/// a deferred delivery to any worker, so slots are wall-clock times.
pub(crate) type Micros = i64;

/// The wall clock in [`Micros`].
pub(crate) fn now_micros() -> Micros {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// What a delivery does about its task's rate limit.
#[derive(Debug)]
pub(crate) enum Pace<'a> {
    /// Run it now.
    Run,
    /// Wait this long (in a hold slot, unless it came back from the delay
    /// queues for its slot), then run it.
    Hold(Duration, Option<EtaHold<'a>>),
    /// Move it to the delay topology for `delay`, carrying `slot` (none:
    /// it was given no slot and takes one when it comes back).
    Defer {
        /// How long it stays in the delay topology (whole seconds count).
        delay: Duration,
        /// The slot it was given.
        slot: Option<Micros>,
    },
}

/// The slot a deferred delivery carries, if any.
pub(crate) fn carried_slot(delivery: &Delivery) -> Option<Micros> {
    carried(delivery, RATE_SLOT_HEADER)
}

/// The slot a deferred delivery carries in `header`, if any.
pub(crate) fn carried(delivery: &Delivery, header: &str) -> Option<Micros> {
    match delivery.message.headers.get(header) {
        Some(HeaderValue::Int(slot)) => Some(*slot),
        _ => None,
    }
}

/// One limited task's schedule.
#[derive(Debug, Clone)]
struct Schedule {
    /// The rate as it was given (`10/m`), for `inspect registered`.
    text: String,
    /// Microseconds between two runs.
    interval: f64,
    /// The earliest moment the next slot may be at.
    next: f64,
    /// When the latest run on this worker started.
    started: f64,
}

/// The rate limits of this worker's tasks, changed at run time by the
/// `rate_limit` control command.
#[derive(Debug, Default)]
pub(crate) struct RateLimits {
    schedules: Mutex<HashMap<String, Schedule>>,
    /// Whether any task is limited: unlimited workers skip the lock.
    any: AtomicBool,
}

impl RateLimits {
    /// The limits a worker starts with: each registered task's own
    /// `rate_limit` (or the app's default), then the worker's `rate_limits`
    /// setting over them. An unreadable rate, or a setting for a task this
    /// worker does not have, is an error naming the task.
    pub(crate) fn configured(
        app: &celeriac::App,
        settings: &BTreeMap<String, String>,
    ) -> Result<RateLimits, String> {
        let limits = RateLimits::default();
        for name in app.registry().names() {
            if let Some(rate) = app.task_options(name).rate_limit {
                limits
                    .set(name, &rate)
                    .map_err(|why| format!("task {name}: {why}"))?;
            }
        }
        for (name, rate) in settings {
            if app.registry().get(name).is_none() {
                return Err(format!(
                    "rate_limits names {name}, which is not registered on this worker"
                ));
            }
            limits
                .set(name, rate)
                .map_err(|why| format!("rate_limits for {name}: {why}"))?;
        }
        Ok(limits)
    }

    /// Sets `task`'s rate to `text` (see [`parse_rate`]); `Ok(false)` if
    /// that removed the limit. A new rate starts a new schedule.
    pub(crate) fn set(&self, task: &str, text: &str) -> Result<bool, String> {
        let per_second = parse_rate(text)?;
        let mut schedules = self.lock();
        match per_second {
            Some(per_second) => {
                // The latest start still counts: a new rate is no burst.
                let started = schedules.get(task).map_or(f64::MIN, |old| old.started);
                schedules.insert(
                    task.to_owned(),
                    Schedule {
                        text: text.trim().to_owned(),
                        interval: 1e6 / per_second,
                        next: 0.0,
                        started,
                    },
                );
            }
            None => {
                schedules.remove(task);
            }
        }
        self.any.store(!schedules.is_empty(), Ordering::Release);
        Ok(per_second.is_some())
    }

    /// `task`'s rate limit as it was given, if it has one.
    pub(crate) fn rate(&self, task: &str) -> Option<String> {
        self.lock().get(task).map(|s| s.text.clone())
    }

    /// What a delivery of `task` does now about the task's rate limit.
    pub(crate) fn pace<'a>(
        &self,
        holds: &'a EtaHolds,
        task: &str,
        delivery: &Delivery,
    ) -> Pace<'a> {
        if !self.any.load(Ordering::Acquire) {
            return Pace::Run;
        }
        self.pace_at(holds, task, carried_slot(delivery), now_micros())
    }

    /// [`pace`](Self::pace) at `now`, for a delivery carrying `carried`.
    fn pace_at<'a>(
        &self,
        holds: &'a EtaHolds,
        task: &str,
        carried: Option<Micros>,
        now: Micros,
    ) -> Pace<'a> {
        let mut schedules = self.lock();
        let Some(schedule) = schedules.get_mut(task) else {
            return Pace::Run;
        };
        let stale_before = now.saturating_sub(micros(STALE_SLOT));
        if let Some(slot) = carried.filter(|&slot| slot >= stale_before) {
            // Another worker may have given it: keep this worker's
            // schedule behind it too.
            schedule.next = schedule.next.max(slot as f64 + schedule.interval);
            return back_for(slot, now);
        }
        let slot = schedule.next.max(now as f64).ceil() as Micros;
        let wait = until(slot, now);
        if wait.is_zero() {
            schedule.next = slot as f64 + schedule.interval;
            return Pace::Run;
        }
        if wait < DELAY_RESOLUTION
            && let Some(hold) = holds.try_hold()
        {
            schedule.next = slot as f64 + schedule.interval;
            return Pace::Hold(wait, Some(hold));
        }
        let slot = slot.max(now + micros(DEFER_LEAD));
        let wait = until(slot, now);
        if wait > RATE_HORIZON {
            return Pace::Defer {
                delay: RATE_HORIZON,
                slot: None,
            };
        }
        schedule.next = slot as f64 + schedule.interval;
        defer(slot, wait)
    }

    /// Whether a run of `task` that has its concurrency slot may start
    /// now: [`Pace::Run`] (and this start is counted) if the last one
    /// started an interval ago; else [`Pace::Hold`] (no hold slot) until
    /// then, to ask again; or, if that is a second or more away (rates
    /// under one a second), [`Pace::Defer`] to a slot of its own.
    pub(crate) fn start(&self, task: &str) -> Pace<'static> {
        if !self.any.load(Ordering::Acquire) {
            return Pace::Run;
        }
        self.start_at(task, now_micros())
    }

    /// [`start`](Self::start) at `now`.
    fn start_at(&self, task: &str, now: Micros) -> Pace<'static> {
        let mut schedules = self.lock();
        let Some(schedule) = schedules.get_mut(task) else {
            return Pace::Run;
        };
        let Err(earliest) = take_start(&mut schedule.started, schedule.interval, now) else {
            return Pace::Run;
        };
        let wait = until(earliest, now);
        if wait < DELAY_RESOLUTION {
            return Pace::Hold(wait, None);
        }
        // Each deferred start takes a slot of its own, and later slots
        // come after it.
        let slot = schedule.next.max(earliest as f64).ceil() as Micros;
        schedule.next = slot as f64 + schedule.interval;
        defer(slot, until(slot, now))
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Schedule>> {
        self.schedules
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A delivery back from the delay queues for its `slot`: run now, held
/// until it without a hold slot, or (back far too early) deferred again.
pub(crate) fn back_for(slot: Micros, now: Micros) -> Pace<'static> {
    let wait = until(slot, now);
    if wait.is_zero() {
        Pace::Run
    } else if wait < DELAY_RESOLUTION + RETURN_MARGIN {
        Pace::Hold(wait, None)
    } else {
        defer(slot, wait)
    }
}

/// How long from `now` until `slot` (zero if it has come).
pub(crate) fn until(slot: Micros, now: Micros) -> Duration {
    Duration::from_micros(u64::try_from(slot - now).unwrap_or(0))
}

/// Deferred to come back a little before `slot`, `wait` away: the delay
/// queues count whole seconds, rounded down, so it is held for the rest.
pub(crate) fn defer(slot: Micros, wait: Duration) -> Pace<'static> {
    Pace::Defer {
        delay: wait.saturating_sub(RETURN_MARGIN).max(DELAY_RESOLUTION),
        slot: Some(slot),
    }
}

/// `duration` in [`Micros`].
pub(crate) fn micros(duration: Duration) -> Micros {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// Parses a rate as Celery writes it: `"10/s"`, `"100/m"`, `"1000/h"`, or a
/// number (per second). `0` or empty removes the limit (`Ok(None)`).
pub(crate) fn parse_rate(text: &str) -> Result<Option<f64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let (count, per) = match text.split_once('/') {
        Some((count, unit)) => {
            let seconds = match unit.trim() {
                "s" | "" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                other => {
                    return Err(format!(
                        "Invalid rate limit string {text:?}: unknown unit {other:?} (use s, m or h, \
                         as in \"10/s\")"
                    ));
                }
            };
            (count, seconds)
        }
        None => (text, 1.0),
    };
    let count: f64 = count.trim().parse().map_err(|_| {
        format!("Invalid rate limit string {text:?}: write it as \"10/s\", \"100/m\" or \"1000/h\"")
    })?;
    if !count.is_finite() || count < 0.0 {
        return Err(format!(
            "Invalid rate limit string {text:?}: the count must be a non-negative number"
        ));
    }
    Ok((count > 0.0).then_some(count / per))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Micros = 1_000_000;
    const NOW: Micros = 100 * SECOND;

    fn limited(text: &str) -> RateLimits {
        let limits = RateLimits::default();
        assert_eq!(limits.set("t", text), Ok(true));
        limits
    }

    /// What a pace says, without its hold slot: `(wait or delay in ms,
    /// held in a hold slot, carried slot)`.
    fn said(pace: &Pace<'_>) -> (&'static str, u128, Option<Micros>) {
        match pace {
            Pace::Run => ("run", 0, None),
            Pace::Hold(wait, Some(_)) => ("hold", wait.as_millis(), None),
            Pace::Hold(wait, None) => ("hold, back", wait.as_millis(), None),
            Pace::Defer { delay, slot } => ("defer", delay.as_millis(), *slot),
        }
    }

    #[test]
    fn rates_parse_as_celery_writes_them() {
        assert_eq!(parse_rate("10/s"), Ok(Some(10.0)));
        assert_eq!(parse_rate("120/m"), Ok(Some(2.0)));
        assert_eq!(parse_rate("3600/h"), Ok(Some(1.0)));
        assert_eq!(parse_rate("5"), Ok(Some(5.0)));
        assert_eq!(parse_rate("0"), Ok(None));
        assert_eq!(parse_rate(""), Ok(None));
        assert!(parse_rate("ten/s").is_err());
        assert!(parse_rate("10/d").unwrap_err().contains("unknown unit"));
        assert!(parse_rate("-1/s").is_err());
    }

    #[test]
    fn an_unlimited_task_always_runs_now() {
        let limits = limited("2/s");
        let holds = EtaHolds::new(0);
        assert_eq!(said(&limits.pace_at(&holds, "other", None, NOW)).0, "run");
    }

    #[test]
    fn near_slots_are_held_one_interval_apart() {
        let limits = limited("4/s");
        let holds = EtaHolds::new(8);
        assert_eq!(
            said(&limits.pace_at(&holds, "t", None, NOW)),
            ("run", 0, None)
        );
        let held: Vec<_> = (0..3)
            .map(|_| said(&limits.pace_at(&holds, "t", None, NOW)))
            .collect();
        assert_eq!(
            held,
            [
                ("hold", 250, None),
                ("hold", 500, None),
                ("hold", 750, None)
            ]
        );
        assert_eq!(holds.held(), 0, "the hold slots went with the paces");
        // After a quiet spell the schedule starts again from now: no burst
        // of saved-up runs (Celery's bucket holds one token).
        let later = NOW + 10 * SECOND;
        assert_eq!(said(&limits.pace_at(&holds, "t", None, later)).0, "run");
        assert_eq!(
            said(&limits.pace_at(&holds, "t", None, later)),
            ("hold", 250, None)
        );
    }

    #[test]
    fn without_a_hold_slot_a_delivery_is_deferred_past_the_lead() {
        let limits = limited("4/s");
        let holds = EtaHolds::new(1);
        let _run = limits.pace_at(&holds, "t", None, NOW);
        let held = limits.pace_at(&holds, "t", None, NOW);
        assert_eq!(said(&held), ("hold", 250, None));
        // The slots at 0.5 s to 1.25 s could come back late: unused.
        let lead = NOW + micros(DEFER_LEAD);
        assert_eq!(
            said(&limits.pace_at(&holds, "t", None, NOW)),
            ("defer", 1_250, Some(lead))
        );
        assert_eq!(
            said(&limits.pace_at(&holds, "t", None, NOW)),
            ("defer", 1_500, Some(lead + SECOND / 4))
        );
        drop(held);
    }

    #[test]
    fn far_slots_are_deferred_to_come_back_a_little_early() {
        let limits = limited("1/s");
        let holds = EtaHolds::new(8);
        assert_eq!(said(&limits.pace_at(&holds, "t", None, NOW)).0, "run");
        // A second away is not held: deferred, past the lead.
        let slots: Vec<_> = (0..3)
            .map(|_| said(&limits.pace_at(&holds, "t", None, NOW)))
            .collect();
        assert_eq!(
            slots,
            [
                ("defer", 1_250, Some(NOW + 3 * SECOND / 2)),
                ("defer", 2_250, Some(NOW + 5 * SECOND / 2)),
                ("defer", 3_250, Some(NOW + 7 * SECOND / 2)),
            ]
        );
    }

    #[test]
    fn no_slot_is_given_beyond_the_horizon() {
        let limits = limited("1/s");
        let holds = EtaHolds::new(0);
        assert_eq!(said(&limits.pace_at(&holds, "t", None, NOW)).0, "run");
        let mut given = Vec::new();
        while let Pace::Defer {
            slot: Some(slot), ..
        } = limits.pace_at(&holds, "t", None, NOW)
        {
            given.push(slot);
        }
        let horizon = micros(RATE_HORIZON);
        assert_eq!(given.first(), Some(&(NOW + micros(DEFER_LEAD))));
        assert!(
            given
                .last()
                .is_some_and(|&last| last <= NOW + horizon && last + SECOND > NOW + horizon)
        );
        assert_eq!(
            said(&limits.pace_at(&holds, "t", None, NOW)),
            ("defer", RATE_HORIZON.as_millis(), None)
        );
        // Refusing took nothing: the next slot is still the one after.
        let last = given[given.len() - 1];
        assert_eq!(
            said(&limits.pace_at(&holds, "t", None, NOW + SECOND)).2,
            Some(last + SECOND)
        );
    }

    #[test]
    fn a_carried_slot_is_honoured_and_pushes_the_schedule_behind_it() {
        let limits = limited("1/s");
        let holds = EtaHolds::new(0);
        let slot = NOW + 3 * SECOND;
        // Back 1.1 s early: held without a hold slot.
        let back = slot - 1_100_000;
        assert_eq!(
            said(&limits.pace_at(&holds, "t", Some(slot), back)),
            ("hold, back", 1_100, None)
        );
        assert_eq!(
            said(&limits.pace_at(&holds, "t", Some(slot), slot)).0,
            "run"
        );
        // Back far too early: deferred again, to the same slot.
        assert_eq!(
            said(&limits.pace_at(&holds, "t", Some(slot), NOW)),
            ("defer", 2_750, Some(slot))
        );
        // A fresh delivery comes after it.
        assert_eq!(
            said(&limits.pace_at(&holds, "t", None, NOW)).2,
            Some(slot + SECOND)
        );
    }

    #[test]
    fn a_stale_carried_slot_takes_a_new_one() {
        let limits = limited("1/s");
        let holds = EtaHolds::new(0);
        assert_eq!(said(&limits.pace_at(&holds, "t", None, NOW)).0, "run");
        let stale = NOW - micros(STALE_SLOT) - 1;
        assert_eq!(
            said(&limits.pace_at(&holds, "t", Some(stale), NOW)).2,
            Some(NOW + micros(DEFER_LEAD))
        );
    }

    #[test]
    fn runs_start_at_least_an_interval_apart() {
        let limits = limited("4/s");
        let ms = SECOND / 1_000;
        assert_eq!(said(&limits.start_at("t", NOW)).0, "run");
        assert_eq!(said(&limits.start_at("t", NOW)), ("hold, back", 250, None));
        assert_eq!(
            said(&limits.start_at("t", NOW + 100 * ms)),
            ("hold, back", 150, None)
        );
        // A waiter a little late is counted as started on time...
        assert_eq!(said(&limits.start_at("t", NOW + 260 * ms)).0, "run");
        assert_eq!(
            said(&limits.start_at("t", NOW + 300 * ms)),
            ("hold, back", 200, None)
        );
        // ...one much later as it is: no run is saved up.
        assert_eq!(said(&limits.start_at("t", NOW + SECOND)).0, "run");
        assert_eq!(
            said(&limits.start_at("t", NOW + SECOND)),
            ("hold, back", 250, None)
        );
        assert_eq!(said(&limits.start_at("other", NOW)).0, "run");
    }

    #[test]
    fn deliveries_back_late_for_their_slots_start_an_interval_apart() {
        let limits = limited("10/s");
        let holds = EtaHolds::new(0);
        let now = NOW + 2 * SECOND;
        // Five deliveries back together, their slots (a tenth of a second
        // apart) all passed: each may run now as far as its slot goes...
        let mut started = Vec::new();
        for k in 0..5 {
            let slot = NOW + k * SECOND / 10;
            assert_eq!(said(&limits.pace_at(&holds, "t", Some(slot), now)).0, "run");
        }
        // ...but their starts are spaced: one now, then one each interval.
        let mut at = now;
        while started.len() < 5 {
            match limits.start_at("t", at) {
                Pace::Run => started.push(at),
                Pace::Hold(wait, None) => at += micros(wait),
                other => panic!("a start a tenth of a second away was {other:?}"),
            }
        }
        let gaps: Vec<_> = started.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps, [SECOND / 10; 4]);
    }

    #[test]
    fn a_start_a_second_or_more_away_is_deferred_and_later_slots_follow_it() {
        let limits = limited("1/m");
        let holds = EtaHolds::new(0);
        assert_eq!(said(&limits.start_at("t", NOW)).0, "run");
        let earliest = NOW + 60 * SECOND;
        assert_eq!(
            said(&limits.start_at("t", NOW + SECOND)),
            ("defer", 58_750, Some(earliest))
        );
        assert_eq!(
            said(&limits.start_at("t", NOW + SECOND)),
            ("defer", 118_750, Some(earliest + 60 * SECOND)),
            "a second waiter is deferred to a slot of its own"
        );
        assert_eq!(
            said(&limits.pace_at(&holds, "t", None, NOW + SECOND)),
            ("defer", RATE_HORIZON.as_millis(), None),
            "a fresh delivery's slot comes after it, beyond the horizon"
        );
    }

    #[test]
    fn a_new_rate_does_not_forget_the_latest_start() {
        let limits = limited("1/s");
        assert_eq!(said(&limits.start_at("t", NOW)).0, "run");
        assert_eq!(limits.set("t", "2/s"), Ok(true));
        assert_eq!(said(&limits.start_at("t", NOW)), ("hold, back", 500, None));
    }

    #[test]
    fn removing_a_rate_lets_everything_run() {
        let limits = limited("1/m");
        let holds = EtaHolds::new(0);
        assert_eq!(said(&limits.pace_at(&holds, "t", None, NOW)).0, "run");
        assert_eq!(limits.set("t", "0"), Ok(false));
        assert_eq!(said(&limits.pace_at(&holds, "t", None, NOW)).0, "run");
        assert_eq!(limits.rate("t"), None);
    }
}
