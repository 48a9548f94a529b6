//! What Celery's SQL result tables hold (its `database` backend, Celery
//! 5.7 with SQLAlchemy): one `celery_taskmeta` row per task and one
//! `celery_tasksetmeta` row per saved group. Pure data: the PostgreSQL
//! backend in the `celeriac` crate does the I/O.
//!
//! | column | holds |
//! |---|---|
//! | `status` | the state name |
//! | `result` | the result (an exception dict for failures), JSON bytes |
//! | `date_done` | when a ready state was stored, UTC, no time zone |
//! | `traceback` | the formatted traceback, text |
//! | `children` | the result tuples of tasks it sent, JSON bytes (NULL if none) |
//! | `name`, `worker`, `queue`, `retries` | the extended fields, when `result_extended` is on |
//! | `args`, `kwargs` | the extended arguments, JSON bytes |
//! | `stamps` | `{"stamped_headers": [...], "stamps": {...}}`, JSON bytes |
//!
//! Rows Celery wrote before 5.x pickled the `result` column (bytes starting
//! `0x80`); they are reported as such, not guessed at.

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use serde_json::{Map, Value};

use crate::json::to_python_json;
use crate::store::ResultTuple;
use crate::{DecodeError, ExtendedMeta, ResultMeta, State};

/// One `celery_taskmeta` row, without its surrogate `id`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskRow {
    /// The task id (unique).
    pub task_id: String,
    /// The state name.
    pub status: String,
    /// The JSON-encoded result.
    pub result: Option<Vec<u8>>,
    /// When a ready state was stored (UTC).
    pub date_done: Option<NaiveDateTime>,
    /// The formatted traceback.
    pub traceback: Option<String>,
    /// The JSON-encoded children, NULL when there are none.
    pub children: Option<Vec<u8>>,
    /// The task's name (extended).
    pub name: Option<String>,
    /// The JSON-encoded positional arguments (extended).
    pub args: Option<Vec<u8>>,
    /// The JSON-encoded keyword arguments (extended).
    pub kwargs: Option<Vec<u8>>,
    /// The worker's host name (extended).
    pub worker: Option<String>,
    /// How many times it was retried (extended).
    pub retries: Option<i32>,
    /// The routing key it was delivered with (extended).
    pub queue: Option<String>,
    /// The JSON-encoded stamps, if the task was stamped (extended).
    pub stamps: Option<Vec<u8>>,
}

fn encode(value: &Value) -> Vec<u8> {
    to_python_json(value).into_bytes()
}

fn decode(column: &str, bytes: &[u8]) -> Result<Value, DecodeError> {
    if bytes.first() == Some(&0x80) {
        return Err(DecodeError::Result(format!(
            "the `{column}` column holds a Python pickle (a row written by Celery before \
             5.x stored results with pickle); read it from Python or store it again"
        )));
    }
    crate::json::from_slice(bytes)
}

impl TaskRow {
    /// The row Celery's backend writes for `meta`: `date_done` only for
    /// ready states, the extended columns only when `meta` has them.
    ///
    /// ```
    /// use celeriac_protocol::{ResultMeta, State, sql_row::TaskRow};
    /// let row = TaskRow::from_meta(&ResultMeta::new("t1", State::Success, 4.into()));
    /// assert_eq!(row.status, "SUCCESS");
    /// assert_eq!(row.result.as_deref(), Some(&b"4"[..]));
    /// assert!(row.children.is_none());
    /// ```
    pub fn from_meta(meta: &ResultMeta) -> TaskRow {
        let date_done = meta.status.is_ready().then(|| {
            meta.date_done
                .map_or_else(Utc::now, |d| d.with_timezone(&Utc))
                .naive_utc()
        });
        let mut row = TaskRow {
            task_id: meta.task_id.clone(),
            status: meta.status.as_str().to_owned(),
            result: Some(encode(&meta.result)),
            date_done,
            traceback: meta.traceback.clone(),
            children: (!meta.children.is_empty())
                .then(|| encode(&Value::Array(meta.children.clone()))),
            ..TaskRow::default()
        };
        if let Some(extended) = &meta.extended {
            row.name = extended.name.clone();
            row.args = Some(encode(&extended.args));
            row.kwargs = Some(encode(&extended.kwargs));
            row.worker = extended.worker.clone();
            row.retries = extended.retries.and_then(|r| i32::try_from(r).ok());
            row.queue = extended.queue.clone();
            row.stamps = stamps_of(&meta.extra).map(|s| encode(&s));
        }
        row
    }

    /// The result document this row holds, as Celery's backend reads it.
    pub fn to_meta(&self) -> Result<ResultMeta, DecodeError> {
        let result = match &self.result {
            Some(bytes) => decode("result", bytes)?,
            None => Value::Null,
        };
        let mut meta = ResultMeta::new(&self.task_id, State::parse(&self.status), result);
        meta.traceback = self.traceback.clone();
        meta.date_done = self.date_done.map(utc);
        if let Some(bytes) = &self.children {
            match decode("children", bytes)? {
                Value::Array(children) => meta.children = children,
                Value::Null => {}
                other => {
                    return Err(DecodeError::Result(format!(
                        "the `children` column must hold a list, found {other}"
                    )));
                }
            }
        }
        if self.name.is_some() || self.worker.is_some() {
            let arguments = |column: &str, bytes: &Option<Vec<u8>>| match bytes {
                Some(bytes) => decode(column, bytes),
                None => Ok(Value::Null),
            };
            meta.extended = Some(ExtendedMeta {
                name: self.name.clone(),
                args: arguments("args", &self.args)?,
                kwargs: arguments("kwargs", &self.kwargs)?,
                worker: self.worker.clone(),
                retries: self.retries.map(i64::from),
                queue: self.queue.clone(),
            });
        }
        if let Some(bytes) = &self.stamps {
            add_stamps(&mut meta.extra, decode("stamps", bytes)?);
        }
        Ok(meta)
    }
}

