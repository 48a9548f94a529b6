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
//! - **ETA**: short waits are held in the worker, long ones leave through
//!   Celery's delay topology instead of tripping RabbitMQ's
//!   `consumer_timeout`;
//! - **time limits** (soft: signalled; hard: the future is dropped) and
//!   **graceful shutdown**.
//!
//! As a program: `celeriac_worker::main(App::builder().task(...))` gives any
//! binary the standard CLI (see [`cli::Args`]). Embedded: [`Worker`].

pub mod admin;
pub mod cli;
mod config;
mod delay;
pub mod demo;
mod handle;
mod worker;

pub use cli::main;
pub use config::{ConfigFile, WorkerConfig};
pub use handle::REDELIVERIES_HEADER;
pub use worker::{Stats, Summary, Worker, WorkerError};
