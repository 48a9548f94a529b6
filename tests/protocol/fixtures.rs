//! Messages captured from the pinned Python Celery (`protocol-fixtures/`)
//! decode into the typed model, carry the fields their case is about, and
//! re-encode to what Python sent.

use anyhow::{Context as _, Result, ensure};
use celeriac_protocol::json::{from_slice, to_python_json};
use celeriac_protocol::{
    Compression, DecodeError, DecodeOptions, HeaderValue, Protocol, ResultMeta, Seconds,
    SignatureKind, State, TaskMessage,
};
use celeriac_tests::{Fixture, all_fixtures, fixture};
use serde_json::{Value, json};

fn decode(name: &str) -> Result<TaskMessage> {
    let f = fixture(name)?;
    TaskMessage::decode(&f.raw, &DecodeOptions::default())
        .with_context(|| format!("decoding {name}"))
}

fn task_fixtures() -> Result<Vec<Fixture>> {
    Ok(all_fixtures()?
        .into_iter()
        .filter(|f| f.kind.starts_with("task") && f.expect_error.is_none())
        .collect())
}

#[test]
fn there_are_at_least_thirty_fixtures_from_the_pinned_celery() -> Result<()> {
    let fixtures = all_fixtures()?;
    ensure!(fixtures.len() >= 30, "only {} fixtures", fixtures.len());
    Ok(())
}

#[test]
fn every_fixture_decodes_or_is_refused_as_expected() -> Result<()> {
    let options = DecodeOptions::default();
    for f in all_fixtures()? {
        match (f.kind.as_str(), f.expect_error.as_deref()) {
            ("result", None) => {
                ResultMeta::decode(&f.raw, &options).with_context(|| f.name.clone())?;
            }
            (_, None) => {
                TaskMessage::decode(&f.raw, &options).with_context(|| f.name.clone())?;
            }
            (_, Some(expected)) => {
                let err = TaskMessage::decode(&f.raw, &options)
                    .err()
                    .with_context(|| format!("{} decoded but should be refused", f.name))?;
                let code = match err {
                    DecodeError::NonFiniteNumber { .. } => "non_finite_number",
                    ref e => e.reason(),
                };
                ensure!(
                    code == expected,
                    "{}: refused as {code} ({err}), expected {expected}",
                    f.name
                );
            }
        }
    }
    Ok(())
}

/// The cases whose messages Celery 5.3 builds differently (results without
/// the extended fields or `date_done`, `ignore_result` sent as `False`,
/// chords without a header `group_id`, ...) decode as well, with the same
/// header types and, for results, every field Python wrote with its value.
#[test]
fn messages_from_the_oldest_supported_celery_decode_too() -> Result<()> {
    let fixtures = celeriac_tests::oldest_celery_fixtures()?;
    ensure!(
        fixtures.len() >= 10,
        "only {} Celery 5.3 fixtures",
        fixtures.len()
    );
    let options = DecodeOptions::default();
    for f in fixtures {
        let headers =
            celeriac_broker::decode_headers(&f.headers_amqp).with_context(|| f.name.clone())?;
        ensure!(headers == f.raw.headers, "{}: header types", f.name);
        if f.kind == "result" {
            // Every field 5.3 wrote reads back with its value (Celeriac's
            // own documents add `date_done` and the like).
            let meta = ResultMeta::decode(&f.raw, &options).with_context(|| f.name.clone())?;
            let ours = meta.to_json();
            let theirs = f.decoded.as_object().context("a result document")?;
            for (key, value) in theirs {
                ensure!(
                    ours.get(key) == Some(value),
                    "{}: {key} reads as {:?}",
                    f.name,
                    ours.get(key)
                );
            }
        } else {
            TaskMessage::decode(&f.raw, &options).with_context(|| f.name.clone())?;
        }
    }
    Ok(())
}

