//! Typed errors for decoding and encoding Celery messages.
//!
//! Every way a message can be refused has its own variant, so the worker can
//! dead-letter it with a precise reason ([`DecodeError::reason`]) instead of
//! acking it away as Python Celery does for undecodable bodies.

use thiserror::Error;

/// Why an incoming message could not be turned into a [`crate::TaskMessage`]
/// or [`crate::ResultMeta`].
///
/// The `Display` text names what was wrong and, where there is one, the fix.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The body (before or after decompression) is larger than the limit.
    #[error(
        "message body is {size} bytes, over the {limit}-byte limit; \
         raise the decoder's `max_body_size` if messages this large are expected"
    )]
    TooLarge {
        /// Size seen (for a compressed body, at least this many bytes once inflated).
        size: usize,
        /// The configured limit.
        limit: usize,
    },

    /// The message carries no `content_type` property.
    #[error(
        "message has no content_type property; Celery producers always set one \
         (application/json), so this did not come from a Celery client"
    )]
    MissingContentType,

    /// The content type or encoding is one we do not execute.
    #[error("content type {content_type:?} refused: {reason}")]
    ContentRefused {
        /// The `content_type` (and encoding, if that was the problem) as received.
        content_type: String,
        /// Why it is refused and what to change on the producer.
        reason: &'static str,
    },

    /// The body is not signed, and only signed bodies are accepted.
    #[error(
        "the body is not signed, and this worker accepts signed messages only (Celery's \
         auth serializer); set up security on the producer (app.setup_security() in \
         Python, App::builder().security(..) in Rust)"
    )]
    Unsigned,

    /// The body's signature was refused.
    #[error("signature refused: {0}")]
    BadSignature(String),

    /// The `compression` header names an algorithm we do not support.
    #[error(
        "unsupported compression {0:?}; supported are application/x-gzip (zlib), \
         application/x-bz2 and application/x-lzma: set the producer's \
         task_compression to one of zlib, bzip2, lzma, or to None"
    )]
    UnsupportedCompression(String),

    /// The body could not be decompressed.
    #[error("body could not be decompressed as {compression}: {detail}")]
    Decompress {
        /// The compression MIME type from the header.
        compression: String,
        /// What the decompressor reported.
        detail: String,
    },

    /// The body is not valid JSON.
    #[error("body is not valid JSON: {0}")]
    Json(String),

    /// The body holds `NaN`, `Infinity` or `-Infinity`, which Python writes
    /// but JSON (and therefore any typed task argument) cannot represent.
    #[error(
        "body contains the non-finite number {token} at byte {offset}; JSON cannot \
         carry NaN or Infinity, so send it as null or a string instead"
    )]
    NonFiniteNumber {
        /// The bare token found (`NaN`, `Infinity` or `-Infinity`).
        token: &'static str,
        /// Byte offset of the token in the (decompressed) body.
        offset: usize,
    },

    /// A kombu `{"__type__", "__value__"}` envelope is malformed or unknown.
    #[error("invalid kombu envelope at {path}: {detail}")]
    Envelope {
        /// Where in the body, e.g. `args[0]` or `kwargs.when`.
        path: String,
        /// What is wrong with it.
        detail: String,
    },

    /// The body does not have the shape of a Celery task.
    #[error("body is not a Celery task body: {0}")]
    Body(String),

    /// A header the protocol requires is missing.
    #[error("required header `{0}` is missing")]
    MissingHeader(&'static str),

    /// A header has a type the protocol does not allow.
    #[error("header `{name}` has the wrong type: expected {expected}, found {found}")]
    HeaderType {
        /// Header name.
        name: String,
        /// What the protocol allows.
        expected: &'static str,
        /// What arrived, described.
        found: String,
    },

    /// A time header (`eta`, `expires`, `date_done`) is not an ISO 8601 time.
    #[error("`{name}` holds {value:?}, which is not an ISO 8601 date-time")]
    InvalidTime {
        /// Field name.
        name: String,
        /// The value received.
        value: String,
    },

    /// Neither a v2 task (`task` header) nor a v1 task (object body with `task`).
    #[error(
        "message is not a Celery task: no `task` header (protocol v2) and the body \
         is not an object with a `task` key (protocol v1)"
    )]
    UnknownMessage,

    /// A canvas signature in the body is malformed.
    #[error("invalid signature at {path}: {detail}")]
    Signature {
        /// Where in the body.
        path: String,
        /// What is wrong with it.
        detail: String,
    },

    /// A result document is malformed.
    #[error("invalid result document: {0}")]
    Result(String),
    /// A control request or reply is not shaped as kombu's pidbox writes it.
    #[error("invalid control message: {0}")]
    Control(String),
    /// An event is not shaped as Celery's event dispatcher writes it.
    #[error("invalid event: {0}")]
    Event(String),
}

impl DecodeError {
    /// A short, stable reason code for dead-letter headers and metrics.
    ///
    /// One of `too_large`, `content_refused`, `unsigned`, `bad_signature`,
    /// `decode_error` or `invalid_message`.
    ///
    /// ```
    /// use celeriac_protocol::DecodeError;
    /// assert_eq!(DecodeError::MissingHeader("id").reason(), "invalid_message");
    /// ```
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::MissingContentType | DecodeError::ContentRefused { .. } => {
                "content_refused"
            }
            DecodeError::Unsigned => "unsigned",
            DecodeError::BadSignature(_) => "bad_signature",
            DecodeError::UnsupportedCompression(_)
            | DecodeError::Decompress { .. }
            | DecodeError::Json(_)
            | DecodeError::NonFiniteNumber { .. }
            | DecodeError::Envelope { .. } => "decode_error",
            DecodeError::Body(_)
            | DecodeError::MissingHeader(_)
            | DecodeError::HeaderType { .. }
            | DecodeError::InvalidTime { .. }
            | DecodeError::UnknownMessage
            | DecodeError::Signature { .. }
            | DecodeError::Result(_)
            | DecodeError::Control(_)
            | DecodeError::Event(_) => "invalid_message",
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// Compressing the body failed.
    #[error("compressing the body with {compression} failed: {source}")]
    Compress {
        /// The compression MIME type.
        compression: &'static str,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The body could not be serialized.
    #[error("serializing the body failed: {0}")]
    Json(#[from] serde_json::Error),
    /// The body holds an object shaped like a kombu envelope that kombu
    /// cannot decode; a Python worker would drop such a message.
    #[error(
        "refusing to send an invalid kombu envelope at {path}: {detail}; Python workers \
         drop messages they cannot decode, so wrap such data differently"
    )]
    Envelope {
        /// Where in the body.
        path: String,
        /// What is wrong with it.
        detail: String,
    },
}
