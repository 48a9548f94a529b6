//! Exchanges, queues and bindings as data (§2.2).
//!
//! The defaults are declared exactly as a default Python Celery 5.7 worker
//! and producer declare them, so either side can declare first without
//! `406 PRECONDITION_FAILED`: a durable direct exchange named like the queue,
//! a durable, non-exclusive, non-auto-delete queue with **no arguments**, and
//! a binding with the queue name as key. Anything that changes queue
//! arguments (priorities, quorum, broker-native dead-lettering, TTLs) is
//! opt-in through [`QueueArguments`], and [`Queue::python_declaration`] prints
//! the matching `task_queues` entry for the Python side.

use std::fmt::Write as _;
use std::time::Duration;

use celeriac_protocol::{HeaderValue, Headers};

/// The exchange kinds RabbitMQ offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    /// Routes by exact routing key (Celery's default).
    Direct,
    /// Routes by routing-key pattern (`images.#`).
    Topic,
    /// Routes to every bound queue.
    Fanout,
    /// Routes by header values.
    Headers,
}

impl ExchangeKind {
    /// The kind's AMQP name (`direct`, `topic`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// An exchange declaration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Exchange {
    /// Name (`""` is the default exchange, which is never declared).
    pub name: String,
    /// Kind.
    pub kind: ExchangeKind,
    /// Survives a broker restart (Celery: true).
    pub durable: bool,
    /// Deleted when its last binding goes (Celery: false).
    pub auto_delete: bool,
    /// Where a message this exchange routes to no queue goes instead
    /// (RabbitMQ's `alternate-exchange` argument); Celery sets none.
    pub alternate_exchange: Option<String>,
}

impl Exchange {
    /// A durable direct exchange, as Celery declares task exchanges.
    pub fn direct(name: impl Into<String>) -> Exchange {
        Exchange::new(name, ExchangeKind::Direct)
    }

    /// A durable topic exchange.
    pub fn topic(name: impl Into<String>) -> Exchange {
        Exchange::new(name, ExchangeKind::Topic)
    }

    /// A durable exchange of `kind`.
    pub fn new(name: impl Into<String>, kind: ExchangeKind) -> Exchange {
        Exchange {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
            alternate_exchange: None,
        }
    }

    /// This exchange, sending what it cannot route to `alternate` instead
    /// of dropping it (or failing a mandatory publish).
    pub fn with_alternate_exchange(self, alternate: impl Into<String>) -> Exchange {
        Exchange {
            alternate_exchange: Some(alternate.into()),
            ..self
        }
    }

    /// The declaration's arguments, as RabbitMQ spells them.
    pub fn arguments(&self) -> Headers {
        let mut arguments = Headers::new();
        if let Some(alternate) = &self.alternate_exchange {
            arguments.insert(
                "alternate-exchange".into(),
                HeaderValue::Str(alternate.clone()),
            );
        }
        arguments
    }

    /// Whether this is the nameless default exchange.
    pub fn is_default(&self) -> bool {
        self.name.is_empty()
    }
}

/// Classic or quorum queue (`x-queue-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueType {
    /// A classic queue.
    Classic,
    /// A replicated quorum queue (no global QoS, supports `x-delivery-limit`).
    Quorum,
}

impl QueueType {
    /// The `x-queue-type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QueueType {
    type Err = String;

    /// `classic` or `quorum`, as Celery spells `x-queue-type`.
    fn from_str(text: &str) -> Result<QueueType, String> {
        match text {
            "classic" => Ok(QueueType::Classic),
            "quorum" => Ok(QueueType::Quorum),
            other => Err(format!(
                "unknown queue type {other:?}: use \"classic\" or \"quorum\""
            )),
        }
    }
}

