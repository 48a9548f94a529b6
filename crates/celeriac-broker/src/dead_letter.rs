//! Worker-published dead letters: the default, interop-safe dead-letter path.
//!
//! The message is published, unchanged in body, properties and Celery
//! headers, to the dead-letter exchange with the origin queue as routing key,
//! so it lands in `<queue>.dead` (see [`DeadLetterTopology`]). Extra headers
//! record why. Only once the broker confirms it may the caller ack the
//! original: a crash in between leaves the original unacked, so nothing is
//! lost (at worst the dead letter is written twice).
//!
//! The `expiration` property is dropped (RabbitMQ does the same when it
//! dead-letters), or the dead letter would expire in the dead-letter queue.
//!
//! [`DeadLetterTopology`]: crate::DeadLetterTopology

use std::fmt;

use celeriac_protocol::time::{format_time, now};
use celeriac_protocol::{HeaderValue, RawMessage};

use crate::delivery::Delivery;
use crate::publish::Nacks;
use crate::{Broker, BrokerError};

/// Header holding the reason code.
pub const REASON_HEADER: &str = "x-celeriac-reason";
/// Header holding the exception type, when there was one.
pub const EXCEPTION_TYPE_HEADER: &str = "x-celeriac-exception-type";
/// Header holding the exception message or error text.
pub const EXCEPTION_MESSAGE_HEADER: &str = "x-celeriac-exception-message";
/// Header holding the traceback, when there was one.
pub const TRACEBACK_HEADER: &str = "x-celeriac-traceback";
/// Header holding the queue the message was consumed from.
pub const ORIGIN_QUEUE_HEADER: &str = "x-celeriac-origin-queue";
/// Header holding the exchange the message was published to.
pub const ORIGIN_EXCHANGE_HEADER: &str = "x-celeriac-origin-exchange";
/// Header holding the routing key the message was published with.
pub const ORIGIN_ROUTING_KEY_HEADER: &str = "x-celeriac-origin-routing-key";
/// Header holding the worker's host name.
pub const HOSTNAME_HEADER: &str = "x-celeriac-hostname";
/// Header holding when it was dead-lettered (ISO 8601, UTC).
pub const TIME_HEADER: &str = "x-celeriac-dead-lettered-at";
/// Header holding when it was first dead-lettered: a requeued dead letter
/// keeps it, so a task that fails again shows when its trouble began.
pub const FIRST_TIME_HEADER: &str = "x-celeriac-first-dead-lettered-at";

/// Why a message was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// No task of that name is registered.
    UnknownTask,
    /// The body could not be decoded.
    DecodeError,
    /// The content type is refused (e.g. pickle).
    ContentRefused,
    /// The message is larger than the limit.
    TooLarge,
    /// The message is not a valid Celery task (missing headers, bad body shape).
    InvalidMessage,
    /// The task failed and used up its retries.
    MaxRetriesExceeded,
    /// The task failed and the policy dead-letters failures.
    Failed,
    /// The task expired before it ran.
    Expired,
    /// The message was delivered more often than the redelivery limit
    /// (e.g. it crashes the worker every time).
    RedeliveryLimit,
    /// Another reason, as a short code.
    Other(String),
}

impl DeadLetterReason {
    /// The code written to the reason header.
    pub fn as_str(&self) -> &str {
        match self {
            DeadLetterReason::UnknownTask => "unknown_task",
            DeadLetterReason::DecodeError => "decode_error",
            DeadLetterReason::ContentRefused => "content_refused",
            DeadLetterReason::TooLarge => "too_large",
            DeadLetterReason::InvalidMessage => "invalid_message",
            DeadLetterReason::MaxRetriesExceeded => "max_retries_exceeded",
            DeadLetterReason::Failed => "failed",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::RedeliveryLimit => "redelivery_limit",
            DeadLetterReason::Other(code) => code,
        }
    }

    /// The reason for a decode error's [`reason`](celeriac_protocol::DecodeError::reason) code.
    pub fn from_decode_reason(code: &str) -> DeadLetterReason {
        match code {
            "too_large" => DeadLetterReason::TooLarge,
            "content_refused" => DeadLetterReason::ContentRefused,
            "decode_error" => DeadLetterReason::DecodeError,
            "invalid_message" => DeadLetterReason::InvalidMessage,
            other => DeadLetterReason::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to record with a dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Why.
    pub reason: DeadLetterReason,
    /// The exception type, if a task raised one.
    pub exception_type: Option<String>,
    /// The error text.
    pub message: String,
    /// The traceback, if any.
    pub traceback: Option<String>,
    /// The host name of the process dead-lettering it.
    pub hostname: String,
}

impl DeadLetter {
    /// A dead letter with a reason and an error text.
    pub fn new(reason: DeadLetterReason, message: impl Into<String>) -> DeadLetter {
        DeadLetter {
            reason,
            exception_type: None,
            message: message.into(),
            traceback: None,
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
        }
    }

    /// The copy of `delivery`'s message to publish: same body, properties and
    /// headers, plus the dead-letter headers, persistent, without a TTL.
    pub fn letter_for(&self, delivery: &Delivery) -> RawMessage {
        let mut message = delivery.message.clone();
        let first_time = message.headers.contains_key(FIRST_TIME_HEADER);
        message.properties.expiration = None;
        message.properties.delivery_mode = Some(2);
        let mut put = |key: &str, value: String| {
            message
                .headers
                .insert(key.to_owned(), HeaderValue::Str(value));
        };
        put(REASON_HEADER, self.reason.to_string());
        put(EXCEPTION_MESSAGE_HEADER, self.message.clone());
        if let Some(exc) = &self.exception_type {
            put(EXCEPTION_TYPE_HEADER, exc.clone());
        }
        if let Some(tb) = &self.traceback {
            put(TRACEBACK_HEADER, tb.clone());
        }
        put(ORIGIN_QUEUE_HEADER, delivery.queue.clone());
        put(ORIGIN_EXCHANGE_HEADER, delivery.exchange.clone());
        put(ORIGIN_ROUTING_KEY_HEADER, delivery.routing_key.clone());
        put(HOSTNAME_HEADER, self.hostname.clone());
        let time = format_time(&now());
        if !first_time {
            put(FIRST_TIME_HEADER, time.clone());
        }
        put(TIME_HEADER, time);
        message
    }
}

impl Broker {
    /// Publishes `delivery`'s message to its queue's dead-letter queue with
    /// `letter`'s details and waits for the confirm. The caller acks the
    /// delivery only after this returns `Ok`.
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        letter: &DeadLetter,
    ) -> Result<(), BrokerError> {
        let topology = &self.config().dead_letter;
        self.declare_of_either_type(&topology.queue_for(&delivery.queue))
            .await?;
        // The dead-letter exchange binds one queue per key, so a nacked
        // letter (a quorum dead-letter queue between leaders) is sent again.
        self.publish_with(
            &topology.exchange,
            &delivery.queue,
            &letter.letter_for(delivery),
            Nacks::Resend,
        )
        .await
    }
}
