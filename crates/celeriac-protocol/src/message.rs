//! Task messages: the raw form that travels over AMQP and the typed form
//! tasks and workers use, with the codec between them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, FixedOffset};
use serde_json::{Map, Value};

use crate::auth::{self, Signer, Verifier};
use crate::header::{HeaderValue, Headers};
use crate::{
    Compression, DecodeError, EncodeError, TaskBody, TaskHeaders, content, json, kombu, repr, v1,
};

/// RabbitMQ's default maximum message size, and our default decode limit.
pub const DEFAULT_MAX_BODY_SIZE: usize = 16 * 1024 * 1024;

/// The body size from which a decoded task keeps its arguments as text by
/// default. Chosen, not tuned: 1 KB bodies stay on the value path (their
/// cost is unchanged) and 10 KB ones take the text path and cost less;
/// sizes in between were not measured.
pub const KEEP_ARGS_AS_TEXT_FROM: usize = 4096;

/// The AMQP basic properties Celery uses (§1.2). Absent ones are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// `content_type`: the serializer's MIME type (`application/json`).
    pub content_type: Option<String>,
    /// `content_encoding`: `utf-8` for JSON.
    pub content_encoding: Option<String>,
    /// `correlation_id`: the task id (results are tagged with it).
    pub correlation_id: Option<String>,
    /// `reply_to`: the sender's RPC result queue.
    pub reply_to: Option<String>,
    /// `delivery_mode`: 2 is persistent, 1 transient.
    pub delivery_mode: Option<u8>,
    /// `priority`: 0–255 (Python sends 0 unless told otherwise).
    pub priority: Option<u8>,
    /// `expiration`: per-message TTL in milliseconds, as text.
    pub expiration: Option<String>,
}

/// A message as it travels: properties, header table and body bytes.
///
/// The broker crate converts between this and its AMQP client's types;
/// everything above it works with [`TaskMessage`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawMessage {
    /// AMQP basic properties.
    pub properties: Properties,
    /// The `application_headers` table.
    pub headers: Headers,
    /// The body, exactly as published (possibly compressed). Shared:
    /// cloning the message does not copy it, nor does decoding a plain
    /// (uncompressed, unsigned) body into a [`TaskMessage`] that keeps its
    /// arguments as text.
    pub body: Bytes,
}

/// Limits and trust applied while decoding.
#[derive(Debug, Clone)]
pub struct DecodeOptions {
    /// Largest body accepted, before and after decompression, in bytes.
    pub max_body_size: usize,
    /// Which bodies must be signed, and whose signatures are trusted.
    pub signatures: Signatures,
    /// Bodies at least this long (in bytes, after decompression) keep
    /// their text, and a task's arguments are read from it only as its
    /// parameters need them ([`Args`](crate::Args)); smaller ones are
    /// parsed into values at once, which costs less for them.
    pub keep_args_as_text_from: usize,
}

/// Whether bodies must be signed with Celery's `auth` serializer, and the
/// certificates their signatures are checked against.
#[derive(Debug, Clone, Default)]
pub enum Signatures {
    /// Unsigned bodies only: a signed one is refused, as nothing here can
    /// check it (the default, as Celery's without `setup_security()`).
    #[default]
    Unsigned,
    /// Signed bodies only, each verified (Celery's `setup_security()`,
    /// which sets `accept_content = ['auth']`); an unsigned one is refused.
    Required(Arc<Verifier>),
    /// A signed body is verified, an unsigned one accepted: for a fleet
    /// moving to signing, producer by producer.
    Optional(Arc<Verifier>),
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            signatures: Signatures::Unsigned,
            keep_args_as_text_from: KEEP_ARGS_AS_TEXT_FROM,
        }
    }
}

impl DecodeOptions {
    fn check_size(&self, size: usize) -> Result<(), DecodeError> {
        if size > self.max_body_size {
            return Err(DecodeError::TooLarge {
                size,
                limit: self.max_body_size,
            });
        }
        Ok(())
    }