/// Optional queue arguments. All unset by default, as in Python Celery.
///
/// Every one of these must be configured identically on the Python side
/// (`queue_arguments` of the `kombu.Queue` in `task_queues`), or whichever
/// side declares second gets `406 PRECONDITION_FAILED`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct QueueArguments {
    /// `x-max-priority`: enables priorities 0..=N.
    pub max_priority: Option<u8>,
    /// `x-queue-type`.
    pub queue_type: Option<QueueType>,
    /// `x-dead-letter-exchange`: where rejected/expired messages go.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-delivery-limit` (quorum queues): redeliveries before dead-lettering.
    pub delivery_limit: Option<u32>,
    /// `x-message-ttl`.
    pub message_ttl: Option<Duration>,
    /// `x-expires`: delete the queue after this long unused.
    pub expires: Option<Duration>,
    /// `x-max-length`: most messages the queue holds.
    pub max_length: Option<u32>,
    /// `x-overflow`: `drop-head`, `reject-publish` or `reject-publish-dlx`.
    pub overflow: Option<String>,
    /// `x-dead-letter-strategy` (quorum queues): `at-most-once` or `at-least-once`.
    pub dead_letter_strategy: Option<String>,
}

impl QueueArguments {
    /// The arguments as an AMQP table, with the value types Python sends
    /// (integers as signed 32-bit when they fit, strings as long strings).
    pub fn to_headers(&self) -> Headers {
        let mut h = Headers::new();
        let millis =
            |d: &Duration| HeaderValue::Int(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        if let Some(p) = self.max_priority {
            h.insert("x-max-priority".into(), HeaderValue::Int(i64::from(p)));
        }
        if let Some(t) = self.queue_type {
            h.insert("x-queue-type".into(), HeaderValue::Str(t.as_str().into()));
        }
        if let Some(dlx) = &self.dead_letter_exchange {
            h.insert(
                "x-dead-letter-exchange".into(),
                HeaderValue::Str(dlx.clone()),
            );
        }
        if let Some(key) = &self.dead_letter_routing_key {
            h.insert(
                "x-dead-letter-routing-key".into(),
                HeaderValue::Str(key.clone()),
            );
        }
        if let Some(limit) = self.delivery_limit {
            h.insert(
                "x-delivery-limit".into(),
                HeaderValue::Int(i64::from(limit)),
            );
        }
        if let Some(ttl) = &self.message_ttl {
            h.insert("x-message-ttl".into(), millis(ttl));
        }
        if let Some(expires) = &self.expires {
            h.insert("x-expires".into(), millis(expires));
        }
        if let Some(max) = self.max_length {
            h.insert("x-max-length".into(), HeaderValue::Int(i64::from(max)));
        }
        if let Some(overflow) = &self.overflow {
            h.insert("x-overflow".into(), HeaderValue::Str(overflow.clone()));
        }
        if let Some(strategy) = &self.dead_letter_strategy {
            h.insert(
                "x-dead-letter-strategy".into(),
                HeaderValue::Str(strategy.clone()),
            );
        }
        h
    }
}

/// A queue, the exchange it is bound to, and the binding key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Queue {
    /// Queue name.
    pub name: String,
    /// The exchange the queue is bound to.
    pub exchange: Exchange,
    /// Binding key (Celery: the queue name).
    pub routing_key: String,
    /// Survives a broker restart (Celery: true).
    pub durable: bool,
    /// Only usable by the declaring connection (Celery task queues: false).
    pub exclusive: bool,
    /// Deleted when its last consumer goes (Celery task queues: false).
    pub auto_delete: bool,
    /// Optional arguments.
    pub arguments: QueueArguments,
}

impl Queue {
    /// A task queue shaped exactly as Python Celery declares `name` by default
    /// (and as it auto-creates unknown queues): durable direct exchange
    /// `name`, binding key `name`, no arguments.
    ///
    /// ```
    /// use celeriac_broker::Queue;
    /// let q = Queue::celery_default("celery");
    /// assert_eq!(
    ///     q.python_declaration(),
    ///     "Queue('celery', Exchange('celery', type='direct'), routing_key='celery')"
    /// );
    /// ```
    pub fn celery_default(name: impl Into<String>) -> Queue {
        let name = name.into();
        Queue {
            exchange: Exchange::direct(name.clone()),
            routing_key: name.clone(),
            name,
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: QueueArguments::default(),
        }
    }

    /// A broadcast queue, as Python's `kombu.common.Broadcast(alias)`: a
    /// queue of this consumer's own (`bcast.<uuid>`, auto-delete) bound to
    /// the fanout exchange `alias`, so every worker consuming `alias` gets
    /// a copy of each message sent there. Routes and `-Q` name it by its
    /// alias.
    ///
    /// ```
    /// use celeriac_broker::Queue;
    /// let q = Queue::broadcast("reload_config");
    /// assert!(q.is_broadcast() && q.name.starts_with("bcast."));
    /// assert_eq!(q.exchange.name, "reload_config");
    /// ```
    pub fn broadcast(alias: impl Into<String>) -> Queue {
        let alias = alias.into();
        Queue {
            name: format!("bcast.{}", uuid::Uuid::new_v4()),
            exchange: Exchange::new(alias.clone(), ExchangeKind::Fanout),
            routing_key: alias,
            durable: true,
            exclusive: false,
            auto_delete: true,
            arguments: QueueArguments::default(),
        }
    }

