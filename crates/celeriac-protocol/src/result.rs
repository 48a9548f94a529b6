//! Task states (§4.1) and the result document, "meta" (§4.2), shared by the
//! `rpc://` backend's messages and key/value backends.

use std::fmt;

use chrono::{DateTime, FixedOffset};
use serde::ser::{Serialize, SerializeMap as _, Serializer};
use serde_json::{Map, Value};

use crate::message::{DecodeOptions, RawMessage};
use crate::signature::kind_of;
use crate::time::{format_time, parse_time};
use crate::{DecodeError, EncodeError, content, json};

/// A task state, as Celery names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum State {
    /// Unknown: no result has been stored.
    Pending,
    /// Received by a worker (events only).
    Received,
    /// Started (stored only with `track_started`).
    Started,
    /// A retry was scheduled.
    Retry,
    /// Finished successfully.
    Success,
    /// Finished with an error.
    Failure,
    /// Revoked, expired or terminated.
    Revoked,
    /// Rejected (internal or events only).
    Rejected,
    /// Ignored (internal or events only).
    Ignored,
    /// A custom state set by `update_state`.
    Custom(String),
}

impl State {
    /// Celery's name for the state, e.g. `SUCCESS`.
    pub fn as_str(&self) -> &str {
        match self {
            State::Pending => "PENDING",
            State::Received => "RECEIVED",
            State::Started => "STARTED",
            State::Retry => "RETRY",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
            State::Revoked => "REVOKED",
            State::Rejected => "REJECTED",
            State::Ignored => "IGNORED",
            State::Custom(name) => name,
        }
    }

    /// Parses a state name; unknown names are [`State::Custom`].
    pub fn parse(name: &str) -> State {
        match name {
            "PENDING" => State::Pending,
            "RECEIVED" => State::Received,
            "STARTED" => State::Started,
            "RETRY" => State::Retry,
            "SUCCESS" => State::Success,
            "FAILURE" => State::Failure,
            "REVOKED" => State::Revoked,
            "REJECTED" => State::Rejected,
            "IGNORED" => State::Ignored,
            other => State::Custom(other.to_owned()),
        }
    }

    /// Ready states: `SUCCESS`, `FAILURE`, `REVOKED` (the task is done).
    pub fn is_ready(&self) -> bool {
        matches!(self, State::Success | State::Failure | State::Revoked)
    }

    /// States whose result field holds an exception: `RETRY`, `FAILURE`, `REVOKED`.
    pub fn is_exception(&self) -> bool {
        matches!(self, State::Retry | State::Failure | State::Revoked)
    }

    /// States `AsyncResult.get()` raises for: `FAILURE`, `REVOKED`.
    pub fn propagates(&self) -> bool {
        matches!(self, State::Failure | State::Revoked)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An exception as Celery's JSON result encoding stores it.
///
/// Python rebuilds it by importing `exc_module` and calling
/// `exc_type(*exc_message)`; an unknown module/type gets a stand-in class of
/// that name, so the message always reaches the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct ExceptionInfo {
    /// Class name (`__qualname__`), e.g. `KeyError`.
    pub exc_type: String,
    /// The exception's args, e.g. `["missing"]`.
    pub exc_message: Vec<Value>,
    /// Module, e.g. `builtins` or `celery.exceptions`.
    pub exc_module: Option<String>,
}

impl ExceptionInfo {
    /// An exception with a single message argument.
    ///
    /// ```
    /// use celeriac_protocol::ExceptionInfo;
    /// let e = ExceptionInfo::new("builtins", "ValueError", "bad width");
    /// assert_eq!(e.message(), "bad width");
    /// ```
    pub fn new(module: &str, exc_type: &str, message: impl Into<String>) -> ExceptionInfo {
        ExceptionInfo {
            exc_type: exc_type.to_owned(),
            exc_message: vec![Value::String(message.into())],
            exc_module: Some(module.to_owned()),
        }
    }

    /// The message as Python's `str(exc)` would show it for one string arg.
    pub fn message(&self) -> String {
        match self.exc_message.as_slice() {
            [Value::String(s)] => s.clone(),
            [] => String::new(),
            [one] => one.to_string(),
            many => Value::Array(many.to_vec()).to_string(),
        }
    }

    /// Reads an exception dict; `None` if `value` is not one.
    pub fn from_json(value: &Value) -> Option<ExceptionInfo> {
        let map = value.as_object()?;
        let exc_type = map.get("exc_type")?.as_str()?.to_owned();
        let exc_message = match map.get("exc_message") {
            Some(Value::Array(items)) => items.clone(),
            None | Some(Value::Null) => Vec::new(),
            Some(other) => vec![other.clone()],
        };
        let exc_module = map
            .get("exc_module")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Some(ExceptionInfo {
            exc_type,
            exc_message,
            exc_module,
        })
    }

