//! The typed protocol v2 header set (§1.3).
//!
//! [`TaskHeaders`] types every header Celery's `as_task_v2` writes and keeps
//! any other header (custom `apply_async(headers=...)`, RabbitMQ's `x-death`)
//! in [`TaskHeaders::extra`], re-emitted unchanged.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, TimeZone as _, Utc};

use crate::header::{HeaderValue, Headers};
use crate::time::{format_time, parse_time};
use crate::{Compression, DecodeError};

/// A number of seconds as Python sent it: an `int` or a `float`.
///
/// Kept distinct so a header re-encodes with the AMQP type it arrived with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Seconds {
    /// Whole seconds.
    Int(i64),
    /// Fractional seconds.
    Float(f64),
}

impl Seconds {
    /// The duration, or `None` for zero or negative values (which Celery
    /// treats as "no limit").
    pub fn as_duration(self) -> Option<Duration> {
        let secs = match self {
            Seconds::Int(i) => i as f64,
            Seconds::Float(f) => f,
        };
        (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs))
    }

    fn to_header(self) -> HeaderValue {
        match self {
            Seconds::Int(i) => HeaderValue::Int(i),
            Seconds::Float(f) => HeaderValue::Float(f),
        }
    }
}

/// The `timelimit` header: `[hard, soft]`, in that order (§9 item 1).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimeLimit {
    /// Hard limit (`time_limit`): the task is killed after this long.
    pub hard: Option<Seconds>,
    /// Soft limit (`soft_time_limit`): the task is asked to stop.
    pub soft: Option<Seconds>,
}

/// Every protocol v2 header, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskHeaders {
    /// `lang`: the producer's language, `"py"` from Python (we write `"rust"`).
    pub lang: Option<String>,
    /// `task`: the registered task name.
    pub task: String,
    /// `id`: the task id.
    pub id: String,
    /// `shadow`: the name shown in logs, events and results instead of `task`.
    pub shadow: Option<String>,
    /// `eta`: do not run before this time.
    pub eta: Option<DateTime<FixedOffset>>,
    /// `expires`: revoke if not started by this time.
    pub expires: Option<DateTime<FixedOffset>>,
    /// `group`: id of the group (or chord header) this task belongs to.
    pub group: Option<String>,
    /// `group_index`: position within the group.
    pub group_index: Option<i64>,
    /// `retries`: how many times this task has been retried so far.
    pub retries: i64,
    /// `timelimit`: `[hard, soft]`.
    pub timelimit: TimeLimit,
    /// `root_id`: id of the first task of the workflow.
    pub root_id: Option<String>,
    /// `parent_id`: id of the task that sent this one.
    pub parent_id: Option<String>,
    /// `argsrepr`: a display form of the args (Python `repr`, ≤ 1024 chars).
    pub argsrepr: Option<String>,
    /// `kwargsrepr`: a display form of the kwargs.
    pub kwargsrepr: Option<String>,
    /// `origin`: the sender's node name, e.g. `gen1234@host`.
    pub origin: Option<String>,
    /// `ignore_result`: if true, the worker stores no result.
    pub ignore_result: Option<bool>,
    /// `replaced_task_nesting`: depth of `Task.replace` (0 if never replaced).
    pub replaced_task_nesting: i64,
    /// `stamped_headers`: names of the stamps (stamping API).
    pub stamped_headers: Option<Vec<String>>,
    /// `stamps`: `{stamp: value}`; `{}` when unused.
    pub stamps: Headers,
    /// `compression`: how the body is compressed.
    pub compression: Option<Compression>,
    /// `meth`: reserved by the protocol, never used by Python.
    pub meth: Option<String>,
    /// Every other header, kept and re-emitted unchanged.
    pub extra: Headers,
}

/// The header holding when a message was enqueued, in milliseconds since
/// the epoch: RabbitMQ's `set_header_timestamp` message interceptor (3.12+)
/// writes it, and Celeriac's producers set it. Python Celery ignores it.
pub const ENQUEUED_AT_HEADER: &str = "timestamp_in_ms";

impl TaskHeaders {
    /// When the message was enqueued, if it says ([`ENQUEUED_AT_HEADER`]).
    pub fn enqueued_at(&self) -> Option<DateTime<FixedOffset>> {
        match self.extra.get(ENQUEUED_AT_HEADER)? {
            HeaderValue::Int(ms) => Some(Utc.timestamp_millis_opt(*ms).single()?.fixed_offset()),
            _ => None,
        }
    }