    /// Whether this is a broadcast queue (auto-delete, on a fanout
    /// exchange): known by its exchange's name, declared only by the
    /// worker consuming it (a producer declares the exchange alone).
    pub fn is_broadcast(&self) -> bool {
        self.auto_delete && self.exchange.kind == ExchangeKind::Fanout
    }

    /// The name routes and `-Q` know this queue by: the exchange's for a
    /// broadcast queue, else its own.
    pub fn alias(&self) -> &str {
        if self.is_broadcast() {
            &self.exchange.name
        } else {
            &self.name
        }
    }

    /// A lock held by the declaring connection: an exclusive, auto-delete
    /// queue on the default exchange. RabbitMQ refuses it to every other
    /// connection (`405 RESOURCE_LOCKED`) and deletes it when the holder's
    /// connection ends. Used by [`Broker::try_lock`](crate::Broker::try_lock).
    pub fn lock(name: impl Into<String>) -> Queue {
        let name = name.into();
        Queue {
            exchange: Exchange::direct(""),
            routing_key: name.clone(),
            name,
            durable: false,
            exclusive: true,
            auto_delete: true,
            arguments: QueueArguments::default(),
        }
    }

    /// A durable slot holding only the newest message published to it
    /// (`x-max-length: 1`, `x-overflow: drop-head`), on the default
    /// exchange, a quorum queue if `queue_type` says so (a classic one
    /// declares no `x-queue-type`, as slots always have). Used by
    /// [`Broker::save_latest`](crate::Broker::save_latest).
    pub fn latest_value(name: impl Into<String>, queue_type: QueueType) -> Queue {
        let name = name.into();
        Queue {
            exchange: Exchange::direct(""),
            routing_key: name.clone(),
            name,
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: QueueArguments {
                max_length: Some(1),
                overflow: Some("drop-head".into()),
                queue_type: (queue_type == QueueType::Quorum).then_some(QueueType::Quorum),
                ..QueueArguments::default()
            },
        }
    }

    /// An `rpc://` reply queue exactly as Celery 5.7 declares it (§4.3):
    /// named by the client, on the default exchange, durable, auto-delete,
    /// not exclusive, `x-expires` = `result_expires`.
    pub fn rpc_reply(name: impl Into<String>, expires: Duration) -> Queue {
        let name = name.into();
        Queue {
            exchange: Exchange::direct(""),
            routing_key: name.clone(),
            name,
            durable: true,
            exclusive: false,
            auto_delete: true,
            arguments: QueueArguments {
                expires: Some(expires),
                ..QueueArguments::default()
            },
        }
    }

    /// Binds the queue to `exchange` with `routing_key` instead.
    pub fn bound_to(mut self, exchange: Exchange, routing_key: impl Into<String>) -> Queue {
        self.exchange = exchange;
        self.routing_key = routing_key.into();
        self
    }

    /// Replaces the optional arguments.
    pub fn with_arguments(mut self, arguments: QueueArguments) -> Queue {
        self.arguments = arguments;
        self
    }

    /// The `kombu.Queue(...)` entry that declares this queue identically from
    /// Python, for `task_queues`.
    pub fn python_declaration(&self) -> String {
        let mut out = format!(
            "Queue({}, Exchange({}, type={}",
            py_str(&self.name),
            py_str(&self.exchange.name),
            py_str(self.exchange.kind.as_str())
        );
        if !self.exchange.durable {
            out.push_str(", durable=False");
        }
        if self.exchange.auto_delete {
            out.push_str(", auto_delete=True");
        }
        let _ = write!(out, "), routing_key={}", py_str(&self.routing_key));
        if !self.durable {
            out.push_str(", durable=False");
        }
        if self.exclusive {
            out.push_str(", exclusive=True");
        }
        if self.auto_delete {
            out.push_str(", auto_delete=True");
        }
        let args = self.arguments.to_headers();
        if !args.is_empty() {
            let entries: Vec<String> = args
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        HeaderValue::Str(s) => py_str(s),
                        other => other.to_json().to_string(),
                    };
                    format!("{}: {value}", py_str(k))
                })
                .collect();
            let _ = write!(out, ", queue_arguments={{{}}}", entries.join(", "));
        }
        out.push(')');
        out
    }
}

