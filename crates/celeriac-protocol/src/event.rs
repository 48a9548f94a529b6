//! Events (§7): what workers (and, when asked, producers) publish to the
//! `celeryev` topic exchange for Flower and `celery events`, and the Lamport
//! clock every event, control request and reply carries.
//!
//! ```
//! use celeriac_protocol::event::{Event, Stamp, encode};
//! use serde_json::json;
//!
//! let stamp = Stamp { hostname: "celeriac@w1".into(), pid: 42, utcoffset: 0 };
//! let event = Event::new("task-started").with("uuid", json!("t1")).stamped(&stamp, 7, 1_700_000_000.5);
//! assert_eq!(event.routing_key(), "task.started");
//! let (routing_key, message) = encode(&[event], &stamp.hostname);
//! assert_eq!(routing_key, "task.started");
//! assert_eq!(message.properties.delivery_mode, Some(1));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value, json};

use crate::control::json_message;
use crate::message::{DecodeOptions, RawMessage, TaskMessage};
use crate::repr::{args_repr, kwargs_repr, value_repr};
use crate::signature::kind_of;
use crate::time::format_time;
use crate::{DecodeError, HeaderValue, Headers};

/// The exchange events are published to (`event_exchange`).
pub const EVENT_EXCHANGE: &str = "celeryev";
/// The routing key of a batch of task events (a JSON array body).
pub const MULTI_ROUTING_KEY: &str = "task.multi";

/// One event: its type and fields, in the order they were set.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    fields: Map<String, Value>,
}

/// Who sends events: the standard fields every event carries besides its
/// clock and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The sender's node name (`celeriac@host` for workers).
    pub hostname: String,
    /// The sender's process id.
    pub pid: u32,
    /// Hours *west* of UTC, floor-divided, as Python's `time.timezone //
    /// 3600` ([`utcoffset`]).
    pub utcoffset: i64,
}

impl Event {
    /// An event of `kind` (`task-succeeded`, `worker-heartbeat`, ...).
    pub fn new(kind: &str) -> Event {
        let mut fields = Map::new();
        fields.insert("type".into(), json!(kind));
        Event { fields }
    }

    /// Adds (or replaces) a field.
    pub fn with(mut self, name: &str, value: Value) -> Event {
        self.fields.insert(name.to_owned(), value);
        self
    }

    /// Adds the standard fields (§7.2): `hostname`, `utcoffset`, `pid`,
    /// `clock`, `timestamp`.
    pub fn stamped(mut self, stamp: &Stamp, clock: u64, timestamp: f64) -> Event {
        self.fields.insert("hostname".into(), json!(stamp.hostname));
        self.fields
            .insert("utcoffset".into(), json!(stamp.utcoffset));
        self.fields.insert("pid".into(), json!(stamp.pid));
        self.fields.insert("clock".into(), json!(clock));
        self.fields.insert("timestamp".into(), json!(timestamp));
        self
    }

    /// The event's type.
    pub fn kind(&self) -> &str {
        self.fields
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// A field's value.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// Every field, `type` included.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// The routing key it is published with: its type with `-` as `.`.
    pub fn routing_key(&self) -> String {
        self.kind().replace('-', ".")
    }

    /// Whether it is a task event (`task-*`), which may be batched.
    pub fn is_task_event(&self) -> bool {
        self.kind().starts_with("task-")
    }
}

/// The task events a worker sends (§7.3), with Celery's fields.
impl Event {
    /// `task-received`: the worker took the task.
    pub fn task_received(message: &TaskMessage) -> Event {
        let h = &message.headers;
        let args = h
            .argsrepr
            .clone()
            .unwrap_or_else(|| args_repr(&message.body.args));
        let kwargs = h
            .kwargsrepr
            .clone()
            .unwrap_or_else(|| kwargs_repr(&message.body.kwargs));
        Event::new("task-received")
            .with("uuid", json!(h.id))
            .with("name", json!(h.shadow.as_deref().unwrap_or(&h.task)))
            .with("args", json!(args))
            .with("kwargs", json!(kwargs))
            .with("root_id", json!(h.root_id))
            .with("parent_id", json!(h.parent_id))
            .with("retries", json!(h.retries))
            .with("eta", json!(h.eta.as_ref().map(format_time)))
            .with("expires", json!(h.expires.as_ref().map(format_time)))
    }

