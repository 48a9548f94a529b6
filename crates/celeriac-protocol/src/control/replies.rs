//! The documents inside control replies (§6.4, §6.5), typed. Workers write
//! them, control clients read them; every field is named as Celery names it
//! on the wire, and fields a Python worker may leave out default.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The answer of a control command: `{"ok": "..."}` or `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ControlOutcome {
    /// The command was carried out; the text says what happened.
    Ok(String),
    /// The command could not be carried out; the text says why.
    Error(String),
}

impl ControlOutcome {
    /// `{"ok": text}`.
    pub fn ok(text: impl Into<String>) -> ControlOutcome {
        ControlOutcome::Ok(text.into())
    }

    /// `{"error": text}`.
    pub fn error(text: impl Into<String>) -> ControlOutcome {
        ControlOutcome::Error(text.into())
    }

    /// As the JSON value a reply carries.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// How a task was delivered, as `active`, `reserved` and `query_task` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryInfoDoc {
    /// The exchange it was published to (`""` for the default exchange).
    #[serde(default)]
    pub exchange: String,
    /// The routing key.
    #[serde(default)]
    pub routing_key: String,
    /// Its priority, if any.
    #[serde(default)]
    pub priority: Option<u8>,
    /// Whether the broker delivered it before.
    #[serde(default)]
    pub redelivered: bool,
}

/// A task a worker holds: Celery's `Request.info()` (§6.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestInfo {
    /// The task id.
    pub id: String,
    /// The task name (its shadow name, if it has one).
    pub name: String,
    /// Positional arguments (their repr text when asked for `safe` output).
    #[serde(default)]
    pub args: Value,
    /// Keyword arguments (their repr text when asked for `safe` output).
    #[serde(default)]
    pub kwargs: Value,
    /// The task's type (its registered name).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The worker's node name.
    #[serde(default)]
    pub hostname: String,
    /// When it started (Unix seconds); `None` until it runs.
    #[serde(default)]
    pub time_start: Option<f64>,
    /// Whether its message has been acked.
    #[serde(default)]
    pub acknowledged: bool,
    /// How it was delivered.
    pub delivery_info: DeliveryInfoDoc,
    /// The process running it; `None` until it runs.
    #[serde(default)]
    pub worker_pid: Option<u32>,
}

/// A task held for its ETA, as `scheduled` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduledInfo {
    /// When it is due (ISO 8601).
    pub eta: String,
    /// The timer entry's priority (Celery's timer uses 6 for ETA tasks).
    pub priority: i64,
    /// The task.
    pub request: RequestInfo,
}

/// The `pool` part of `stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolStats {
    /// What runs tasks (Celery: `celery.concurrency.prefork:TaskPool`).
    #[serde(default)]
    pub implementation: String,
    /// Tasks that may run at once.
    #[serde(rename = "max-concurrency")]
    pub max_concurrency: usize,
    /// The processes running tasks.
    #[serde(default)]
    pub processes: Vec<u32>,
    /// Tasks a child runs before it is replaced (`"N/A"` or a number).
    #[serde(rename = "max-tasks-per-child", default)]
    pub max_tasks_per_child: Value,
    /// Whether putting a task into the pool is guarded by a semaphore.
    #[serde(rename = "put-guarded-by-semaphore", default)]
    pub put_guarded_by_semaphore: bool,
    /// The pool's default time limits, `[soft, hard]` (empty if none).
    #[serde(default)]
    pub timeouts: Vec<Value>,
}

/// A worker's `stats` reply (§6.5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Tasks accepted since start, by (shadow) name.
    #[serde(default)]
    pub total: Map<String, Value>,
    /// The worker's process id.
    pub pid: u32,
    /// The worker's Lamport clock, as text (Celery sends a string here).
    #[serde(default)]
    pub clock: String,
    /// Whole seconds since the worker started.
    #[serde(default)]
    pub uptime: u64,
    /// The pool.
    pub pool: PoolStats,
    /// The broker connection, Celery's `Connection.info()` (no password).
    #[serde(default)]
    pub broker: Map<String, Value>,
    /// The prefetch count in effect.
    #[serde(default)]
    pub prefetch_count: u64,
    /// `getrusage(RUSAGE_SELF)`: `utime`, `stime`, `maxrss`, ...
    #[serde(default)]
    pub rusage: Map<String, Value>,
}

/// A queue a worker consumes, as `active_queues` shows it (kombu's
/// `Queue.as_dict(recurse=True)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDoc {
    /// The queue's name.
    pub name: String,
    /// Its exchange: `name`, `type`, `durable`, ...
    #[serde(default)]
    pub exchange: Map<String, Value>,
    /// The binding key.
    #[serde(default)]
    pub routing_key: String,
    /// Survives a broker restart.
    #[serde(default)]
    pub durable: bool,
    /// Only usable by the declaring connection.
    #[serde(default)]
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    #[serde(default)]
    pub auto_delete: bool,
    /// Everything else kombu lists (`queue_arguments`, `max_priority`, ...).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn outcomes_are_ok_or_error_objects() {
        assert_eq!(ControlOutcome::ok("done").to_json(), json!({"ok": "done"}));
        let back: ControlOutcome =
            serde_json::from_value(json!({"error": "unknown task"})).unwrap();
        assert_eq!(back, ControlOutcome::error("unknown task"));
    }

    #[test]
    fn a_python_workers_stats_reply_reads() {
        // From a real Celery 5.7 solo worker (§6.5).
        let stats: WorkerStats = serde_json::from_value(json!({
            "total": {}, "pid": 21370, "clock": "6", "uptime": 7,
            "pool": {"implementation": "celery.concurrency.solo:TaskPool", "max-concurrency": 1,
                     "processes": [21370], "max-tasks-per-child": null,
                     "put-guarded-by-semaphore": true, "timeouts": []},
            "broker": {"hostname": "localhost", "userid": null, "virtual_host": "/"},
            "prefetch_count": 4,
            "rusage": {"utime": 0.26, "stime": 0.03, "maxrss": 36448}
        }))
        .unwrap();
        assert_eq!(stats.pool.max_concurrency, 1);
        assert_eq!(stats.clock, "6");
    }

    #[test]
    fn request_info_uses_celerys_keys() {
        let info = RequestInfo {
            id: "t1".into(),
            name: "demo.add".into(),
            args: json!([2, 2]),
            kwargs: json!({}),
            kind: "demo.add".into(),
            hostname: "celeriac@w1".into(),
            time_start: None,
            acknowledged: false,
            delivery_info: DeliveryInfoDoc {
                exchange: String::new(),
                routing_key: "celery".into(),
                priority: Some(0),
                redelivered: false,
            },
            worker_pid: None,
        };
        let doc = serde_json::to_value(&info).unwrap();
        assert_eq!(doc["type"], "demo.add");
        assert_eq!(doc["delivery_info"]["routing_key"], "celery");
        assert!(doc["time_start"].is_null());
    }
}
