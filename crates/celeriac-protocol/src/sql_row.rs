//! What Celery's SQL result tables hold (its `database` backend, Celery
//! 5.7 with SQLAlchemy): one `celery_taskmeta` row per task and one
//! `celery_tasksetmeta` row per saved group. Pure data: the PostgreSQL
//! backend in the `celeriac` crate does the I/O.
//!
//! | column | holds |
//! |---|---|
//! | `status` | the state name |
//! | `result` | the result (an exception dict for failures), JSON bytes; a pickle up to Celery 5.6 |
//! | `date_done` | when a ready state was stored, UTC, no time zone |
//! | `traceback` | the formatted traceback, text |
//! | `children` | the result tuples of tasks it sent, JSON bytes (NULL if none) |
//! | `name`, `worker`, `queue`, `retries` | the extended fields, when `result_extended` is on |
//! | `args`, `kwargs` | the extended arguments, JSON bytes |
//! | `stamps` | `{"stamped_headers": [...], "stamps": {...}}`, JSON bytes |
//!
//! Celery 5.0 to 5.6 pickle the `result` column (SQLAlchemy's
//! `PickleType`): [`ResultColumn`] says which to write, and either is read
//! (a pickle starts with `0x80`, JSON never does). Their saved groups are
//! pickled `GroupResult` objects, which are refused with an error, never
//! built.
//!
//! [`DjangoTaskRow`] is the same for django-celery-results 2.6's
//! `django_celery_results_taskresult`, whose columns are text: the result
//! and `meta` (`{"children": [...]}`) as JSON, the arguments as the JSON
//! encoding of their Python reprs (`"(2, 3)"`), as its admin shows them.

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use serde_json::{Map, Value};

use crate::json::to_python_json;
use crate::repr::{args_repr, kwargs_repr};
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

/// How the `result` column is encoded: Celery 5.7 writes JSON bytes there,
/// Celery 5.0 to 5.6 a pickle. Both are read whatever this says; it
/// decides what is written, so set it to what the oldest Python process
/// sharing the tables reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResultColumn {
    /// JSON bytes, as Celery 5.7 and later write them (the default).
    #[default]
    Json,
    /// A pickle of the plain value, as Celery 5.0 to 5.6 write them.
    Pickle,
}

impl std::str::FromStr for ResultColumn {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.to_ascii_lowercase().as_str() {
            "json" => Ok(ResultColumn::Json),
            "pickle" => Ok(ResultColumn::Pickle),
            _ => Err(format!(
                "unknown result column format {text:?}: use `json` (Celery 5.7 and later) or \
                 `pickle` (Celery 5.0 to 5.6)"
            )),
        }
    }
}

fn encode(value: &Value) -> Vec<u8> {
    to_python_json(value).into_bytes()
}

fn decode(column: &str, bytes: &[u8]) -> Result<Value, DecodeError> {
    if crate::pickle::is_pickle(bytes) {
        return crate::pickle::from_pickle(bytes)
            .map_err(|e| DecodeError::Result(format!("the `{column}` column: {e}")));
    }
    crate::json::from_slice(bytes)
}

