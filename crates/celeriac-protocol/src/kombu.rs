//! kombu's typed JSON envelopes (kombu ≥ 5.3, §1.6.2).
//!
//! Python values JSON cannot hold travel as an object with exactly two keys,
//! `{"__type__": <marker>, "__value__": <value>}`. [`Special`] is the typed
//! form of such an envelope; [`validate`] checks every envelope in a decoded
//! body so a malformed or unknown one is refused up front (Python would fail
//! on it too) instead of surprising a task later.
//!
//! Celery 5.0–5.2 sent plain ISO strings instead of envelopes; the `*_lenient`
//! readers accept both.

use std::fmt::{self, Write as _};
use std::str::FromStr as _;
use std::sync::LazyLock;

use base64::Engine as _;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};
use memchr::memmem::Finder;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::DecodeError;
use crate::time::{format_naive, format_time, parse_time};

const TYPE_KEY: &str = "__type__";
const VALUE_KEY: &str = "__value__";

/// A Python value carried in a kombu envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Special {
    /// An aware `datetime` (marker `datetime`).
    DateTime(DateTime<FixedOffset>),
    /// A naive `datetime` (marker `datetime`, no offset).
    NaiveDateTime(NaiveDateTime),
    /// A `date` (marker `date`).
    Date(NaiveDate),
    /// A `time` (marker `time`), with its UTC offset if it had one.
    Time(NaiveTime, Option<FixedOffset>),
    /// A `Decimal` (marker `decimal`), as its exact decimal text.
    Decimal(String),
    /// A `uuid.UUID` (marker `uuid`).
    Uuid(Uuid),
    /// `bytes` (marker `bytes` when valid UTF-8, else `base64`).
    Bytes(Vec<u8>),
}

impl Special {
    /// Reads an envelope. Returns `None` if `value` is not envelope-shaped
    /// (an object with exactly the keys `__type__` and `__value__`), and an
    /// error message if it is one but is unknown or malformed.
    ///
    /// ```
    /// use celeriac_protocol::kombu::Special;
    /// let v = serde_json::json!({"__type__": "decimal", "__value__": "1.10"});
    /// assert_eq!(Special::from_json(&v), Some(Ok(Special::Decimal("1.10".into()))));
    /// assert_eq!(Special::from_json(&serde_json::json!({"a": 1})), None);
    /// ```
    pub fn from_json(value: &Value) -> Option<Result<Special, String>> {
        let (marker, inner) = envelope_parts(value)?;
        Some(decode_envelope(marker, inner))
    }

    /// Writes the envelope kombu would write for this value.
    ///
    /// ```
    /// use celeriac_protocol::kombu::Special;
    /// let v = Special::Bytes(vec![0xff, 0x00]).to_json();
    /// assert_eq!(v, serde_json::json!({"__type__": "base64", "__value__": "/wA="}));
    /// ```
    pub fn to_json(&self) -> Value {
        let (marker, inner) = match self {
            Special::DateTime(t) => ("datetime", Value::String(format_time(t))),
            Special::NaiveDateTime(t) => ("datetime", Value::String(format_naive(t))),
            Special::Date(d) => ("date", Value::String(d.format("%Y-%m-%d").to_string())),
            Special::Time(t, offset) => ("time", Value::String(format_time_of_day(t, *offset))),
            Special::Decimal(d) => ("decimal", Value::String(d.clone())),
            Special::Uuid(u) => {
                let mut hex = Map::new();
                hex.insert("hex".into(), Value::String(u.simple().to_string()));
                ("uuid", Value::Object(hex))
            }
            Special::Bytes(b) => match std::str::from_utf8(b) {
                Ok(text) => ("bytes", Value::String(text.to_owned())),
                Err(_) => (
                    "base64",
                    Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
                ),
            },
        };
        let mut map = Map::with_capacity(2);
        map.insert(TYPE_KEY.into(), Value::String(marker.into()));
        map.insert(VALUE_KEY.into(), inner);
        Value::Object(map)
    }
}

impl Serialize for Special {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Special {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        match Special::from_json(&value) {
            Some(Ok(special)) => Ok(special),
            Some(Err(msg)) => Err(serde::de::Error::custom(msg)),
            None => Err(serde::de::Error::custom(
                "expected a kombu {\"__type__\", \"__value__\"} envelope",
            )),
        }
    }
}

impl fmt::Display for Special {
    /// Shows the value as Python's `str()` would (a hyphenated UUID, an ISO
    /// time, the decimal text); bytes are shown as base64.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Special::Uuid(u) => write!(f, "{}", u.hyphenated()),
            Special::Bytes(b) => f.write_str(&base64::engine::general_purpose::STANDARD.encode(b)),
            other => match other.to_json().get(VALUE_KEY) {
                Some(Value::String(s)) => f.write_str(s),
                _ => Ok(()),
            },
        }
    }
}

