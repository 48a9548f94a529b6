//! Unit tests of tasks, without a broker: [`apply`] runs a call eagerly
//! through the same serialization a worker uses, so a wrong argument or
//! result type fails in a unit test instead of in production.
//!
//! ```
//! use celeriac::{task, testing, TaskResult};
//!
//! #[task(name = "shop.total")]
//! async fn total(prices: Vec<u32>) -> TaskResult<u32> {
//!     Ok(prices.iter().sum())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! assert_eq!(testing::apply(&total, total::new(vec![3, 4])).await.unwrap(), 7);
//!
//! // What a Python caller sending the wrong type would get:
//! let wrong = celeriac::TaskCall::<u32>::new("shop.total", vec![serde_json::json!("3, 4")]);
//! let err = testing::apply(&total, wrong).await.unwrap_err();
//! assert!(err.to_string().contains("TypeError"), "{err}");
//! # }
//! ```
//!
//! For integration tests against a real broker and worker, see
//! `celeriac_worker::testing::TestWorker`.

use celeriac_protocol::{DecodeOptions, ResultMeta, State, TaskMessage};
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::{Arguments, Error, Request, ResultError, Task, TaskCall, TaskError};

/// Why an eager call did not produce a value.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EagerError {
    /// The call could not become a message (an argument does not serialize).
    #[error(transparent)]
    Call(#[from] Error),
    /// The task failed, asked to be retried, or rejected its message.
    #[error("the task did not succeed: {0}")]
    Task(TaskError),
    /// The task's result is not of the call's output type.
    #[error(transparent)]
    Result(#[from] ResultError),
}

/// Runs `call` of `task` now, in this process: the arguments go through a
/// real task message (encoded and decoded as on the wire, kombu envelopes
/// included), the task runs with a detached [`Request`] as the current one,
/// and its result goes through a real result document before it is read as
/// `O`. Panics are caught and reported as failures, as on a worker.
pub async fn apply<O: DeserializeOwned>(
    task: &dyn Task,
    call: TaskCall<O>,
) -> Result<O, EagerError> {
    if let Some(detail) = call.error {
        return Err(Error::Arguments {
            task: call.name,
            detail,
        }
        .into());
    }
    let id = call
        .options
        .task_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let raw = TaskMessage::new(call.name.clone(), id.clone())
        .with_args(call.args)
        .with_kwargs(call.kwargs)
        .encode()
        .map_err(Error::from)?;
    let message = TaskMessage::decode(&raw, &DecodeOptions::default())
        .map_err(|e| EagerError::Task(TaskError::new(e.to_string())))?;
    let request = Request::detached(&call.name, &id);
    let args = Arguments::new(
        &call.name,
        message.body.args.into_values(),
        message.body.kwargs.into_values(),
    );
    let run = crate::catch_panic(task.call(request.clone(), args));
    let value = crate::request::scope(request, run)
        .await
        .map_err(EagerError::Task)?;
    let stored = ResultMeta::new(&id, State::Success, value)
        .encode()
        .map_err(Error::from)?;
    let meta = ResultMeta::decode(&stored, &DecodeOptions::default())
        .map_err(|e| EagerError::Task(TaskError::new(e.to_string())))?;
    serde_json::from_value(meta.result.clone()).map_err(|e| {
        ResultError::Decode {
            id,
            expected: std::any::type_name::<O>(),
            value: Box::new(meta.result),
            detail: e.to_string(),
        }
        .into()
    })
}
