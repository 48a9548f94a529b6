//! # celeriac-protocol
//!
//! Celery's message protocol as pure data and codecs: no I/O, no async
//! runtime, no AMQP client. Everything here is testable byte for byte against
//! messages captured from real Python Celery (see `protocol-fixtures/`).
//!
//! - [`TaskMessage`] is a protocol v2 task message, typed: [`Properties`],
//!   every header of Celery's `as_task_v2` ([`TaskHeaders`]) with unknown
//!   headers kept, and the `[args, kwargs, embed]` body ([`TaskBody`]).
//!   [`TaskMessage::decode`] also reads protocol v1 and hybrid messages,
//!   detected the way the Python worker detects them.
//! - [`Signature`] is a canvas signature (task, chain, group, chord) that
//!   re-encodes to the JSON text Python wrote.
//! - [`ResultMeta`] and [`State`] are the result document and task states;
//!   [`store`] is how key/value result stores (Redis) lay out results, groups
//!   and chords, with the chord join decision.
//! - [`control`] is remote control (the pidbox): requests, who they are for,
//!   and the typed documents replies carry; [`event`] is what Flower reads,
//!   with the Lamport clock both share.
//! - [`json`] writes JSON exactly as Python's `json.dumps` does and [`kombu`]
//!   handles kombu's `{"__type__", "__value__"}` envelopes.
//! - [`Compression`] and [`content`] decide which bodies we accept: JSON only,
//!   optionally zlib/bzip2/lzma compressed; pickle is refused because it is
//!   code execution. [`auth`] signs and verifies bodies as Celery's `auth`
//!   serializer does.
//!
//! Every refusal is a [`DecodeError`] naming what was wrong, which the worker
//! turns into a dead letter with [`DecodeError::reason`].
//!
//! ```
//! use celeriac_protocol::{DecodeOptions, TaskMessage};
//!
//! let msg = TaskMessage::new("images.resize", "6f1c2a52-4d0e-4f3e-9a55-0c9f7f2b1e01")
//!     .with_args(vec!["https://example.com/a.png".into(), 800.into()]);
//! let raw = msg.encode()?;               // what goes on the wire
//! let back = TaskMessage::decode(&raw, &DecodeOptions::default())?;
//! assert_eq!(back.headers.task, "images.resize");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod args;
pub mod auth;
mod body;
mod body_scan;
mod compression;
pub mod content;
pub mod control;
mod error;
pub mod event;
mod header;
pub mod json;
pub mod kombu;
mod message;
pub mod pickle;
pub mod repr;
mod result;
mod signature;
pub mod sql_row;
pub mod store;
mod task_headers;
pub mod time;
pub mod trace;
mod typed_text;
mod v1;

pub use args::{Args, Kwargs};
pub use body::{Embed, TaskBody};
/// The shared byte buffer a [`RawMessage`]'s body is held in (the `bytes`
/// crate's): `Bytes::from(vec)` takes a `Vec<u8>` without copying it.
pub use bytes::Bytes;
pub use compression::Compression;
pub use error::{DecodeError, EncodeError};
pub use header::{HeaderValue, Headers};
pub use message::{
    DEFAULT_MAX_BODY_SIZE, DecodeOptions, KEEP_ARGS_AS_TEXT_FROM, Properties, Protocol, RawMessage,
    Signatures, TaskMessage,
};
pub use result::{ExceptionInfo, ExtendedMeta, ResultMeta, State};
pub use signature::{CHAIN, CHORD, GROUP, Signature, SignatureKind};
pub use task_headers::{ENQUEUED_AT_HEADER, Seconds, TaskHeaders, TimeLimit};
