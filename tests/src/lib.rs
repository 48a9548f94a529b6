//! Shared helpers for Celeriac's integration and Python interop tests, so
//! no test binary carries its own copy:
//!
//! - [`browser`]: headless Chromium through chromedriver;
//! - [`cluster`]: a 3-node RabbitMQ cluster of the test's own;
//! - [`fixtures`]: messages captured from the pinned Python Celery;
//! - [`postgres`]: a database of the test's own, for the SQL result backend;
//! - [`python`]: the interop virtualenv, Python scripts and Celery workers;
//! - [`rabbit`]: the test broker, `rabbitmqctl`, and the guard for tests
//!   that disturb the broker;
//! - [`redis_server`]: a private Redis, for tests that restart it;
//! - [`scrape`]: a worker's metrics and probes over HTTP;
//! - [`ticks`]: beat's ticks as a failover test receives and checks them;
//! - [`tls`]: a RabbitMQ node and a Redis with TLS listeners, and the
//!   certificates for them;
//! - [`worker`]: apps, in-process and out-of-process Celeriac workers, dead
//!   letters and cleanup.

use std::path::{Path, PathBuf};

pub mod browser;
pub mod cluster;
pub mod fixtures;
pub mod postgres;
pub mod python;
pub mod rabbit;
pub mod redis_server;
pub mod scrape;
pub mod ticks;
pub mod tls;
pub mod worker;

pub use fixtures::{Fixture, all_fixtures, fixture, oldest_celery_fixtures, typed_header};
pub use python::{PythonWorker, celery_version, interop_python, interop_result_column};
pub use rabbit::{
    ConsumerTimeout, broker_url, connect, delete_queue, disturbing, queue_stats, rabbitmqctl,
    redis_url, require_redis, restore_broker, unique,
};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}
