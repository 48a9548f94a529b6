//! The beat's errors, each naming what to do about it.

use std::path::PathBuf;

use celeriac::broker::BrokerError;
use thiserror::Error;

/// Why the beat could not go on.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BeatError {
    /// The local state file cannot be read.
    #[error("cannot read state file {}: {source}", path.display())]
    ReadState {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The local state file is not a beat state.
    #[error("state file {} is corrupt ({source}); move it away to start fresh", path.display())]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What the JSON parser said.
        source: serde_json::Error,
    },
    /// The local state file cannot be written.
    #[error("cannot write state file {}: {source}", path.display())]
    WriteState {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The state cannot be encoded (a bug: the state is plain data).
    #[error("cannot encode the beat state: {0}")]
    EncodeState(#[source] serde_json::Error),
    /// The metrics listener cannot bind its address.
    #[error(
        "cannot listen on metrics_addr {addr}: {source}; choose a free port or another address"
    )]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The broker refused or could not take the shared state.
    #[error("the shared beat state: {0}")]
    Broker(#[from] BrokerError),
}