    /// Checks the content type (and signature), decompresses and parses a
    /// body to JSON, validating every kombu envelope in it.
    pub(crate) fn decode_json(&self, raw: &RawMessage) -> Result<Value, DecodeError> {
        let text = self.decode_text(raw)?;
        parse_checked(&text)
    }

    /// Checks the content type (and signature) and decompresses: the
    /// body's JSON text, not yet parsed. A plain body is the raw message's
    /// own buffer, shared.
    fn decode_text(&self, raw: &RawMessage) -> Result<Bytes, DecodeError> {
        self.check_size(raw.body.len())?;
        let props = &raw.properties;
        let signed = auth::is_signed(props.content_type.as_deref());
        if !signed {
            content::check(
                props.content_type.as_deref(),
                props.content_encoding.as_deref(),
            )?;
            if let Signatures::Required(_) = self.signatures {
                return Err(DecodeError::Unsigned);
            }
        }
        let body = match raw.headers.get("compression") {
            None | Some(HeaderValue::Void) => raw.body.clone(),
            Some(header) => {
                let mime = header.as_str().ok_or_else(|| DecodeError::HeaderType {
                    name: "compression".into(),
                    expected: "a MIME type string",
                    found: header.type_name().into(),
                })?;
                let mut text =
                    Compression::from_mime(mime)?.decompress(&raw.body, self.max_body_size)?;
                // A decompressed body's buffer grew by doubling; the kept
                // text would hold all of it while the message is held.
                text.shrink_to_fit();
                text.into()
            }
        };
        if signed {
            return self.open(&body).map(Bytes::from);
        }
        Ok(body)
    }

    /// The inner body of a signed body, once its signature is verified.
    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, DecodeError> {
        let (Signatures::Required(verifier) | Signatures::Optional(verifier)) = &self.signatures
        else {
            return Err(DecodeError::ContentRefused {
                content_type: auth::CONTENT_TYPE.into(),
                reason: "the body is signed with Celery's auth serializer and no certificates \
                         to verify it are configured; give the worker the signers' \
                         certificates (--security-cert-store)",
            });
        };
        let inner = auth::open(verifier, sealed, SystemTime::now())
            .map_err(|e| DecodeError::BadSignature(e.to_string()))?;
        content::check(Some(&inner.content_type), Some(&inner.content_encoding))?;
        self.check_size(inner.body.len())?;
        Ok(inner.body)
    }
}

/// Which wire form a decoded message arrived in (we always send v2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Headers carry the metadata; body is `[args, kwargs, embed]`.
    V2,
    /// Empty headers; everything in an object body (§1.8).
    V1,
    /// A `task` header with a v1-style object body; treated as v2.
    Hybrid,
}

/// A Celery task message, decoded and typed.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskMessage {
    /// AMQP properties.
    pub properties: Properties,
    /// The typed v2 headers.
    pub headers: TaskHeaders,
    /// Args, kwargs and embed.
    pub body: TaskBody,
    /// The form it arrived in.
    pub protocol: Protocol,
}

impl TaskMessage {
    /// A new top-level task message with Python's defaults: persistent,
    /// priority 0, `correlation_id` = id, JSON.
    ///
    /// ```
    /// use celeriac_protocol::{DecodeOptions, TaskMessage};
    /// let msg = TaskMessage::new("proj.tasks.add", "0b6f2ad4-6b5e-4a7a-9f43-2b1c9d2f4e10")
    ///     .with_args(vec![2.into(), 2.into()]);
    /// let raw = msg.encode().unwrap();
    /// assert_eq!(raw.body, &br#"[[2, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#[..]);
    /// let back = TaskMessage::decode(&raw, &DecodeOptions::default()).unwrap();
    /// assert_eq!(back.body.args, msg.body.args);
    /// assert_eq!(back.headers.argsrepr.as_deref(), Some("(2, 2)"));
    /// ```
    pub fn new(task: impl Into<String>, id: impl Into<String>) -> TaskMessage {
        let headers = TaskHeaders::new(task, id);
        TaskMessage {
            properties: Properties {
                content_type: Some(content::JSON.into()),
                content_encoding: Some(content::UTF8.into()),
                correlation_id: Some(headers.id.clone()),
                reply_to: None,
                delivery_mode: Some(2),
                priority: Some(0),
                expiration: None,
            },
            headers,
            body: TaskBody::default(),
            protocol: Protocol::V2,
        }
    }