    /// Writes the exception dict Celery writes.
    pub fn to_json(&self) -> Value {
        let mut map = Map::with_capacity(3);
        map.insert("exc_type".into(), Value::String(self.exc_type.clone()));
        map.insert("exc_message".into(), Value::Array(self.exc_message.clone()));
        map.insert(
            "exc_module".into(),
            self.exc_module.clone().map_or(Value::Null, Value::String),
        );
        Value::Object(map)
    }
}

/// The fields `result_extended=True` adds.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtendedMeta {
    /// Task name.
    pub name: Option<String>,
    /// Positional args the task ran with.
    pub args: Value,
    /// Keyword args the task ran with.
    pub kwargs: Value,
    /// Worker hostname.
    pub worker: Option<String>,
    /// Retry count.
    pub retries: Option<i64>,
    /// Routing key the task was delivered with.
    pub queue: Option<String>,
}

/// A result document (§4.2).
#[derive(Debug, Clone, PartialEq)]
pub struct ResultMeta {
    /// The task's state.
    pub status: State,
    /// Return value, exception dict, or state details.
    pub result: Value,
    /// Formatted traceback, if any.
    pub traceback: Option<String>,
    /// Result tuples of tasks this task sent.
    pub children: Vec<Value>,
    /// When it finished (ready states only).
    pub date_done: Option<DateTime<FixedOffset>>,
    /// Group id, if the task was in a group.
    pub group_id: Option<String>,
    /// Parent task id, if it had one.
    pub parent_id: Option<String>,
    /// Extended fields, if `result_extended` was on.
    pub extended: Option<ExtendedMeta>,
    /// The task id.
    pub task_id: String,
    /// Any other keys, kept.
    pub extra: Map<String, Value>,
}

impl ResultMeta {
    /// A result document for `task_id` in `status`, with no extras.
    pub fn new(task_id: impl Into<String>, status: State, result: Value) -> ResultMeta {
        ResultMeta {
            status,
            result,
            traceback: None,
            children: Vec::new(),
            date_done: None,
            group_id: None,
            parent_id: None,
            extended: None,
            task_id: task_id.into(),
            extra: Map::new(),
        }
    }

    /// The exception, for `RETRY`/`FAILURE`/`REVOKED` results.
    pub fn exception(&self) -> Option<ExceptionInfo> {
        if self.status.is_exception() {
            ExceptionInfo::from_json(&self.result)
        } else {
            None
        }
    }

    /// Decodes a result message (content type checked, size limited).
    pub fn decode(raw: &RawMessage, options: &DecodeOptions) -> Result<ResultMeta, DecodeError> {
        ResultMeta::from_json(options.decode_json(raw)?)
    }

    /// Encodes a result message body as Celery's `rpc://` backend does.
    pub fn encode(&self) -> Result<RawMessage, EncodeError> {
        Ok(RawMessage {
            properties: crate::Properties {
                content_type: Some(content::JSON.into()),
                content_encoding: Some(content::UTF8.into()),
                correlation_id: Some(self.task_id.clone()),
                delivery_mode: Some(1),
                priority: Some(0),
                ..crate::Properties::default()
            },
            headers: crate::Headers::new(),
            body: json::to_python_json(self).into_bytes().into(),
        })
    }

    /// Like [`encode`](Self::encode), signed by `signer` if given, as a
    /// worker with Celery's `result_serializer = 'auth'` sends results.
    pub fn encode_signed(
        &self,
        signer: Option<&crate::auth::Signer>,
    ) -> Result<RawMessage, EncodeError> {
        let mut raw = self.encode()?;
        if let Some(signer) = signer {
            crate::auth::seal_message(&mut raw, signer);
        }
        Ok(raw)
    }

    /// Reads a result document.
    pub fn from_json(value: Value) -> Result<ResultMeta, DecodeError> {
        let Value::Object(mut map) = value else {
            return Err(DecodeError::Result(format!(
                "expected an object, found {}",
                kind_of(&value)
            )));
        };
        let mut take = |key: &str| map.shift_remove(key);
        let status = match take("status") {
            Some(Value::String(s)) => State::parse(&s),
            _ => return Err(DecodeError::Result("`status` must be a state name".into())),
        };
        let Some(Value::String(task_id)) = take("task_id") else {
            return Err(DecodeError::Result("`task_id` must be a string".into()));
        };
        let date_done = match take("date_done") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(parse_time(&s).ok_or(DecodeError::InvalidTime {
                name: "date_done".into(),
                value: s,
            })?),
            Some(other) => {
                return Err(DecodeError::Result(format!(
                    "`date_done` must be a string, found {}",
                    kind_of(&other)
                )));
            }
        };
        let result = take("result").unwrap_or(Value::Null);
        let traceback = opt_string(take("traceback"), "traceback")?;
        let children = match take("children") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(DecodeError::Result(format!(
                    "`children` must be a list, found {}",
                    kind_of(&other)
                )));
            }
        };
        let group_id = opt_string(take("group_id"), "group_id")?;
        let parent_id = opt_string(take("parent_id"), "parent_id")?;
        let extended = if map.contains_key("name") || map.contains_key("worker") {
            let mut take = |key: &str| map.shift_remove(key);
            Some(ExtendedMeta {
                name: opt_string(take("name"), "name")?,
                args: take("args").unwrap_or(Value::Null),
                kwargs: take("kwargs").unwrap_or(Value::Null),
                worker: opt_string(take("worker"), "worker")?,
                retries: take("retries").and_then(|v| v.as_i64()),
                queue: opt_string(take("queue"), "queue")?,
            })
        } else {
            None
        };
        Ok(ResultMeta {
            status,
            result,
            traceback,
            children,
            date_done,
            group_id,
            parent_id,
            extended,
            task_id,
            extra: map,
        })
    }

    /// The document as JSON, with Python's key order (the same as its
    /// [`Serialize`] output).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Keys [`ResultMeta`] writes itself; an `extra` key of the same name is