    /// Records when the message is enqueued ([`ENQUEUED_AT_HEADER`]).
    pub fn set_enqueued_at(&mut self, at: DateTime<FixedOffset>) {
        self.extra.insert(
            ENQUEUED_AT_HEADER.into(),
            HeaderValue::Int(at.timestamp_millis()),
        );
    }

    /// Headers for a new top-level task, with the defaults Python uses.
    pub fn new(task: impl Into<String>, id: impl Into<String>) -> TaskHeaders {
        let id = id.into();
        TaskHeaders {
            lang: Some("rust".into()),
            task: task.into(),
            root_id: Some(id.clone()),
            id,
            shadow: None,
            eta: None,
            expires: None,
            group: None,
            group_index: None,
            retries: 0,
            timelimit: TimeLimit::default(),
            parent_id: None,
            argsrepr: None,
            kwargsrepr: None,
            origin: None,
            ignore_result: Some(false),
            replaced_task_nesting: 0,
            stamped_headers: None,
            stamps: Headers::new(),
            compression: None,
            meth: None,
            extra: Headers::new(),
        }
    }

    /// Reads the typed headers from an AMQP header table.
    ///
    /// `task` and `id` are required; everything else falls back to Python's
    /// defaults when absent or null.
    pub fn from_headers(headers: &Headers) -> Result<TaskHeaders, DecodeError> {
        // One pass over the table: each known header is picked out by its
        // name and copied once, every other one is copied into `extra`. (A
        // lookup per known header, then a filter of the rest against the
        // known names, compared strings about 500 times per message.)
        let mut known = KnownHeaders::default();
        let mut extra = Headers::new();
        for (name, value) in headers {
            if !known.pick(name, value) {
                extra.insert(name.clone(), value.clone());
            }
        }
        known.read(extra)
    }

    /// Writes the full header set Python's `as_task_v2` writes (nulls
    /// included), plus `compression`/`meth` when set and every extra header.
    pub fn to_headers(&self) -> Headers {
        self.clone().into_headers()
    }

    /// [`to_headers`](Self::to_headers), moving the values rather than
    /// copying them. A known header wins over an extra one of the same
    /// name.
    pub fn into_headers(self) -> Headers {
        let str_or_void = |value: Option<String>| value.map_or(HeaderValue::Void, HeaderValue::Str);
        let limit = |limit: Option<Seconds>| limit.map_or(HeaderValue::Void, Seconds::to_header);
        // In name order, so that the sort building the map below finds them
        // in order already (`compression` and `meth`, when present, come
        // after them).
        let mut known = vec![
            ("argsrepr", str_or_void(self.argsrepr)),
            ("eta", time_value(&self.eta)),
            ("expires", time_value(&self.expires)),
            ("group", str_or_void(self.group)),
            (
                "group_index",
                self.group_index.map_or(HeaderValue::Void, HeaderValue::Int),
            ),
            ("id", HeaderValue::Str(self.id)),
            (
                "ignore_result",
                self.ignore_result
                    .map_or(HeaderValue::Void, HeaderValue::Bool),
            ),
            ("kwargsrepr", str_or_void(self.kwargsrepr)),
            ("lang", str_or_void(self.lang)),
            ("origin", str_or_void(self.origin)),
            ("parent_id", str_or_void(self.parent_id)),
            (
                "replaced_task_nesting",
                HeaderValue::Int(self.replaced_task_nesting),
            ),
            ("retries", HeaderValue::Int(self.retries)),
            ("root_id", str_or_void(self.root_id)),
            ("shadow", str_or_void(self.shadow)),
            (
                "stamped_headers",
                self.stamped_headers.map_or(HeaderValue::Void, |names| {
                    HeaderValue::Array(names.into_iter().map(HeaderValue::Str).collect())
                }),
            ),
            ("stamps", HeaderValue::Table(self.stamps)),
            ("task", HeaderValue::Str(self.task)),
            (
                "timelimit",
                HeaderValue::Array(vec![limit(self.timelimit.hard), limit(self.timelimit.soft)]),
            ),
        ];
        debug_assert!(known.windows(2).all(|pair| pair[0].0 < pair[1].0));
        if let Some(c) = self.compression {
            known.push(("compression", HeaderValue::Str(c.mime().to_owned())));
        }
        if let Some(meth) = self.meth {
            known.push(("meth", HeaderValue::Str(meth)));
        }
        // Built in one go from the known headers (their names are distinct),
        // then the extras where no known header took the name: cheaper than
        // inserting each into the extras' map.
        let mut headers: Headers = known
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .collect();
        for (name, value) in self.extra {
            headers.entry(name).or_insert(value);
        }
        headers
    }
}

