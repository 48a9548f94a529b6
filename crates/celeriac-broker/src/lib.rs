//! # celeriac-broker
//!
//! The one Celeriac crate that speaks AMQP. Everything above it works with
//! Celery concepts (`celeriac_protocol::Headers`, queues, deliveries), never
//! with AMQP client types.
//!
//! So far it holds [`field_table`], the conversion between Celery headers and
//! AMQP field tables. That conversion is the subtle part of interop with
//! py-amqp: the Python client reads several AMQP type letters differently
//! from RabbitMQ and lapin (wire reference §1.6.5), so we only ever write
//! the types both sides agree on.

pub mod field_table;

pub use field_table::{HeaderError, decode_headers, encode_headers};