    /// Sets the positional arguments.
    pub fn with_args(mut self, args: Vec<Value>) -> TaskMessage {
        self.body.args = args.into();
        self
    }

    /// Sets the keyword arguments.
    pub fn with_kwargs(mut self, kwargs: Map<String, Value>) -> TaskMessage {
        self.body.kwargs = kwargs.into();
        self
    }

    /// Sets `eta`: the task does not run before `eta`.
    pub fn with_eta(mut self, eta: DateTime<FixedOffset>) -> TaskMessage {
        self.headers.eta = Some(eta);
        self
    }

    /// Sets `eta` to `now + countdown`, as Python's `countdown=` does.
    pub fn with_countdown(self, countdown: Duration, now: DateTime<FixedOffset>) -> TaskMessage {
        let eta = now + chrono::Duration::from_std(countdown).unwrap_or(chrono::Duration::MAX);
        self.with_eta(eta)
    }

    /// Sets `expires` and the matching AMQP `expiration` TTL (milliseconds
    /// left from `now`, `"0"` if already past), as Celery ≥ 5.3 does.
    pub fn with_expires(
        mut self,
        expires: DateTime<FixedOffset>,
        now: DateTime<FixedOffset>,
    ) -> TaskMessage {
        let left_ms = (expires - now).num_milliseconds().max(0);
        self.headers.expires = Some(expires);
        self.properties.expiration = Some(left_ms.to_string());
        self
    }

    /// Decodes a raw message (v2, v1 or hybrid), refusing anything that is
    /// too large, not JSON, malformed or not a task.
    pub fn decode(raw: &RawMessage, options: &DecodeOptions) -> Result<TaskMessage, DecodeError> {
        let text = options.decode_text(raw)?;
        let has_task_header = raw.headers.contains_key("task");
        if has_task_header && let Some(body) = body_as_text(&text, options) {
            return Ok(TaskMessage {
                properties: raw.properties.clone(),
                headers: TaskHeaders::from_headers(&raw.headers)?,
                body: body?,
                protocol: Protocol::V2,
            });
        }
        let (headers, body, protocol) = match parse_checked(&text)? {
            Value::Object(map) if has_task_header && map.contains_key("args") => {
                let (h, b) = v1::to_v2(map, &raw.headers)?;
                (h, b, Protocol::Hybrid)
            }
            value if has_task_header => (
                TaskHeaders::from_headers(&raw.headers)?,
                TaskBody::from_json(value)?,
                Protocol::V2,
            ),
            Value::Object(map) if map.contains_key("task") => {
                let (h, b) = v1::to_v2(map, &raw.headers)?;
                (h, b, Protocol::V1)
            }
            _ => return Err(DecodeError::UnknownMessage),
        };
        Ok(TaskMessage {
            properties: raw.properties.clone(),
            headers,
            body,
            protocol,
        })
    }

    /// Encodes as a protocol v2 message the way Python Celery would:
    /// Python-formatted JSON, `argsrepr`/`kwargsrepr` filled in when unset,
    /// body compressed if `headers.compression` is set.
    ///
    /// A body containing a malformed or unknown kombu envelope is refused:
    /// Python workers would drop such a message as undecodable.
    pub fn encode(&self) -> Result<RawMessage, EncodeError> {
        self.encode_signed(None)
    }

