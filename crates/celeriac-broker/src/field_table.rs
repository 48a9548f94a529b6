//! Celery headers ⇄ AMQP field tables, in the types py-amqp reads correctly.
//!
//! py-amqp and lapin disagree on some type letters (§1.6.5): `s` is a short
//! string to older py-amqp releases but a 16-bit int to lapin, `l` was read
//! as unsigned by py-amqp before celery/py-amqp#438 (the pinned 5.4.2 reads
//! it signed), and `b`/`B` have swapped signs. So when writing we use
//! only: long strings (`S`), booleans (`t`), 32-bit ints (`I`) whenever the
//! value fits (py-amqp's own choice), 64-bit ints (`l`, only for
//! non-negative values, which every py-amqp release reads correctly), doubles (`d`), void (`V`), arrays
//! (`A`), tables (`F`), byte arrays (`x`), decimals (`D`) and timestamps
//! (`T`). A value Python would misread is refused with [`HeaderError`]
//! instead of being sent corrupted.
//!
//! When reading, every integer width is accepted and widened to `i64`.

use std::collections::BTreeMap;

use amq_protocol_types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use celeriac_protocol::{HeaderValue, Headers};
use thiserror::Error;

/// A header table that cannot be written or read.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// AMQP table keys are short strings: at most 255 bytes.
    #[error("header name {0:?} is longer than the 255 bytes AMQP allows")]
    KeyTooLong(String),
    /// py-amqp releases before celery/py-amqp#438 read 64-bit ints as
    /// unsigned, so a negative one would arrive as a huge positive number.
    #[error(
        "header `{key}` holds {value}, which needs a negative 64-bit integer; older py-amqp \
         releases read those as unsigned and get a different number. Send it as a \
         string or keep it within the 32-bit range"
    )]
    NegativeInt64 {
        /// The header (or nested key) holding the value.
        key: String,
        /// The value.
        value: i64,
    },
    /// The bytes are not a valid AMQP field table.
    #[error("malformed AMQP field table: {0}")]
    Malformed(String),
}

/// Encodes headers as the length-prefixed AMQP field table that goes on the
/// wire (the bytes py-amqp's `loads('F', ...)` reads).
///
/// ```
/// use celeriac_protocol::{HeaderValue, Headers};
/// let mut headers = Headers::new();
/// headers.insert("retries".into(), HeaderValue::Int(3));
/// let bytes = celeriac_broker::encode_headers(&headers).unwrap();
/// assert_eq!(bytes, b"\0\0\0\x0d\x07retriesI\0\0\0\x03");
/// assert_eq!(celeriac_broker::decode_headers(&bytes).unwrap(), headers);
/// ```
pub fn encode_headers(headers: &Headers) -> Result<Vec<u8>, HeaderError> {
    let table = to_field_table(headers)?;
    let serializer = amq_protocol_types::generation::gen_field_table(&table);
    cookie_factory::gen_simple(serializer, Vec::new())
        .map_err(|e| HeaderError::Malformed(format!("could not serialize the table: {e:?}")))
}

/// Decodes a length-prefixed AMQP field table, as a broker delivers it.
pub fn decode_headers(bytes: &[u8]) -> Result<Headers, HeaderError> {
    let (rest, table) = amq_protocol_types::parsing::parse_field_table(bytes)
        .map_err(|e| HeaderError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(HeaderError::Malformed(format!(
            "{} bytes left after the table",
            rest.len()
        )));
    }
    Ok(from_field_table(&table))
}

/// Converts Celery headers to an AMQP table, refusing values py-amqp would misread.
pub(crate) fn to_field_table(headers: &Headers) -> Result<FieldTable, HeaderError> {
    // Collected rather than inserted one by one: the headers come in key
    // order, and a map built from sorted pairs takes a couple of key
    // comparisons each instead of a search per insert.
    let table = headers
        .iter()
        .map(|(key, value)| {
            let name = ShortString::try_new(key.as_str())
                .map_err(|_| HeaderError::KeyTooLong(key.clone()))?;
            Ok((name, to_amqp(key, value)?))
        })
        .collect::<Result<BTreeMap<_, _>, HeaderError>>()?;
    Ok(FieldTable::from(table))
}

/// Converts an AMQP table (as delivered) to Celery headers.
pub(crate) fn from_field_table(table: &FieldTable) -> Headers {
    table
        .inner()
        .iter()
        .map(|(key, value)| (key.as_str().to_owned(), from_amqp(value)))
        .collect()
}

