//! What key/value result stores hold (§4.4, §4.5), as Celery's Redis
//! backend lays it out: key names, result tuples, saved groups, and the
//! chord bookkeeping with its join decision. Pure data: the Redis backend in
//! the `celeriac` crate does the I/O.
//!
//! | key | holds |
//! |---|---|
//! | `celery-task-meta-<id>` | the result document ([`crate::ResultMeta`]) |
//! | `celery-taskset-meta-<gid>` | a saved group: `{"result": <group tuple>}` |
//! | `celery-taskset-meta-<gid>.j` | a chord's header results so far ([`ChordPart`]), scored by `group_index` |
//! | `.s` / `.t` | the chord's size, set by the producer, and its adjustment |
//! | `.d` | header parts already counted (`<task id>:<group index>`), so a redelivered header task counts once |
//! | `.c` | the claim of the worker applying the body, then `done` |

use serde_json::{Value, json};

use crate::json::to_python_json;
use crate::repr::exception_repr;
use crate::{DecodeError, ExceptionInfo, State};

/// Where task, group and chord data live: Celery's key prefixes, behind an
/// optional global prefix (Celery's
/// `result_backend_transport_options['global_keyprefix']`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreKeys {
    task: String,
    group: String,
    unique: String,
    limit: String,
    rate: String,
}

/// The keys of one chord's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChordKey {
    /// `.j`: the header results so far.
    Results,
    /// `.t`: the size adjustment (`add_to_chord`).
    Adjustment,
    /// `.s`: the header's size.
    Size,
    /// `.d`: the header parts already counted.
    Counted,
    /// `.c`: the claim on applying the body, then `done`.
    Claim,
}

impl ChordKey {
    fn suffix(self) -> &'static str {
        match self {
            ChordKey::Results => ".j",
            ChordKey::Adjustment => ".t",
            ChordKey::Size => ".s",
            ChordKey::Counted => ".d",
            ChordKey::Claim => ".c",
        }
    }
}

impl Default for StoreKeys {
    fn default() -> Self {
        StoreKeys::new(None)
    }
}

impl StoreKeys {
    /// Keys behind `global_prefix`, to which `_` is appended unless it ends
    /// in one of `:_-.`, as Celery does.
    ///
    /// ```
    /// use celeriac_protocol::store::StoreKeys;
    /// assert_eq!(StoreKeys::new(None).task("t1"), "celery-task-meta-t1");
    /// assert_eq!(StoreKeys::new(Some("app")).task("t1"), "app_celery-task-meta-t1");
    /// assert_eq!(StoreKeys::new(Some("app:")).group("g"), "app:celery-taskset-meta-g");
    /// ```
    pub fn new(global_prefix: Option<&str>) -> StoreKeys {
        let prefix = match global_prefix.filter(|p| !p.is_empty()) {
            Some(p) if p.ends_with([':', '_', '-', '.']) => p.to_owned(),
            Some(p) => format!("{p}_"),
            None => String::new(),
        };
        StoreKeys {
            task: format!("{prefix}celery-task-meta-"),
            group: format!("{prefix}celery-taskset-meta-"),
            unique: format!("{prefix}celeriac-unique-"),
            limit: format!("{prefix}celeriac-limit-"),
            rate: format!("{prefix}celeriac-rate-"),
        }
    }

    /// The key (and pub/sub channel) of task `id`'s result.
    pub fn task(&self, id: &str) -> String {
        format!("{}{id}", self.task)
    }

    /// The key of saved group `gid`.
    pub fn group(&self, gid: &str) -> String {
        format!("{}{gid}", self.group)
    }

    /// The key of a unique task's lock (Celeriac's own: Celery has none).
    pub fn unique(&self, key: &str) -> String {
        format!("{}{key}", self.unique)
    }

    /// The key of a global limit's leases (Celeriac's own).
    pub fn limit(&self, key: &str) -> String {
        format!("{}{key}", self.limit)
    }

    /// The key of a global rate limit's schedule (Celeriac's own).
    pub fn rate(&self, key: &str) -> String {
        format!("{}{key}", self.rate)
    }

    /// One of the chord keys of group `gid`.
    pub fn chord(&self, gid: &str, key: ChordKey) -> String {
        format!("{}{gid}{}", self.group, key.suffix())
    }
}

/// A result tuple (§4.2): how Celery serializes an `AsyncResult` (a task id
/// and its parent) or a `GroupResult` (a group id and its members).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultTuple {
    /// `[[id, parent], null]`.
    Task {
        /// The task id.
        id: String,
        /// The parent's tuple, if it has one.
        parent: Option<Box<ResultTuple>>,
    },
    /// `[[id, parent], [member, ...]]`.
    Group {
        /// The group id.
        id: String,
        /// The parent's tuple, if it has one.
        parent: Option<Box<ResultTuple>>,
        /// The members, in order.
        results: Vec<ResultTuple>,
    },
}

impl ResultTuple {
    /// A task with no parent.
    pub fn task(id: impl Into<String>) -> ResultTuple {
        ResultTuple::Task {
            id: id.into(),
            parent: None,
        }
    }

