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
//! - [`AsyncResult`] reads results through the `rpc://` backend.
//!
//! Guides: `docs/tasks.md` (defining and sending tasks) and
//! `docs/interop-python.md` (calling Rust from Python and back).

mod app;
mod arguments;
mod call;
mod error;
mod registry;
pub mod request;
pub mod result;
mod task;
mod task_error;

pub use app::{App, AppBuilder, BROKER_URL_VARS, RESULT_BACKEND_VARS};
pub use arguments::Arguments;
pub use call::{SendOptions, SendTask, TaskCall};
pub use celeriac_broker::{BrokerConfig, Exchange, Queue, QueueArguments, QueueType, RouteOptions};
pub use celeriac_macros::task;
pub use celeriac_protocol::kombu;
pub use celeriac_protocol::{ExceptionInfo, HeaderValue, Headers, ResultMeta, Signature, State};
pub use error::{Error, ResultError, TaskFailure};
pub use registry::Registry;
pub use request::{DeliveryInfo, Request, Retry};
pub use result::{AsyncResult, ResultBackend};
pub use task::{RetryMatcher, Task, TaskFuture, TaskOptions};
pub use task_error::{RUST_EXCEPTION_MODULE, RetryRequest, TaskError, TaskErrorKind};

/// What a task returns: its value, or a [`TaskError`].
pub type TaskResult<T> = Result<T, TaskError>;

/// Used by the code `#[task]` generates; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use serde_json;
    pub use tokio;

    use crate::TaskError;

    /// Serializes a task's return value.
    pub fn output<T: serde::Serialize>(value: T) -> Result<serde_json::Value, TaskError> {
        serde_json::to_value(value)
            .map_err(|e| TaskError::new(format!("the task's result cannot be serialized: {e}")))
    }

    /// Turns a panic in a blocking task into a failure.
    pub fn join_error(error: tokio::task::JoinError) -> TaskError {
        match error.try_into_panic() {
            Ok(payload) => panicked(payload.as_ref()),
            Err(error) => TaskError::new(format!("the task was cancelled: {error}")),
        }
    }

    /// Runs a task's future, turning a panic into a failure.
    pub fn catch_panic<F>(future: F) -> crate::TaskFuture
    where
        F: std::future::Future<Output = Result<serde_json::Value, TaskError>> + Send + 'static,
    {
        Box::pin(CatchPanic(Box::pin(future)))
    }

    struct CatchPanic<F>(std::pin::Pin<Box<F>>);

    impl<F> std::future::Future for CatchPanic<F>
    where
        F: std::future::Future<Output = Result<serde_json::Value, TaskError>>,
    {
        type Output = F::Output;

        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<F::Output> {
            let inner = self.0.as_mut();
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
                Ok(poll) => poll,
                Err(payload) => std::task::Poll::Ready(Err(panicked(payload.as_ref()))),
            }
        }
    }

    fn panicked(payload: &(dyn std::any::Any + Send)) -> TaskError {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".to_owned());
        TaskError::python(
            crate::task_error::RUST_EXCEPTION_MODULE,
            "TaskPanicked",
            format!("the task panicked: {message}"),
        )
    }
}