impl TaskRow {
    /// The row Celery's backend writes for `meta`, with the `result`
    /// column as `column` says: `date_done` only for ready states, the
    /// extended columns only when `meta` has them.
    ///
    /// ```
    /// use celeriac_protocol::{ResultMeta, State, sql_row::{ResultColumn, TaskRow}};
    /// let meta = ResultMeta::new("t1", State::Success, 4.into());
    /// let row = TaskRow::from_meta(&meta, ResultColumn::Json).unwrap();
    /// assert_eq!(row.status, "SUCCESS");
    /// assert_eq!(row.result.as_deref(), Some(&b"4"[..]));
    /// assert!(row.children.is_none());
    /// let old = TaskRow::from_meta(&meta, ResultColumn::Pickle).unwrap();
    /// assert_eq!(old.result.as_deref(), Some(&b"\x80\x03J\x04\x00\x00\x00."[..]));
    /// ```
    ///
    /// # Errors
    ///
    /// A result that a pickle cannot hold as a plain value (an integer
    /// beyond 64 bits).
    pub fn from_meta(meta: &ResultMeta, column: ResultColumn) -> Result<TaskRow, DecodeError> {
        let result = match column {
            ResultColumn::Json => encode(&meta.result),
            ResultColumn::Pickle => crate::pickle::to_pickle(&meta.result).map_err(|e| {
                DecodeError::Result(format!("task {}: pickling its result: {e}", meta.task_id))
            })?,
        };
        let date_done = meta.status.is_ready().then(|| {
            meta.date_done
                .map_or_else(Utc::now, |d| d.with_timezone(&Utc))
                .naive_utc()
        });
        let mut row = TaskRow {
            task_id: meta.task_id.clone(),
            status: meta.status.as_str().to_owned(),
            result: Some(result),
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
        Ok(row)
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

/// One `django_celery_results_taskresult` row, without its id and its
/// dates (the database sets those).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DjangoTaskRow {
    /// The task id (unique).
    pub task_id: String,
    /// The state name.
    pub status: String,
    /// `application/json`: how `result` and `meta` are encoded.
    pub content_type: String,
    /// `utf-8` (`binary` would mean base64, which only other serializers
    /// write).
    pub content_encoding: String,
    /// The result (an exception dict for failures), JSON.
    pub result: Option<String>,
    /// The formatted traceback.
    pub traceback: Option<String>,
    /// `{"children": [...]}`, JSON.
    pub meta: Option<String>,
    /// The positional arguments' repr, JSON-encoded (extended).
    pub task_args: Option<String>,
    /// The keyword arguments' repr, JSON-encoded (extended).
    pub task_kwargs: Option<String>,
    /// The task's name (extended).
    pub task_name: Option<String>,
    /// The worker's host name (extended).
    pub worker: Option<String>,
    /// The django-celery-beat entry that sent the task (extended).
    pub periodic_task_name: Option<String>,
}

/// What a Django row shows of the call beside the result document: the
/// reprs the message carried (`argsrepr`, `kwargsrepr`: a producer may
/// have masked secrets in them) and the `periodic_task_name` header.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallRepr {
    /// The `argsrepr` header, if the message had one.
    pub argsrepr: Option<String>,
    /// The `kwargsrepr` header, if the message had one.
    pub kwargsrepr: Option<String>,
    /// The `periodic_task_name` header, if the message had one.
    pub periodic_task_name: Option<String>,
}

impl DjangoTaskRow {
    /// The row django-celery-results writes for `meta`. The extended
    /// columns are filled when `meta` has its extended fields, the
    /// arguments from the message's reprs (computed from the arguments
    /// when it had none).
    ///
    /// ```
    /// use celeriac_protocol::{ResultMeta, State, sql_row::{CallRepr, DjangoTaskRow}};
    /// let row = DjangoTaskRow::from_meta(&ResultMeta::new("t1", State::Success, 5.into()), &CallRepr::default());
    /// assert_eq!(row.result.as_deref(), Some("5"));
    /// assert_eq!(row.meta.as_deref(), Some(r#"{"children": []}"#));
    /// ```
    pub fn from_meta(meta: &ResultMeta, call: &CallRepr) -> DjangoTaskRow {
        let mut document = Map::new();
        document.insert("children".into(), Value::Array(meta.children.clone()));
        let mut row = DjangoTaskRow {
            task_id: meta.task_id.clone(),
            status: meta.status.as_str().to_owned(),
            content_type: crate::content::JSON.to_owned(),
            content_encoding: crate::content::UTF8.to_owned(),
            result: Some(to_python_json(&meta.result)),
            traceback: meta.traceback.clone(),
            meta: Some(to_python_json(&Value::Object(document))),
            ..DjangoTaskRow::default()
        };
        if let Some(extended) = &meta.extended {
            let args = call
                .argsrepr
                .clone()
                .unwrap_or_else(|| match &extended.args {
                    Value::Array(args) => args_repr(args),
                    other => to_python_json(other),
                });
            let kwargs = call
                .kwargsrepr
                .clone()
                .unwrap_or_else(|| match &extended.kwargs {
                    Value::Object(kwargs) => kwargs_repr(kwargs),
                    other => to_python_json(other),
                });
            row.task_args = Some(to_python_json(&Value::String(args)));
            row.task_kwargs = Some(to_python_json(&Value::String(kwargs)));
            row.task_name = extended.name.clone();
            row.worker = extended.worker.clone();
            row.periodic_task_name = call.periodic_task_name.clone();
        }
        row
    }