/// The protocol 2 headers [`TaskHeaders`] has fields for, as found in one
/// header table.
#[derive(Default)]
struct KnownHeaders<'a> {
    lang: Option<&'a HeaderValue>,
    task: Option<&'a HeaderValue>,
    id: Option<&'a HeaderValue>,
    shadow: Option<&'a HeaderValue>,
    eta: Option<&'a HeaderValue>,
    expires: Option<&'a HeaderValue>,
    group: Option<&'a HeaderValue>,
    group_index: Option<&'a HeaderValue>,
    retries: Option<&'a HeaderValue>,
    timelimit: Option<&'a HeaderValue>,
    root_id: Option<&'a HeaderValue>,
    parent_id: Option<&'a HeaderValue>,
    argsrepr: Option<&'a HeaderValue>,
    kwargsrepr: Option<&'a HeaderValue>,
    origin: Option<&'a HeaderValue>,
    ignore_result: Option<&'a HeaderValue>,
    replaced_task_nesting: Option<&'a HeaderValue>,
    stamped_headers: Option<&'a HeaderValue>,
    stamps: Option<&'a HeaderValue>,
    compression: Option<&'a HeaderValue>,
    meth: Option<&'a HeaderValue>,
}

impl<'a> KnownHeaders<'a> {
    /// Keeps `value` if `name` is a known header; `false` if it is not.
    fn pick(&mut self, name: &str, value: &'a HeaderValue) -> bool {
        let slot = match name {
            "lang" => &mut self.lang,
            "task" => &mut self.task,
            "id" => &mut self.id,
            "shadow" => &mut self.shadow,
            "eta" => &mut self.eta,
            "expires" => &mut self.expires,
            "group" => &mut self.group,
            "group_index" => &mut self.group_index,
            "retries" => &mut self.retries,
            "timelimit" => &mut self.timelimit,
            "root_id" => &mut self.root_id,
            "parent_id" => &mut self.parent_id,
            "argsrepr" => &mut self.argsrepr,
            "kwargsrepr" => &mut self.kwargsrepr,
            "origin" => &mut self.origin,
            "ignore_result" => &mut self.ignore_result,
            "replaced_task_nesting" => &mut self.replaced_task_nesting,
            "stamped_headers" => &mut self.stamped_headers,
            "stamps" => &mut self.stamps,
            "compression" => &mut self.compression,
            "meth" => &mut self.meth,
            _ => return false,
        };
        *slot = Some(value);
        true
    }

    /// The typed headers, with `extra` as the others; absent or null
    /// headers take Python's defaults, `task` and `id` are required.
    fn read(self, extra: Headers) -> Result<TaskHeaders, DecodeError> {
        let value = |found: Option<&HeaderValue>| found.cloned().unwrap_or(HeaderValue::Void);
        let task =
            opt_string("task", value(self.task))?.ok_or(DecodeError::MissingHeader("task"))?;
        let id = opt_string("id", value(self.id))?.ok_or(DecodeError::MissingHeader("id"))?;
        let compression = match opt_string("compression", value(self.compression))? {
            Some(mime) => Some(Compression::from_mime(&mime)?),
            None => None,
        };
        Ok(TaskHeaders {
            lang: opt_string("lang", value(self.lang))?,
            shadow: opt_string("shadow", value(self.shadow))?,
            eta: opt_time("eta", value(self.eta))?,
            expires: opt_time("expires", value(self.expires))?,
            group: opt_string("group", value(self.group))?,
            group_index: opt_int("group_index", value(self.group_index))?,
            retries: opt_int("retries", value(self.retries))?.unwrap_or(0),
            timelimit: time_limit(value(self.timelimit))?,
            root_id: opt_string("root_id", value(self.root_id))?,
            parent_id: opt_string("parent_id", value(self.parent_id))?,
            argsrepr: opt_string("argsrepr", value(self.argsrepr))?,
            kwargsrepr: opt_string("kwargsrepr", value(self.kwargsrepr))?,
            origin: opt_string("origin", value(self.origin))?,
            ignore_result: opt_bool("ignore_result", value(self.ignore_result))?,
            replaced_task_nesting: opt_int(
                "replaced_task_nesting",
                value(self.replaced_task_nesting),
            )?
            .unwrap_or(0),
            stamped_headers: opt_string_list("stamped_headers", value(self.stamped_headers))?,
            stamps: opt_table("stamps", value(self.stamps))?,
            meth: opt_string("meth", value(self.meth))?,
            task,
            id,
            compression,
            extra,
        })
    }
}

