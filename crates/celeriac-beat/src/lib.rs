//! # celeriac-beat
//!
//! Celery beat's job, without its two famous problems: several beats never
//! send the same tick twice (one active beat, elected through a lock RabbitMQ
//! holds), and restarts neither repeat nor lose runs (state persisted on every
//! send, an explicit catch-up policy).
//!
//! - [`crontab`]: Celery's crontab semantics (day fields AND-ed, 0 = Sunday),
//!   compared with Python Celery's own results in the tests;
//! - [`schedule`]: entries (interval, crontab, one-off) and the TOML file;
//! - [`scheduler`]: the pure scheduling decisions;
//! - [`Beat`]: the loop, sending through the same confirmed producer path as
//!   `celeriac::App`, so Python workers run the tasks;
//! - [`metrics`]: Prometheus metrics and probes (`--metrics-addr`).
//!
//! Guide: `docs/beat.md`.

mod beat;
pub mod crontab;
mod error;
mod leader;
pub mod metrics;
pub mod schedule;
pub mod scheduler;
mod store;

pub use beat::{Beat, DUE_HEADER, ENTRY_HEADER, tick_id};
pub use error::BeatError;
pub use leader::Leadership;
pub use metrics::BeatMetrics;
pub use store::StateFile;
