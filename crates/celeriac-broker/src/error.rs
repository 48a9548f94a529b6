//! The broker crate's errors. Every message names what happened and, where
//! there is one, the fix. No AMQP client type appears in them.

use std::time::Duration;

use thiserror::Error;

use crate::field_table::HeaderError;

/// Something the broker did not do.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// No URL could be connected to.
    #[error("could not connect to RabbitMQ at {urls}: {}. {}", detail.trim_end_matches('.'), connect_hint(detail))]
    Connect {
        /// The URLs tried, passwords redacted.
        urls: String,
        /// What went wrong with each.
        detail: String,
    },

    /// A declaration clashes with what the broker already has (406).
    #[error("{0}")]
    Inequivalent(Box<Inequivalent>),

    /// A declaration failed for another reason.
    #[error("declaring {entity} {name:?} failed: {detail}")]
    Declare {
        /// `queue`, `exchange` or `binding`.
        entity: &'static str,
        /// Its name.
        name: String,
        /// The AMQP reply code the broker refused it with, if it did.
        code: Option<ReplyCode>,
        /// The broker's reason.
        detail: String,
    },

    /// The message could not be routed to any queue (returned as unroutable).
    #[error(
        "message to exchange {exchange:?} with routing key {routing_key:?} was returned \
         unroutable: no queue is bound for it. Declare the queue first (or check the task \
         route); an unroutable task would otherwise be lost silently"
    )]
    Unroutable {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },

    /// The broker refused the message (negative confirm), e.g. a full queue
    /// with `x-overflow: reject-publish`.
    #[error(
        "the broker refused the message to exchange {exchange:?} with routing key \
         {routing_key:?} (negative confirm); the queue may be full or the broker out of resources"
    )]
    Nacked {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },

    /// The broker closed the channel because of the publish (e.g. no such exchange).
    #[error("the broker refused the publish to exchange {exchange:?}: {detail}")]
    PublishRefused {
        /// Exchange published to.
        exchange: String,
        /// The broker's reason (e.g. `NOT_FOUND - no exchange 'x'`).
        detail: String,
    },

    /// No confirm arrived in time; the message may or may not have been stored.
    #[error(
        "no publish confirm within {waited:.1?}{}; the message may or may not have been \
         stored, so retrying can duplicate it",
        blocked.as_ref().map(|r| format!(" (the broker is blocking publishers: {r})")).unwrap_or_default()
    )]
    ConfirmTimeout {
        /// How long we waited.
        waited: Duration,
        /// The broker's `connection.blocked` reason, if it is blocking us
        /// (e.g. a memory or disk alarm).
        blocked: Option<String>,
    },

    /// The connection was down and did not come back in time.
    #[error(
        "the connection to RabbitMQ at {urls} is down and did not come back within \
         {waited:.1?} (last error: {detail}); check that the broker is running and reachable"
    )]
    Unavailable {
        /// The URLs, passwords redacted.
        urls: String,
        /// How long we waited.
        waited: Duration,
        /// The last connection error.
        detail: String,
    },

    /// Headers that cannot be written as an AMQP table Python reads correctly.
    #[error(transparent)]
    Headers(#[from] HeaderError),

    /// A channel-level operation failed (consume, qos, ack).
    #[error("{operation} failed: {detail}")]
    Channel {
        /// What we were doing.
        operation: &'static str,
        /// The AMQP reply code, if the broker refused it with one.
        code: Option<ReplyCode>,
        /// The broker's or client's reason.
        detail: String,
    },

    /// The broker handle was closed.
    #[error("the broker connection was closed by this process")]
    Closed,
}

/// The details of a `406 PRECONDITION_FAILED - inequivalent arg` refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inequivalent {
    /// `queue` or `exchange`.
    pub entity: &'static str,
    /// Its name.
    pub name: String,
    /// The differing argument (`x-max-priority`, `durable`, ...).
    pub argument: String,
    /// What the broker has.
    pub broker_has: String,
    /// What we asked for.
    pub we_asked: String,
    /// The `kombu.Queue(...)` that declares what we asked for.
    pub python: String,
}

impl std::fmt::Display for Inequivalent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Inequivalent {
            entity,
            name,
            argument,
            broker_has,
            we_asked,
            python,
        } = self;
        write!(
            f,
            "{entity} {name:?} already exists with a different {argument}: the broker has \
             {broker_has}, we asked for {we_asked}. Declarations must match exactly on every \
             side (Python producers and workers declare it too). To reconcile, either \
             configure the same on the Python side:\n    task_queues = [{python}]\n\
             or declare it in Celeriac the way the broker has it (its task_queues entry: \
             `[task_queues.\"{name}\"]` in the worker's config file, `--task-queue {name}:...`, \
             or `AppBuilder::queue`; see docs/worker.md), or delete the {entity} \
             (e.g. `rabbitmqctl delete_queue {name}`) if nothing depends on it"
        )
    }
}

/// An AMQP reply code the broker closed a channel or connection with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReplyCode {
    /// 403: the user may not do this.
    AccessRefused,
    /// 404: no such queue or exchange.
    NotFound,
    /// 405: an exclusive queue is held by another connection.
    ResourceLocked,
    /// 406: a precondition failed (e.g. an inequivalent declaration).
    PreconditionFailed,
    /// Any other code.
    Other(u16),
}

