//! The reverse direction: messages built by Celeriac's encoder for each
//! fixture case are read by the pinned Python Celery (py-amqp for the header
//! table, kombu for the body, the worker's own request parsing) and must come
//! out equal to what Python itself built for that case.
//!
//! Needs the interop virtualenv (`scripts/setup-interop`); fails with that
//! instruction when it is missing.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use base64::Engine as _;
use celeriac_protocol::kombu::Special;
use celeriac_protocol::time::{format_time, now, parse_time};
use celeriac_protocol::{
    Compression, ExceptionInfo, ExtendedMeta, HeaderValue, RawMessage, ResultMeta, Seconds,
    Signature, State, TaskMessage, TimeLimit,
};
use celeriac_tests::{all_fixtures, interop_python, repo_root};
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime};
use serde_json::{Map, Value, json};

/// The reply queue Python's generator used; a Rust producer puts its own
/// reply queue in signature options the same way.
const REPLY_TO: &str = "11111111-2222-4333-8444-555555555555";

fn id(case: u64) -> String {
    format!("00000000-0000-4000-8000-{case:012x}")
}

/// Ids of workflow members: `00000000-0000-4000-8000-CCCC0000000N`.
fn member_id(case: u64, n: u64) -> String {
    format!("00000000-0000-4000-8000-{case:04x}{n:08x}")
}

fn time(text: &str) -> Result<DateTime<FixedOffset>> {
    parse_time(text).with_context(|| format!("bad time {text}"))
}