fn py_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Names of the dead-letter exchange and queues.
///
/// Every task queue `q` gets a durable dead-letter queue `q.dead` (suffix
/// configurable), bound to one durable direct exchange
/// (`celeriac.dead-letter` by default) with key `q`. Both dead-letter modes
/// lead there: the worker publishes to the exchange with key `q`, and a queue
/// configured for broker-native dead-lettering names the same exchange and key
/// in `x-dead-letter-exchange` / `x-dead-letter-routing-key`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeadLetterTopology {
    /// The dead-letter exchange.
    pub exchange: String,
    /// Appended to a queue's name to name its dead-letter queue.
    pub queue_suffix: String,
    /// `x-queue-type` of the dead-letter queues: classic by default;
    /// quorum on a cluster, so that dead letters outlive the node holding
    /// them (an app's `default_queue_type` sets it). A dead-letter queue
    /// that already exists as the other type is used as it is.
    pub queue_type: QueueType,
}

impl Default for DeadLetterTopology {
    fn default() -> Self {
        DeadLetterTopology {
            exchange: "celeriac.dead-letter".into(),
            queue_suffix: ".dead".into(),
            queue_type: QueueType::Classic,
        }
    }
}

impl DeadLetterTopology {
    /// The dead-letter queue for `queue`.
    ///
    /// ```
    /// use celeriac_broker::DeadLetterTopology;
    /// let dlq = DeadLetterTopology::default().queue_for("images");
    /// assert_eq!((dlq.name.as_str(), dlq.exchange.name.as_str(), dlq.routing_key.as_str()),
    ///            ("images.dead", "celeriac.dead-letter", "images"));
    /// ```
    pub fn queue_for(&self, queue: &str) -> Queue {
        let mut dead = Queue::celery_default(format!("{queue}{}", self.queue_suffix))
            .bound_to(Exchange::direct(self.exchange.clone()), queue);
        if self.queue_type == QueueType::Quorum {
            dead.arguments.queue_type = Some(QueueType::Quorum);
        }
        dead
    }

    /// Adds broker-native dead-lettering into this topology to `queue`'s
    /// arguments (opt-in: it changes the queue's arguments, so the Python
    /// side must declare the same; see [`Queue::python_declaration`]).
    pub fn enable_native(&self, mut queue: Queue) -> Queue {
        queue.arguments.dead_letter_exchange = Some(self.exchange.clone());
        queue.arguments.dead_letter_routing_key = Some(queue.name.clone());
        queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_queue_has_no_arguments() {
        let q = Queue::celery_default("celery");
        assert!(q.arguments.to_headers().is_empty());
        assert!(q.durable && !q.exclusive && !q.auto_delete && q.exchange.durable);
    }

    #[test]
    fn arguments_use_python_types() {
        let args = QueueArguments {
            max_priority: Some(10),
            queue_type: Some(QueueType::Quorum),
            delivery_limit: Some(5),
            message_ttl: Some(Duration::from_secs(60)),
            ..QueueArguments::default()
        };
        let h = args.to_headers();
        assert_eq!(h["x-max-priority"], HeaderValue::Int(10));
        assert_eq!(h["x-queue-type"], HeaderValue::Str("quorum".into()));
        assert_eq!(h["x-message-ttl"], HeaderValue::Int(60_000));
    }

    #[test]
    fn python_declaration_names_every_argument() {
        let q = DeadLetterTopology::default().enable_native(
            Queue::celery_default("q").with_arguments(QueueArguments {
                max_priority: Some(10),
                ..QueueArguments::default()
            }),
        );
        assert_eq!(
            q.python_declaration(),
            "Queue('q', Exchange('q', type='direct'), routing_key='q', queue_arguments={\
             'x-dead-letter-exchange': 'celeriac.dead-letter', 'x-dead-letter-routing-key': 'q', \
             'x-max-priority': 10})"
        );
    }
}