/// Reads a date-time from an envelope or, as Celery 5.0–5.2 sent it, a plain
/// ISO string. A naive value is taken as UTC.
///
/// ```
/// use celeriac_protocol::kombu::datetime_lenient;
/// let old = serde_json::json!("2024-01-02T03:04:05Z");
/// let new = serde_json::json!({"__type__": "datetime", "__value__": "2024-01-02T03:04:05+00:00"});
/// assert_eq!(datetime_lenient(&old), datetime_lenient(&new));
/// ```
pub fn datetime_lenient(value: &Value) -> Option<DateTime<FixedOffset>> {
    match Special::from_json(value) {
        Some(Ok(Special::DateTime(t))) => Some(t),
        Some(Ok(Special::NaiveDateTime(t))) => Some(t.and_utc().fixed_offset()),
        Some(Ok(Special::Date(d))) => Some(d.and_hms_opt(0, 0, 0)?.and_utc().fixed_offset()),
        Some(_) => None,
        None => parse_time(value.as_str()?),
    }
}

/// Reads a UUID from an envelope or a plain string (hyphenated or not).
pub fn uuid_lenient(value: &Value) -> Option<Uuid> {
    match Special::from_json(value) {
        Some(Ok(Special::Uuid(u))) => Some(u),
        Some(_) => None,
        None => Uuid::parse_str(value.as_str()?).ok(),
    }
}

/// Reads a decimal's text from an envelope, a plain string or a JSON number.
pub fn decimal_lenient(value: &Value) -> Option<String> {
    match Special::from_json(value) {
        Some(Ok(Special::Decimal(d))) => Some(d),
        Some(_) => None,
        None => match value {
            Value::String(s) if is_decimal_text(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        },
    }
}

/// Whether JSON text may hold a kombu envelope: it names the `__type__`
/// key, or escapes a printable ASCII character (`\u0041`), as a key spelt
/// to hide from this scan would. A body for which this is `false` needs no
/// [`validate`] walk: a byte scan is far cheaper than walking its tree.
///
/// ```
/// use celeriac_protocol::kombu::may_hold_envelope;
/// assert!(may_hold_envelope(br#"[[{"__type__": "uuid", "__value__": {}}], {}, {}]"#));
/// assert!(may_hold_envelope(br#"[[{"\u005f_type__": 1}], {}, {}]"#));
/// assert!(!may_hold_envelope(br#"[[1, "caf\u00e9"], {}, {}]"#));
/// ```
pub fn may_hold_envelope(json: &[u8]) -> bool {
    // Built once: `memmem::find` builds a searcher on every call, which
    // cost more than the scan of a small body.
    static TYPE_KEY_FINDER: LazyLock<Finder<'static>> =
        LazyLock::new(|| Finder::new(TYPE_KEY.as_bytes()));
    static ESCAPE_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br"\u00"));
    if TYPE_KEY_FINDER.find(json).is_some() {
        return true;
    }
    ESCAPE_FINDER.find_iter(json).any(|at| {
        // `\u0020` to `\u007f`: an escaped printable ASCII character.
        matches!(json.get(at + 4), Some(b'2'..=b'7'))
    })
}

/// Checks every envelope inside `value`, reporting the first bad one with
/// its path (`args[0]`, `kwargs.when`, ...).
pub fn validate(value: &Value, path: &mut String) -> Result<(), DecodeError> {
    if let Some((marker, inner)) = envelope_parts(value) {
        return decode_envelope(marker, inner)
            .map(drop)
            .map_err(|detail| DecodeError::Envelope {
                path: path.clone(),
                detail,
            });
    }
    let restore = path.len();
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let _ = write!(path, "[{i}]");
                validate(item, path)?;
                path.truncate(restore);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                path.push('.');
                path.push_str(key);
                validate(item, path)?;
                path.truncate(restore);
            }
        }
        _ => {}
    }
    Ok(())
}

fn envelope_parts(value: &Value) -> Option<(&Value, &Value)> {
    let map = value.as_object()?;
    if map.len() != 2 {
        return None;
    }
    Some((map.get(TYPE_KEY)?, map.get(VALUE_KEY)?))
}

fn decode_envelope(marker: &Value, inner: &Value) -> Result<Special, String> {
    let marker = marker
        .as_str()
        .ok_or_else(|| format!("__type__ must be a string, found {marker}"))?;
    let text = || {
        inner
            .as_str()
            .ok_or_else(|| format!("a {marker} envelope needs a string __value__, found {inner}"))
    };
    let bad = |what: &str| format!("{what:?} is not a valid {marker}");
    match marker {
        "datetime" => {
            let t = text()?;
            if has_offset(t) {
                parse_time(t).map(Special::DateTime).ok_or_else(|| bad(t))
            } else {
                NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                    .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M"))
                    .map(Special::NaiveDateTime)
                    .map_err(|_| bad(t))
            }
        }
        "date" => {
            let t = text()?;
            NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .map(Special::Date)
                .map_err(|_| bad(t))
        }
        "time" => {
            let t = text()?;
            parse_time_of_day(t)
                .map(|(time, offset)| Special::Time(time, offset))
                .ok_or_else(|| bad(t))
        }
        "decimal" => {
            let t = text()?;
            is_decimal_text(t)
                .then(|| Special::Decimal(t.to_owned()))
                .ok_or_else(|| bad(t))
        }
        "uuid" => {
            let hex = inner
                .get("hex")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("a uuid envelope needs {{\"hex\": ...}}, found {inner}"))?;
            Uuid::parse_str(hex)
                .map(Special::Uuid)
                .map_err(|_| bad(hex))
        }
        "bytes" => Ok(Special::Bytes(text()?.as_bytes().to_vec())),
        "base64" => {
            let t = text()?;
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map(Special::Bytes)
                .map_err(|_| bad(t))
        }
        other => Err(format!(
            "unknown __type__ {other:?}; kombu knows datetime, date, time, decimal, uuid, bytes and base64"
        )),
    }
}

