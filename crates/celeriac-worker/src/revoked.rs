//! Revoked task ids, kept as Celery keeps them (§3.12): at most 50,000, each
//! for 3 hours; stamped-header revocations; shared with other workers at
//! start-up (mingle) and, with `--statedb`, kept across restarts in a JSON
//! file written atomically.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use celeriac::protocol::TaskMessage;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most ids remembered (Celery's `CELERY_WORKER_REVOKES_MAX`).
pub(crate) const REVOKES_MAX: usize = 50_000;
/// How long an id is remembered (Celery's `CELERY_WORKER_REVOKE_EXPIRES`).
pub(crate) const REVOKE_EXPIRES: Duration = Duration::from_secs(10_800);

/// The revoked ids and stamps.
#[derive(Debug)]
pub(crate) struct Revoked {
    state: Mutex<State>,
    statedb: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct State {
    /// Id → when it was revoked here (monotonic).
    ids: HashMap<String, Instant>,
    /// Ids oldest first, for eviction and expiry.
    order: VecDeque<(String, Instant)>,
    /// Stamp name → revoked values (`revoke_by_stamped_headers`).
    stamps: HashMap<String, Vec<Value>>,
    dirty: bool,
}

/// What `--statedb` holds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// Revoked ids, oldest first, with their age in seconds when saved.
    revoked: Vec<(String, f64)>,
    /// The Lamport clock.
    clock: u64,
}

impl State {
    /// Adds `id` (again): it is remembered from `at`; an older entry of
    /// it in `order` is stale and skipped from then on.
    fn add(&mut self, id: String, at: Instant) {
        self.ids.insert(id.clone(), at);
        self.order.push_back((id, at));
        self.dirty = true;
        self.purge(Instant::now());
    }

    /// Drops expired ids and, past the limit, the oldest; and stale
    /// entries of ids revoked again since.
    fn purge(&mut self, now: Instant) {
        while let Some((id, at)) = self.order.front() {
            let live = self.ids.get(id) == Some(at);
            let expired = now.duration_since(*at) > REVOKE_EXPIRES;
            if live && !expired && self.ids.len() <= REVOKES_MAX {
                break;
            }
            if live {
                self.ids.remove(id);
                self.dirty = true;
            }
            self.order.pop_front();
        }
    }
}

impl Revoked {
    /// An empty set, saved to `statedb` if given (and loaded from it if it
    /// exists). Returns the set and the clock the file held.
    pub(crate) fn open(statedb: Option<PathBuf>) -> Result<(Revoked, u64), String> {
        let mut state = State::default();
        let mut clock = 0;
        if let Some(path) = &statedb
            && path.exists()
        {
            let saved = load(path)?;
            let now = Instant::now();
            for (id, age) in saved.revoked {
                let at = now
                    .checked_sub(Duration::from_secs_f64(age.max(0.0)))
                    .unwrap_or(now);
                state.add(id, at);
            }
            state.dirty = false;
            clock = saved.clock;
        }
        Ok((
            Revoked {
                state: Mutex::new(state),
                statedb,
            },
            clock,
        ))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds revoked ids.
    pub(crate) fn add<I: IntoIterator<Item = String>>(&self, ids: I) {
        let mut state = self.state();
        let now = Instant::now();
        for id in ids {
            state.add(id, now);
        }
    }

    /// Adds revoked stamp values (`{stamp: value | [values]}`).
    pub(crate) fn add_stamps(&self, headers: &Map<String, Value>) {
        let mut state = self.state();
        for (stamp, values) in headers {
            let list = state.stamps.entry(stamp.clone()).or_default();
            match values {
                Value::Array(values) => list.extend(values.iter().cloned()),
                value => list.push(value.clone()),
            }
        }
    }

    /// Whether `message` is revoked, by id or by one of its stamps.
    pub(crate) fn contains(&self, message: &TaskMessage) -> bool {
        let mut state = self.state();
        state.purge(Instant::now());
        if state.ids.contains_key(&message.headers.id) {
            return true;
        }
        if state.stamps.is_empty() {
            return false;
        }
        let names = message.headers.stamped_headers.iter().flatten();
        names.into_iter().any(|name| {
            let (Some(revoked), Some(stamped)) =
                (state.stamps.get(name), message.headers.stamps.get(name))
            else {
                return false;
            };
            match stamped.to_json() {
                Value::Array(values) => values.iter().any(|v| revoked.contains(v)),
                value => revoked.contains(&value),
            }
        })
    }

    /// The revoked ids, oldest first (`inspect revoked`).
    pub(crate) fn ids(&self) -> Vec<String> {
        let mut state = self.state();
        state.purge(Instant::now());
        state
            .order
            .iter()
            .filter(|(id, at)| state.ids.get(id) == Some(at))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Writes the state db if anything changed since the last write.
    pub(crate) fn save_if_changed(&self, clock: u64) -> Result<(), String> {
        let Some(path) = &self.statedb else {
            return Ok(());
        };
        let saved = {
            let mut state = self.state();
            if !state.dirty {
                return Ok(());
            }
            state.dirty = false;
            let now = Instant::now();
            Saved {
                revoked: state
                    .order
                    .iter()
                    .filter(|(id, at)| state.ids.get(id) == Some(at))
                    .map(|(id, at)| (id.clone(), now.duration_since(*at).as_secs_f64()))
                    .collect(),
                clock,
            }
        };
        save(path, &saved)
    }

    /// Whether a state db is kept.
    pub(crate) fn persistent(&self) -> bool {
        self.statedb.is_some()
    }
}

fn load(path: &Path) -> Result<Saved, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the state db {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        format!(
            "the state db {} is not a Celeriac state file ({e}); move it away to start afresh",
            path.display()
        )
    })
}