fn wrong(name: &str, expected: &'static str, found: &HeaderValue) -> DecodeError {
    DecodeError::HeaderType {
        name: name.to_owned(),
        expected,
        found: found.type_name().to_owned(),
    }
}

fn opt_string(name: &str, value: HeaderValue) -> Result<Option<String>, DecodeError> {
    match value {
        HeaderValue::Void => Ok(None),
        HeaderValue::Str(s) => Ok(Some(s)),
        HeaderValue::Bytes(b) => String::from_utf8(b)
            .map(Some)
            .map_err(|e| wrong(name, "a UTF-8 string", &HeaderValue::Bytes(e.into_bytes()))),
        other => Err(wrong(name, "a string or null", &other)),
    }
}

fn opt_int(name: &str, value: HeaderValue) -> Result<Option<i64>, DecodeError> {
    match value {
        HeaderValue::Void => Ok(None),
        HeaderValue::Int(i) => Ok(Some(i)),
        other => Err(wrong(name, "an integer or null", &other)),
    }
}

fn opt_bool(name: &str, value: HeaderValue) -> Result<Option<bool>, DecodeError> {
    match value {
        HeaderValue::Void => Ok(None),
        HeaderValue::Bool(b) => Ok(Some(b)),
        other => Err(wrong(name, "a boolean or null", &other)),
    }
}

fn opt_time(name: &str, value: HeaderValue) -> Result<Option<DateTime<FixedOffset>>, DecodeError> {
    match value {
        HeaderValue::Void => Ok(None),
        HeaderValue::Timestamp(secs) => i64::try_from(secs)
            .ok()
            .and_then(|s| Utc.timestamp_opt(s, 0).single())
            .map(|t| Some(t.fixed_offset()))
            .ok_or_else(|| DecodeError::InvalidTime {
                name: name.to_owned(),
                value: secs.to_string(),
            }),
        other => {
            let text = opt_string(name, other)?.unwrap_or_default();
            parse_time(&text).map(Some).ok_or(DecodeError::InvalidTime {
                name: name.to_owned(),
                value: text,
            })
        }
    }
}

fn opt_string_list(name: &str, value: HeaderValue) -> Result<Option<Vec<String>>, DecodeError> {
    match value {
        HeaderValue::Void => Ok(None),
        HeaderValue::Array(items) => items
            .into_iter()
            .map(|item| {
                opt_string(name, item)?
                    .ok_or_else(|| wrong(name, "a list of strings", &HeaderValue::Void))
            })
            .collect::<Result<_, _>>()
            .map(Some),
        other => Err(wrong(name, "a list of strings or null", &other)),
    }
}

fn opt_table(name: &str, value: HeaderValue) -> Result<Headers, DecodeError> {
    match value {
        HeaderValue::Void => Ok(Headers::new()),
        HeaderValue::Table(t) => Ok(t),
        other => Err(wrong(name, "a table or null", &other)),
    }
}

fn time_limit(value: HeaderValue) -> Result<TimeLimit, DecodeError> {
    let seconds = |v: &HeaderValue| match v {
        HeaderValue::Void => Ok(None),
        HeaderValue::Int(i) => Ok(Some(Seconds::Int(*i))),
        HeaderValue::Float(f) => Ok(Some(Seconds::Float(*f))),
        other => Err(wrong("timelimit", "[hard, soft] numbers or nulls", other)),
    };
    match value {
        HeaderValue::Void => Ok(TimeLimit::default()),
        HeaderValue::Array(items) if items.len() == 2 => Ok(TimeLimit {
            hard: seconds(&items[0])?,
            soft: seconds(&items[1])?,
        }),
        other => Err(wrong("timelimit", "a [hard, soft] pair", &other)),
    }
}

