//! Task results: the [`ResultBackend`] trait, the [`AsyncResult`] handle
//! and the `rpc://` backend ([`RpcBackend`]).
//!
//! The backend sits behind a trait so key/value backends (Redis) and chord
//! bookkeeping can be added without touching producers or workers.

mod rpc;

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use celeriac_broker::BrokerError;
use celeriac_protocol::{ResultMeta, State};
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use rpc::RpcBackend;

use crate::Request;
use crate::error::{ResultError, TaskFailure};

/// A boxed future, as trait objects need.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where results are stored and read.
pub trait ResultBackend: Send + Sync + 'static {
    /// The `reply_to` to put on task messages whose result is wanted.
    fn reply_to(&self) -> Option<&str>;

    /// Gets ready to receive the result of `task_id`; called before the task
    /// is published.
    fn prepare<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Waits up to `timeout` for the task to reach a ready state; `None` on
    /// timeout.
    fn wait<'a>(
        &'a self,
        task_id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<ResultMeta>, BrokerError>>;

    /// The latest result document seen for `task_id`, if any.
    fn latest(&self, task_id: &str) -> Option<ResultMeta>;

    /// Every state seen for `task_id`, in order.
    fn history(&self, task_id: &str) -> Vec<State>;

    /// Stores a result for the task `request` describes (worker side).
    fn store<'a>(
        &'a self,
        meta: &'a ResultMeta,
        request: &'a Request,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;
}

/// A handle on a sent task's result.
///
/// ```no_run
/// # async fn demo(result: celeriac::AsyncResult<i64>) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let sum: i64 = result.get(Duration::from_secs(10)).await?;
/// # Ok(()) }
/// ```
pub struct AsyncResult<T = Value> {
    id: String,
    backend: Option<Arc<dyn ResultBackend>>,
    _output: PhantomData<fn() -> T>,
}

impl<T> Clone for AsyncResult<T> {
    fn clone(&self) -> Self {
        AsyncResult {
            id: self.id.clone(),
            backend: self.backend.clone(),
            _output: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for AsyncResult<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> AsyncResult<T> {
    /// A handle for task `id` read through `backend`.
    pub fn new(id: impl Into<String>, backend: Option<Arc<dyn ResultBackend>>) -> AsyncResult<T> {
        AsyncResult {
            id: id.into(),
            backend,
            _output: PhantomData,
        }
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The latest known state (`PENDING` until anything arrives).
    pub fn state(&self) -> State {
        self.backend
            .as_ref()
            .and_then(|b| b.latest(&self.id))
            .map_or(State::Pending, |meta| meta.status)
    }

    /// Every state seen so far, in order (e.g. `[RETRY, SUCCESS]`).
    pub fn history(&self) -> Vec<State> {
        self.backend
            .as_ref()
            .map(|b| b.history(&self.id))
            .unwrap_or_default()
    }

    /// Whether the task finished (`SUCCESS`, `FAILURE` or `REVOKED`).
    pub fn ready(&self) -> bool {
        self.state().is_ready()
    }

    /// Waits up to `timeout` for the final result document.
    pub async fn wait(&self, timeout: Duration) -> Result<ResultMeta, ResultError> {
        let backend = self
            .backend
            .as_ref()
            .ok_or_else(|| ResultError::NoBackend(self.id.clone()))?;
        match backend.wait(&self.id, timeout).await? {
            Some(meta) => Ok(meta),
            None => Err(ResultError::Timeout {
                id: self.id.clone(),
                waited: timeout,
                state: self.state(),
            }),
        }
    }

    /// Waits up to `timeout` for the result and returns it as `T`; a remote
    /// failure or revocation is [`ResultError::Failed`] with the remote
    /// exception's type, message and traceback.
    pub async fn get(&self, timeout: Duration) -> Result<T, ResultError> {
        self.get_as::<T>(timeout).await
    }

    /// Like [`get`](Self::get), reading the result as `U` (for tasks sent
    /// by name, whose result type the compiler cannot know):
    /// `app.send_task("add").args((2, 2)).apply().await?.get_as::<i64>(timeout)`.
    pub async fn get_as<U: DeserializeOwned>(&self, timeout: Duration) -> Result<U, ResultError> {
        let meta = self.wait(timeout).await?;
        if meta.status.propagates() {
            return Err(ResultError::Failed(failure(&meta)));
        }
        serde_json::from_value(meta.result.clone()).map_err(|e| ResultError::Decode {
            id: self.id.clone(),
            expected: std::any::type_name::<U>(),
            value: meta.result,
            detail: e.to_string(),
        })
    }
}

fn failure(meta: &ResultMeta) -> TaskFailure {
    let exc = meta.exception();
    TaskFailure {
        task_id: meta.task_id.clone(),
        state: meta.status.clone(),
        exc_type: exc
            .as_ref()
            .map_or_else(|| "UnknownError".to_owned(), |e| e.exc_type.clone()),
        exc_module: exc.as_ref().and_then(|e| e.exc_module.clone()),
        exc_message: exc
            .as_ref()
            .map(|e| e.exc_message.clone())
            .unwrap_or_default(),
        message: exc.as_ref().map_or_else(
            || meta.result.to_string(),
            celeriac_protocol::ExceptionInfo::message,
        ),
        traceback: meta.traceback.clone(),
    }
}