/// The `stamps` column's document for a result whose extra keys carry
/// `stamped_headers` and the stamps they name.
fn stamps_of(extra: &Map<String, Value>) -> Option<Value> {
    let Some(Value::Array(headers)) = extra.get("stamped_headers") else {
        return None;
    };
    if headers.is_empty() {
        return None;
    }
    let stamps: Map<String, Value> = headers
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|h| extra.get(h).map(|v| (h.to_owned(), v.clone())))
        .collect();
    let mut document = Map::new();
    document.insert("stamped_headers".into(), Value::Array(headers.clone()));
    document.insert("stamps".into(), Value::Object(stamps));
    Some(Value::Object(document))
}

/// Puts a `stamps` column's document back into a result's extra keys.
fn add_stamps(extra: &mut Map<String, Value>, document: Value) {
    let Value::Object(mut document) = document else {
        return;
    };
    if let Some(headers) = document.remove("stamped_headers") {
        extra.insert("stamped_headers".into(), headers);
    }
    if let Some(Value::Object(stamps)) = document.remove("stamps") {
        extra.extend(stamps);
    }
}

/// The `result` column of a saved group's `celery_tasksetmeta` row: the
/// group's result tuple itself, JSON-encoded.
///
/// ```
/// use celeriac_protocol::{sql_row::{group_column, parse_group_column}, store::ResultTuple};
/// let group = ResultTuple::Group { id: "g1".into(), parent: None, results: vec![ResultTuple::task("t1")] };
/// let bytes = group_column(&group);
/// assert_eq!(bytes, br#"[["g1", null], [[["t1", null], null]]]"#);
/// assert_eq!(parse_group_column(&bytes).unwrap(), group);
/// ```
pub fn group_column(group: &ResultTuple) -> Vec<u8> {
    encode(&group.to_json())
}

/// Reads a saved group's `result` column.
pub fn parse_group_column(bytes: &[u8]) -> Result<ResultTuple, DecodeError> {
    ResultTuple::from_json(&decode("result", bytes)?)
}

/// A `date_done` column (UTC, no time zone) as a time.
fn utc(date_done: NaiveDateTime) -> DateTime<FixedOffset> {
    DateTime::<Utc>::from_naive_utc_and_offset(date_done, Utc).fixed_offset()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::ExceptionInfo;

    /// The bytes Celery 5.7 wrote to `celery_taskmeta` for a failure and an
    /// extended success (read from PostgreSQL after `store_result`).
    #[test]
    fn rows_read_as_celery_wrote_them() {
        let failure = TaskRow {
            task_id: "t2".into(),
            status: "FAILURE".into(),
            result: Some(
                br#"{"exc_type": "ValueError", "exc_message": ["bad"], "exc_module": "builtins"}"#
                    .to_vec(),
            ),
            traceback: Some("TB".into()),
            ..TaskRow::default()
        };
        let meta = failure.to_meta().unwrap();
        assert_eq!(meta.status, State::Failure);
        assert_eq!(meta.exception().unwrap().exc_type, "ValueError");
        assert!(meta.extended.is_none());

        let success = TaskRow {
            task_id: "t1".into(),
            status: "SUCCESS".into(),
            result: Some(br#"{"a": [1, 2.5, null]}"#.to_vec()),
            name: Some("demo.add".into()),
            args: Some(b"[1, 2]".to_vec()),
            kwargs: Some(br#"{"x": 1}"#.to_vec()),
            worker: Some("w@h".into()),
            retries: Some(0),
            queue: Some("celery".into()),
            ..TaskRow::default()
        };
        let meta = success.to_meta().unwrap();
        let extended = meta.extended.clone().unwrap();
        assert_eq!(extended.args, json!([1, 2]));
        assert_eq!(extended.kwargs, json!({"x": 1}));
        assert_eq!(TaskRow::from_meta(&meta).args, success.args);
        assert_eq!(
            TaskRow::from_meta(&meta).result,
            success.result,
            "written back byte for byte"
        );
    }

    #[test]
    fn only_ready_states_have_a_date_done() {
        let started = ResultMeta::new("t", State::Started, json!({"pid": 1}));
        assert!(TaskRow::from_meta(&started).date_done.is_none());
        let failed = ResultMeta::new(
            "t",
            State::Failure,
            ExceptionInfo::new("builtins", "KeyError", "k").to_json(),
        );
        assert!(TaskRow::from_meta(&failed).date_done.is_some());
    }

    #[test]
    fn stamps_round_trip() {
        let mut meta = ResultMeta::new("t", State::Success, Value::Null);
        meta.extended = Some(ExtendedMeta {
            name: Some("n".into()),
            args: json!([]),
            kwargs: json!({}),
            worker: None,
            retries: None,
            queue: None,
        });
        meta.extra
            .insert("stamped_headers".into(), json!(["tenant"]));
        meta.extra.insert("tenant".into(), json!("acme"));
        let row = TaskRow::from_meta(&meta);
        assert_eq!(
            row.stamps.as_deref(),
            Some(&br#"{"stamped_headers": ["tenant"], "stamps": {"tenant": "acme"}}"#[..])
        );
        assert_eq!(row.to_meta().unwrap().extra, meta.extra);
    }

    #[test]
    fn a_pickled_result_is_named_not_guessed() {
        let row = TaskRow {
            task_id: "t".into(),
            status: "SUCCESS".into(),
            result: Some(vec![0x80, 4, 0x95]),
            ..TaskRow::default()
        };
        let error = row.to_meta().unwrap_err().to_string();
        assert!(error.contains("pickle"), "{error}");
    }
}