fn time_value(value: &Option<DateTime<FixedOffset>>) -> HeaderValue {
    value
        .as_ref()
        .map_or(HeaderValue::Void, |t| HeaderValue::Str(format_time(t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_enqueue_time_round_trips_in_milliseconds() {
        let mut headers = TaskHeaders::new("t", "id");
        assert_eq!(headers.enqueued_at(), None);
        let at = Utc
            .timestamp_millis_opt(1_760_000_000_123)
            .unwrap()
            .fixed_offset();
        headers.set_enqueued_at(at);
        assert_eq!(headers.enqueued_at(), Some(at));
        assert_eq!(
            headers.extra.get(ENQUEUED_AT_HEADER),
            Some(&HeaderValue::Int(1_760_000_000_123))
        );
    }

    fn minimal() -> Headers {
        let mut h = Headers::new();
        h.insert("task".into(), HeaderValue::Str("t".into()));
        h.insert("id".into(), HeaderValue::Str("i".into()));
        h
    }

    #[test]
    fn only_task_and_id_are_required() {
        let parsed = TaskHeaders::from_headers(&minimal()).unwrap();
        assert_eq!((parsed.task.as_str(), parsed.retries), ("t", 0));
        let mut h = minimal();
        h.remove("id");
        assert_eq!(
            TaskHeaders::from_headers(&h).unwrap_err(),
            DecodeError::MissingHeader("id")
        );
    }

    #[test]
    fn timelimit_is_hard_then_soft() {
        let mut h = minimal();
        h.insert(
            "timelimit".into(),
            HeaderValue::Array(vec![HeaderValue::Int(30), HeaderValue::Float(20.5)]),
        );
        let t = TaskHeaders::from_headers(&h).unwrap().timelimit;
        assert_eq!(t.hard, Some(Seconds::Int(30)));
        assert_eq!(
            t.soft.and_then(Seconds::as_duration),
            Some(Duration::from_millis(20_500))
        );
        assert_eq!(Seconds::Int(0).as_duration(), None);
    }

    #[test]
    fn wrong_types_are_named() {
        let mut h = minimal();
        h.insert("retries".into(), HeaderValue::Str("3".into()));
        let err = TaskHeaders::from_headers(&h).unwrap_err();
        assert_eq!(
            err.to_string(),
            "header `retries` has the wrong type: expected an integer or null, found string"
        );
        let mut h = minimal();
        h.insert("eta".into(), HeaderValue::Str("soon".into()));
        assert!(matches!(
            TaskHeaders::from_headers(&h),
            Err(DecodeError::InvalidTime { .. })
        ));
    }

    #[test]
    fn unknown_headers_survive() {
        let mut h = minimal();
        h.insert("x-custom".into(), HeaderValue::Int(5));
        let parsed = TaskHeaders::from_headers(&h).unwrap();
        assert_eq!(parsed.to_headers()["x-custom"], HeaderValue::Int(5));

        // Every header Celery writes is read into its field; only the
        // unknown ones are kept as extra.
        let mut full = TaskHeaders::new("t", "i").to_headers();
        full.insert(
            "compression".into(),
            HeaderValue::Str("application/x-gzip".into()),
        );
        full.insert("meth".into(), HeaderValue::Str("m".into()));
        full.insert("x-custom".into(), HeaderValue::Int(5));
        let parsed = TaskHeaders::from_headers(&full).unwrap();
        assert_eq!(parsed.extra.keys().collect::<Vec<_>>(), ["x-custom"]);
        assert_eq!(parsed.to_headers(), full);
    }

    #[test]
    fn a_known_header_wins_over_an_extra_of_the_same_name() {
        let mut headers = TaskHeaders::new("t", "i");
        headers
            .extra
            .insert("task".into(), HeaderValue::Str("shadowed".into()));
        // Written only when set: an extra of that name stays otherwise.
        headers
            .extra
            .insert("meth".into(), HeaderValue::Str("from-extra".into()));
        let written = headers.clone().into_headers();
        assert_eq!(written["task"], HeaderValue::Str("t".into()));
        assert_eq!(written["meth"], HeaderValue::Str("from-extra".into()));
        headers.meth = Some("set".into());
        assert_eq!(headers.to_headers()["meth"], HeaderValue::Str("set".into()));
    }
}
