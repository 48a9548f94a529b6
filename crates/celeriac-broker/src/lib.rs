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
//! - [`field_table`]: Celery headers ⇄ AMQP tables in the types py-amqp reads
//!   correctly (wire reference §1.6.5).
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

mod ack;
mod config;
mod connection;
mod consume;
pub mod dead_letter;
mod error;
pub mod field_table;
mod operations;
mod publish;
mod routing;
mod topology;
pub mod url;

pub use ack::AckPolicy;
pub use config::BrokerConfig;
pub use connection::Broker;
pub use consume::{AckOutcome, ConsumeOptions, Consumer, Delivery};
pub use dead_letter::{DeadLetter, DeadLetterReason};
pub use error::{BrokerError, Inequivalent};
pub use field_table::{HeaderError, decode_headers, encode_headers};
pub use publish::basic_properties;
pub use routing::{Destination, RouteError, RouteOptions, Router};
pub use topology::{DeadLetterTopology, Exchange, ExchangeKind, Queue, QueueArguments, QueueType};
pub use url::{BrokerUrl, BrokerUrls, TlsOptions, UrlError};