/// Our AMQP table reader sees exactly the types py-amqp wrote.
#[test]
fn header_bytes_written_by_py_amqp_decode_to_the_typed_headers() -> Result<()> {
    for f in all_fixtures()? {
        let decoded =
            celeriac_broker::decode_headers(&f.headers_amqp).with_context(|| f.name.clone())?;
        ensure!(
            decoded == f.raw.headers,
            "{}: {decoded:?} != {:?}",
            f.name,
            f.raw.headers
        );
    }
    Ok(())
}

/// Python's own view of each body (kombu JSON, envelopes intact) is what we decode.
#[test]
fn bodies_decode_to_what_python_decodes() -> Result<()> {
    for f in task_fixtures()? {
        let msg = TaskMessage::decode(&f.raw, &DecodeOptions::default())?;
        let expected = match f.kind.as_str() {
            "task_v1" => json!({"args": f.decoded["args"], "kwargs": f.decoded["kwargs"]}),
            _ => f.decoded.clone(),
        };
        ensure!(
            Value::Array(msg.body.args.to_vec()) == expected["args"],
            "{}: args",
            f.name
        );
        ensure!(
            Value::Object(msg.body.kwargs.values().clone()) == expected["kwargs"],
            "{}: kwargs",
            f.name
        );
        if f.kind == "task_v2" {
            ensure!(
                msg.body.embed.to_json() == expected["embed"],
                "{}: embed",
                f.name
            );
        }
    }
    Ok(())
}

/// encode(decode(m)) is m: byte-identical JSON bodies, equal header values
/// and properties.
#[test]
fn v2_messages_re_encode_to_what_python_sent() -> Result<()> {
    for f in task_fixtures()?.into_iter().filter(|f| f.kind == "task_v2") {
        let msg = TaskMessage::decode(&f.raw, &DecodeOptions::default())?;
        let again = msg.encode()?;
        ensure!(
            again.properties == f.raw.properties,
            "{}: properties {:?}",
            f.name,
            again.properties
        );
        ensure!(
            again.headers == f.raw.headers,
            "{}: headers\n{:?}\n{:?}",
            f.name,
            again.headers,
            f.raw.headers
        );
        match msg.headers.compression {
            None => ensure!(
                again.body == f.raw.body,
                "{}: body\n{}\n{}",
                f.name,
                String::from_utf8_lossy(&again.body),
                String::from_utf8_lossy(&f.raw.body)
            ),
            Some(c) => {
                let ours = c.decompress(&again.body, 1 << 20)?;
                let theirs = c.decompress(&f.raw.body, 1 << 20)?;
                ensure!(ours == theirs, "{}: decompressed bodies differ", f.name);
            }
        }
        // And the headers survive our AMQP writer unchanged.
        let bytes = celeriac_broker::encode_headers(&again.headers)?;
        ensure!(
            celeriac_broker::decode_headers(&bytes)? == f.raw.headers,
            "{}: AMQP table",
            f.name
        );
    }
    Ok(())
}

#[test]
fn result_documents_re_encode_byte_for_byte() -> Result<()> {
    for f in all_fixtures()?.into_iter().filter(|f| f.kind == "result") {
        let meta = ResultMeta::decode(&f.raw, &DecodeOptions::default())?;
        ensure!(meta.to_json() == f.decoded, "{}: decoded view", f.name);
        let again = meta.encode()?;
        ensure!(
            again.body == f.raw.body,
            "{}: body\n{}",
            f.name,
            String::from_utf8_lossy(&again.body)
        );
        ensure!(
            again.properties == f.raw.properties,
            "{}: properties",
            f.name
        );
    }
    Ok(())
}

