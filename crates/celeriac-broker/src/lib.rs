//! # celeriac-broker
//!
//! RabbitMQ for Celeriac, and the only crate that speaks AMQP: everything
//! above it works with Celery concepts (queues, routes, deliveries,
//! `celeriac_protocol::RawMessage`), never with AMQP client types.
//!
//! - [`BrokerUrl`] / [`BrokerUrls`]: Celery's URL rules, passwords redacted
//!   everywhere.
//! - [`Queue`], [`Exchange`], [`QueueArguments`]: topology as data, declared
//!   by default exactly as Python Celery declares it, so either side can
//!   declare first.
//! - [`Router`]: task name → [`Destination`], like `task_routes`.
//! - [`Broker`]: a supervised connection with confirmed, `mandatory`
//!   publishing ([`Broker::publish`]), late-ack consuming with a prefetch
//!   limit ([`Broker::consume`]), worker-published dead letters
//!   ([`Broker::dead_letter`]) and automatic recovery.
//! - [`delay`]: Celery's native delayed-delivery topology, for messages that
//!   must wait outside the worker ([`Broker::publish_delayed`]).
//! - Coordination held by RabbitMQ: locks ([`Broker::try_lock`]) and
//!   latest-value slots ([`Broker::save_latest`]).
//! - [`field_table`]: Celery headers ⇄ AMQP tables in the types py-amqp reads
//!   correctly (wire reference §1.6.5).
//!
//! Every queue and exchange Celeriac declares is declared here: task queues,
//! dead-letter queues, the delay topology, locks, `rpc://` reply queues
//! ([`Queue::rpc_reply`]), and the remote-control and event topology
//! ([`control`]). No lapin type appears in this crate's public API
//! (a workspace clippy rule keeps lapin out of every other crate).
//!
//! ```no_run
//! use celeriac_broker::{Broker, BrokerConfig, ConsumeOptions, Queue};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = Broker::connect(BrokerConfig::from_url("amqp://guest:guest@localhost:5672//")?).await?;
//! let queue = Queue::celery_default("celery");
//! broker.declare(&queue).await?;
//! let mut consumer = broker.consume(ConsumeOptions { queues: vec![queue], prefetch: 16 }).await?;
//! while let Some(delivery) = consumer.next().await {
//!     println!("{:?}", delivery.task(&Default::default()).map(|t| t.headers.task));
//!     delivery.ack().await?;
//! }
//! # Ok(()) }
//! ```

// The one crate that may use lapin's types (see clippy.toml); they stay
// behind its public API.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod ack;
mod config;
mod connection;
mod consume;
pub mod control;
pub mod dead_letter;
mod declare;
pub mod delay;
mod delivery;
mod error;
pub mod field_table;
mod lock;
mod operations;
mod publish;
mod returns;
mod routing;
mod topology;
pub mod url;
mod wire;

pub use ack::AckPolicy;
pub use config::BrokerConfig;
pub use connection::Broker;
pub use consume::{ConsumeOptions, Consumer, ConsumerHandle};
pub use dead_letter::{DeadLetter, DeadLetterReason};
pub use delivery::{AckOutcome, Delivery};
pub use error::{BrokerError, Inequivalent, ReplyCode};
pub use field_table::{HeaderError, decode_headers, encode_headers};
pub use routing::{Destination, QueueDefaults, RouteError, RouteOptions, Router};
pub use topology::{DeadLetterTopology, Exchange, ExchangeKind, Queue, QueueArguments, QueueType};
pub use url::{BrokerUrl, BrokerUrls, LoginMethod, TlsOptions, UrlError};
