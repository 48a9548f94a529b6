//! No input makes the decoder panic: arbitrary bytes, header tables and JSON
//! shapes all end in `Ok` or a typed `DecodeError`.

use celeriac_protocol::{
    Compression, DecodeOptions, EncodeError, HeaderValue, Headers, Properties, RawMessage,
    ResultMeta, Signature, TaskBody, TaskHeaders, TaskMessage,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("datetime"),
            Just("uuid"),
            Just("base64"),
            Just("bogus")
        ]
        .prop_flat_map(|marker| (Just(marker), ".{0,20}"))
        .prop_map(|(marker, v)| serde_json::json!({"__type__": marker, "__value__": v})),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,8}", inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn header_value() -> impl Strategy<Value = HeaderValue> {
    let leaf = prop_oneof![
        Just(HeaderValue::Void),
        any::<bool>().prop_map(HeaderValue::Bool),
        any::<i64>().prop_map(HeaderValue::Int),
        any::<f64>().prop_map(HeaderValue::Float),
        ".{0,16}".prop_map(HeaderValue::Str),
        prop::collection::vec(any::<u8>(), 0..8).prop_map(HeaderValue::Bytes),
        any::<u64>().prop_map(HeaderValue::Timestamp),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(HeaderValue::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4).prop_map(HeaderValue::Table),
        ]
    })
}

/// Header tables biased towards Celery's own header names.
fn headers() -> impl Strategy<Value = Headers> {
    let names = prop_oneof![
        Just("task".to_owned()),
        Just("id".to_owned()),
        Just("eta".to_owned()),
        Just("expires".to_owned()),
        Just("timelimit".to_owned()),
        Just("retries".to_owned()),
        Just("compression".to_owned()),
        Just("stamped_headers".to_owned()),
        Just("stamps".to_owned()),
        Just("group_index".to_owned()),
        ".{0,10}",
    ];
    prop::collection::btree_map(names, header_value(), 0..10)
}

fn raw(headers: Headers, body: Vec<u8>, content_type: Option<String>) -> RawMessage {
    RawMessage {
        properties: Properties {
            content_type,
            content_encoding: Some("utf-8".into()),
            ..Properties::default()
        },
        headers,
        body: body.into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), headers in headers()) {
        let msg = raw(headers, body, Some("application/json".into()));
        let _ = TaskMessage::decode(&msg, &DecodeOptions::default());
        let _ = ResultMeta::decode(&msg, &DecodeOptions::default());
    }

    #[test]
    fn arbitrary_header_tables_never_panic(headers in headers()) {
        let _ = TaskHeaders::from_headers(&headers);
    }

    #[test]
    fn arbitrary_json_bodies_never_panic(value in json_value(), headers in headers()) {
        let text = celeriac_protocol::json::to_python_json(&value).into_bytes();
        let msg = raw(headers, text, Some("application/json".into()));
        let _ = TaskMessage::decode(&msg, &DecodeOptions::default());
        let _ = TaskBody::from_json(value.clone());
        let _ = Signature::from_json(&value, "sig");
        let _ = ResultMeta::from_json(value);
    }

    #[test]
    fn bodies_kept_as_text_decode_as_bodies_read_as_values(args in prop::collection::vec(json_value(), 0..4), kwargs in prop::collection::vec((".{0,8}", json_value()), 0..4)) {
        // Any v2 body built from values: decoding it kept as text gives the
        // same message, or the same error, as reading it as values. (Bodies
        // no value writes, such as deep nesting or lone surrogates, are
        // compared in the message module's tests.)
        let text = celeriac_protocol::json::to_python_json(&serde_json::json!([args, kwargs.into_iter().collect::<Map<_, _>>(), null]));
        let msg = raw(TaskHeaders::new("t", "i").to_headers(), text.into_bytes(), Some("application/json".into()));
        let as_text = DecodeOptions { keep_args_as_text_from: 0, ..DecodeOptions::default() };
        let as_values = DecodeOptions { keep_args_as_text_from: usize::MAX, ..DecodeOptions::default() };
        prop_assert_eq!(TaskMessage::decode(&msg, &as_text), TaskMessage::decode(&msg, &as_values));
    }

    #[test]
    fn arbitrary_compressed_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..128)) {
        for c in [Compression::Zlib, Compression::Bzip2, Compression::Lzma] {
            let _ = c.decompress(&body, 4096);
        }
    }

    #[test]
    fn valid_messages_round_trip(args in prop::collection::vec(json_value(), 0..4), id in "[a-f0-9-]{1,36}") {
        // A body with a bad envelope is refused at encode time (Python would
        // drop it); every body that encodes decodes back to the same args.
        let msg = TaskMessage::new("t", id).with_args(args);
        match msg.encode() {
            Ok(encoded) => {
                let back = TaskMessage::decode(&encoded, &DecodeOptions::default());
                prop_assert_eq!(back.map(|m| m.body.args), Ok(msg.body.args));
            }
            Err(err) => prop_assert!(matches!(err, EncodeError::Envelope { .. }), "{}", err),
        }
    }
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let body = format!(
        "[{}1{}, {{}}, null]",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let err = TaskMessage::decode(
        &raw(
            TaskHeaders::new("t", "i").to_headers(),
            body.into_bytes(),
            Some("application/json".into()),
        ),
        &DecodeOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.reason(), "decode_error", "{err}");
}

#[test]
fn a_compression_bomb_is_stopped_at_the_limit() {
    let bomb = Compression::Zlib.compress(&vec![b' '; 64 << 20]).unwrap();
    let mut headers = TaskHeaders::new("t", "i").to_headers();
    headers.insert(
        "compression".into(),
        HeaderValue::Str("application/x-gzip".into()),
    );
    let err = TaskMessage::decode(
        &raw(headers, bomb, Some("application/json".into())),
        &DecodeOptions::default(),
    )
    .unwrap_err();
    assert_eq!(err.reason(), "too_large", "{err}");
}