    /// Like [`encode`](Self::encode), and with a `signer` the body is
    /// signed as Celery's `auth` serializer signs it (then compressed, as
    /// kombu compresses what the serializer wrote).
    pub fn encode_signed(&self, signer: Option<&Signer>) -> Result<RawMessage, EncodeError> {
        encode_parts(
            self.headers.clone(),
            self.properties.clone(),
            &self.body,
            signer,
        )
    }

    /// [`encode_signed`](Self::encode_signed), consuming the message: its
    /// headers and properties move into the encoded one instead of being
    /// copied.
    pub fn into_signed(self, signer: Option<&Signer>) -> Result<RawMessage, EncodeError> {
        encode_parts(self.headers, self.properties, &self.body, signer)
    }
}

/// A message's parts encoded as [`TaskMessage::encode_signed`] says.
fn encode_parts(
    mut headers: TaskHeaders,
    mut properties: Properties,
    body: &TaskBody,
    signer: Option<&Signer>,
) -> Result<RawMessage, EncodeError> {
    if headers.argsrepr.is_none() {
        headers.argsrepr = Some(repr::args_repr(&body.args));
    }
    if headers.kwargsrepr.is_none() {
        headers.kwargsrepr = Some(repr::kwargs_repr(&body.kwargs));
    }
    let text = body.to_python_json().into_bytes();
    // The envelope walk only where the text names an envelope at all.
    if kombu::may_hold_envelope(&text) {
        kombu::validate(&body.to_json(), &mut String::from("body")).map_err(|err| match err {
            DecodeError::Envelope { path, detail } => EncodeError::Envelope { path, detail },
            other => EncodeError::Envelope {
                path: String::from("body"),
                detail: other.to_string(),
            },
        })?;
    }
    let (text, content_type) = match signer {
        Some(signer) => (
            auth::seal(signer, content::JSON, content::UTF8, &text),
            auth::CONTENT_TYPE,
        ),
        None => (text, content::JSON),
    };
    let body = match headers.compression {
        Some(c) => c.compress(&text)?,
        None => text,
    };
    properties.content_type = Some(content_type.into());
    properties.content_encoding = Some(content::UTF8.into());
    properties
        .correlation_id
        .get_or_insert_with(|| headers.id.clone());
    Ok(RawMessage {
        properties,
        headers: headers.into_headers(),
        body: body.into(),
    })
}

/// Parses JSON text, validating every kombu envelope in it.
fn parse_checked(text: &[u8]) -> Result<Value, DecodeError> {
    let value = json::from_slice(text)?;
    if kombu::may_hold_envelope(text) {
        kombu::validate(&value, &mut String::from("body"))?;
    }
    Ok(value)
}

