//! The errors of the `celeriac` crate's producer and result APIs.

use std::time::Duration;

use celeriac_broker::{BrokerError, RouteError, UrlError};

use crate::result::BackendError;
use celeriac_protocol::{EncodeError, State};
use serde_json::Value;
use thiserror::Error;

/// Something the app could not do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A broker URL is invalid.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// A task route is invalid.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The broker refused or could not take the message.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The message could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The result backend could not do what sending needs of it (prepare a
    /// reply queue, record a chord's size).
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Arguments given to `send_task` are not what Celery expects.
    #[error("invalid arguments for task {task}: {detail}")]
    Arguments {
        /// Task name.
        task: String,
        /// What is wrong.
        detail: String,
    },
}

impl Error {
    /// Whether trying again later can succeed (the broker was unreachable
    /// or did not confirm in time).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Broker(e) => e.is_retryable(),
            Error::Backend(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// Why a result could not be had.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ResultError {
    /// The app has no result backend.
    #[error(
        "no result backend is configured, so results of task {0} cannot be read; \
         set `.result_backend(\"redis://...\")` or `.result_backend(\"rpc://\")` on the App \
         (or CELERIAC_RESULT_BACKEND)"
    )]
    NoBackend(String),
    /// The task did not finish in time.
    #[error("task {id} did not finish within {waited:.1?} (last state {state})")]
    Timeout {
        /// Task id.
        id: String,
        /// How long we waited.
        waited: Duration,
        /// The last state seen (`PENDING` if none).
        state: State,
    },
    /// The task failed (or was revoked); carries the remote error.
    #[error("{0}")]
    Failed(Box<TaskFailure>),
    /// The result is not of the type asked for.
    #[error("task {id} returned {value}, which is not a {expected}: {detail}")]
    Decode {
        /// Task id.
        id: String,
        /// The type asked for.
        expected: &'static str,
        /// The returned JSON.
        value: Box<Value>,
        /// The deserializer's message.
        detail: String,
    },
    /// The result backend failed.
    #[error("result backend: {0}")]
    Backend(#[from] BackendError),
}

/// A remote task's failure, reconstructed from its result document.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskFailure {
    /// Task id.
    pub task_id: String,
    /// `FAILURE` or `REVOKED`.
    pub state: State,
    /// Exception type, e.g. `KeyError`.
    pub exc_type: String,
    /// Exception module, e.g. `builtins`.
    pub exc_module: Option<String>,
    /// The exception's arguments.
    pub exc_message: Vec<Value>,
    /// The message, as Python's `str(exc)` shows a single argument.
    pub message: String,
    /// The remote traceback, if any.
    pub traceback: Option<String>,
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let qualified = match &self.exc_module {
            Some(m) if m != "builtins" => format!("{m}.{}", self.exc_type),
            _ => self.exc_type.clone(),
        };
        write!(
            f,
            "task {} {}: {qualified}: {}",
            self.task_id, self.state, self.message
        )
    }
}