    /// `task-started`.
    pub fn task_started(id: &str) -> Event {
        Event::new("task-started").with("uuid", json!(id))
    }

    /// `task-succeeded`: the result's repr (at most 1024 characters) and
    /// the run time in seconds.
    pub fn task_succeeded(id: &str, result: &Value, runtime: f64) -> Event {
        Event::new("task-succeeded")
            .with("uuid", json!(id))
            .with("result", json!(value_repr(result)))
            .with("runtime", json!(runtime))
    }

    /// `task-failed`: the exception's repr and the traceback.
    pub fn task_failed(id: &str, exception: &str, traceback: Option<&str>) -> Event {
        Event::new("task-failed")
            .with("uuid", json!(id))
            .with("exception", json!(exception))
            .with("traceback", json!(traceback))
    }

    /// `task-retried`: the exception that caused the retry.
    pub fn task_retried(id: &str, exception: &str, traceback: &str) -> Event {
        Event::new("task-retried")
            .with("uuid", json!(id))
            .with("exception", json!(exception))
            .with("traceback", json!(traceback))
    }

    /// `task-rejected`.
    pub fn task_rejected(id: &str, requeue: bool) -> Event {
        Event::new("task-rejected")
            .with("uuid", json!(id))
            .with("requeue", json!(requeue))
    }

    /// `task-revoked`: revoked, terminated (with the signal) or expired.
    pub fn task_revoked(id: &str, terminated: bool, signum: Option<&str>, expired: bool) -> Event {
        Event::new("task-revoked")
            .with("uuid", json!(id))
            .with("terminated", json!(terminated))
            .with("signum", json!(signum))
            .with("expired", json!(expired))
    }

    /// `worker-online`, `worker-heartbeat` or `worker-offline` (`kind`):
    /// the heartbeat interval, tasks running and accepted, the load
    /// average, and what software sends it.
    pub fn worker(kind: &str, status: &WorkerStatus) -> Event {
        Event::new(kind)
            .with("freq", json!(status.freq))
            .with("active", json!(status.active))
            .with("processed", json!(status.processed))
            .with("loadavg", json!(status.loadavg))
            .with("sw_ident", json!(status.sw_ident))
            .with("sw_ver", json!(status.sw_ver))
            .with("sw_sys", json!(status.sw_sys))
    }
}

/// What worker events report.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    /// Seconds between heartbeats.
    pub freq: f64,
    /// Tasks running now.
    pub active: usize,
    /// Tasks accepted since start.
    pub processed: u64,
    /// 1, 5 and 15 minute load averages, rounded up to 2 decimals.
    pub loadavg: [f64; 3],
    /// The worker software (`py-celery` for Python workers).
    pub sw_ident: String,
    /// Its version.
    pub sw_ver: String,
    /// The operating system, as Python's `platform.system()` names it.
    pub sw_sys: String,
}

/// The message for `events` from `hostname`, and its routing key: one
/// event as an object under its own key, several as an array under
/// `task.multi` (as Python workers batch task events).
pub fn encode(events: &[Event], hostname: &str) -> (String, RawMessage) {
    let mut headers = Headers::new();
    headers.insert("hostname".into(), HeaderValue::Str(hostname.to_owned()));
    match events {
        [one] => (
            one.routing_key(),
            json_message(&Value::Object(one.fields.clone()), headers, 1),
        ),
        many => {
            let body = Value::Array(
                many.iter()
                    .map(|e| Value::Object(e.fields.clone()))
                    .collect(),
            );
            (
                MULTI_ROUTING_KEY.to_owned(),
                json_message(&body, headers, 1),
            )
        }
    }
}

