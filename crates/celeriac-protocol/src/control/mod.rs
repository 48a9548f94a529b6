//! Remote control (the pidbox, §6): the request a control client broadcasts,
//! who it is for, and the reply a worker sends back.
//!
//! A request is a JSON document published to the `celery.pidbox` fanout
//! exchange; every worker receives it and acts if it is one of the
//! request's destinations (or matches its pattern, or there is neither). A
//! request with a `reply_to` is a *call*: each acting worker answers with
//! `{"<nodename>": <value>}` tagged with the request's ticket.
//!
//! ```
//! use celeriac_protocol::control::ControlRequest;
//! use serde_json::json;
//!
//! let request = ControlRequest::new("rate_limit")
//!     .with_argument("task_name", json!("images.resize"))
//!     .with_argument("rate_limit", json!("10/m"))
//!     .to(vec!["celery@w1".into()]);
//! assert!(request.is_for("celery@w1"));
//! assert!(!request.is_for("celery@w2"));
//! ```

mod replies;

use serde_json::{Map, Value, json};

pub use replies::{
    ControlOutcome, DeliveryInfoDoc, PoolStats, QueueDoc, RequestInfo, ScheduledInfo, WorkerStats,
};

use crate::message::{DecodeOptions, RawMessage};
use crate::signature::kind_of;
use crate::{DecodeError, EncodeError, HeaderValue, Headers, Properties, content, json};

/// The exchange requests are broadcast on (`<control_exchange>.pidbox`).
pub const CONTROL_EXCHANGE: &str = "celery.pidbox";
/// The exchange replies are published to.
pub const REPLY_EXCHANGE: &str = "reply.celery.pidbox";

/// Where a call's replies go: Celery's `reply_to` of a control request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// The reply exchange (`reply.celery.pidbox`).
    pub exchange: String,
    /// The client's reply routing key (its oid).
    pub routing_key: String,
}

/// A control request (§6.2).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlRequest {
    /// The command (`ping`, `revoke`, `stats`, ...).
    pub method: String,
    /// The command's keyword arguments.
    pub arguments: Map<String, Value>,
    /// The node names that should act; `None` or empty means every node
    /// (unless `pattern` is set).
    pub destination: Option<Vec<String>>,
    /// A node-name pattern, used when there is no destination.
    pub pattern: Option<String>,
    /// How `pattern` matches: `glob` (Python's `fnmatch`) or `pcre`.
    pub matcher: Option<String>,
    /// Identifies a call's replies; present only on calls.
    pub ticket: Option<String>,
    /// Where a call's replies go; present only on calls.
    pub reply_to: Option<ReplyTo>,
}

impl ControlRequest {
    /// A request for `method` to every node, with no arguments.
    pub fn new(method: impl Into<String>) -> ControlRequest {
        ControlRequest {
            method: method.into(),
            arguments: Map::new(),
            destination: None,
            pattern: None,
            matcher: None,
            ticket: None,
            reply_to: None,
        }
    }

    /// Adds a keyword argument.
    pub fn with_argument(mut self, name: &str, value: Value) -> ControlRequest {
        self.arguments.insert(name.to_owned(), value);
        self
    }

    /// Limits the request to these node names.
    pub fn to(mut self, nodes: Vec<String>) -> ControlRequest {
        self.destination = Some(nodes);
        self
    }

    /// Makes the request a call: replies tagged `ticket` go to `reply_to`.
    pub fn expecting_reply(
        mut self,
        ticket: impl Into<String>,
        reply_to: ReplyTo,
    ) -> ControlRequest {
        self.ticket = Some(ticket.into());
        self.reply_to = Some(reply_to);
        self
    }

    /// Whether node `nodename` should act on this request, as kombu's
    /// `Node.handle_message` decides: a non-empty destination must name it;
    /// else a pattern (with its matcher) must match it; else every node acts.
    pub fn is_for(&self, nodename: &str) -> bool {
        if let Some(nodes) = self.destination.as_ref().filter(|d| !d.is_empty()) {
            return nodes.iter().any(|n| n == nodename);
        }
        match (&self.pattern, &self.matcher) {
            (Some(pattern), Some(matcher)) => matches(matcher, pattern, nodename),
            _ => true,
        }
    }

