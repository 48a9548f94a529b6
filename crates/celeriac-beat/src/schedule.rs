//! Schedule entries and their file format.
//!
//! ```toml
//! timezone = "Europe/Berlin"          # default for entries; UTC if absent
//!
//! [entries.cleanup]
//! task = "proj.tasks.cleanup"         # any task name, Python or Rust
//! crontab = { minute = "0", hour = "4" }
//! kwargs = { older_than_days = 30 }
//!
//! [entries.poll]
//! task = "proj.tasks.poll"
//! every = 30                          # seconds
//! args = ["feeds"]
//! catch_up = "skip"                   # or "run_once" (default, as Celery)
//! options = { queue = "beat", priority = 5, expires = 25 }
//!
//! [entries.launch]
//! task = "proj.tasks.launch"
//! at = "2026-12-24T18:00:00+01:00"    # once ("clocked")
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::crontab::{Crontab, CrontabSpec};

/// When an entry runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Every `period`.
    Every(Duration),
    /// Celery crontab semantics, in a time zone.
    Crontab(Box<Crontab>, Tz),
    /// Once, at a fixed time.
    At(DateTime<Utc>),
}

impl Schedule {
    /// The first due time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(period) => Some(after + chrono::Duration::from_std(*period).ok()?),
            Schedule::Crontab(crontab, tz) => crontab.next_after(after, *tz),
            Schedule::At(at) => (*at > after).then_some(*at),
        }
    }
}

/// What to do about due times missed while no beat was running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Send once for all the missed times (Celery's behaviour).
    #[default]
    RunOnce,
    /// Send nothing for missed times; continue with the next one.
    Skip,
}

/// How each task message is sent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendOptions {
    /// Queue.
    pub queue: Option<String>,
    /// Exchange.
    pub exchange: Option<String>,
    /// Routing key.
    pub routing_key: Option<String>,
    /// Priority.
    pub priority: Option<u8>,
    /// Seconds after sending when the task expires.
    pub expires: Option<f64>,
    /// Custom headers.
    #[serde(default)]
    pub headers: Map<String, Value>,
}

/// One scheduled task.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Unique name.
    pub name: String,
    /// Task name.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// Send options.
    pub options: SendOptions,
    /// When it runs.
    pub schedule: Schedule,
    /// Missed-run policy.
    pub catch_up: CatchUp,
}

/// A schedule file that could not be read; the message names the line and
/// field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ScheduleError {
    /// The file.
    pub path: String,
    /// What is wrong, with line and column where known.
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    timezone: Option<String>,
    #[serde(default)]
    entries: BTreeMap<String, EntryFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFormat {
    task: String,
    #[serde(default)]
    args: Vec<Value>,
    #[serde(default)]
    kwargs: Map<String, Value>,
    #[serde(default)]
    options: SendOptions,
    every: Option<f64>,
    crontab: Option<CrontabSpec>,
    at: Option<String>,
    timezone: Option<String>,
    #[serde(default)]
    catch_up: CatchUp,
}

pub use celeriac::BACKEND_CLEANUP;

/// Adds Celery's own entry for [`BACKEND_CLEANUP`] (daily at 04:00 UTC,
/// expiring after 12 hours), as Celery's beat does when the result backend
/// needs it, unless the schedule already sends that task. Says whether it
/// added it.
///
/// ```
/// let mut entries = Vec::new();
/// assert!(celeriac_beat::schedule::add_backend_cleanup(&mut entries).unwrap());
/// assert_eq!(entries[0].task, "celery.backend_cleanup");
/// assert!(!celeriac_beat::schedule::add_backend_cleanup(&mut entries).unwrap(), "added once");
/// ```
pub fn add_backend_cleanup(entries: &mut Vec<Entry>) -> Result<bool, String> {
    if entries.iter().any(|e| e.task == BACKEND_CLEANUP) {
        return Ok(false);
    }
    let celerys = format!(
        "[entries.\"{BACKEND_CLEANUP}\"]\n\
         task = \"{BACKEND_CLEANUP}\"\n\
         crontab = {{ minute = \"0\", hour = \"4\" }}\n\
         options = {{ expires = 43200 }}\n"
    );
    entries.append(&mut parse(&celerys)?);
    Ok(true)
}