    /// The result document this row holds, as django-celery-results reads
    /// it (`args` and `kwargs` are the reprs, as its admin shows them).
    pub fn to_meta(
        &self,
        date_done: Option<DateTime<FixedOffset>>,
    ) -> Result<ResultMeta, DecodeError> {
        if self.content_encoding != crate::content::UTF8 {
            return Err(DecodeError::Result(format!(
                "task {} was stored with content_encoding {:?} (a binary serializer); \
                 Celeriac reads JSON results only",
                self.task_id, self.content_encoding
            )));
        }
        let text = |column: &str, value: &Option<String>| match value {
            Some(text) if !text.is_empty() => decode(column, text.as_bytes()),
            _ => Ok(Value::Null),
        };
        let status = State::parse(&self.status);
        let mut meta = ResultMeta::new(&self.task_id, status, text("result", &self.result)?);
        meta.traceback = self.traceback.clone();
        meta.date_done = date_done.filter(|_| meta.status.is_ready());
        if let Value::Object(document) = text("meta", &self.meta)? {
            for (key, value) in document {
                match (key.as_str(), value) {
                    ("children", Value::Array(children)) => meta.children = children,
                    ("children", _) => {}
                    (_, value) => {
                        meta.extra.insert(key, value);
                    }
                }
            }
        }
        if self.task_name.is_some() || self.worker.is_some() {
            meta.extended = Some(ExtendedMeta {
                name: self.task_name.clone(),
                args: text("task_args", &self.task_args)?,
                kwargs: text("task_kwargs", &self.task_kwargs)?,
                worker: self.worker.clone(),
                retries: None,
                queue: None,
            });
        }
        Ok(meta)
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
    if crate::pickle::is_pickle(bytes) {
        return Err(DecodeError::Result(
            "the group was saved by Celery 5.6 or earlier, which pickles the GroupResult \
             object itself; restore it from Python"
                .into(),
        ));
    }
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
        assert_eq!(
            TaskRow::from_meta(&meta, ResultColumn::Json).unwrap().args,
            success.args
        );
        assert_eq!(
            TaskRow::from_meta(&meta, ResultColumn::Json)
                .unwrap()
                .result,
            success.result,
            "written back byte for byte"
        );
    }

