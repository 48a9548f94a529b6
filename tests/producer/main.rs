//! Rust producers: what `#[task]` calls and `send_task` put on the wire,
//! Python Celery workers running what Rust sends, and a producer's metrics.

mod metrics;
mod python_worker;
mod wire;