    /// The id (task or group).
    pub fn id(&self) -> &str {
        match self {
            ResultTuple::Task { id, .. } | ResultTuple::Group { id, .. } => id,
        }
    }

    /// The JSON Celery writes.
    ///
    /// ```
    /// use celeriac_protocol::store::ResultTuple;
    /// let group = ResultTuple::Group { id: "g".into(), parent: None, results: vec![ResultTuple::task("a")] };
    /// assert_eq!(group.to_json(), serde_json::json!([["g", null], [[["a", null], null]]]));
    /// ```
    pub fn to_json(&self) -> Value {
        let head = |id: &str, parent: &Option<Box<ResultTuple>>| {
            json!([id, parent.as_ref().map(|p| p.to_json())])
        };
        match self {
            ResultTuple::Task { id, parent } => json!([head(id, parent), null]),
            ResultTuple::Group {
                id,
                parent,
                results,
            } => {
                let members: Vec<Value> = results.iter().map(ResultTuple::to_json).collect();
                json!([head(id, parent), members])
            }
        }
    }

    /// Reads a result tuple.
    pub fn from_json(value: &Value) -> Result<ResultTuple, DecodeError> {
        let bad = || DecodeError::Result(format!("not a result tuple: {value}"));
        let [head, members] = value.as_array().map(Vec::as_slice).ok_or_else(bad)? else {
            return Err(bad());
        };
        let [id, parent] = head.as_array().map(Vec::as_slice).ok_or_else(bad)? else {
            return Err(bad());
        };
        let id = id.as_str().ok_or_else(bad)?.to_owned();
        let parent = match parent {
            Value::Null => None,
            other => Some(Box::new(ResultTuple::from_json(other)?)),
        };
        match members {
            Value::Null => Ok(ResultTuple::Task { id, parent }),
            Value::Array(items) => Ok(ResultTuple::Group {
                id,
                parent,
                results: items
                    .iter()
                    .map(ResultTuple::from_json)
                    .collect::<Result<_, _>>()?,
            }),
            _ => Err(bad()),
        }
    }
}

/// The document a saved group is stored as: `{"result": <group tuple>}`.
pub fn group_document(group: &ResultTuple) -> String {
    to_python_json(&json!({ "result": group.to_json() }))
}

/// Reads a saved group's document.
pub fn parse_group_document(bytes: &[u8]) -> Result<ResultTuple, DecodeError> {
    let value = crate::json::from_slice(bytes)?;
    let tuple = value
        .get("result")
        .ok_or_else(|| DecodeError::Result("a saved group has no `result`".into()))?;
    ResultTuple::from_json(tuple)
}

/// One header task's result as a chord records it in `.j`:
/// `[1, task_id, state, result]`, the result encoded as in a result
/// document (an exception dict for failures).
#[derive(Debug, Clone, PartialEq)]
pub struct ChordPart {
    /// The header task's id.
    pub task_id: String,
    /// Its final state.
    pub state: State,
    /// Its return value, or exception dict.
    pub result: Value,
}

impl ChordPart {
    /// The part a header task's stored result is, once it is final (a
    /// ready state); `None` while it is not (stores that join chords by
    /// reading results, not by counting them, use this).
    ///
    /// ```
    /// use celeriac_protocol::{ResultMeta, State, store::ChordPart};
    /// assert!(ChordPart::of_ready(ResultMeta::new("t", State::Started, 1.into())).is_none());
    /// assert_eq!(ChordPart::of_ready(ResultMeta::new("t", State::Success, 4.into())).unwrap().result, 4);
    /// ```
    pub fn of_ready(meta: crate::ResultMeta) -> Option<ChordPart> {
        meta.status.is_ready().then_some(ChordPart {
            task_id: meta.task_id,
            state: meta.status,
            result: meta.result,
        })
    }

    /// The JSON text stored in `.j`.
    ///
    /// ```
    /// use celeriac_protocol::{State, store::ChordPart};
    /// let part = ChordPart { task_id: "t".into(), state: State::Success, result: 4.into() };
    /// assert_eq!(part.encode(), r#"[1, "t", "SUCCESS", 4]"#);
    /// ```
    pub fn encode(&self) -> String {
        to_python_json(&json!([1, self.task_id, self.state.as_str(), self.result]))
    }

    /// Reads an entry of `.j`.
    pub fn decode(bytes: &[u8]) -> Result<ChordPart, DecodeError> {
        let value = crate::json::from_slice(bytes)?;
        let bad = || DecodeError::Result(format!("not a chord part: {value}"));
        let [_, task_id, state, result] = value.as_array().map(Vec::as_slice).ok_or_else(bad)?
        else {
            return Err(bad());
        };
        Ok(ChordPart {
            task_id: task_id.as_str().ok_or_else(bad)?.to_owned(),
            state: State::parse(state.as_str().ok_or_else(bad)?),
            result: result.clone(),
        })
    }
}

