//! The result backends' own errors: what went wrong with the store, not
//! with the broker the tasks travel through.

use celeriac_broker::BrokerError;
use thiserror::Error;

/// Something a result backend could not do.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The `rpc://` backend's broker operation failed (it keeps results in
    /// RabbitMQ reply queues).
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The store could not be reached or did not answer (connection
    /// refused, lost, timed out); trying again later can succeed.
    #[error("the result store at {url} is unavailable: {detail}")]
    Unavailable {
        /// The store's URL, password redacted.
        url: String,
        /// What the client said.
        detail: String,
    },
    /// The store refused or failed the operation (not a connection problem).
    #[error("the result store at {url} refused {operation}: {detail}")]
    Refused {
        /// The store's URL, password redacted.
        url: String,
        /// What we were doing.
        operation: &'static str,
        /// What the store said.
        detail: String,
    },
    /// A stored document could not be read.
    #[error("a stored result document is not valid: {0}")]
    Document(String),
    /// The backend cannot do this at all.
    #[error("the {backend} result backend does not support {what}; {fix}")]
    Unsupported {
        /// `rpc://`, `redis://`, ...
        backend: &'static str,
        /// What was asked for.
        what: &'static str,
        /// What to use instead.
        fix: &'static str,
    },
    /// The backend's URL or settings are invalid.
    #[error("invalid result backend configuration: {0}")]
    Config(String),
}

impl BackendError {
    /// Whether trying again later can succeed (the store was unreachable),
    /// as opposed to a problem with the request itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::Unavailable { .. } => true,
            BackendError::Broker(e) => e.is_retryable(),
            _ => false,
        }
    }
}
