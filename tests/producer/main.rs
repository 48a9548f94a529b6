//! Rust producers: what `#[task]` calls and `send_task` put on the wire,
//! and Python Celery workers running what Rust sends.

mod python_worker;
mod wire;
