//! # celeriac-worker
//!
//! Runs Celery tasks from RabbitMQ, fed by Python or Rust producers alike,
//! and never loses or silently drops one:
//!
//! - **late acks** by default: a message is acked only once its outcome is
//!   durable (result stored, retry or dead letter confirmed);
//! - **every outcome accounted for**: success, retry (republished with the
//!   same id, `retries + 1` and a new eta), failure (stored, errbacks sent,
//!   dead-lettered with the error), a dead letter with a reason for messages
//!   that cannot run (unknown task, undecodable, refused content, crash
//!   loop), or revoked when expired;
//! - **ETA**: short waits are held in the worker (at most half the prefetch
//!   window, so a burst of countdown tasks cannot stall the tasks behind
//!   it), long ones and the rest leave through Celery's delay topology
//!   instead of tripping RabbitMQ's `consumer_timeout`;
//! - **time limits** (soft: signalled; hard: the future is dropped) and
//!   **graceful shutdown**;
//! - **remote control and events**: `celery inspect`, `celery control` and
//!   Flower see and steer it as a Python worker (revocation, rate and time
//!   limits, consumers, pool size, shutdown; worker and task events);
//! - **metrics and probes**: Prometheus `/metrics` named as celery-exporter
//!   names them, `/healthz` and `/readyz` (`metrics_addr`, or
//!   [`Worker::metrics`] to serve them yourself).
//!
//! As a program: `celeriac_worker::main(App::builder().task(...))` gives any
//! binary the standard CLI (see [`cli::Args`]). Inside a program that does
//! other things (say an HTTP service that also sends tasks), run a [`Worker`]
//! on the same [`celeriac::App`]; [`testing::TestWorker`] does that for
//! integration tests of your own tasks.
//!
//! How a delivery flows: admission checks (decode, registry,
//! expiry, ETA), then the task runs, then its outcome is published through
//! one outbox and the delivery settled.

mod admission;
mod builtins;
mod burst;
mod chord;
pub mod cli;
mod cli_monitoring;
mod config;
mod config_file;
mod context;
mod control;
mod divert;
mod eta_holds;
mod events;
mod execute;
mod global_limits;
mod global_rates;
mod gone_queues;
mod handle;
mod isolation;
mod limits;
mod log_lines;
mod logging;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
mod outbox;
mod outcome;
mod pacer;
mod rate_limits;
mod revoked;
mod settle;
mod starts;
mod stats;
mod task_span;
pub mod testing;
mod tracker;
mod worker;

pub use burst::BURST_WINDOW;
pub use cli::main;
pub use config::{LimitOutage, WorkerConfig, expand_hostname};
pub use config_file::{ConfigFile, QueueSpec, RouteSpec, RouteTable};
pub use divert::REDELIVERIES_HEADER;
pub use metrics::Metrics;
pub use stats::{Stats, Summary};
pub use worker::{Worker, WorkerError};
