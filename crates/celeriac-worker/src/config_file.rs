//! The TOML configuration file (`--config worker.toml`) and the queue and
//! route specifications that the file and the CLI share.
//!
//! ```toml
//! broker = "amqp://guest:guest@localhost:5672//"
//! result_backend = "rpc://"
//! queues = ["images", "celery"]      # consumed, like -Q
//! security_key = "/etc/celeriac/worker.key"          # signed messages,
//! security_certificate = "/etc/celeriac/worker.pem"  # as Celery's
//! security_cert_store = "/etc/celeriac/trusted/*.pem" # setup_security()
//! concurrency = 32
//! default_queue_type = "classic"     # Celery's task_default_queue_type
//! queue_max_priority = 10            # Celery's task_queue_max_priority
//! create_missing_queues = true       # Celery's task_create_missing_queues
//!
//! [task_queues.images]               # Celery's task_queues
//! queue_type = "quorum"
//! max_priority = 10
//! dead_letter = "native"             # or "worker" (the default)
//!
//! [rate_limits]                      # per worker, over each task's own
//! "mail.send" = "100/m"
//!
//! [task_routes]                      # Celery's task_routes, first match wins
//! "images.*" = "images"
//! "reports.build" = { queue = "reports", priority = 5 }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use celeriac::broker::{DeadLetterTopology, Exchange, ExchangeKind, Queue, QueueArguments};
use celeriac::{QueueType, RouteOptions};
use serde::Deserialize;

/// The TOML config file: every key optional, named like the CLI flags.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Broker URL.
    pub broker: Option<String>,
    /// Result backend URL.
    pub result_backend: Option<String>,
    /// PEM private key signing messages (Celery's `security_key`).
    pub security_key: Option<String>,
    /// PEM certificate of that key (`security_certificate`).
    pub security_certificate: Option<String>,
    /// Trusted signers' certificates: a file, directory or glob
    /// (`security_cert_store`).
    pub security_cert_store: Option<String>,
    /// Signature digest (`security_digest`, default `sha256`).
    pub security_digest: Option<String>,
    /// Signed-envelope layout to write: `5.5` or `5.4`.
    pub security_envelope: Option<String>,
    /// Accept unsigned messages too.
    pub security_accept_unsigned: Option<bool>,
    /// Queues to consume.
    pub queues: Option<Vec<String>>,
    /// Concurrency.
    pub concurrency: Option<usize>,
    /// Prefetch multiplier.
    pub prefetch_multiplier: Option<u16>,
    /// Node name.
    pub hostname: Option<String>,
    /// Log level.
    pub loglevel: Option<String>,
    /// Log line format (`text` or `json`).
    pub log_format: Option<String>,
    /// OTLP/HTTP collector the task spans are exported to.
    pub otlp_endpoint: Option<String>,
    /// Shutdown timeout in seconds.
    pub shutdown_timeout: Option<f64>,
    /// ETA horizon in seconds.
    pub eta_horizon: Option<f64>,
    /// ETA tasks held at once.
    pub eta_hold_limit: Option<usize>,
    /// Window of the consumer that moves a burst of ETA tasks.
    pub eta_burst_window: Option<u16>,
    /// Rate limits by task name (`[rate_limits]`, `"images.resize" = "10/s"`).
    pub rate_limits: Option<BTreeMap<String, String>>,
    /// Global limits' lease in seconds.
    pub global_lease: Option<f64>,
    /// `wait` or `run` while the store of global limits is unreachable.
    pub global_limits_outage: Option<String>,
    /// Redelivery limit.
    pub redelivery_limit: Option<u32>,
    /// Dead-letter final failures.
    pub dead_letter_failures: Option<bool>,
    /// Delay queue type (`quorum` or `classic`).
    pub delay_queue_type: Option<String>,
    /// Ack batch size.
    pub ack_batch: Option<u16>,
    /// Ack flush interval in milliseconds.
    pub ack_flush_ms: Option<u64>,
    /// Store `STARTED` when tasks start.
    pub track_started: Option<bool>,
    /// Seconds storing a result may retry an unreachable store.
    pub result_store_timeout: Option<f64>,
    /// Seconds results are kept.
    pub result_expires: Option<f64>,
    /// Store extended result fields.
    pub result_extended: Option<bool>,
    /// A prefix for result store keys.
    pub result_key_prefix: Option<String>,
    /// The database backend's `result` column format (`json` or `pickle`).
    pub database_result_column: Option<String>,
    /// `x-queue-type` of queues that set none (`classic` or `quorum`).
    pub default_queue_type: Option<String>,
    /// `x-max-priority` of queues that set none.
    pub queue_max_priority: Option<u8>,
    /// Whether queues that are not configured are created on first use.
    pub create_missing_queues: Option<bool>,
    /// Send task events.
    pub task_events: Option<bool>,
    /// Seconds between heartbeats (0: none).
    pub heartbeat_interval: Option<f64>,
    /// Answer remote control.
    pub remote_control: Option<bool>,
    /// Ask other workers for revoked ids at start-up.
    pub mingle: Option<bool>,
    /// The state db file.
    pub statedb: Option<std::path::PathBuf>,
    /// `HOST:PORT` of the metrics and probes listener.
    pub metrics_addr: Option<String>,
    /// Queue definitions by name (Celery's `task_queues`).
    #[serde(default)]
    pub task_queues: toml::Table,
    /// Routes by task name or glob, in order (Celery's `task_routes`).
    #[serde(default)]
    pub task_routes: toml::Table,
}

