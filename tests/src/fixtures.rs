//! The protocol fixtures: messages captured from the pinned Python Celery
//! by `protocol-fixtures/generate.py`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use celeriac_protocol::{HeaderValue, Headers, Properties, RawMessage};
use serde_json::Value;

use crate::repo_root;

/// A message captured from Python Celery by `protocol-fixtures/generate.py`.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// Case name (the file stem).
    pub name: String,
    /// `task_v2`, `task_v1` or `result`.
    pub kind: String,
    /// Exchange Python published to.
    pub exchange: String,
    /// Routing key Python published with.
    pub routing_key: String,
    /// The message as it went on the wire, headers read from the typed JSON.
    pub raw: RawMessage,
    /// The py-amqp-encoded header table bytes.
    pub headers_amqp: Vec<u8>,
    /// Python's own decoding of the body (kombu JSON), or null.
    pub decoded: Value,
    /// The refusal reason expected from our decoder, if any.
    pub expect_error: Option<String>,
}

/// Loads every fixture, sorted by name. Fails if there are none.
pub fn all_fixtures() -> Result<Vec<Fixture>> {
    let dir = repo_root().join("protocol-fixtures/fixtures");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        bail!(
            "no fixtures in {}; run protocol-fixtures/generate.py",
            dir.display()
        );
    }
    paths.iter().map(|p| load_path(p)).collect()
}

/// Loads one fixture by name.
pub fn fixture(name: &str) -> Result<Fixture> {
    load_path(&repo_root().join(format!("protocol-fixtures/fixtures/{name}.json")))
}

fn load_path(path: &Path) -> Result<Fixture> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let s = |key: &str| {
        doc[key]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{}: missing {key}", path.display()))
    };
    let b64 = |key: &str| -> Result<Vec<u8>> {
        Ok(base64::engine::general_purpose::STANDARD.decode(s(key)?)?)
    };
    let headers = match &doc["headers"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), typed_header(v)?)))
            .collect::<Result<Headers>>()?,
        other => bail!("{}: headers is {other}", path.display()),
    };
    Ok(Fixture {
        name: s("name")?,
        kind: s("kind")?,
        exchange: s("exchange")?,
        routing_key: s("routing_key")?,
        raw: RawMessage {
            properties: properties(&doc["properties"])?,
            headers,
            body: b64("body")?,
        },
        headers_amqp: b64("headers_amqp")?,
        decoded: doc["decoded"].clone(),
        expect_error: doc["expect_error"].as_str().map(str::to_owned),
    })
}

/// Reads the fixture's typed header notation, e.g. `{"I": 5}`.
pub fn typed_header(value: &Value) -> Result<HeaderValue> {
    let (letter, inner) = value
        .as_object()
        .and_then(|m| m.iter().next())
        .with_context(|| format!("typed header {value} is not a one-key object"))?;
    let int = || {
        inner
            .as_i64()
            .with_context(|| format!("{letter}: {inner} is not an integer"))
    };
    Ok(match letter.as_str() {
        "V" => HeaderValue::Void,
        "t" => HeaderValue::Bool(inner.as_bool().context("t: not a bool")?),
        "S" | "s" => HeaderValue::Str(inner.as_str().context("S: not a string")?.to_owned()),
        "b" | "B" | "U" | "u" | "I" | "i" | "L" | "l" => HeaderValue::Int(int()?),
        "d" | "f" => HeaderValue::Float(inner.as_f64().context("d: not a number")?),
        "T" => HeaderValue::Timestamp(inner.as_u64().context("T: not a timestamp")?),
        "x" => HeaderValue::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(inner.as_str().context("x: not base64")?)?,
        ),
        "D" => HeaderValue::Decimal {
            scale: u8::try_from(inner[0].as_u64().context("D scale")?)?,
            value: i32::try_from(inner[1].as_i64().context("D value")?)?,
        },
        "A" => HeaderValue::Array(
            inner
                .as_array()
                .context("A: not a list")?
                .iter()
                .map(typed_header)
                .collect::<Result<_>>()?,
        ),
        "F" => HeaderValue::Table(
            inner
                .as_object()
                .context("F: not an object")?
                .iter()
                .map(|(k, v)| Ok((k.clone(), typed_header(v)?)))
                .collect::<Result<_>>()?,
        ),
        other => bail!("unknown AMQP type letter {other:?}"),
    })
}

fn properties(value: &Value) -> Result<Properties> {
    let s = |key: &str| value[key].as_str().map(str::to_owned);
    let byte = |key: &str| -> Result<Option<u8>> {
        value[key]
            .as_u64()
            .map(u8::try_from)
            .transpose()
            .map_err(Into::into)
    };
    Ok(Properties {
        content_type: s("content_type"),
        content_encoding: s("content_encoding"),
        correlation_id: s("correlation_id"),
        reply_to: s("reply_to"),
        delivery_mode: byte("delivery_mode")?,
        priority: byte("priority")?,
        expiration: s("expiration"),
    })
}