/// Why a chord's body does not run: a header task failed or was revoked.
#[derive(Debug, Clone, PartialEq)]
pub struct ChordFailure {
    /// The header task that failed first (in header order).
    pub task_id: String,
    /// Its exception.
    pub exception: ExceptionInfo,
}

impl ChordFailure {
    /// `Dependency <id> raised <repr>`, Celery's message.
    pub fn message(&self) -> String {
        let repr = exception_repr(&self.exception.exc_type, &self.exception.exc_message);
        format!("Dependency {} raised {repr}", self.task_id)
    }

    /// The `celery.exceptions.ChordError` stored as the body's failure.
    pub fn chord_error(&self) -> ExceptionInfo {
        ExceptionInfo::new("celery.exceptions", "ChordError", self.message())
    }
}

/// The join decision (§4.5): the header's results in order, for the body,
/// or the first failure (`FAILURE` or `REVOKED`), which fails the body.
/// `parts` must be in header order (`.j` read by score).
///
/// ```
/// use celeriac_protocol::{State, store::{ChordPart, join}};
/// let part = |id: &str, state, result| ChordPart { task_id: id.into(), state, result };
/// let ok = [part("a", State::Success, 1.into()), part("b", State::Success, 2.into())];
/// assert_eq!(join(&ok).unwrap(), vec![serde_json::json!(1), serde_json::json!(2)]);
/// ```
pub fn join(parts: &[ChordPart]) -> Result<Vec<Value>, ChordFailure> {
    let mut results = Vec::with_capacity(parts.len());
    for part in parts {
        if part.state.propagates() {
            let exception = ExceptionInfo::from_json(&part.result).unwrap_or_else(|| {
                ExceptionInfo::new("celery.exceptions", "TaskError", part.result.to_string())
            });
            return Err(ChordFailure {
                task_id: part.task_id.clone(),
                exception,
            });
        }
        results.push(part.result.clone());
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_celerys_layout() {
        let keys = StoreKeys::default();
        assert_eq!(keys.group("g"), "celery-taskset-meta-g");
        assert_eq!(
            keys.chord("g", ChordKey::Results),
            "celery-taskset-meta-g.j"
        );
        assert_eq!(keys.chord("g", ChordKey::Size), "celery-taskset-meta-g.s");
        assert_eq!(
            keys.chord("g", ChordKey::Adjustment),
            "celery-taskset-meta-g.t"
        );
        assert_eq!(
            keys.chord("g", ChordKey::Counted),
            "celery-taskset-meta-g.d"
        );
        assert_eq!(keys.chord("g", ChordKey::Claim), "celery-taskset-meta-g.c");
        assert_eq!(StoreKeys::new(Some("")).task("t"), "celery-task-meta-t");
        assert_eq!(StoreKeys::new(Some("a.")).task("t"), "a.celery-task-meta-t");
    }

    #[test]
    fn result_tuples_round_trip_with_parents() {
        let text = r#"[["g", null], [[["a", [["p", null], null]], null], [["b", null], null]]]"#;
        let value: Value = serde_json::from_str(text).unwrap();
        let tuple = ResultTuple::from_json(&value).unwrap();
        let ResultTuple::Group { results, .. } = &tuple else {
            panic!("a group")
        };
        assert!(matches!(&results[0], ResultTuple::Task { parent: Some(p), .. } if p.id() == "p"));
        assert_eq!(tuple.to_json(), value);
        assert!(ResultTuple::from_json(&json!(["x"])).is_err());
        let saved = group_document(&tuple);
        assert_eq!(parse_group_document(saved.as_bytes()).unwrap(), tuple);
    }

    #[test]
    fn chord_parts_round_trip() {
        let part = ChordPart {
            task_id: "t".into(),
            state: State::Failure,
            result: ExceptionInfo::new("builtins", "ValueError", "boom").to_json(),
        };
        assert_eq!(ChordPart::decode(part.encode().as_bytes()).unwrap(), part);
        assert!(ChordPart::decode(b"[1, 2]").is_err());
    }

    #[test]
    fn the_first_failure_in_header_order_fails_the_body() {
        let ok = ChordPart {
            task_id: "a".into(),
            state: State::Success,
            result: json!(1),
        };
        let failed = ChordPart {
            task_id: "b".into(),
            state: State::Failure,
            result: ExceptionInfo::new("builtins", "ValueError", "boom").to_json(),
        };
        let revoked = ChordPart {
            task_id: "c".into(),
            state: State::Revoked,
            result: ExceptionInfo::new("celery.exceptions", "TaskRevokedError", "revoked")
                .to_json(),
        };
        let failure = join(&[ok.clone(), failed, revoked]).unwrap_err();
        assert_eq!(failure.task_id, "b");
        assert_eq!(failure.message(), "Dependency b raised ValueError('boom')");
        let error = failure.chord_error();
        assert_eq!(
            (error.exc_module.as_deref(), error.exc_type.as_str()),
            (Some("celery.exceptions"), "ChordError")
        );
        assert_eq!(join(&[ok]).unwrap(), vec![json!(1)]);
        assert_eq!(join(&[]).unwrap(), Vec::<Value>::new());
    }
}
