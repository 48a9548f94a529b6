//! [`AsyncResult`]: a handle on one task's result, like Celery's.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use celeriac_protocol::store::ResultTuple;
use celeriac_protocol::{ExceptionInfo, ResultMeta, State};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ResultBackend;
use crate::error::{ResultError, TaskFailure};

/// A handle on a task's result. Any number of handles, in any process, may
/// read the same result from a shared store (Redis) until it expires.
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

    /// The same handle, reading the result as `U`.
    pub fn typed<U: DeserializeOwned>(&self) -> AsyncResult<U> {
        AsyncResult::new(self.id.clone(), self.backend.clone())
    }

    /// The result tuple Celery stores for it (in groups and `children`).
    pub fn to_tuple(&self) -> ResultTuple {
        ResultTuple::task(self.id.clone())
    }

    fn backend(&self) -> Result<&Arc<dyn ResultBackend>, ResultError> {
        self.backend
            .as_ref()
            .ok_or_else(|| ResultError::NoBackend(self.id.clone()))
    }

    /// The stored result document, if there is one yet.
    pub async fn meta(&self) -> Result<Option<ResultMeta>, ResultError> {
        Ok(self.backend()?.get(&self.id).await?)
    }

    /// The current state: `PENDING` until anything is stored, then
    /// `STARTED`, `RETRY`, a custom state such as `PROGRESS`, and finally
    /// `SUCCESS`, `FAILURE` or `REVOKED`.
    pub async fn state(&self) -> Result<State, ResultError> {
        Ok(self.meta().await?.map_or(State::Pending, |m| m.status))
    }

    /// Whether the task finished (`SUCCESS`, `FAILURE` or `REVOKED`).
    pub async fn ready(&self) -> Result<bool, ResultError> {
        Ok(self.state().await?.is_ready())
    }

    /// What the current state carries (Celery's `AsyncResult.info`): the
    /// value for `SUCCESS`, the exception dict for `FAILURE`, the metadata
    /// a task stored with a custom state (`update_state`), `null` while
    /// `PENDING`.
    pub async fn info(&self) -> Result<Value, ResultError> {
        Ok(self.meta().await?.map_or(Value::Null, |m| m.result))
    }

    /// The stored traceback of a failure, if any.
    pub async fn traceback(&self) -> Result<Option<String>, ResultError> {
        Ok(self.meta().await?.and_then(|m| m.traceback))
    }

    /// Every state this process has seen for the task, in order (e.g.
    /// `[RETRY, SUCCESS]`).
    pub fn history(&self) -> Vec<State> {
        self.backend
            .as_ref()
            .map(|b| b.history(&self.id))
            .unwrap_or_default()
    }

    /// Deletes the stored result (Celery's `AsyncResult.forget`).
    pub async fn forget(&self) -> Result<(), ResultError> {
        Ok(self.backend()?.forget(&self.id).await?)
    }

    /// Waits up to `timeout` for the final result document.
    pub async fn wait(&self, timeout: Duration) -> Result<ResultMeta, ResultError> {
        let backend = self.backend()?;
        match backend.wait(&self.id, timeout).await? {
            Some(meta) => Ok(meta),
            None => Err(ResultError::Timeout {
                id: self.id.clone(),
                waited: timeout,
                state: backend
                    .get(&self.id)
                    .await
                    .ok()
                    .flatten()
                    .map_or(State::Pending, |m| m.status),
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
        value_of(meta)
    }
}

/// The value of a ready result document as `U`, or its failure.
fn value_of<U: DeserializeOwned>(meta: ResultMeta) -> Result<U, ResultError> {
    if meta.status.propagates() {
        return Err(ResultError::Failed(Box::new(failure(&meta))));
    }
    serde_json::from_value(meta.result.clone()).map_err(|e| ResultError::Decode {
        id: meta.task_id,
        expected: std::any::type_name::<U>(),
        value: Box::new(meta.result),
        detail: e.to_string(),
    })
}

/// The remote failure a `FAILURE` or `REVOKED` document describes.
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
        message: exc
            .as_ref()
            .map_or_else(|| meta.result.to_string(), ExceptionInfo::message),
        traceback: meta.traceback.clone(),
    }
}