/// A v2 body kept as text, split into its arguments' texts; `None` when it
/// is too small to be worth it, may hold a kombu envelope (which must be
/// validated as a value), or would not decode as values (the value decoder
/// then says what is wrong with it). So a body kept as text is one whose
/// every argument reads as a value.
fn body_as_text(text: &Bytes, options: &DecodeOptions) -> Option<Result<TaskBody, DecodeError>> {
    if text.len() < options.keep_args_as_text_from
        || kombu::may_hold_envelope(text)
        || !json::parses_as_values(text)
    {
        return None;
    }
    TaskBody::from_text(text.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(headers: Headers, body: &str) -> RawMessage {
        RawMessage {
            properties: Properties {
                content_type: Some("application/json".into()),
                content_encoding: Some("utf-8".into()),
                ..Properties::default()
            },
            headers,
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    fn v2_headers() -> Headers {
        TaskHeaders::new("t", "i").to_headers()
    }

    #[test]
    fn size_limit_applies_before_parsing() {
        let options = DecodeOptions {
            max_body_size: 8,
            ..DecodeOptions::default()
        };
        let err = TaskMessage::decode(&raw(v2_headers(), "[[1], {}, null]"), &options).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { size: 15, limit: 8 });
    }

    #[test]
    fn v1_and_hybrid_bodies_are_detected() {
        let v1 = raw(
            Headers::new(),
            r#"{"task": "t", "id": "i", "args": [1], "kwargs": {}}"#,
        );
        let msg = TaskMessage::decode(&v1, &DecodeOptions::default()).unwrap();
        assert_eq!(
            (msg.protocol, msg.body.args.into_values()),
            (Protocol::V1, vec![json!(1)])
        );

        let hybrid = raw(v2_headers(), r#"{"args": [2], "kwargs": {"k": 1}}"#);
        let msg = TaskMessage::decode(&hybrid, &DecodeOptions::default()).unwrap();
        assert_eq!(
            (msg.protocol, msg.headers.task.as_str()),
            (Protocol::Hybrid, "t")
        );
    }

    #[test]
    fn non_tasks_are_unknown_messages() {
        for body in ["[1, 2, 3]", r#"{"hello": 1}"#, "42"] {
            let err = TaskMessage::decode(&raw(Headers::new(), body), &DecodeOptions::default());
            assert_eq!(err.unwrap_err(), DecodeError::UnknownMessage, "{body}");
        }
    }

    #[test]
    fn a_body_kept_as_text_reads_and_re_encodes_as_it_arrived() {
        let msg = TaskMessage::new("t", "i")
            .with_args(vec![
                json!("x".repeat(5000)),
                serde_json::from_str("[1, 2.50, null]").unwrap(),
            ])
            .with_kwargs(json!({"k": {"nested": true}}).as_object().unwrap().clone());
        let raw = msg.encode().unwrap();
        let kept = TaskMessage::decode(&raw, &DecodeOptions::default()).unwrap();
        assert_eq!(kept.body.args.text(1), Some("[1, 2.50, null]"));
        assert_eq!(kept.body.kwargs.text("k"), Some(r#"{"nested": true}"#));
        assert_eq!(kept.body, msg.body);
        assert_eq!(kept.encode().unwrap().body, raw.body);
        let small = TaskMessage::new("t", "i")
            .with_args(vec![json!(1)])
            .encode()
            .unwrap();
        let parsed = TaskMessage::decode(&small, &DecodeOptions::default()).unwrap();
        assert_eq!(parsed.body.args.text(0), None);
    }

    #[test]
    fn a_body_kept_as_text_shares_the_raw_messages_buffer() {
        let raw = TaskMessage::new("t", "i")
            .with_args(vec![json!("x".repeat(5000))])
            .with_kwargs(json!({"k": [1, 2]}).as_object().unwrap().clone())
            .encode()
            .unwrap();
        let kept = TaskMessage::decode(&raw, &DecodeOptions::default()).unwrap();
        let buffer = raw.body.as_ptr_range();
        for text in [kept.body.args.text(0), kept.body.kwargs.text("k")] {
            let text = text.expect("kept as text").as_bytes().as_ptr_range();
            assert!(
                buffer.start <= text.start && text.end <= buffer.end,
                "an argument's text was copied out of the delivery's body"
            );
        }
    }

    #[test]
    fn bodies_kept_as_text_decode_as_bodies_read_as_values() {
        let as_text = DecodeOptions {
            keep_args_as_text_from: 0,
            ..DecodeOptions::default()
        };
        let as_values = DecodeOptions {
            keep_args_as_text_from: usize::MAX,
            ..DecodeOptions::default()
        };
        let deep = format!("[[{}1{}], {{}}, null]", "[".repeat(200), "]".repeat(200));
        let bodies = [
            r#"[[1, "two", {"x": [3.50]}], {"k": null, "j": [true]}, null]"#,
            r#"[null, null, {}]"#,
            r#"[[], {"a": 1, "b": 2, "a": 3}, null]"#,
            r#"[["\ud800"], {}, null]"#,
            r#"[["\ud83d\ude00"], {}, null]"#,
            r#"[[NaN], {}, null]"#,
            r#"[[{"$serde_json::private::Number": "x"}], {}, null]"#,
            r#"[[], {"$serde_json::private::Number": "1"}, null]"#,
            r#"[[{"$serde_json::private::RawValue": "[1]"}], {}, null]"#,
            r#"[[1], [2], null]"#,
            r#"[[1], {}, 5]"#,
            r#"[[1], {}]"#,
            r#"[[1], {}, null, 4]"#,
            r#"[[1], {}, null"#,
            deep.as_str(),
        ];
        for body in bodies {
            let message = raw(v2_headers(), body);
            let kept = TaskMessage::decode(&message, &as_text);
            assert_eq!(
                kept,
                TaskMessage::decode(&message, &as_values),
                "{body:.80}"
            );
        }
        let first = TaskMessage::decode(&raw(v2_headers(), bodies[0]), &as_text).unwrap();
        assert_eq!(first.body.args.text(2), Some(r#"{"x": [3.50]}"#));
    }

    #[test]
    fn compressed_bodies_round_trip() {
        for c in [Compression::Zlib, Compression::Bzip2, Compression::Lzma] {
            let mut msg = TaskMessage::new("t", "i").with_args(vec![json!("x")]);
            msg.headers.compression = Some(c);
            let encoded = msg.encode().unwrap();
            assert_ne!(encoded.body.first(), Some(&b'['));
            let back = TaskMessage::decode(&encoded, &DecodeOptions::default()).unwrap();
            assert_eq!(back.body.args, vec![json!("x")]);
        }
    }

    #[test]
    fn expires_sets_the_ttl_property() {
        let now = crate::time::parse_time("2030-01-01T00:00:00Z").unwrap();
        let msg = TaskMessage::new("t", "i")
            .with_expires(now + chrono::Duration::seconds(60), now)
            .with_countdown(Duration::from_secs(10), now);
        assert_eq!(msg.properties.expiration.as_deref(), Some("60000"));
        assert_eq!(msg.headers.eta, Some(now + chrono::Duration::seconds(10)));
    }

    /// A message whose body is a signed envelope by `signer` (the
    /// signature itself is junk: no certificate is needed to get as far as
    /// the signer lookup).
    fn signed_by(signer: &str) -> RawMessage {
        let mut raw = TaskMessage::new("t", "i").encode().unwrap();
        raw.body = auth::Envelope {
            signer: signer.into(),
            signature: vec![1, 2, 3],
            content_type: content::JSON.into(),
            content_encoding: content::UTF8.into(),
            body: raw.body.to_vec(),
        }
        .pack(auth::Layout::Celery55)
        .into();
        raw.properties.content_type = Some(auth::CONTENT_TYPE.into());
        raw
    }

    fn requiring_signatures() -> DecodeOptions {
        DecodeOptions {
            signatures: Signatures::Required(Arc::new(Verifier::default())),
            ..DecodeOptions::default()
        }
    }

    #[test]
    fn a_signed_message_is_refused_where_no_certificates_are_configured() {
        let err = TaskMessage::decode(&signed_by("CA 1"), &DecodeOptions::default()).unwrap_err();
        assert_eq!(err.reason(), "content_refused");
        assert!(err.to_string().contains("--security-cert-store"), "{err}");
    }

    #[test]
    fn an_unsigned_message_is_refused_where_signatures_are_required() {
        let raw = TaskMessage::new("t", "i").encode().unwrap();
        let err = TaskMessage::decode(&raw, &requiring_signatures()).unwrap_err();
        assert_eq!(err.reason(), "unsigned");
        let optional = DecodeOptions {
            signatures: Signatures::Optional(Arc::new(Verifier::default())),
            ..DecodeOptions::default()
        };
        assert!(TaskMessage::decode(&raw, &optional).is_ok());
    }

    #[test]
    fn a_signer_outside_the_store_is_named_in_the_refusal() {
        let err =
            TaskMessage::decode(&signed_by("Someone 42"), &requiring_signatures()).unwrap_err();
        assert_eq!(err.reason(), "bad_signature");
        assert!(err.to_string().contains("\"Someone 42\""), "{err}");
    }
}