impl ConfigFile {
    /// Reads and parses a config file; errors name the line and field.
    pub fn load(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        ConfigFile::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses a config file's text.
    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The queue definitions of `[task_queues]`, in order.
    pub fn queues(&self) -> Result<Vec<Queue>, String> {
        self.task_queues
            .iter()
            .map(|(name, spec)| {
                let spec = QueueSpec::deserialize(spec.clone())
                    .map_err(|e| format!("task_queues.{name}: {e}"))?;
                spec.to_queue(name)
                    .map_err(|e| format!("task_queues.{name}: {e}"))
            })
            .collect()
    }

    /// The routes of `[task_routes]`, in order.
    pub fn routes(&self) -> Result<Vec<(String, RouteOptions)>, String> {
        self.task_routes
            .iter()
            .map(|(pattern, spec)| {
                let spec = RouteSpec::deserialize(spec.clone())
                    .map_err(|e| format!("task_routes.{pattern:?}: {e}"))?;
                Ok((pattern.clone(), spec.into_options()))
            })
            .collect()
    }
}

/// One entry of `task_queues`: how a queue is declared. Everything but the
/// name is optional; unset means Celery's default shape (durable direct
/// exchange named like the queue, binding key = queue name, no arguments).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueueSpec {
    /// The exchange it is bound to (default: the queue's name).
    pub exchange: Option<String>,
    /// `direct` (default), `topic`, `fanout` or `headers`.
    pub exchange_type: Option<String>,
    /// The binding key (default: the queue's name).
    pub routing_key: Option<String>,
    /// `x-queue-type`: `classic` or `quorum`.
    pub queue_type: Option<String>,
    /// `x-max-priority`.
    pub max_priority: Option<u8>,
    /// `worker` (default: the worker publishes dead letters) or `native`
    /// (the queue dead-letters rejected messages itself; changes its
    /// arguments).
    pub dead_letter: Option<String>,
    /// `x-delivery-limit` (quorum queues).
    pub delivery_limit: Option<u32>,
    /// `x-message-ttl`, in seconds.
    pub message_ttl: Option<f64>,
    /// `x-expires`, in seconds.
    pub expires: Option<f64>,
    /// `x-max-length`.
    pub max_length: Option<u32>,
    /// `x-overflow`: `drop-head`, `reject-publish` or `reject-publish-dlx`.
    pub overflow: Option<String>,
    /// `x-dead-letter-strategy` (quorum queues): `at-most-once` or
    /// `at-least-once`.
    pub dead_letter_strategy: Option<String>,
    /// A broadcast queue, as Python's `Broadcast(name)`: every worker
    /// consuming it gets its own auto-delete queue on the fanout exchange
    /// `name`, and a copy of each message. No other key may be set with it.
    pub broadcast: Option<bool>,
}