    /// Reads a request from a pidbox message.
    pub fn decode(
        raw: &RawMessage,
        options: &DecodeOptions,
    ) -> Result<ControlRequest, DecodeError> {
        let value = options.decode_json(raw)?;
        let Value::Object(mut doc) = value else {
            return Err(invalid(format!(
                "expected an object, found {}",
                kind_of(&value)
            )));
        };
        let Some(Value::String(method)) = doc.remove("method") else {
            return Err(invalid("`method` must be a string".into()));
        };
        let arguments = match doc.remove("arguments") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(arguments)) => arguments,
            Some(other) => {
                return Err(invalid(format!(
                    "`arguments` must be an object, found {}",
                    kind_of(&other)
                )));
            }
        };
        let destination = match doc.remove("destination") {
            None | Some(Value::Null) => None,
            Some(Value::Array(nodes)) => Some(
                nodes
                    .into_iter()
                    .map(|n| match n {
                        Value::String(n) => Ok(n),
                        other => Err(invalid(format!(
                            "`destination` must hold node names, found {}",
                            kind_of(&other)
                        ))),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(Value::String(node)) => Some(vec![node]),
            Some(other) => {
                return Err(invalid(format!(
                    "`destination` must be a list, found {}",
                    kind_of(&other)
                )));
            }
        };
        let text = |value: Option<Value>| match value {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let pattern = text(doc.remove("pattern"));
        let matcher = text(doc.remove("matcher"));
        let ticket = text(doc.remove("ticket"));
        let reply_to = match doc.remove("reply_to") {
            Some(Value::Object(mut to)) => Some(ReplyTo {
                exchange: text(to.remove("exchange")).unwrap_or_else(|| REPLY_EXCHANGE.into()),
                routing_key: text(to.remove("routing_key"))
                    .ok_or_else(|| invalid("`reply_to` has no routing_key".into()))?,
            }),
            _ => None,
        };
        Ok(ControlRequest {
            method,
            arguments,
            destination,
            pattern,
            matcher,
            ticket,
            reply_to,
        })
    }

    /// The message kombu's `Mailbox._publish` sends: the document, with the
    /// sender's `clock` and an `expires` time (Unix seconds) as headers.
    pub fn encode(&self, clock: u64, expires_at: f64) -> Result<RawMessage, EncodeError> {
        let mut doc = Map::new();
        doc.insert("method".into(), json!(self.method));
        doc.insert("arguments".into(), Value::Object(self.arguments.clone()));
        doc.insert("destination".into(), json!(self.destination));
        doc.insert("pattern".into(), json!(self.pattern));
        doc.insert("matcher".into(), json!(self.matcher));
        if let (Some(ticket), Some(reply_to)) = (&self.ticket, &self.reply_to) {
            doc.insert("ticket".into(), json!(ticket));
            doc.insert(
                "reply_to".into(),
                json!({"exchange": reply_to.exchange, "routing_key": reply_to.routing_key}),
            );
        }
        let mut headers = Headers::new();
        headers.insert("clock".into(), HeaderValue::Int(clamp(clock)));
        headers.insert("expires".into(), HeaderValue::Float(expires_at));
        Ok(json_message(&Value::Object(doc), headers, 2))
    }
}

/// A control reply (§6.3): one node's answer to a call.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlReply {
    /// The request's ticket.
    pub ticket: Option<String>,
    /// The replying node's Lamport clock.
    pub clock: Option<u64>,
    /// The node's name.
    pub node: String,
    /// What the command returned (`null` for commands that return nothing).
    pub value: Value,
}

impl ControlReply {
    /// `node`'s reply `value` to the call with `ticket`.
    pub fn new(ticket: impl Into<String>, node: impl Into<String>, value: Value) -> ControlReply {
        ControlReply {
            ticket: Some(ticket.into()),
            clock: None,
            node: node.into(),
            value,
        }
    }

    /// The reply message: `{"<node>": value}`, transient, with the ticket and
    /// the sender's clock as headers.
    pub fn encode(&self, clock: u64) -> RawMessage {
        let mut headers = Headers::new();
        if let Some(ticket) = &self.ticket {
            headers.insert("ticket".into(), HeaderValue::Str(ticket.clone()));
        }
        headers.insert("clock".into(), HeaderValue::Int(clamp(clock)));
        let mut body = Map::new();
        body.insert(self.node.clone(), self.value.clone());
        json_message(&Value::Object(body), headers, 1)
    }

    /// Reads a reply message; one body may carry several nodes' answers
    /// (kombu never sends that, but reads it), so this returns each.
    pub fn decode(
        raw: &RawMessage,
        options: &DecodeOptions,
    ) -> Result<Vec<ControlReply>, DecodeError> {
        let ticket = match raw.headers.get("ticket") {
            Some(HeaderValue::Str(t)) => Some(t.clone()),
            _ => None,
        };
        let clock = match raw.headers.get("clock") {
            Some(HeaderValue::Int(c)) => u64::try_from(*c).ok(),
            _ => None,
        };
        let Value::Object(doc) = options.decode_json(raw)? else {
            return Err(invalid("a control reply must be an object".into()));
        };
        Ok(doc
            .into_iter()
            .map(|(node, value)| ControlReply {
                ticket: ticket.clone(),
                clock,
                node,
                value,
            })
            .collect())
    }
}

/// Whether `name` matches `pattern` under kombu's matcher `matcher`.
/// Unknown matchers match nothing (kombu raises, and the node ignores the
/// request).
fn matches(matcher: &str, pattern: &str, name: &str) -> bool {
    match matcher {
        // Python's `fnmatch`: `*`, `?`, `[seq]`, `[!seq]`.
        "glob" => glob::Pattern::new(pattern).is_ok_and(|p| p.matches(name)),
        // Python's `re.match`: anchored at the start only.
        "pcre" => regex::Regex::new(&format!("^(?:{pattern})")).is_ok_and(|re| re.is_match(name)),
        _ => false,
    }
}

fn clamp(clock: u64) -> i64 {
    i64::try_from(clock).unwrap_or(i64::MAX)
}

fn invalid(detail: String) -> DecodeError {
    DecodeError::Control(detail)
}

/// A JSON message as kombu publishes control documents and events.
pub(crate) fn json_message<T: serde::Serialize + ?Sized>(
    body: &T,
    headers: Headers,
    delivery_mode: u8,
) -> RawMessage {
    RawMessage {
        properties: Properties {
            content_type: Some(content::JSON.into()),
            content_encoding: Some(content::UTF8.into()),
            delivery_mode: Some(delivery_mode),
            priority: Some(0),
            ..Properties::default()
        },
        headers,
        body: json::to_python_json(body).into_bytes().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_with_kombus_keys() {
        let request = ControlRequest::new("ping")
            .to(vec!["celery@w1".into()])
            .expecting_reply(
                "tkt-1",
                ReplyTo {
                    exchange: REPLY_EXCHANGE.into(),
                    routing_key: "oid-1".into(),
                },
            );
        let raw = request.encode(7, 1.5).unwrap();
        let text = String::from_utf8(raw.body.to_vec()).unwrap();
        assert_eq!(
            text,
            r#"{"method": "ping", "arguments": {}, "destination": ["celery@w1"], "pattern": null, "matcher": null, "ticket": "tkt-1", "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": "oid-1"}}"#
        );
        assert_eq!(raw.headers.get("clock"), Some(&HeaderValue::Int(7)));
        let back = ControlRequest::decode(&raw, &DecodeOptions::default()).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn destinations_patterns_and_broadcasts_pick_nodes_as_kombu_does() {
        let mut request = ControlRequest::new("ping");
        assert!(request.is_for("anyone@host"));
        request.destination = Some(vec![]);
        assert!(
            request.is_for("anyone@host"),
            "an empty destination is everyone"
        );
        request.pattern = Some("celery@w[0-9]*".into());
        request.matcher = Some("glob".into());
        assert!(request.is_for("celery@w12"));
        assert!(!request.is_for("celery@x1"));
        request.matcher = Some("pcre".into());
        request.pattern = Some(r"celery@w\d".into());
        assert!(request.is_for("celery@w1.example"));
        assert!(!request.is_for("x-celery@w1"));
        request.matcher = Some("nonsense".into());
        assert!(!request.is_for("celery@w1"));
    }

    #[test]
    fn glob_is_fnmatch() {
        for (pattern, name, expected) in [
            ("*", "", true),
            ("a*c", "abbbc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[!a]x", "bx", true),
            ("[!a]x", "ax", false),
            ("w[1-3]", "w2", true),
            ("w[1-3]", "w4", false),
        ] {
            assert_eq!(
                matches("glob", pattern, name),
                expected,
                "{pattern} vs {name}"
            );
        }
    }

    #[test]
    fn replies_carry_the_ticket_and_the_node() {
        let reply = ControlReply::new("tkt-9", "celeriac@w1", json!({"ok": "pong"}));
        let raw = reply.encode(3);
        assert_eq!(raw.properties.delivery_mode, Some(1));
        assert_eq!(raw.body, &br#"{"celeriac@w1": {"ok": "pong"}}"#[..]);
        let back = ControlReply::decode(&raw, &DecodeOptions::default()).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].ticket.as_deref(), Some("tkt-9"));
        assert_eq!(back[0].clock, Some(3));
        assert_eq!(back[0].value, json!({"ok": "pong"}));
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        let raw = json_message(&json!({"arguments": {}}), Headers::new(), 2);
        let error = ControlRequest::decode(&raw, &DecodeOptions::default()).unwrap_err();
        assert!(error.to_string().contains("method"), "{error}");
    }
}