/// Writes `saved` next to `path`, then renames it over `path`: a crash
/// leaves the old file or the new one, never half of one.
fn save(path: &Path, saved: &Saved) -> Result<(), String> {
    let text = serde_json::to_string(saved).map_err(|e| e.to_string())?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| format!("cannot write the state db {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use celeriac::protocol::HeaderValue;
    use serde_json::json;

    fn message(id: &str) -> TaskMessage {
        TaskMessage::new("demo.add", id)
    }

    #[test]
    fn ids_are_remembered_until_they_expire_or_overflow() {
        let (revoked, _) = Revoked::open(None).unwrap();
        let expired = Instant::now()
            .checked_sub(REVOKE_EXPIRES + Duration::from_secs(1))
            .unwrap();
        revoked.state().add("old".into(), expired);
        revoked.add(["a".to_owned(), "b".to_owned()]);
        assert!(revoked.contains(&message("a")));
        revoked.add(["a".to_owned()]);
        assert!(!revoked.contains(&message("old")), "expired");
        assert!(!revoked.contains(&message("c")));
        assert_eq!(
            revoked.ids(),
            vec!["b".to_owned(), "a".to_owned()],
            "revoked again: listed once, as the newest"
        );
        let mut state = revoked.state();
        for i in 0..REVOKES_MAX {
            state.add(format!("x{i}"), Instant::now());
        }
        assert!(!state.ids.contains_key("a"), "the oldest goes first");
        assert_eq!(state.ids.len(), REVOKES_MAX);
    }

    #[test]
    fn stamps_match_single_values_and_lists() {
        let (revoked, _) = Revoked::open(None).unwrap();
        let mut stamped = message("t1");
        stamped.headers.stamped_headers = Some(vec!["mtask_id".into()]);
        stamped
            .headers
            .stamps
            .insert("mtask_id".into(), HeaderValue::Str("m1".into()));
        assert!(!revoked.contains(&stamped));
        let mut headers = Map::new();
        headers.insert("mtask_id".into(), json!(["m0", "m1"]));
        revoked.add_stamps(&headers);
        assert!(revoked.contains(&stamped));
    }

    #[test]
    fn the_state_db_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("celeriac-statedb-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("worker.state");
        let (revoked, _) = Revoked::open(Some(path.clone())).unwrap();
        revoked.add(["r1".to_owned()]);
        revoked.save_if_changed(41).unwrap();
        let (again, clock) = Revoked::open(Some(path.clone())).unwrap();
        assert!(again.contains(&message("r1")));
        assert_eq!(clock, 41);
        std::fs::write(&path, "not json").unwrap();
        let error = Revoked::open(Some(path)).unwrap_err();
        assert!(error.contains("move it away"), "{error}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