    #[test]
    fn only_ready_states_have_a_date_done() {
        let started = ResultMeta::new("t", State::Started, json!({"pid": 1}));
        assert!(
            TaskRow::from_meta(&started, ResultColumn::Json)
                .unwrap()
                .date_done
                .is_none()
        );
        let failed = ResultMeta::new(
            "t",
            State::Failure,
            ExceptionInfo::new("builtins", "KeyError", "k").to_json(),
        );
        assert!(
            TaskRow::from_meta(&failed, ResultColumn::Json)
                .unwrap()
                .date_done
                .is_some()
        );
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
        let row = TaskRow::from_meta(&meta, ResultColumn::Json).unwrap();
        assert_eq!(
            row.stamps.as_deref(),
            Some(&br#"{"stamped_headers": ["tenant"], "stamps": {"tenant": "acme"}}"#[..])
        );
        assert_eq!(row.to_meta().unwrap().extra, meta.extra);
    }

    /// The columns django-celery-results 2.6 wrote for an extended success
    /// (read from PostgreSQL after `store_result`).
    #[test]
    fn django_rows_match_what_django_celery_results_writes() {
        let mut meta = ResultMeta::new("t1", State::Success, json!({"a": [1, 2.5, null]}));
        meta.extended = Some(ExtendedMeta {
            name: Some("demo.add".into()),
            args: json!([1, 2]),
            kwargs: json!({"x": 1}),
            worker: Some("w@h".into()),
            retries: Some(0),
            queue: Some("celery".into()),
        });
        let call = CallRepr {
            argsrepr: None,
            kwargsrepr: None,
            periodic_task_name: Some("nightly".into()),
        };
        let row = DjangoTaskRow::from_meta(&meta, &call);
        assert_eq!(row.result.as_deref(), Some(r#"{"a": [1, 2.5, null]}"#));
        assert_eq!(row.meta.as_deref(), Some(r#"{"children": []}"#));
        assert_eq!(row.task_args.as_deref(), Some(r#""(1, 2)""#));
        assert_eq!(row.task_kwargs.as_deref(), Some(r#""{'x': 1}""#));
        assert_eq!(
            (row.content_type.as_str(), row.content_encoding.as_str()),
            ("application/json", "utf-8")
        );
        let read = row.to_meta(None).unwrap();
        assert_eq!(read.result, meta.result);
        assert_eq!(
            read.extended.unwrap().args,
            json!("(1, 2)"),
            "the repr, as Python reads it"
        );

        let masked = CallRepr {
            argsrepr: Some("('***',)".into()),
            ..CallRepr::default()
        };
        let row = DjangoTaskRow::from_meta(&meta, &masked);
        assert_eq!(
            row.task_args.as_deref(),
            Some(r#""('***',)""#),
            "a masked repr stays masked"
        );
    }

    #[test]
    fn rows_of_celery_5_6_read_and_write_with_a_pickled_result() {
        // What Celery 5.6 stores for a task returning {"total": 4}: the
        // result pickled by SQLAlchemy (highest protocol), args as JSON.
        let row = TaskRow {
            task_id: "t".into(),
            status: "SUCCESS".into(),
            result: Some(
                b"\x80\x05\x95\x0e\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x05total\x94K\x04s."
                    .to_vec(),
            ),
            name: Some("demo.count".into()),
            args: Some(b"[4]".to_vec()),
            ..TaskRow::default()
        };
        let meta = row.to_meta().unwrap();
        assert_eq!(meta.result, json!({"total": 4}));
        assert_eq!(meta.extended.as_ref().unwrap().args, json!([4]));
        let written = TaskRow::from_meta(&meta, ResultColumn::Pickle).unwrap();
        assert!(crate::pickle::is_pickle(written.result.as_deref().unwrap()));
        assert_eq!(written.args.as_deref(), Some(&b"[4]"[..]), "args stay JSON");
        assert_eq!(written.to_meta().unwrap().result, meta.result);
    }

    #[test]
    fn a_broken_pickle_or_a_pickled_group_is_named_not_guessed() {
        let row = TaskRow {
            task_id: "t".into(),
            status: "SUCCESS".into(),
            result: Some(vec![0x80, 4, 0x95]),
            ..TaskRow::default()
        };
        let error = row.to_meta().unwrap_err().to_string();
        assert!(error.contains("`result` column"), "{error}");
        let error = parse_group_column(b"\x80\x04\x95").unwrap_err().to_string();
        assert!(error.contains("Celery 5.6 or earlier"), "{error}");
    }

    #[test]
    fn the_column_format_is_named_as_users_write_it() {
        assert_eq!("pickle".parse::<ResultColumn>(), Ok(ResultColumn::Pickle));
        assert_eq!("JSON".parse::<ResultColumn>(), Ok(ResultColumn::Json));
        assert!(
            "yaml"
                .parse::<ResultColumn>()
                .unwrap_err()
                .contains("Celery 5.0 to 5.6")
        );
    }
}
