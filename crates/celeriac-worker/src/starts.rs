//! Runs of one rate-limited task (or one key of a global rate limit)
//! start at least one interval apart on this worker, whatever held them:
//! the rate limit's slot says when a run may start, and the start itself
//! is checked once the run has its concurrency slot. A loaded host hands
//! deferred deliveries back late and keeps held ones waiting for a
//! concurrency slot; without this check the runs whose slots had passed
//! would all start at once, well above the rate.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::rate_limits::Micros;

/// Counts a start of a run limited to one per `interval` (microseconds)
/// at `now`, whose previous run started at `latest`; or says the earliest
/// moment it may start. A run that comes up to half an interval after its
/// earliest moment (a waiter whose timer fired a little late) is counted
/// as started on time, so that back-to-back starts do not drift below the
/// rate; a later one is counted as it is, and saves up no run.
pub(crate) fn take_start(latest: &mut f64, interval: f64, now: Micros) -> Result<(), Micros> {
    let earliest = *latest + interval;
    let late = now as f64 - earliest;
    if late < 0.0 {
        return Err(earliest.ceil() as Micros);
    }
    *latest = if late <= interval / 2.0 {
        earliest
    } else {
        now as f64
    };
    Ok(())
}

/// How many keys are kept before those whose next start is already free
/// are dropped.
const KEYS_KEPT: usize = 1_024;

/// The latest start of each key of the global rate limits, on this worker.
#[derive(Debug, Default)]
pub(crate) struct Starts {
    keys: Mutex<Keys>,
}

#[derive(Debug, Default)]
struct Keys {
    /// Per key: when its latest run started, and its interval.
    latest: HashMap<String, (f64, f64)>,
    /// Past this many keys, the free ones are dropped.
    prune_at: usize,
}

impl Starts {
    /// [`take_start`] for `key`, limited to one run per `interval`
    /// microseconds.
    pub(crate) fn take(&self, key: &str, interval: f64, now: Micros) -> Result<(), Micros> {
        let mut keys = self.lock();
        if let Some((latest, kept)) = keys.latest.get_mut(key) {
            *kept = interval;
            return take_start(latest, interval, now);
        }
        if keys.latest.len() >= keys.prune_at.max(KEYS_KEPT) {
            // A key whose next start is free now starts as a new key would.
            let now = now as f64;
            keys.latest
                .retain(|_, (latest, interval)| *latest + *interval > now);
            keys.prune_at = (keys.latest.len() * 2).max(KEYS_KEPT);
        }
        keys.latest.insert(key.to_owned(), (now as f64, interval));
        Ok(())
    }

    /// How many keys are kept now.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.lock().latest.len()
    }

    fn lock(&self) -> MutexGuard<'_, Keys> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Micros = 1_000_000;
    const NOW: Micros = 100 * SECOND;
    const MS: Micros = 1_000;

    #[test]
    fn a_start_is_an_interval_after_the_last_and_a_little_lateness_is_credited() {
        let interval = 250_000.0;
        let mut latest = f64::MIN;
        assert_eq!(take_start(&mut latest, interval, NOW), Ok(()));
        assert_eq!(take_start(&mut latest, interval, NOW), Err(NOW + 250 * MS));
        assert_eq!(
            take_start(&mut latest, interval, NOW + 100 * MS),
            Err(NOW + 250 * MS)
        );
        // 10 ms late: counted as on time.
        assert_eq!(take_start(&mut latest, interval, NOW + 260 * MS), Ok(()));
        assert_eq!(
            take_start(&mut latest, interval, NOW + 300 * MS),
            Err(NOW + 500 * MS)
        );
        // A second late: counted as it is, no run saved up.
        assert_eq!(take_start(&mut latest, interval, NOW + 2 * SECOND), Ok(()));
        assert_eq!(
            take_start(&mut latest, interval, NOW + 2 * SECOND),
            Err(NOW + 2 * SECOND + 250 * MS)
        );
    }

    #[test]
    fn keys_are_spaced_each_on_their_own() {
        let starts = Starts::default();
        let interval = 100_000.0;
        assert_eq!(starts.take("a", interval, NOW), Ok(()));
        assert_eq!(starts.take("b", interval, NOW), Ok(()));
        assert_eq!(starts.take("a", interval, NOW), Err(NOW + 100 * MS));
        assert_eq!(starts.take("a", interval, NOW + 100 * MS), Ok(()));
        assert_eq!(
            starts.take("b", interval, NOW + 50 * MS),
            Err(NOW + 100 * MS)
        );
    }

    #[test]
    fn keys_whose_next_start_is_free_are_dropped_past_the_limit() {
        let starts = Starts::default();
        let interval = 100_000.0;
        for key in 0..KEYS_KEPT {
            assert_eq!(starts.take(&key.to_string(), interval, NOW), Ok(()));
        }
        // A second on, every kept key is free again: the next new key
        // drops them.
        assert_eq!(starts.take("new", interval, NOW + SECOND), Ok(()));
        assert_eq!(starts.kept(), 1);
        // A key still waiting is kept.
        for key in 0..KEYS_KEPT {
            assert_eq!(
                starts.take(&key.to_string(), interval, NOW + SECOND),
                Ok(())
            );
        }
        assert_eq!(starts.take("newer", interval, NOW + SECOND), Ok(()));
        assert_eq!(starts.kept(), KEYS_KEPT + 2);
        assert_eq!(
            starts.take("new", interval, NOW + SECOND),
            Err(NOW + SECOND + 100 * MS),
            "a kept key is still spaced"
        );
    }
}
