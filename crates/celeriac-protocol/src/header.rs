//! AMQP header values, as a transport-neutral model.
//!
//! Celery headers travel in an AMQP field table. This module models the values
//! py-amqp writes and reads (§1.6.5 of the wire reference) without depending on
//! any AMQP client: `celeriac-broker` converts [`Headers`] to and from the
//! client's table type, choosing only type letters Python decodes correctly.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{Map, Number, Value};

/// An AMQP field-table, keyed by header name.
pub type Headers = BTreeMap<String, HeaderValue>;

/// One value in an AMQP field table.
///
/// Integers of every AMQP width are widened to `i64`; the broker crate writes
/// them back as a 32-bit int when they fit (py-amqp's own choice) and as a
/// 64-bit int otherwise.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue {
    /// `V`: Python `None`.
    Void,
    /// `t`: a boolean.
    Bool(bool),
    /// Any integer type (`b`, `B`, `U`, `u`, `I`, `i`, `L`, `l`).
    Int(i64),
    /// `f` or `d`: a float.
    Float(f64),
    /// `S` (or py-amqp's `s`): text.
    Str(String),
    /// `x`, or an `S` string that is not valid UTF-8: raw bytes.
    Bytes(Vec<u8>),
    /// `D`: a decimal, `value / 10^scale`.
    Decimal {
        /// Number of decimal places.
        scale: u8,
        /// Unscaled value.
        value: i32,
    },
    /// `T`: seconds since the Unix epoch (py-amqp reads it as a naive UTC datetime).
    Timestamp(u64),
    /// `A`: an array.
    Array(Vec<HeaderValue>),
    /// `F`: a nested table.
    Table(Headers),
}

impl HeaderValue {
    /// Converts a JSON value to the header value Python would put on the wire
    /// for the equivalent Python object.
    ///
    /// Integers outside `i64` cannot be carried by AMQP; they are refused with
    /// a message naming the value.
    ///
    /// ```
    /// use celeriac_protocol::HeaderValue;
    /// let v = HeaderValue::from_json(&serde_json::json!([1, "a", null])).unwrap();
    /// assert_eq!(v, HeaderValue::Array(vec![
    ///     HeaderValue::Int(1), HeaderValue::Str("a".into()), HeaderValue::Void,
    /// ]));
    /// ```
    pub fn from_json(value: &Value) -> Result<HeaderValue, String> {
        Ok(match value {
            Value::Null => HeaderValue::Void,
            Value::Bool(b) => HeaderValue::Bool(*b),
            Value::Number(n) => number_to_header(n)?,
            Value::String(s) => HeaderValue::Str(s.clone()),
            Value::Array(items) => HeaderValue::Array(
                items
                    .iter()
                    .map(HeaderValue::from_json)
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => HeaderValue::Table(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), HeaderValue::from_json(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
        })
    }

    /// Converts to JSON, the way Python code would see the value after
    /// py-amqp decoded it and kombu JSON-encoded it again (bytes become
    /// base64 text, decimals their string form).
    pub fn to_json(&self) -> Value {
        match self {
            HeaderValue::Void => Value::Null,
            HeaderValue::Bool(b) => Value::Bool(*b),
            HeaderValue::Int(i) => Value::from(*i),
            HeaderValue::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            HeaderValue::Str(s) => Value::String(s.clone()),
            HeaderValue::Bytes(b) => {
                Value::String(base64::engine::general_purpose::STANDARD.encode(b))
            }
            HeaderValue::Decimal { scale, value } => Value::String(decimal_string(*scale, *value)),
            HeaderValue::Timestamp(t) => Value::from(*t),
            HeaderValue::Array(items) => Value::Array(items.iter().map(Self::to_json).collect()),
            HeaderValue::Table(table) => Value::Object(
                table
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json()))
                    .collect::<Map<_, _>>(),
            ),
        }
    }

    /// A short description of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            HeaderValue::Void => "null",
            HeaderValue::Bool(_) => "bool",
            HeaderValue::Int(_) => "integer",
            HeaderValue::Float(_) => "float",
            HeaderValue::Str(_) => "string",
            HeaderValue::Bytes(_) => "bytes",
            HeaderValue::Decimal { .. } => "decimal",
            HeaderValue::Timestamp(_) => "timestamp",
            HeaderValue::Array(_) => "array",
            HeaderValue::Table(_) => "table",
        }
    }

    /// The text, if this is a string (or bytes that are valid UTF-8).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            HeaderValue::Str(s) => Some(s),
            HeaderValue::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

impl From<&str> for HeaderValue {
    fn from(value: &str) -> Self {
        HeaderValue::Str(value.to_owned())
    }
}

impl From<String> for HeaderValue {
    fn from(value: String) -> Self {
        HeaderValue::Str(value)
    }
}

impl From<bool> for HeaderValue {
    fn from(value: bool) -> Self {
        HeaderValue::Bool(value)
    }
}

impl From<i64> for HeaderValue {
    fn from(value: i64) -> Self {
        HeaderValue::Int(value)
    }
}

impl From<i32> for HeaderValue {
    fn from(value: i32) -> Self {
        HeaderValue::Int(i64::from(value))
    }
}

impl From<u32> for HeaderValue {
    fn from(value: u32) -> Self {
        HeaderValue::Int(i64::from(value))
    }
}

impl From<f64> for HeaderValue {
    fn from(value: f64) -> Self {
        HeaderValue::Float(value)
    }
}

fn number_to_header(n: &Number) -> Result<HeaderValue, String> {
    if let Some(i) = n.as_i64() {
        return Ok(HeaderValue::Int(i));
    }
    if n.is_u64() || !looks_like_float(&n.to_string()) {
        return Err(format!(
            "integer {n} does not fit in 64 bits, which is the widest integer an AMQP header can carry"
        ));
    }
    n.as_f64()
        .map(HeaderValue::Float)
        .ok_or_else(|| format!("number {n} is not representable as a float"))
}

fn looks_like_float(text: &str) -> bool {
    text.contains(['.', 'e', 'E'])
}

fn decimal_string(scale: u8, value: i32) -> String {
    let sign = if value < 0 { "-" } else { "" };
    let digits = value.unsigned_abs().to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{sign}{int}.{frac}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn big_integers_are_refused_not_rounded() {
        let err = HeaderValue::from_json(&json!(18446744073709551616u128)).unwrap_err();
        assert!(err.contains("does not fit in 64 bits"), "{err}");
        assert!(HeaderValue::from_json(&json!(u64::MAX)).is_err());
        assert_eq!(
            HeaderValue::from_json(&json!(i64::MIN)).unwrap(),
            HeaderValue::Int(i64::MIN)
        );
    }

    #[test]
    fn floats_and_tables_convert() {
        let v = HeaderValue::from_json(&json!({"f": 1.5, "t": true})).unwrap();
        let HeaderValue::Table(t) = &v else {
            panic!("not a table: {v:?}")
        };
        assert_eq!(t["f"], HeaderValue::Float(1.5));
        assert_eq!(v.to_json(), json!({"f": 1.5, "t": true}));
    }

    #[test]
    fn decimals_render_with_their_scale() {
        assert_eq!(decimal_string(2, 110), "1.10");
        assert_eq!(decimal_string(3, 5), "0.005");
        assert_eq!(decimal_string(0, 42), "42");
        assert_eq!(decimal_string(2, -5), "-0.05");
    }
}