fn to_amqp(key: &str, value: &HeaderValue) -> Result<AMQPValue, HeaderError> {
    Ok(match value {
        HeaderValue::Void => AMQPValue::Void,
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        HeaderValue::Int(i) => match i32::try_from(*i) {
            Ok(small) => AMQPValue::LongInt(small),
            Err(_) if *i > 0 => AMQPValue::LongLongInt(*i),
            Err(_) => {
                return Err(HeaderError::NegativeInt64 {
                    key: key.to_owned(),
                    value: *i,
                });
            }
        },
        HeaderValue::Float(f) => AMQPValue::Double(*f),
        HeaderValue::Str(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        HeaderValue::Bytes(b) => AMQPValue::ByteArray(ByteArray::from(b.as_slice())),
        HeaderValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: u32::from_be_bytes(value.to_be_bytes()),
        }),
        HeaderValue::Timestamp(t) => AMQPValue::Timestamp(*t),
        HeaderValue::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items
                .iter()
                .map(|item| to_amqp(key, item))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        HeaderValue::Table(inner) => AMQPValue::FieldTable(to_field_table(inner)?),
    })
}

fn from_amqp(value: &AMQPValue) -> HeaderValue {
    match value {
        AMQPValue::Void => HeaderValue::Void,
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::ShortUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongUInt(i) => HeaderValue::Int(i64::from(*i)),
        AMQPValue::LongLongInt(i) => HeaderValue::Int(*i),
        AMQPValue::Float(f) => HeaderValue::Float(f64::from(*f)),
        AMQPValue::Double(f) => HeaderValue::Float(*f),
        AMQPValue::DecimalValue(d) => HeaderValue::Decimal {
            scale: d.scale,
            value: i32::from_be_bytes(d.value.to_be_bytes()),
        },
        AMQPValue::ShortString(s) => HeaderValue::Str(s.as_str().to_owned()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => HeaderValue::Str(text.to_owned()),
            Err(_) => HeaderValue::Bytes(s.as_bytes().to_vec()),
        },
        AMQPValue::FieldArray(items) => {
            HeaderValue::Array(items.as_slice().iter().map(from_amqp).collect())
        }
        AMQPValue::Timestamp(t) => HeaderValue::Timestamp(*t),
        AMQPValue::FieldTable(table) => HeaderValue::Table(from_field_table(table)),
        AMQPValue::ByteArray(bytes) => HeaderValue::Bytes(bytes.as_slice().to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: Vec<(&str, HeaderValue)>) -> Headers {
        entries
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    #[test]
    fn integers_use_python_safe_widths() {
        let h = table(vec![
            ("small", HeaderValue::Int(-7)),
            ("big", HeaderValue::Int(1 << 40)),
        ]);
        let t = to_field_table(&h).unwrap();
        assert_eq!(
            t.inner()[&ShortString::from("small")],
            AMQPValue::LongInt(-7)
        );
        assert_eq!(
            t.inner()[&ShortString::from("big")],
            AMQPValue::LongLongInt(1 << 40)
        );
        assert_eq!(from_field_table(&t), h);
    }

    #[test]
    fn negative_64_bit_ints_are_refused() {
        let h = table(vec![(
            "x",
            HeaderValue::Array(vec![HeaderValue::Int(-(1 << 40))]),
        )]);
        let err = encode_headers(&h).unwrap_err();
        assert!(
            matches!(err, HeaderError::NegativeInt64 { ref key, .. } if key == "x"),
            "{err}"
        );
    }

    #[test]
    fn every_value_kind_round_trips_through_bytes() {
        let h = table(vec![
            ("v", HeaderValue::Void),
            ("t", HeaderValue::Bool(true)),
            ("f", HeaderValue::Float(1.5)),
            ("s", HeaderValue::Str("héllo".into())),
            ("x", HeaderValue::Bytes(vec![0xff, 0])),
            (
                "d",
                HeaderValue::Decimal {
                    scale: 2,
                    value: -110,
                },
            ),
            ("ts", HeaderValue::Timestamp(1_700_000_000)),
            (
                "a",
                HeaderValue::Array(vec![HeaderValue::Void, HeaderValue::Int(1)]),
            ),
            (
                "F",
                HeaderValue::Table(table(vec![("n", HeaderValue::Int(1))])),
            ),
        ]);
        assert_eq!(decode_headers(&encode_headers(&h).unwrap()).unwrap(), h);
    }

    #[test]
    fn long_keys_and_garbage_are_errors() {
        let h = table(vec![(&"k".repeat(256), HeaderValue::Void)]);
        assert!(matches!(
            encode_headers(&h),
            Err(HeaderError::KeyTooLong(_))
        ));
        assert!(matches!(
            decode_headers(b"\0\0\0\x05\x01aZ"),
            Err(HeaderError::Malformed(_))
        ));
        assert!(matches!(
            decode_headers(b"\0\0"),
            Err(HeaderError::Malformed(_))
        ));
    }
}