#[test]
fn positional_and_keyword_arguments() -> Result<()> {
    let m = decode("plain_positional")?;
    assert_eq!(m.headers.task, "proj.tasks.add");
    assert_eq!(m.headers.id, "00000000-0000-4000-8000-000000000001");
    assert_eq!(
        m.properties.correlation_id.as_deref(),
        Some(m.headers.id.as_str())
    );
    assert_eq!(m.headers.root_id.as_deref(), Some(m.headers.id.as_str()));
    assert_eq!(m.headers.lang.as_deref(), Some("py"));
    assert_eq!(
        (m.protocol, m.body.args.into_values()),
        (Protocol::V2, vec![json!(2), json!(2)])
    );
    assert_eq!(decode("kwargs_only")?.body.kwargs["y"], json!(2));
    let both = decode("args_and_kwargs")?;
    assert_eq!(
        (both.body.args[1].clone(), both.body.kwargs["three"].clone()),
        (json!("two"), json!(3.0))
    );
    Ok(())
}

#[test]
fn json_edge_values_are_lossless() -> Result<()> {
    let m = decode("json_types")?;
    assert_eq!(m.body.args[0], json!("héllo wörld"));
    assert_eq!(m.body.args[2], json!("😀"));
    assert_eq!(m.body.args[3], json!("\u{0}\t\n\"\\\u{7f}"));
    assert_eq!(to_python_json(&m.body.args[10]), "1e+100");
    assert_eq!(to_python_json(&m.body.args[11]), "-0.0");
    assert!(m.body.kwargs.contains_key("unicode_key_é"));
    let big = decode("big_ints")?;
    let texts: Vec<String> = big.body.args.iter().map(to_python_json).collect();
    assert_eq!(texts[1], "9223372036854775808");
    assert_eq!(texts[4], "1267650600228229401496703205376");
    assert!(
        big.body.args[3].as_i64().is_none(),
        "-2**63-1 must not be squeezed into an i64"
    );
    Ok(())
}

#[test]
fn kombu_envelopes_decode_to_typed_values() -> Result<()> {
    use celeriac_protocol::kombu::Special;
    let special = |name: &str, i: usize| -> Result<Special> {
        let m = decode(name)?;
        Special::from_json(&m.body.args[i])
            .context("not an envelope")?
            .map_err(anyhow::Error::msg)
    };
    assert!(
        matches!(special("kombu_datetime", 0)?, Special::DateTime(t) if t.offset().local_minus_utc() == 0)
    );
    assert!(matches!(
        special("kombu_datetime", 1)?,
        Special::NaiveDateTime(_)
    ));
    assert!(
        matches!(special("kombu_datetime", 2)?, Special::DateTime(t) if t.offset().local_minus_utc() == 19_800)
    );
    assert!(matches!(special("kombu_date_time", 0)?, Special::Date(_)));
    assert!(matches!(special("kombu_date_time", 2)?, Special::Time(..)));
    assert_eq!(
        special("kombu_decimal", 2)?,
        Special::Decimal("12345678901234567890.123456789".into())
    );
    assert_eq!(
        special("kombu_uuid", 0)?.to_string(),
        "12345678-1234-5678-1234-567812345678"
    );
    assert_eq!(special("kombu_bytes", 1)?, Special::Bytes(vec![0xff, 0x00]));
    assert_eq!(special("kombu_bytes", 2)?, Special::Bytes(vec![]));
    Ok(())
}

#[test]
fn eta_expires_and_their_formats() -> Result<()> {
    let eta = decode("eta_fixed")?.headers.eta.context("eta")?;
    assert_eq!(eta.to_rfc3339(), "2030-01-02T03:04:05.678901+00:00");
    let whole = decode("eta_whole_second")?;
    assert_eq!(
        whole.encode()?.headers["eta"],
        HeaderValue::Str("2030-01-02T03:04:05+00:00".into())
    );
    assert!(decode("countdown")?.headers.eta.is_some());
    assert!(decode("eta_app_timezone")?.headers.eta.is_some());
    let expires = decode("expires_seconds")?;
    assert!(expires.headers.expires.is_some());
    assert_eq!(expires.properties.expiration.as_deref(), Some("60000"));
    assert!(decode("expires_datetime")?.properties.expiration.is_some());
    Ok(())
}