/// Reads the events of one message (an object, or an array of them).
pub fn decode(raw: &RawMessage, options: &DecodeOptions) -> Result<Vec<Event>, DecodeError> {
    let one = |value: Value| match value {
        Value::Object(fields) if fields.get("type").is_some_and(Value::is_string) => {
            Ok(Event { fields })
        }
        Value::Object(_) => Err(DecodeError::Event("an event has no `type`".into())),
        other => Err(DecodeError::Event(format!(
            "expected an object, found {}",
            kind_of(&other)
        ))),
    };
    match options.decode_json(raw)? {
        Value::Array(items) => items.into_iter().map(one).collect(),
        value => Ok(vec![one(value)?]),
    }
}

/// Python's `utcoffset()` for a zone `east_seconds` east of UTC: hours
/// *west* of UTC, floor-divided (UTC 0, Berlin winter −1, New York winter
/// 5, India −6).
///
/// ```
/// use celeriac_protocol::event::utcoffset;
/// assert_eq!(utcoffset(0), 0);
/// assert_eq!(utcoffset(3_600), -1);
/// assert_eq!(utcoffset(-5 * 3_600), 5);
/// assert_eq!(utcoffset(5 * 3_600 + 1_800), -6);
/// ```
pub fn utcoffset(east_seconds: i32) -> i64 {
    i64::from(-east_seconds).div_euclid(3_600)
}

/// A Lamport clock (§7.5): sending moves it forward, receiving moves it
/// past what was received.
#[derive(Debug, Default)]
pub struct LamportClock(AtomicU64);

impl LamportClock {
    /// A clock at zero.
    pub fn new() -> LamportClock {
        LamportClock::default()
    }

    /// Moves forward for a message about to be sent; returns the value it
    /// carries.
    pub fn forward(&self) -> u64 {
        self.0.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Moves past `received` (`max(value, received) + 1`); returns the new
    /// value.
    pub fn adjust(&self, received: u64) -> u64 {
        let mut current = self.0.load(Ordering::Acquire);
        loop {
            let next = current.max(received) + 1;
            match self
                .0
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return next,
                Err(seen) => current = seen,
            }
        }
    }

    /// The current value.
    pub fn value(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp() -> Stamp {
        Stamp {
            hostname: "celeriac@w1".into(),
            pid: 7,
            utcoffset: 0,
        }
    }

    #[test]
    fn batches_go_as_arrays_under_task_multi() {
        let events = [
            Event::new("task-received").stamped(&stamp(), 1, 1.0),
            Event::new("task-started").stamped(&stamp(), 2, 2.0),
        ];
        let (key, raw) = encode(&events, "celeriac@w1");
        assert_eq!(key, "task.multi");
        assert_eq!(
            raw.headers.get("hostname"),
            Some(&HeaderValue::Str("celeriac@w1".into()))
        );
        let back = decode(&raw, &DecodeOptions::default()).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].kind(), "task-started");
        assert_eq!(back[1].get("clock"), Some(&json!(2)));
    }

    #[test]
    fn an_event_carries_the_standard_fields() {
        let event = Event::new("worker-heartbeat").stamped(&stamp(), 3, 1.5);
        for field in ["hostname", "utcoffset", "pid", "clock", "timestamp", "type"] {
            assert!(event.get(field).is_some(), "{field} missing");
        }
        assert!(!event.is_task_event());
    }

    #[test]
    fn task_received_shows_reprs_and_times_as_celery_does() {
        let message = TaskMessage::new("demo.add", "t1").with_args(vec![json!(2), json!(2)]);
        let event = Event::task_received(&message);
        assert_eq!(event.get("args"), Some(&json!("(2, 2)")));
        assert_eq!(event.get("kwargs"), Some(&json!("{}")));
        assert_eq!(event.get("eta"), Some(&Value::Null));
        assert_eq!(event.get("name"), Some(&json!("demo.add")));
    }

    #[test]
    fn the_clock_moves_past_what_it_receives() {
        let clock = LamportClock::new();
        assert_eq!(clock.forward(), 1);
        assert_eq!(clock.adjust(10), 11);
        assert_eq!(clock.adjust(3), 12);
        assert_eq!(clock.forward(), 13);
    }

    #[test]
    fn objects_without_a_type_are_refused() {
        let raw = json_message(&json!({"uuid": "t1"}), Headers::new(), 1);
        assert!(decode(&raw, &DecodeOptions::default()).is_err());
    }
}