impl QueueSpec {
    /// Parses the CLI form `name` or `name:key=value,key=value` (keys as in
    /// the TOML file), e.g. `images:queue_type=quorum,max_priority=10`.
    pub fn parse_flag(flag: &str) -> Result<(String, QueueSpec), String> {
        let (name, rest) = flag.split_once(':').unwrap_or((flag, ""));
        if name.is_empty() {
            return Err(format!("--task-queue {flag:?}: the queue name is missing"));
        }
        let mut table = toml::Table::new();
        for pair in rest.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| {
                format!("--task-queue {flag:?}: expected key=value, got {pair:?}")
            })?;
            table.insert(key.trim().to_owned(), toml_value(value.trim()));
        }
        let spec =
            QueueSpec::deserialize(table).map_err(|e| format!("--task-queue {flag:?}: {e}"))?;
        Ok((name.to_owned(), spec))
    }

    /// The queue declaration for queue `name`.
    pub fn to_queue(&self, name: &str) -> Result<Queue, String> {
        if self.broadcast == Some(true) {
            let alone = QueueSpec {
                broadcast: None,
                ..self.clone()
            };
            if alone != QueueSpec::default() {
                return Err(format!(
                    "queue {name}: broadcast = true takes no other setting (its queue is \
                     each worker's own, auto-delete, on the fanout exchange {name})"
                ));
            }
            return Ok(Queue::broadcast(name));
        }
        let kind = match self.exchange_type.as_deref().unwrap_or("direct") {
            "direct" => ExchangeKind::Direct,
            "topic" => ExchangeKind::Topic,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            other => {
                return Err(format!(
                    "exchange_type {other:?}: use direct, topic, fanout or headers"
                ));
            }
        };
        let exchange = Exchange::new(self.exchange.as_deref().unwrap_or(name), kind);
        let seconds = |value: Option<f64>, key: &str| match value {
            None => Ok(None),
            Some(s) if s.is_finite() && s >= 0.0 => Ok(Some(Duration::from_secs_f64(s))),
            Some(s) => Err(format!(
                "{key} must be a non-negative number of seconds, got {s}"
            )),
        };
        let queue_type = self
            .queue_type
            .as_deref()
            .map(str::parse::<QueueType>)
            .transpose()?;
        let arguments = QueueArguments {
            max_priority: self.max_priority,
            queue_type,
            delivery_limit: self.delivery_limit,
            message_ttl: seconds(self.message_ttl, "message_ttl")?,
            expires: seconds(self.expires, "expires")?,
            max_length: self.max_length,
            overflow: self.overflow.clone(),
            dead_letter_strategy: self.dead_letter_strategy.clone(),
            ..QueueArguments::default()
        };
        let queue = Queue::celery_default(name)
            .bound_to(exchange, self.routing_key.as_deref().unwrap_or(name))
            .with_arguments(arguments);
        match self.dead_letter.as_deref().unwrap_or("worker") {
            "worker" => Ok(queue),
            "native" => Ok(DeadLetterTopology::default().enable_native(queue)),
            other => Err(format!(
                "dead_letter {other:?}: use \"worker\" or \"native\""
            )),
        }
    }
}

/// One entry of `task_routes`: a queue name, or routing options.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum RouteSpec {
    /// `"images.*" = "images"`.
    Queue(String),
    /// `"reports.build" = { queue = "reports", priority = 5 }`.
    Options(RouteTable),
}

/// The table form of a route.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteTable {
    /// Queue name.
    pub queue: Option<String>,
    /// Exchange name.
    pub exchange: Option<String>,
    /// Routing key.
    pub routing_key: Option<String>,
    /// Message priority.
    pub priority: Option<u8>,
}

impl RouteSpec {
    /// Parses the CLI form `PATTERN=QUEUE`, e.g. `images.*=images`.
    pub fn parse_flag(flag: &str) -> Result<(String, RouteSpec), String> {
        match flag.rsplit_once('=') {
            Some((pattern, queue)) if !pattern.is_empty() && !queue.is_empty() => {
                Ok((pattern.to_owned(), RouteSpec::Queue(queue.to_owned())))
            }
            _ => Err(format!(
                "--route {flag:?}: expected PATTERN=QUEUE, e.g. \"images.*=images\""
            )),
        }
    }

