//! The scheduling decisions, as pure functions of the entries, the state
//! and the current time, so they are tested with a controllable clock.
//!
//! The state records, per entry, the last due time that was handled (sent,
//! or skipped by the catch-up policy). Due times, not send times, are
//! stored, so an interval schedule does not drift.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::schedule::{CatchUp, Entry, Schedule};

/// Per-entry scheduling state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The last due time handled, per entry name.
    pub last_due: BTreeMap<String, DateTime<Utc>>,
}

impl State {
    /// Keeps the later due time of each entry from `other`.
    pub fn merge(&mut self, other: &State) {
        for (name, due) in &other.last_due {
            let slot = self.last_due.entry(name.clone()).or_insert(*due);
            if *due > *slot {
                *slot = *due;
            }
        }
    }
}

/// One message to send now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    /// Index of the entry.
    pub entry: usize,
    /// The due time this send stands for.
    pub due: DateTime<Utc>,
    /// How many due times it covers (more than 1 when catching up).
    pub covers: u32,
}

/// What to do at `now`: sends, and when to look again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sends due now.
    pub ticks: Vec<Tick>,
    /// Entries whose missed due times were skipped (catch-up `skip`).
    pub skipped: Vec<(usize, u32)>,
    /// The next due time of any entry, if any.
    pub next_wake: Option<DateTime<Utc>>,
}

/// Most missed due times counted for one entry in one plan.
const MAX_MISSED: u32 = 100_000;

