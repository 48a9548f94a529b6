//! # Celeriac
//!
//! Background tasks for Rust that speak Celery's protocol: Python producers
//! can call Rust tasks, Rust code can call Python tasks, and both read each
//! other's results.
//!
//! ```no_run
//! use std::time::Duration;
//! use celeriac::{task, App, TaskResult};
//!
//! #[task(name = "images.resize", max_retries = 5, retry_backoff = true, time_limit = 30)]
//! async fn resize(url: String, width: u32) -> TaskResult<String> {
//!     Ok(format!("{url}@{width}"))
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let app = App::builder()
//!     .broker_url("amqp://guest:guest@localhost:5672//")
//!     .result_backend("rpc://")
//!     .task(resize)
//!     .build()
//!     .await?;
//! let thumb = resize::new("https://example.com/a.png".into(), 800)
//!     .countdown(Duration::from_secs(10))
//!     .apply_async(&app)
//!     .await?;
//! let path: String = thumb.get(Duration::from_secs(30)).await?;
//! app.send_task("reports.build").args((42,)).apply().await?; // a Python task, by name
//! # Ok(()) }
//! ```
//!
//! - [`task`] turns a function into a [`Task`] (write one by hand if you
//!   prefer: see [`Task`]), and `my_task::new(...)` into a typed [`TaskCall`].
//! - [`App`] holds the broker connection, the [`Registry`], routes and the
//!   result backend.
//! - [`AsyncResult`] reads results (Redis or `rpc://`); [`chain`],
//!   [`group`] and [`chord`] build workflows.
//! - [`App::control`] is remote control: Celery's inspect and control
//!   commands, answered by Python and Rust workers.
//! - [`testing::apply`] runs a task eagerly, through the real argument and
//!   result serialization, for unit tests without a broker.
//!
//! Guides: `docs/tasks.md` (defining and sending tasks) and
//! `docs/interop-python.md` (calling Rust from Python and back).

mod app;
mod arguments;
mod call;
mod canvas;
pub mod control;
mod error;
pub mod metrics;
mod panic;
mod registry;
pub mod request;
pub mod result;
mod security;
mod task;
mod task_error;
pub mod testing;
mod topic;
mod unique;

/// The RabbitMQ layer (`celeriac-broker`), for workers and tools built on
/// the app: deliveries, consumers, dead letters, topology.
pub use celeriac_broker as broker;
/// Celery's message model and codecs (`celeriac-protocol`).
pub use celeriac_protocol as protocol;

pub use app::{App, AppBuilder, BROKER_URL_VARS, RESULT_BACKEND_VARS};
pub use arguments::Arguments;
pub use call::{SendOptions, SendTask, TaskCall};
pub use canvas::{Apply, CHORD_UNLOCK, Chain, Chord, Group, Step, chain, chord, group};
pub use celeriac_broker::{
    BrokerConfig, Exchange, ExchangeKind, Queue, QueueArguments, QueueDefaults, QueueType,
    RouteOptions,
};
pub use celeriac_macros::task;
pub use celeriac_protocol::kombu;
pub use celeriac_protocol::{ExceptionInfo, HeaderValue, Headers, ResultMeta, Signature, State};
pub use control::{Control, Reply, ReplyError};
pub use error::{Error, ResultError, TaskFailure};
pub use panic::catch_panic;
pub use registry::Registry;
pub use request::{DeliveryInfo, Request, Retry, SoftLimit};
pub use result::{
    AsyncResult, BACKEND_CLEANUP, BackendError, GroupResult, ResultBackend, ResultColumn,
    ResultSettings,
};
pub use security::Security;
pub use task::{RetryMatcher, Task, TaskFuture, TaskOptions};
pub use task_error::{
    RUST_EXCEPTION_MODULE, RetryRequest, TaskError, TaskErrorKind, python_exception,
};
pub use topic::Topic;
pub use unique::UNIQUE_KEY_HEADER;

/// What a task returns: its value, or a [`TaskError`].
pub type TaskResult<T> = Result<T, TaskError>;

/// Used by the code `#[task]` generates; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use serde_json;
    pub use tokio;

    use crate::TaskError;
    pub use crate::panic::{catch_panic, join_error, run_blocking};

    /// Serializes a task's return value. A task that returns a JSON value
    /// already has its result: it is passed on as it is, not rebuilt.
    pub fn output<T: serde::Serialize + 'static>(value: T) -> Result<serde_json::Value, TaskError> {
        let mut slot = Some(value);
        let any: &mut dyn std::any::Any = &mut slot;
        if let Some(Some(json)) = any
            .downcast_mut::<Option<serde_json::Value>>()
            .map(Option::take)
        {
            return Ok(json);
        }
        // `Some(v)` serializes as `v`.
        serde_json::to_value(slot)
            .map_err(|e| TaskError::new(format!("the task's result cannot be serialized: {e}")))
    }
}