fn kwargs(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

fn add(case: u64, args: Value) -> TaskMessage {
    task("proj.tasks.add", id(case), args)
}

fn echo(case: u64, args: Value) -> TaskMessage {
    task("proj.tasks.echo", id(case), args)
}

fn task(name: &str, task_id: String, args: Value) -> TaskMessage {
    TaskMessage::new(name, task_id).with_args(args.as_array().cloned().unwrap_or_default())
}

/// Python's `send_task` (by name) leaves `ignore_result` null: the worker's
/// own task setting decides.
fn by_name(mut message: TaskMessage) -> TaskMessage {
    message.headers.ignore_result = None;
    message
}

fn sig(name: &str, args: Value) -> Signature {
    Signature::new(name).with_args(args.as_array().cloned().unwrap_or_default())
}

/// Builds, with Celeriac's own API, the message each fixture case describes.
fn build_task(name: &str) -> Result<Option<TaskMessage>> {
    let now = now();
    let eta = time("2030-01-02T03:04:05.678901+00:00")?;
    let whole = time("2030-01-02T03:04:05+00:00")?;
    Ok(Some(match name {
        "plain_positional" => add(0x01, json!([2, 2])),
        "kwargs_only" => add(0x02, json!([])).with_kwargs(kwargs(json!({"x": 1, "y": 2}))),
        "args_and_kwargs" => {
            echo(0x03, json!([1, "two"])).with_kwargs(kwargs(json!({"three": 3.0})))
        }
        "json_types" => echo(
            0x04,
            json!(["héllo wörld", "中文", "😀", "\u{0}\t\n\"\\\u{7f}", null, true, false, 0, -1,
                   0.1, 1e100, -0.0, [1, [2, [3]]], {"a": {"b": [null]}}]),
        )
        .with_kwargs(kwargs(
            json!({"empty_list": [], "empty_dict": {}, "unicode_key_é": 1}),
        )),
        "big_ints" => echo(
            0x05,
            celeriac_protocol::json::from_slice(
                b"[9223372036854775807, 9223372036854775808, -9223372036854775808, \
                  -9223372036854775809, 1267650600228229401496703205376, \
                  -1267650600228229401496703205376]",
            )?,
        ),
        "kombu_datetime" => echo(
            0x06,
            json!([
                Special::DateTime(time("2024-01-02T03:04:05+00:00")?),
                Special::NaiveDateTime(time("2024-01-02T03:04:05")?.naive_utc()),
                Special::DateTime(time("2024-01-02T03:04:05.123456+05:30")?),
            ]),
        ),
        "kombu_date_time" => echo(
            0x07,
            json!([
                Special::Date(NaiveDate::from_ymd_opt(2024, 1, 2).context("date")?),
                Special::Time(NaiveTime::from_hms_opt(1, 2, 3).context("time")?, None),
                Special::Time(
                    NaiveTime::from_hms_micro_opt(1, 2, 3, 456_789).context("time")?,
                    None
                ),
            ]),
        ),
        "kombu_decimal" => echo(
            0x08,
            json!([
                Special::Decimal("1.10".into()),
                Special::Decimal("-0.000001".into()),
                Special::Decimal("12345678901234567890.123456789".into()),
            ]),
        ),
        "kombu_uuid" => echo(
            0x09,
            json!([Special::Uuid(
                "12345678-1234-5678-1234-567812345678".parse()?
            )]),
        ),
        "kombu_bytes" => echo(
            0x0a,
            json!([
                Special::Bytes(b"hi".to_vec()),
                Special::Bytes(vec![0xff, 0]),
                Special::Bytes(vec![])
            ]),
        ),
        "eta_fixed" => add(0x0b, json!([1, 1])).with_eta(eta),
        "eta_whole_second" => add(0x0c, json!([1, 1])).with_eta(whole),
        "countdown" => add(0x0d, json!([1, 1])).with_countdown(Duration::from_secs(10), now),
        "eta_app_timezone" => add(0x0e, json!([1, 1])).with_eta(whole),
        "expires_seconds" => {
            add(0x0f, json!([1, 1])).with_expires(now + chrono::Duration::seconds(60), now)
        }
        "expires_datetime" => add(0x10, json!([1, 1])).with_expires(whole, now),
        "retries" => {
            let mut m = by_name(add(0x11, json!([1, 1])));
            m.headers.retries = 3;
            m
        }
        "time_limits" => {
            let mut m = add(0x12, json!([1, 1]));
            m.headers.timelimit = TimeLimit {
                hard: Some(Seconds::Int(30)),
                soft: Some(Seconds::Int(20)),
            };
            m
        }
        "time_limit_float" => {
            let mut m = add(0x13, json!([1, 1]));
            m.headers.timelimit.hard = Some(Seconds::Float(1.5));
            m
        }
        "priority" => {
            let mut m = add(0x14, json!([1, 1]));
            m.properties.priority = Some(5);
            m
        }
        "shadow" => {
            let mut m = add(0x15, json!([1, 1]));
            m.headers.shadow = Some("proj.tasks.add.shadowed".into());
            m
        }
        "ignore_result" => {
            let mut m = add(0x16, json!([1, 1]));
            m.headers.ignore_result = Some(true);
            m
        }
        "custom_headers" => {
            let mut m = add(0x17, json!([1, 1]));
            let custom = json!({"x-custom": "v", "x-int": 5, "x-big": 1_099_511_627_776_i64, "x-neg": -7,
                "x-float": 1.5, "x-bool": true, "x-list": [1, "a", null], "x-dict": {"k": "v", "n": 1},
                "x-none": null});
            for (key, value) in kwargs(custom) {
                m.headers.extra.insert(
                    key,
                    HeaderValue::from_json(&value).map_err(anyhow::Error::msg)?,
                );
            }
            m
        }
        "link" => {
            let mut m = add(0x18, json!([2, 2]));
            m.body.embed.callbacks = Some(vec![sig("proj.tasks.add", json!([4]))]);
            m
        }
        "link_error" => {
            let mut m = add(0x19, json!([2, 2]));
            m.body.embed.errbacks = Some(vec![sig("remote.on_error", json!(["extra"]))]);
            m
        }
        "link_multiple" => {
            let mut m = add(0x1a, json!([2, 2]));
            m.body.embed.callbacks = Some(vec![
                sig("proj.tasks.add", json!([1])),
                sig("proj.tasks.echo", json!(["done"])).immutable(),
            ]);
            m
        }
        "chain" => {
            // chain(add(2, 2), add(4), add(8)): the last step carries the
            // chain's id; remaining steps travel in reverse order.
            let step = |args: Value, task_id: String| {
                sig("proj.tasks.add", args)
                    .with_option("task_id", task_id)
                    .with_option("reply_to", REPLY_TO)
            };
            let mut m = task("proj.tasks.add", member_id(0x1b, 2), json!([2, 2]));
            m.body.embed.chain = Some(vec![
                step(json!([8]), id(0x1b)),
                step(json!([4]), member_id(0x1b, 1)),
            ]);
            m
        }
        "chain_with_group" => {
            let header_task = |args: Value, n: u64, index: u64| {
                sig("proj.tasks.add", args)
                    .with_option("task_id", member_id(0x1c, n))
                    .with_option("reply_to", REPLY_TO)
                    .with_option("group_index", index)
            };
            let group = Signature::group(vec![
                header_task(json!([1]), 2, 0),
                header_task(json!([2]), 3, 1),
            ])
            .with_option("task_id", member_id(0x1c, 1))
            .with_option("root_id", Value::Null)
            .with_option("parent_id", Value::Null);
            let body = sig("proj.tasks.tsum", json!([]))
                .with_option("task_id", member_id(0x1c, 4))
                .with_option("reply_to", REPLY_TO);
            let mut chord =
                Signature::chord(vec![], body).with_option("task_id", member_id(0x1c, 1));
            chord.kwargs.insert("header".into(), group.to_json());
            let mut m = task("proj.tasks.add", member_id(0x1c, 5), json!([1, 1]));
            m.body.embed.chain = Some(vec![chord]);
            m
        }
        "group_member_0" | "group_member_1" => {
            let index = u64::from(name.ends_with('1'));
            let mut m = task(
                "proj.tasks.add",
                member_id(0x1d, 2 + index),
                json!([1 + index, 1 + index]),
            );
            m.headers.group = Some(id(0x1d));
            m.headers.group_index = Some(i64::try_from(index)?);
            m
        }
        "chord_header" => {
            let mut m = task("proj.tasks.add", member_id(0x1f, 2), json!([1, 1]));
            m.headers.group = Some(member_id(0x1f, 1));
            m.headers.group_index = Some(0);
            m.body.embed.chord = Some(Box::new(
                sig("proj.tasks.tsum", json!([]))
                    .with_option("task_id", id(0x1f))
                    .with_option("reply_to", REPLY_TO)
                    .with_option("group_id", member_id(0x1f, 1)),
            ));
            m
        }
        "compressed_gzip" | "compressed_bzip2" | "compressed_lzma" => {
            let (case, compression) = match name {
                "compressed_gzip" => (0x20, Compression::Zlib),
                "compressed_bzip2" => (0x21, Compression::Bzip2),
                _ => (0x22, Compression::Lzma),
            };
            let mut m = add(case, json!([2, 2]));
            m.headers.compression = Some(compression);
            m
        }
        "stamped" => {
            let mut m = add(0x24, json!([2, 2]));
            m.headers.stamped_headers = Some(vec!["monitoring_id".into()]);
            m.headers
                .stamps
                .insert("monitoring_id".into(), HeaderValue::Str("m-123".into()));
            m
        }
        "send_task_queue" => by_name(add(0x25, json!([1, 2])).with_kwargs(kwargs(json!({"z": 3})))),
        "topic_route" => by_name(task(
            "images.resize",
            id(0x26),
            json!(["https://example.com/a.png", 800]),
        )),
        _ => return Ok(None),
    }))
}

/// Builds the result document each result fixture case describes.
fn build_result(name: &str) -> Result<Option<ResultMeta>> {
    let done = Some(time("2030-01-01T00:00:00.123456+00:00")?);
    let traceback = |case: &str, line: u32, exc: &str| {
        format!(
            "Traceback (most recent call last):\n  File \"<fixture {case}>\", line {line}, in <module>\n{exc}\n"
        )
    };
    let meta = match name {
        "result_success" => ResultMeta {
            date_done: done,
            ..ResultMeta::new(id(0x29), State::Success, json!(4))
        },
        "result_success_extended" => ResultMeta {
            date_done: done,
            extended: Some(ExtendedMeta {
                name: Some("proj.tasks.add".into()),
                args: json!([2, 2]),
                kwargs: json!({}),
                worker: Some("w1@fixtures".into()),
                retries: Some(0),
                queue: Some("celery".into()),
            }),
            ..ResultMeta::new(id(0x2a), State::Success, json!(4))
        },
        "result_failure" => ResultMeta {
            date_done: done,
            traceback: Some(traceback(name, 2, "KeyError: 'missing'")),
            ..ResultMeta::new(
                id(0x2b),
                State::Failure,
                ExceptionInfo::new("builtins", "KeyError", "missing").to_json(),
            )
        },
        "result_retry" => ResultMeta {
            traceback: Some(traceback(name, 2, "ValueError: temporarily unavailable")),
            ..ResultMeta::new(
                id(0x2c),
                State::Retry,
                ExceptionInfo::new("builtins", "ValueError", "temporarily unavailable").to_json(),
            )
        },
        "result_revoked" => ResultMeta {
            date_done: done,
            ..ResultMeta::new(
                id(0x2d),
                State::Revoked,
                ExceptionInfo::new("celery.exceptions", "TaskRevokedError", "revoked").to_json(),
            )
        },
        "result_started" => ResultMeta::new(
            id(0x2e),
            State::Started,
            json!({"pid": 4242, "hostname": "w1@fixtures"}),
        ),
        "result_failure_custom" => {
            let exc = ExceptionInfo {
                exc_type: "PaymentDeclined".into(),
                exc_message: vec![json!("card 42"), json!(3)],
                exc_module: Some("proj.errors".into()),
            };
            ResultMeta {
                date_done: done,
                traceback: Some(traceback(
                    name,
                    3,
                    "proj.errors.PaymentDeclined: ('card 42', 3)",
                )),
                ..ResultMeta::new(id(0x2f), State::Failure, exc.to_json())
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(meta))
}

fn write_message(
    dir: &std::path::Path,
    name: &str,
    exchange: &str,
    routing_key: &str,
    raw: &RawMessage,
) -> Result<()> {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let p = &raw.properties;
    let mut props = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            props.insert(k.into(), v);
        }
    };
    put("content_type", p.content_type.clone().map(Value::from));
    put(
        "content_encoding",
        p.content_encoding.clone().map(Value::from),
    );
    put("correlation_id", p.correlation_id.clone().map(Value::from));
    put("reply_to", p.reply_to.clone().map(Value::from));
    put("delivery_mode", p.delivery_mode.map(Value::from));
    put("priority", p.priority.map(Value::from));
    put("expiration", p.expiration.clone().map(Value::from));
    let doc = json!({
        "name": name,
        "exchange": exchange,
        "routing_key": routing_key,
        "properties": props,
        "headers_amqp": b64(&celeriac_broker::encode_headers(&raw.headers)?),
        "body": b64(&raw.body),
        "encoded_at": format_time(&now()),
    });
    std::fs::write(
        dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(&doc)?,
    )?;
    Ok(())
}

#[test]
fn python_celery_reads_our_messages_as_its_own() -> Result<()> {
    let python = interop_python()?;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("rust-encoded-messages");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;

    let mut built = 0;
    let mut skipped = Vec::new();
    for f in all_fixtures()? {
        if f.expect_error.is_some() || f.kind == "task_v1" {
            continue; // we refuse these, and never send v1
        }
        let raw = match (build_task(&f.name)?, build_result(&f.name)?) {
            (Some(task), _) => task.encode()?,
            (None, Some(result)) => result.encode()?,
            (None, None) => {
                skipped.push(f.name.clone());
                continue;
            }
        };
        write_message(&dir, &f.name, &f.exchange, &f.routing_key, &raw)?;
        built += 1;
    }
    ensure!(
        skipped.is_empty(),
        "no Rust builder for fixture cases {skipped:?}; add one to build_task/build_result"
    );
    ensure!(built >= 30, "only {built} cases built");

    let checker = repo_root().join("tests/interop/check_rust_messages.py");
    let output = Command::new(&python)
        .arg(&checker)
        .arg(&dir)
        .arg(repo_root().join("protocol-fixtures/fixtures"))
        .output()
        .context("running the Python checker")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        bail!(
            "Python Celery disagrees with {} of our messages; see the FAIL lines above",
            stdout.matches("FAIL").count()
        );
    }
    ensure!(
        stdout.contains(&format!("{built} passed, 0 failed")),
        "checker did not check all {built} messages"
    );
    Ok(())
}
