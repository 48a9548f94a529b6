//! # celeriac-cli
//!
//! The `celeriac` admin command for operators of Celeriac and Celery
//! deployments on RabbitMQ, and the library behind it:
//!
//! - [`dlq`]: dead letters: list, show, requeue and purge them without ever
//!   losing one;
//! - [`dashboard`]: `celeriac dashboard`, the same on a web page, with
//!   queues and workers live;
//! - `celeriac queues`: ready messages and consumers per queue;
//! - `celeriac send`: send a task by name;
//! - [`remote`]: `celeriac inspect` and `celeriac control`, Celery's remote
//!   control, answered by Python and Rust workers.
//!
//! Install it with `cargo install celeriac-cli`; guide: `docs/operations.md`.

pub mod dashboard;
pub mod dlq;
pub mod remote;