impl ReplyCode {
    /// The code for its number.
    pub fn from_code(code: u16) -> ReplyCode {
        match code {
            403 => ReplyCode::AccessRefused,
            404 => ReplyCode::NotFound,
            405 => ReplyCode::ResourceLocked,
            406 => ReplyCode::PreconditionFailed,
            other => ReplyCode::Other(other),
        }
    }

    /// The reply code of a client error, if the broker sent one.
    pub(crate) fn of(error: &lapin::Error) -> Option<ReplyCode> {
        match error.kind() {
            lapin::ErrorKind::ProtocolError(e) => Some(ReplyCode::from_code(e.get_id())),
            _ => None,
        }
    }
}

impl BrokerError {
    /// The AMQP reply code the broker refused the operation with, if any.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            BrokerError::Declare { code, .. } | BrokerError::Channel { code, .. } => *code,
            BrokerError::Inequivalent(_) => Some(ReplyCode::PreconditionFailed),
            _ => None,
        }
    }

    /// Whether trying again later can succeed (connection trouble, timeouts),
    /// as opposed to a problem with the request itself.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BrokerError::Connect { .. }
                | BrokerError::Unavailable { .. }
                | BrokerError::ConfirmTimeout { .. }
        )
    }
}

/// The likely fix for a connection failure, from the client's error text.
/// How a connection error begins when the node took the connection but
/// opening its channels failed.
pub(crate) const CHANNELS_FAILED: &str = "opening its channels failed";

fn connect_hint(detail: &str) -> &'static str {
    if detail.contains("ACCESS_REFUSED") || detail.contains("ACCESS-REFUSED") {
        "Check the user name and password in the URL (RabbitMQ's default guest/guest only \
         works from localhost)"
    } else if detail.contains("InvalidContentType") || detail.contains("corrupt message") {
        "The server did not speak TLS: amqps:// needs RabbitMQ's TLS listener (usually port \
         5671); use amqp:// for the plain port"
    } else if detail.contains("UnknownIssuer") {
        "The server's TLS certificate is not signed by a CA this client trusts: name the CA \
         that signed it with ?ssl_ca_certs=/path/ca.pem (the system's roots are used otherwise)"
    } else if detail.contains("not valid for name") {
        "The server's TLS certificate does not name the host in the URL: connect by a name the \
         certificate lists (often the DNS name, not the IP address)"
    } else if detail.contains("EXTERNAL") || detail.contains("auth_mechanism") {
        "login_method=EXTERNAL needs RabbitMQ's rabbitmq_auth_mechanism_ssl plugin, EXTERNAL \
         in its auth_mechanisms, and a user named as the client certificate's subject"
    } else if detail.contains(CHANNELS_FAILED) {
        "The node took the connection but not its channels: check the user's channel limit \
         (`rabbitmqctl list_user_limits`), the node's `channel_max`, and its log"
    } else if detail.contains("NOT_ALLOWED") && detail.contains("vhost") {
        "The virtual host does not exist or the user may not use it \
         (`rabbitmqctl list_vhosts`, `rabbitmqctl set_permissions`)"
    } else {
        "Is it running and reachable? (`docker compose up -d rabbitmq` starts one on \
         Celery's default URL)"
    }
}

/// A failed channel-level operation.
pub(crate) fn channel_error(operation: &'static str, error: &lapin::Error) -> BrokerError {
    BrokerError::Channel {
        operation,
        code: ReplyCode::of(error),
        detail: error.to_string(),
    }
}

/// What a `406 PRECONDITION_FAILED - inequivalent arg` reply says, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Inequivalence {
    pub(crate) argument: String,
    pub(crate) we_asked: String,
    pub(crate) broker_has: String,
}

/// Parses RabbitMQ's text, e.g. `PRECONDITION_FAILED - inequivalent arg
/// 'x-max-priority' for queue 'q' in vhost '/': received none but current is
/// the value '10' of type 'signedint'`.
pub(crate) fn parse_inequivalent(text: &str) -> Option<Inequivalence> {
    let rest = text.split_once("inequivalent arg '")?.1;
    let (argument, rest) = rest.split_once('\'')?;
    let rest = rest.split_once(": received ")?.1;
    let (we_asked, broker_has) = rest.split_once(" but current is ")?;
    Some(Inequivalence {
        argument: argument.to_owned(),
        we_asked: we_asked.trim().to_owned(),
        broker_has: broker_has.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_406_texts_parse() {
        let text = "PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue 'q' in vhost '/': \
                    received none but current is the value '10' of type 'signedint'";
        let parsed = parse_inequivalent(text).unwrap();
        assert_eq!(parsed.argument, "x-max-priority");
        assert_eq!(parsed.we_asked, "none");
        assert_eq!(parsed.broker_has, "the value '10' of type 'signedint'");
        let durable = "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': \
                       received 'false' but current is 'true'";
        assert_eq!(parse_inequivalent(durable).unwrap().broker_has, "'true'");
        assert!(parse_inequivalent("NOT_FOUND - no queue 'q'").is_none());
    }
}
