//! The worker against the real RabbitMQ: every outcome of a task, messages
//! that cannot run, time limits, ETAs (and bursts of them that must not
//! stall other tasks), priorities, graceful shutdown, configuration, the
//! embedded worker and test harness, dead letters through the admin
//! library, metrics, probes and JSON logs, and a Python app using Rust tasks.

mod config;
mod dlq;
mod embedded;
mod eta_burst;
mod fanout;
mod global_limits;
mod logs;
mod metrics;
mod otlp;
mod outcomes;
mod python;
mod rate_limit;
mod reply_queue;
mod security;
mod shutdown;
mod skip_succeeded;
mod unique;