fn has_offset(text: &str) -> bool {
    text.ends_with(['Z', 'z']) || text.get(10..).is_some_and(|rest| rest.contains(['+', '-']))
}

fn parse_time_of_day(text: &str) -> Option<(NaiveTime, Option<FixedOffset>)> {
    let split = text.find(['+', '-', 'Z']);
    let (clock, offset) = match split {
        Some(i) => (&text[..i], Some(&text[i..])),
        None => (text, None),
    };
    let time = NaiveTime::parse_from_str(clock, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(clock, "%H:%M"))
        .ok()?;
    let offset = match offset {
        None => None,
        Some("Z") => FixedOffset::east_opt(0),
        Some(o) => Some(o.parse::<FixedOffset>().ok()?),
    };
    Some((time, offset))
}

fn format_time_of_day(time: &NaiveTime, offset: Option<FixedOffset>) -> String {
    use chrono::Timelike as _;
    let base = time.format("%H:%M:%S").to_string();
    let micros = time.nanosecond() / 1_000 % 1_000_000;
    let frac = if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
    };
    let offset = offset.map(|o| o.to_string()).unwrap_or_default();
    format!("{base}{frac}{offset}")
}

fn is_decimal_text(text: &str) -> bool {
    const SPECIAL: [&str; 6] = ["NaN", "sNaN", "Infinity", "-Infinity", "Inf", "-Inf"];
    let numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    SPECIAL.contains(&text) || (numeric && f64::from_str(text).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(value: Value) {
        let special = Special::from_json(&value)
            .expect("envelope")
            .expect("valid");
        assert_eq!(special.to_json(), value, "{special:?}");
    }

    #[test]
    fn every_kombu_marker_round_trips() {
        round_trip(json!({"__type__": "datetime", "__value__": "2024-01-02T03:04:05+00:00"}));
        round_trip(json!({"__type__": "datetime", "__value__": "2024-01-02T03:04:05"}));
        round_trip(
            json!({"__type__": "datetime", "__value__": "2024-01-02T03:04:05.123456+05:30"}),
        );
        round_trip(json!({"__type__": "date", "__value__": "2024-01-02"}));
        round_trip(json!({"__type__": "time", "__value__": "01:02:03"}));
        round_trip(json!({"__type__": "time", "__value__": "01:02:03.456789"}));
        round_trip(json!({"__type__": "decimal", "__value__": "-0.000001"}));
        round_trip(
            json!({"__type__": "uuid", "__value__": {"hex": "12345678123456781234567812345678"}}),
        );
        round_trip(json!({"__type__": "bytes", "__value__": "hi"}));
        round_trip(json!({"__type__": "base64", "__value__": "/wA="}));
    }

    #[test]
    fn unknown_or_malformed_envelopes_are_errors() {
        let bad = [
            json!({"__type__": "set", "__value__": [1]}),
            json!({"__type__": "datetime", "__value__": "yesterday"}),
            json!({"__type__": "uuid", "__value__": "not-a-table"}),
            json!({"__type__": "decimal", "__value__": "1.2.3"}),
            json!({"__type__": "base64", "__value__": "***"}),
            json!({"__type__": 3, "__value__": "x"}),
        ];
        for value in bad {
            assert!(
                matches!(Special::from_json(&value), Some(Err(_))),
                "{value}"
            );
        }
    }

    #[test]
    fn validate_reports_the_path() {
        let body = json!([[1, {"x": [{"__type__": "nope", "__value__": 1}]}], {}, null]);
        let err = validate(&body, &mut String::from("body")).unwrap_err();
        let DecodeError::Envelope { path, .. } = err else {
            panic!("{err:?}")
        };
        assert_eq!(path, "body[0][1].x[0]");
    }

    #[test]
    fn three_key_objects_are_plain_data() {
        let value = json!({"__type__": "nope", "__value__": 1, "other": 2});
        assert!(Special::from_json(&value).is_none());
        assert!(validate(&value, &mut String::new()).is_ok());
    }

    #[test]
    fn lenient_readers_accept_celery_5_0_forms() {
        let t = datetime_lenient(&json!("2024-01-02T03:04:05.5Z")).unwrap();
        assert_eq!(format_time(&t), "2024-01-02T03:04:05.500000+00:00");
        assert!(uuid_lenient(&json!("12345678-1234-5678-1234-567812345678")).is_some());
        assert_eq!(decimal_lenient(&json!("1.10")).as_deref(), Some("1.10"));
    }
}
