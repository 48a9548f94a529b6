//! Plain Python values as pickles, for the one place Celery's wire still
//! holds them: the `result` column of the database backend up to Celery
//! 5.6 (SQLAlchemy's `PickleType`; 5.7 stores JSON bytes there).
//!
//! Only JSON-shaped values cross: `None`, booleans, integers that fit in
//! 64 bits, floats, strings, lists, tuples (read as lists) and dicts with
//! string keys. A pickle naming a class (an exception object, a
//! `GroupResult`) is refused, never instantiated, so reading a row cannot
//! run code.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Number, Value};
use serde_pickle::{DeOptions, HashableValue, SerOptions, Value as Pickled};

/// Whether `bytes` look like a pickle of protocol 2 or later (they start
/// with the `PROTO` opcode, which JSON never does).
///
/// ```
/// use celeriac_protocol::pickle::is_pickle;
/// assert!(is_pickle(b"\x80\x04K*."));
/// assert!(!is_pickle(b"42"));
/// ```
pub fn is_pickle(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x80)
}

/// Reads a pickled plain value as JSON. Dict keys come back sorted (the
/// pickle reader keeps no order); integer keys become strings, as Python's
/// `json` writes them.
///
/// ```
/// use celeriac_protocol::pickle::from_pickle;
/// // pickle.dumps({"total": 4}, protocol=5) in Python
/// let bytes = b"\x80\x05\x95\x0e\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x05total\x94K\x04s.";
/// assert_eq!(from_pickle(bytes).unwrap(), serde_json::json!({"total": 4}));
/// ```
pub fn from_pickle(bytes: &[u8]) -> Result<Value, String> {
    let value = serde_pickle::value_from_slice(bytes, DeOptions::new()).map_err(|e| {
        let e = e.to_string();
        if e.contains("global") {
            format!(
                "the pickle holds a Python object ({e}); only plain values (None, numbers, \
                 strings, lists, dicts) are read, so read this one from Python"
            )
        } else {
            format!("not a readable pickle: {e}")
        }
    })?;
    to_json(value)
}

fn to_json(value: Pickled) -> Result<Value, String> {
    Ok(match value {
        Pickled::None => Value::Null,
        Pickled::Bool(b) => Value::Bool(b),
        Pickled::I64(i) => Value::from(i),
        Pickled::Int(big) => big_integer(&big.to_string())?,
        Pickled::F64(f) => Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("the float {f} has no JSON form"))?,
        Pickled::String(s) => Value::String(s),
        Pickled::List(items) | Pickled::Tuple(items) => Value::Array(
            items
                .into_iter()
                .map(to_json)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Pickled::Dict(entries) => Value::Object(
            entries
                .into_iter()
                .map(|(key, item)| Ok((dict_key(key)?, to_json(item)?)))
                .collect::<Result<_, String>>()?,
        ),
        Pickled::Bytes(_) | Pickled::Set(_) | Pickled::FrozenSet(_) => {
            return Err(format!(
                "the pickle holds {value}, which has no JSON form; read it from Python"
            ));
        }
    })
}

fn dict_key(key: HashableValue) -> Result<String, String> {
    match key {
        HashableValue::String(s) => Ok(s),
        HashableValue::I64(i) => Ok(i.to_string()),
        HashableValue::Int(big) => Ok(big.to_string()),
        other => Err(format!(
            "the dict key {other} is not a string or an integer"
        )),
    }
}

/// An integer beyond 64 bits, kept exact (serde_json's
/// `arbitrary_precision` holds its digits).
fn big_integer(digits: &str) -> Result<Value, String> {
    serde_json::from_str(digits).map_err(|e| format!("the integer {digits}: {e}"))
}

/// Writes a JSON value as a pickle (protocol 3) that Python's
/// `pickle.loads` reads back as the same value.
///
/// ```
/// use celeriac_protocol::pickle::{from_pickle, to_pickle};
/// let value = serde_json::json!({"b": [1, 2.5, null, true], "a": "x"});
/// assert_eq!(from_pickle(&to_pickle(&value).unwrap()).unwrap(), value);
/// ```
pub fn to_pickle(value: &Value) -> Result<Vec<u8>, String> {
    serde_pickle::to_vec(&Plain(value), SerOptions::new()).map_err(|e| e.to_string())
}

/// A JSON value serialized as the Python value it stands for. serde_json's
/// own `Serialize` cannot be used: with `arbitrary_precision` it writes a
/// number as a private struct holding its text.
struct Plain<'a>(&'a Value);

impl Serialize for Plain<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => serializer.serialize_none(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Number(n) => serialize_number(n, serializer),
            Value::String(s) => serializer.serialize_str(s),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Plain(item))?;
                }
                seq.end()
            }
            Value::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, item) in entries {
                    map.serialize_entry(key, &Plain(item))?;
                }
                map.end()
            }
        }
    }
}

fn serialize_number<S: Serializer>(n: &Number, serializer: S) -> Result<S::Ok, S::Error> {
    if let Some(i) = n.as_i64() {
        return serializer.serialize_i64(i);
    }
    if let Some(u) = n.as_u64() {
        return serializer.serialize_u64(u);
    }
    let text = n.to_string();
    if !text.contains(['.', 'e', 'E']) {
        return Err(serde::ser::Error::custom(format!(
            "the integer {text} does not fit in 64 bits; return it as a string, or store \
             results as JSON (Celery 5.7's column)"
        )));
    }
    match n.as_f64() {
        Some(f) => serializer.serialize_f64(f),
        None => Err(serde::ser::Error::custom(format!(
            "the number {text} is not a float"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_shaped_values_round_trip() {
        let value = json!({
            "none": null, "yes": true, "small": -3, "big": 9_007_199_254_740_993u64,
            "max": u64::MAX, "float": 0.1, "text": "héllo", "nested": [[1], {"k": []}]
        });
        assert_eq!(from_pickle(&to_pickle(&value).unwrap()).unwrap(), value);
    }

    #[test]
    fn a_python_tuple_reads_as_a_list() {
        // pickle.dumps({"exc_type": "ValueError", "exc_message": ("boom",),
        //               "exc_module": "builtins"}, protocol=5)
        let bytes = b"\x80\x05\x95L\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x08exc_type\x94\x8c\nValueError\x94\x8c\x0bexc_message\x94\x8c\x04boom\x94\x85\x94\x8c\nexc_module\x94\x8c\x08builtins\x94u.";
        assert_eq!(
            from_pickle(bytes).unwrap(),
            json!({"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"})
        );
    }

    #[test]
    fn a_pickled_object_is_refused_not_built() {
        // pickle.dumps(collections.OrderedDict(), protocol=5)
        let bytes = b"\x80\x05\x95\"\x00\x00\x00\x00\x00\x00\x00\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94.";
        let error = from_pickle(bytes).unwrap_err();
        assert!(error.contains("Python object"), "{error}");
    }

    #[test]
    fn integers_beyond_64_bits_are_refused_with_the_fix() {
        let value: Value = serde_json::from_str("123456789012345678901234567890").unwrap();
        let error = to_pickle(&value).unwrap_err();
        assert!(error.contains("does not fit in 64 bits"), "{error}");
    }
}