#[test]
fn retries_limits_priority_shadow_and_result_flags() -> Result<()> {
    assert_eq!(decode("retries")?.headers.retries, 3);
    let limits = decode("time_limits")?.headers.timelimit;
    assert_eq!(
        (limits.hard, limits.soft),
        (Some(Seconds::Int(30)), Some(Seconds::Int(20)))
    );
    let float = decode("time_limit_float")?.headers.timelimit;
    assert_eq!((float.hard, float.soft), (Some(Seconds::Float(1.5)), None));
    assert_eq!(decode("priority")?.properties.priority, Some(5));
    assert_eq!(
        decode("shadow")?.headers.shadow.as_deref(),
        Some("proj.tasks.add.shadowed")
    );
    assert_eq!(decode("ignore_result")?.headers.ignore_result, Some(true));
    assert_eq!(
        decode("plain_positional")?.headers.ignore_result,
        Some(false)
    );
    Ok(())
}

#[test]
fn custom_headers_are_kept_with_their_types() -> Result<()> {
    let extra = decode("custom_headers")?.headers.extra;
    assert_eq!(extra["x-custom"], HeaderValue::Str("v".into()));
    assert_eq!(extra["x-big"], HeaderValue::Int(1 << 40));
    assert_eq!(extra["x-neg"], HeaderValue::Int(-7));
    assert_eq!(extra["x-float"], HeaderValue::Float(1.5));
    assert_eq!(extra["x-none"], HeaderValue::Void);
    assert!(matches!(&extra["x-dict"], HeaderValue::Table(t) if t["n"] == HeaderValue::Int(1)));
    let stamped = decode("stamped")?.headers;
    assert_eq!(
        stamped.stamped_headers,
        Some(vec!["monitoring_id".to_owned()])
    );
    assert_eq!(
        stamped.stamps["monitoring_id"],
        HeaderValue::Str("m-123".into())
    );
    Ok(())
}

#[test]
fn links_chains_groups_and_chords() -> Result<()> {
    let link = decode("link")?.body.embed;
    assert_eq!(link.callbacks.context("callbacks")?[0].args, vec![json!(4)]);
    let errbacks = decode("link_error")?
        .body
        .embed
        .errbacks
        .context("errbacks")?;
    assert_eq!(errbacks[0].task, "remote.on_error");
    let multiple = decode("link_multiple")?
        .body
        .embed
        .callbacks
        .context("callbacks")?;
    assert!(multiple[1].immutable);

    let chain = decode("chain")?.body.embed;
    let steps = chain.chain.as_ref().context("chain")?;
    assert_eq!(steps.len(), 2);
    let next = chain.next_chain_step().context("next step")?;
    assert_eq!(
        next.args,
        vec![json!(4)],
        "the next step is the last element"
    );
    assert_eq!(
        steps[0].task_id(),
        Some("00000000-0000-4000-8000-00000000001b"),
        "the chain's id is its last task's"
    );

    let nested = decode("chain_with_group")?
        .body
        .embed
        .chain
        .context("chain")?;
    let SignatureKind::Chord { header, body } = nested[0].kind()? else {
        anyhow::bail!("expected a chord, got {:?}", nested[0].task)
    };
    assert_eq!((header.len(), body.task.as_str()), (2, "proj.tasks.tsum"));

    let members = [decode("group_member_0")?, decode("group_member_1")?];
    assert_eq!(members[0].headers.group, members[1].headers.group);
    assert_eq!(members[1].headers.group_index, Some(1));

    let header_task = decode("chord_header")?;
    let chord = header_task.body.embed.chord.context("chord body")?;
    assert_eq!(
        chord.task_id(),
        Some("00000000-0000-4000-8000-00000000001f")
    );
    assert_eq!(
        chord.options["group_id"].as_str(),
        header_task.headers.group.as_deref()
    );
    Ok(())
}