/// Reads a schedule file.
pub fn load(path: &Path) -> Result<Vec<Entry>, ScheduleError> {
    let text = std::fs::read_to_string(path).map_err(|e| ScheduleError {
        path: path.display().to_string(),
        message: format!("cannot read it: {e}"),
    })?;
    parse(&text).map_err(|message| ScheduleError {
        path: path.display().to_string(),
        message,
    })
}

/// Parses schedule TOML; errors name the line and the field.
///
/// ```
/// let entries = celeriac_beat::schedule::parse(r#"
///     [entries.tick]
///     task = "demo.add"
///     every = 10
///     args = [1, 2]
/// "#).unwrap();
/// assert_eq!(entries[0].name, "tick");
/// ```
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let file: FileFormat = toml::from_str(text).map_err(|e| e.to_string())?;
    let default_tz = zone(file.timezone.as_deref().unwrap_or("UTC"), "timezone")?;
    file.entries
        .into_iter()
        .map(|(name, e)| {
            let fail = |msg: String| format!("entry `{name}`: {msg}");
            let tz = match &e.timezone {
                Some(t) => zone(t, "timezone").map_err(fail)?,
                None => default_tz,
            };
            let schedule = match (e.every, e.crontab, e.at) {
                (Some(seconds), None, None) => {
                    if !(seconds.is_finite() && seconds > 0.0) {
                        return Err(fail(format!(
                            "every = {seconds}: must be a positive number of seconds"
                        )));
                    }
                    Schedule::Every(Duration::from_secs_f64(seconds))
                }
                (None, Some(spec), None) => Schedule::Crontab(
                    Box::new(Crontab::parse(&spec).map_err(|e| fail(e.to_string()))?),
                    tz,
                ),
                (None, None, Some(at)) => Schedule::At(
                    celeriac::protocol::time::parse_time(&at)
                        .ok_or_else(|| fail(format!("at = {at:?} is not an ISO 8601 time")))?
                        .with_timezone(&Utc),
                ),
                _ => {
                    return Err(fail(
                        "give exactly one of `every`, `crontab` or `at`".into(),
                    ));
                }
            };
            Ok(Entry {
                name,
                task: e.task,
                args: e.args,
                kwargs: e.kwargs,
                options: e.options,
                schedule,
                catch_up: e.catch_up,
            })
        })
        .collect()
}

fn zone(name: &str, field: &str) -> Result<Tz, String> {
    name.parse::<Tz>().map_err(|_| {
        format!("{field} = {name:?} is not an IANA time zone (e.g. \"UTC\", \"Europe/Berlin\")")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_entry_parses() {
        let entries = parse(
            r#"
            timezone = "Europe/Berlin"
            [entries.a]
            task = "t.a"
            every = 1.5
            [entries.b]
            task = "t.b"
            crontab = { minute = "0", hour = "4" }
            catch_up = "skip"
            options = { queue = "q", priority = 3, expires = 10 }
            [entries.c]
            task = "t.c"
            at = "2030-01-01T00:00:00Z"
            "#,
        )
        .unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0].schedule,
            Schedule::Every(Duration::from_millis(1500))
        );
        assert!(
            matches!(&entries[1].schedule, Schedule::Crontab(_, tz) if tz.name() == "Europe/Berlin")
        );
        assert_eq!(entries[1].catch_up, CatchUp::Skip);
        assert_eq!(entries[1].options.queue.as_deref(), Some("q"));
    }

    #[test]
    fn mistakes_name_the_line_and_field() {
        let err = parse("[entries.a]\ntask = \"t\"\nevry = 3\n").unwrap_err();
        assert!(err.contains("line 3") && err.contains("evry"), "{err}");
        let err = parse("[entries.a]\ntask = \"t\"\nevery = 3\nat = \"2030-01-01T00:00:00Z\"\n")
            .unwrap_err();
        assert!(
            err.contains("entry `a`") && err.contains("exactly one"),
            "{err}"
        );
        let err = parse("[entries.a]\ntask = \"t\"\ncrontab = { minute = \"99\" }\n").unwrap_err();
        assert!(err.contains("99 is outside 0-59"), "{err}");
        let err = parse("timezone = \"Mars/Olympus\"\n").unwrap_err();
        assert!(err.contains("IANA"), "{err}");
    }
}