/// Decides what is due at `now` and updates `state` as if the ticks were
/// sent. A due time more than `grace` old counts as missed.
///
/// ```
/// use chrono::{TimeZone as _, Utc};
/// use celeriac_beat::schedule::parse;
/// use celeriac_beat::scheduler::{plan, State};
///
/// let entries = parse("[entries.e]\ntask = \"t\"\nevery = 60").unwrap();
/// let mut state = State::default();
/// let t0 = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
/// assert!(plan(&entries, &mut state, t0, chrono::Duration::seconds(1)).ticks.is_empty());
/// let later = plan(&entries, &mut state, t0 + chrono::Duration::seconds(60), chrono::Duration::seconds(1));
/// assert_eq!(later.ticks.len(), 1);
/// ```
pub fn plan(
    entries: &[Entry],
    state: &mut State,
    now: DateTime<Utc>,
    grace: chrono::Duration,
) -> Plan {
    let mut result = Plan::default();
    for (index, entry) in entries.iter().enumerate() {
        let first = match state.last_due.get(&entry.name) {
            Some(last) => entry.schedule.next_after(*last),
            None => {
                // Never run: start counting from now (a one-off time already
                // past still counts as due), and remember it, so the first
                // due time does not slide with every plan.
                let baseline = match &entry.schedule {
                    Schedule::At(at) => (*at - chrono::Duration::seconds(1)).min(now),
                    _ => now,
                };
                state.last_due.insert(entry.name.clone(), baseline);
                entry.schedule.next_after(baseline)
            }
        };
        let mut latest = None;
        let mut count = 0;
        let mut next = first;
        while let Some(due) = next.filter(|d| *d <= now) {
            latest = Some(due);
            count += 1;
            if count >= MAX_MISSED {
                break;
            }
            next = entry.schedule.next_after(due);
        }
        if let Some(due) = latest {
            let on_time = now - due <= grace;
            let send = match entry.catch_up {
                CatchUp::RunOnce => true,
                CatchUp::Skip => on_time,
            };
            if send {
                result.ticks.push(Tick {
                    entry: index,
                    due,
                    covers: count,
                });
            } else {
                result.skipped.push((index, count));
            }
            state.last_due.insert(entry.name.clone(), due);
            next = entry.schedule.next_after(due);
        }
        if let Some(wake) = next {
            result.next_wake = Some(result.next_wake.map_or(wake, |w| w.min(wake)));
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::parse;
    use chrono::{Duration, TimeZone as _};

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, h, m, s)
            .single()
            .unwrap_or_default()
    }

    const GRACE: Duration = Duration::seconds(1);

    #[test]
    fn intervals_start_one_period_after_first_sight_and_do_not_drift() {
        let entries = parse("[entries.e]\ntask = \"t\"\nevery = 10").unwrap();
        let mut state = State::default();
        let first = plan(&entries, &mut state, t(0, 0, 0), GRACE);
        assert_eq!(first.next_wake, Some(t(0, 0, 10)));
        // Sent 300 ms late: the next due time is still on the 10 s grid.
        let late = plan(
            &entries,
            &mut state,
            t(0, 0, 10) + Duration::milliseconds(300),
            GRACE,
        );
        assert_eq!(
            late.ticks,
            [Tick {
                entry: 0,
                due: t(0, 0, 10),
                covers: 1
            }]
        );
        assert_eq!(late.next_wake, Some(t(0, 0, 20)));
    }

    #[test]
    fn missed_runs_fire_once_or_are_skipped() {
        let entries = parse(
            "[entries.once]\ntask = \"t\"\ncrontab = { minute = \"*\" }\n\
             [entries.skip]\ntask = \"t\"\ncrontab = { minute = \"*\" }\ncatch_up = \"skip\"",
        )
        .unwrap();
        let mut state = State::default();
        state.last_due.insert("once".into(), t(0, 0, 0));
        state.last_due.insert("skip".into(), t(0, 0, 0));
        // Down from 00:00 to 00:05:30: five due times passed.
        let plan = plan(&entries, &mut state, t(0, 5, 30), GRACE);
        assert_eq!(
            plan.ticks,
            [Tick {
                entry: 0,
                due: t(0, 5, 0),
                covers: 5
            }]
        );
        assert_eq!(plan.skipped, [(1, 5)]);
        assert_eq!(state.last_due["skip"], t(0, 5, 0));
        assert_eq!(plan.next_wake, Some(t(0, 6, 0)));
    }

    #[test]
    fn a_restart_neither_resends_nor_skips() {
        let entries = parse("[entries.e]\ntask = \"t\"\ncrontab = { minute = \"*\" }").unwrap();
        let mut state = State::default();
        state.last_due.insert("e".into(), t(0, 1, 0));
        // Restarted at 00:01:30: the 00:01 tick was sent; nothing is due.
        assert!(
            plan(&entries, &mut state, t(0, 1, 30), GRACE)
                .ticks
                .is_empty()
        );
        // 00:02 comes due while it runs.
        assert_eq!(plan(&entries, &mut state, t(0, 2, 0), GRACE).ticks.len(), 1);
    }

    #[test]
    fn a_new_crontab_entry_fires_at_its_first_match() {
        let entries = parse("[entries.e]\ntask = \"t\"\ncrontab = { minute = \"*\" }").unwrap();
        let mut state = State::default();
        assert_eq!(
            plan(&entries, &mut state, t(0, 0, 30), GRACE).next_wake,
            Some(t(0, 1, 0))
        );
        let due = plan(
            &entries,
            &mut state,
            t(0, 1, 0) + Duration::milliseconds(5),
            GRACE,
        );
        assert_eq!(
            due.ticks,
            [Tick {
                entry: 0,
                due: t(0, 1, 0),
                covers: 1
            }]
        );
    }

    #[test]
    fn one_off_entries_run_once() {
        let entries = parse("[entries.e]\ntask = \"t\"\nat = \"2030-01-01T00:10:00Z\"").unwrap();
        let mut state = State::default();
        assert_eq!(
            plan(&entries, &mut state, t(0, 0, 0), GRACE).next_wake,
            Some(t(0, 10, 0))
        );
        assert_eq!(
            plan(&entries, &mut state, t(0, 10, 0), GRACE).ticks.len(),
            1
        );
        let after = plan(&entries, &mut state, t(0, 20, 0), GRACE);
        assert!(after.ticks.is_empty() && after.next_wake.is_none());
    }

    #[test]
    fn merged_state_keeps_the_latest() {
        let mut a = State::default();
        a.last_due.insert("x".into(), t(0, 1, 0));
        let mut b = State::default();
        b.last_due.insert("x".into(), t(0, 2, 0));
        b.last_due.insert("y".into(), t(0, 0, 0));
        a.merge(&b);
        assert_eq!((a.last_due["x"], a.last_due.len()), (t(0, 2, 0), 2));
    }
}