/// left out rather than written twice.
const DOCUMENT_KEYS: [&str; 14] = [
    "status",
    "result",
    "traceback",
    "children",
    "date_done",
    "group_id",
    "parent_id",
    "name",
    "args",
    "kwargs",
    "worker",
    "retries",
    "queue",
    "task_id",
];

/// Writes the document straight from its fields, in Python's key order, so
/// storing a result clones nothing.
impl Serialize for ResultMeta {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("status", self.status.as_str())?;
        map.serialize_entry("result", &self.result)?;
        map.serialize_entry("traceback", &self.traceback)?;
        map.serialize_entry("children", &self.children)?;
        map.serialize_entry("date_done", &self.date_done.as_ref().map(format_time))?;
        if let Some(group_id) = &self.group_id {
            map.serialize_entry("group_id", group_id)?;
        }
        if let Some(parent_id) = &self.parent_id {
            map.serialize_entry("parent_id", parent_id)?;
        }
        if let Some(ext) = &self.extended {
            map.serialize_entry("name", &ext.name)?;
            map.serialize_entry("args", &ext.args)?;
            map.serialize_entry("kwargs", &ext.kwargs)?;
            map.serialize_entry("worker", &ext.worker)?;
            map.serialize_entry("retries", &ext.retries)?;
            map.serialize_entry("queue", &ext.queue)?;
        }
        for (key, value) in &self.extra {
            if !DOCUMENT_KEYS.contains(&key.as_str()) {
                map.serialize_entry(key, value)?;
            }
        }
        map.serialize_entry("task_id", &self.task_id)?;
        map.end()
    }
}

fn opt_string(value: Option<Value>, name: &str) -> Result<Option<String>, DecodeError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(DecodeError::Result(format!(
            "`{name}` must be a string or null, found {}",
            kind_of(&other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{from_slice, to_python_json};
    use serde_json::json;

    #[test]
    fn extra_keys_never_shadow_the_documents_own() {
        let mut meta = ResultMeta::new("id-1", State::Success, json!(3));
        meta.extra.insert("status".into(), json!("PENDING"));
        meta.extra.insert("custom".into(), json!(1));
        let text = to_python_json(&meta);
        assert_eq!(text.matches("\"status\"").count(), 1, "{text}");
        let back = ResultMeta::from_json(from_slice(text.as_bytes()).unwrap()).unwrap();
        assert_eq!(back.status, State::Success);
        assert_eq!(back.extra.get("custom"), Some(&json!(1)));
    }

    #[test]
    fn celery_documents_round_trip_exactly() {
        let texts = [
            r#"{"status": "SUCCESS", "result": 4, "traceback": null, "children": [], "date_done": "2026-11-28T04:50:57.267523+00:00", "task_id": "55555555-5555-4555-8555-555555555555"}"#,
            r#"{"status": "FAILURE", "result": {"exc_type": "KeyError", "exc_message": ["missing"], "exc_module": "builtins"}, "traceback": "Traceback", "children": [], "date_done": "2026-11-28T04:50:57.268082+00:00", "task_id": "x"}"#,
            r#"{"status": "SUCCESS", "result": 4, "traceback": null, "children": [], "date_done": "2026-11-28T04:50:57.268616+00:00", "name": "proj.tasks.add", "args": [2, 2], "kwargs": {}, "worker": "w1@host", "retries": 0, "queue": "celery", "task_id": "y"}"#,
        ];
        for text in texts {
            let meta = ResultMeta::from_json(from_slice(text.as_bytes()).unwrap()).unwrap();
            assert_eq!(to_python_json(&meta.to_json()), text);
        }
    }

    #[test]
    fn exceptions_are_read_from_exception_states_only() {
        let exc = ExceptionInfo::new("builtins", "KeyError", "missing");
        let failed = ResultMeta::new("id", State::Failure, exc.to_json());
        assert_eq!(failed.exception(), Some(exc.clone()));
        let ok = ResultMeta::new("id", State::Success, exc.to_json());
        assert_eq!(ok.exception(), None);
    }

    #[test]
    fn state_sets_match_celery() {
        let ready: Vec<_> = [
            "SUCCESS", "FAILURE", "REVOKED", "RETRY", "PENDING", "PROGRESS",
        ]
        .into_iter()
        .map(State::parse)
        .filter(State::is_ready)
        .collect();
        assert_eq!(ready, [State::Success, State::Failure, State::Revoked]);
        assert_eq!(State::parse("PROGRESS").as_str(), "PROGRESS");
        assert!(State::Revoked.propagates() && !State::Retry.propagates());
    }
}