    /// The route as routing options.
    pub fn into_options(self) -> RouteOptions {
        match self {
            RouteSpec::Queue(queue) => RouteOptions {
                queue: Some(queue),
                ..RouteOptions::default()
            },
            RouteSpec::Options(t) => RouteOptions {
                queue: t.queue,
                exchange: t.exchange,
                routing_key: t.routing_key,
                priority: t.priority,
            },
        }
    }
}

/// A CLI value as TOML would read it (`10` a number, `true` a bool), else
/// a string.
fn toml_value(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broadcast_queue_takes_no_other_setting() {
        let (name, spec) = QueueSpec::parse_flag("reload:broadcast=true").unwrap();
        let queue = spec.to_queue(&name).unwrap();
        assert!(queue.is_broadcast() && queue.exchange.name == "reload");
        let (name, spec) = QueueSpec::parse_flag("reload:broadcast=true,max_priority=5").unwrap();
        let err = spec.to_queue(&name).unwrap_err();
        assert!(err.contains("takes no other setting"), "{err}");
    }

    #[test]
    fn config_files_reject_unknown_keys_with_the_line() {
        let err = ConfigFile::parse("queues = [\"a\"]\nconcurency = 4\n").unwrap_err();
        assert!(err.contains("concurency"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let ok = ConfigFile::parse("concurrency = 4\nshutdown_timeout = 1.5").unwrap();
        assert_eq!(ok.concurrency, Some(4));
    }

    #[test]
    fn task_queues_become_declarations() {
        let file = ConfigFile::parse(
            r#"
            [task_queues.images]
            queue_type = "quorum"
            max_priority = 10
            dead_letter = "native"

            [task_queues.events]
            exchange = "events"
            exchange_type = "topic"
            routing_key = "user.#"
            "#,
        )
        .unwrap();
        let queues = file.queues().unwrap();
        assert_eq!(queues.len(), 2);
        let images = &queues[0];
        assert_eq!(images.name, "images");
        assert_eq!(images.arguments.queue_type, Some(QueueType::Quorum));
        assert_eq!(images.arguments.max_priority, Some(10));
        assert_eq!(
            images.arguments.dead_letter_exchange.as_deref(),
            Some("celeriac.dead-letter")
        );
        let events = &queues[1];
        assert_eq!(events.exchange.kind, ExchangeKind::Topic);
        assert_eq!(events.routing_key, "user.#");
        let bad = ConfigFile::parse("[task_queues.q]\nqueue_type = \"fast\"").unwrap();
        assert!(bad.queues().unwrap_err().contains("classic"));
        let typo = ConfigFile::parse("[task_queues.q]\nmax_prio = 1").unwrap();
        assert!(typo.queues().unwrap_err().contains("max_prio"));
    }

    #[test]
    fn task_routes_keep_their_order() {
        let file = ConfigFile::parse(
            r#"
            [task_routes]
            "z.exact" = "first"
            "a.*" = { queue = "second", priority = 5 }
            "#,
        )
        .unwrap();
        let routes = file.routes().unwrap();
        assert_eq!(routes[0].0, "z.exact");
        assert_eq!(routes[0].1.queue.as_deref(), Some("first"));
        assert_eq!(routes[1].1.priority, Some(5));
    }

    #[test]
    fn flags_use_the_file_keys() {
        let (name, spec) =
            QueueSpec::parse_flag("images:queue_type=quorum,max_priority=10").unwrap();
        assert_eq!(name, "images");
        assert_eq!(spec.max_priority, Some(10));
        assert_eq!(spec.queue_type.as_deref(), Some("quorum"));
        assert!(QueueSpec::parse_flag("plain").unwrap().1 == QueueSpec::default());
        assert!(QueueSpec::parse_flag("q:max_priority").is_err());
        let (pattern, route) = RouteSpec::parse_flag("images.*=images").unwrap();
        assert_eq!(pattern, "images.*");
        assert_eq!(route.into_options().queue.as_deref(), Some("images"));
        assert!(RouteSpec::parse_flag("images.*").is_err());
    }
}