#[test]
fn compressed_bodies_and_protocol_v1() -> Result<()> {
    for (name, c) in [
        ("compressed_gzip", Compression::Zlib),
        ("compressed_bzip2", Compression::Bzip2),
        ("compressed_lzma", Compression::Lzma),
    ] {
        let m = decode(name)?;
        assert_eq!(
            (m.headers.compression, m.body.args.len()),
            (Some(c), 2),
            "{name}"
        );
    }
    let v1 = decode("protocol_v1")?;
    assert_eq!(v1.protocol, Protocol::V1);
    assert_eq!(v1.headers.id, "00000000-0000-4000-8000-000000000023");
    assert_eq!(
        v1.headers.eta.context("eta")?.to_rfc3339(),
        "2030-01-02T03:04:05.678901+00:00"
    );
    // Re-encoding a v1 message produces v2, which decodes to the same task.
    let v2 = TaskMessage::decode(&v1.encode()?, &DecodeOptions::default())?;
    assert_eq!(
        (v2.protocol, v2.body.args.clone(), v2.headers.eta),
        (Protocol::V2, v1.body.args, v1.headers.eta)
    );
    Ok(())
}

#[test]
fn routing_is_recorded_as_python_published() -> Result<()> {
    let plain = fixture("plain_positional")?;
    assert_eq!(
        (plain.exchange.as_str(), plain.routing_key.as_str()),
        ("", "celery"),
        "default-exchange shortcut"
    );
    let queue = fixture("send_task_queue")?;
    assert_eq!(
        (queue.exchange.as_str(), queue.routing_key.as_str()),
        ("", "other")
    );
    let topic = fixture("topic_route")?;
    assert_eq!(
        (topic.exchange.as_str(), topic.routing_key.as_str()),
        ("tasks", "images.resize")
    );
    Ok(())
}

#[test]
fn result_states_and_exceptions() -> Result<()> {
    let meta = |name: &str| -> Result<ResultMeta> {
        Ok(ResultMeta::decode(
            &fixture(name)?.raw,
            &DecodeOptions::default(),
        )?)
    };
    let ok = meta("result_success")?;
    assert_eq!(
        (ok.status.clone(), ok.result.clone()),
        (State::Success, json!(4))
    );
    assert!(ok.date_done.is_some());
    let failed = meta("result_failure")?;
    let exc = failed.exception().context("exception")?;
    assert_eq!(
        (exc.exc_type.as_str(), exc.message()),
        ("KeyError", "missing".to_owned())
    );
    assert!(failed.traceback.context("traceback")?.contains("KeyError"));
    let custom = meta("result_failure_custom")?
        .exception()
        .context("exception")?;
    assert_eq!(custom.exc_module.as_deref(), Some("proj.errors"));
    assert_eq!(custom.exc_message, vec![json!("card 42"), json!(3)]);
    assert_eq!(meta("result_retry")?.status, State::Retry);
    assert_eq!(
        meta("result_revoked")?
            .exception()
            .context("revoked")?
            .exc_type,
        "TaskRevokedError"
    );
    let started = meta("result_started")?;
    assert_eq!((started.status, started.date_done), (State::Started, None));
    let ext = meta("result_success_extended")?
        .extended
        .context("extended")?;
    assert_eq!(
        (ext.name.as_deref(), ext.queue.as_deref()),
        (Some("proj.tasks.add"), Some("celery"))
    );
    Ok(())
}

#[test]
fn refused_bodies_say_why() -> Result<()> {
    let pickle = TaskMessage::decode(&fixture("pickle_refused")?.raw, &DecodeOptions::default())
        .unwrap_err();
    assert!(
        pickle.to_string().contains("executable Python code"),
        "{pickle}"
    );
    let nan =
        TaskMessage::decode(&fixture("nan_refused")?.raw, &DecodeOptions::default()).unwrap_err();
    assert!(
        matches!(nan, DecodeError::NonFiniteNumber { token: "NaN", .. }),
        "{nan}"
    );
    let text = from_slice(br#"[[1], {}, null]"#)?;
    assert!(text.is_array());
    Ok(())
}
