//! Confirmed publishing.
//!
//! Every publish is `mandatory` and waits for the broker's confirm: a
//! negative confirm, a returned (unroutable) message or a timeout is an error,
//! never a success. Publishes from concurrent tasks share one confirming
//! channel and are in flight together (pipelined confirms), so throughput is
//! bounded by the broker, not by round trips.
//!
//! If the connection drops before the confirm arrives, the outcome is
//! unknown; the publish waits for the connection to come back (up to
//! `publish_wait`) and sends again. That is at-least-once: a message that had
//! in fact been stored may be stored twice, never lost.

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation};
use tokio::time::Instant;
use tracing::debug;

use celeriac_protocol::RawMessage;

use crate::BrokerError;
use crate::connection::{Broker, Session};
use crate::field_table::to_field_table;
use crate::routing::Destination;

/// Why one attempt did not end in a confirmed publish.
enum Attempt {
    /// A final answer about this message.
    Failed(BrokerError),
    /// The connection or channel went away before the outcome was known.
    InDoubt(String),
}

impl Broker {
    /// Publishes `message` to `exchange` with `routing_key` and waits for the
    /// broker to confirm it.
    ///
    /// Returns `Ok` only once the broker has taken responsibility for the
    /// message (confirmed, and routed to at least one queue).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        message: &RawMessage,
    ) -> Result<(), BrokerError> {
        let properties = basic_properties(message)?;
        let deadline = Instant::now() + self.shared.config.publish_wait;
        loop {
            let session = self.session_until(deadline).await?;
            match self
                .publish_once(
                    &session,
                    exchange,
                    routing_key,
                    &message.body,
                    properties.clone(),
                )
                .await
            {
                Ok(()) => return Ok(()),
                Err(Attempt::Failed(error)) => return Err(error),
                Err(Attempt::InDoubt(reason)) => {
                    debug!(reason = %reason, exchange, routing_key, "publish outcome unknown; sending again");
                    if Instant::now() >= deadline {
                        return Err(BrokerError::Unavailable {
                            urls: self.shared.config.urls.to_string(),
                            waited: self.shared.config.publish_wait,
                            detail: reason,
                        });
                    }
                    // Give a dying connection a moment to be noticed, so the
                    // next attempt waits for its replacement.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Declares the destination's queue (once per handle, as Python's
    /// `maybe_declare` does), then publishes with the destination's priority.
    pub async fn send(
        &self,
        destination: &Destination,
        message: &RawMessage,
    ) -> Result<(), BrokerError> {
        if let Some(queue) = &destination.queue
            && !self.is_declared(queue)
        {
            self.declare(queue).await?;
        }
        match destination.priority {
            Some(priority) if message.properties.priority != Some(priority) => {
                let mut message = message.clone();
                message.properties.priority = Some(priority);
                self.publish(&destination.exchange, &destination.routing_key, &message)
                    .await
            }
            _ => {
                self.publish(&destination.exchange, &destination.routing_key, message)
                    .await
            }
        }
    }

    async fn publish_once(
        &self,
        session: &Session,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Attempt> {
        let channel = session
            .publisher()
            .await
            .map_err(|e| Attempt::InDoubt(e.to_string()))?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await
            .map_err(|e| Attempt::InDoubt(e.to_string()))?;
        let timeout = self.shared.config.confirm_timeout;
        let outcome = match tokio::time::timeout(timeout, confirm).await {
            Err(_) => {
                return Err(Attempt::Failed(BrokerError::ConfirmTimeout {
                    waited: timeout,
                    blocked: self.blocked_reason(),
                }));
            }
            Ok(outcome) => outcome,
        };
        match outcome {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_returned))) => {
                Err(Attempt::Failed(BrokerError::Unroutable {
                    exchange: exchange.to_owned(),
                    routing_key: routing_key.to_owned(),
                }))
            }
            Ok(Confirmation::Nack(_)) => Err(Attempt::Failed(BrokerError::Nacked {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            })),
            Ok(Confirmation::NotRequested) => Err(Attempt::InDoubt(
                "the channel was not in confirm mode".into(),
            )),
            Err(e) => {
                let text = e.to_string();
                // A channel closed because of *this* publish (e.g. no such
                // exchange) is a final answer; anything else leaves it in doubt.
                if session.is_connected() && text.contains(&format!("'{exchange}'")) {
                    Err(Attempt::Failed(BrokerError::PublishRefused {
                        exchange: exchange.to_owned(),
                        detail: text,
                    }))
                } else {
                    Err(Attempt::InDoubt(text))
                }
            }
        }
    }
}

/// Converts our properties and headers into AMQP basic properties.
pub(crate) fn basic_properties(message: &RawMessage) -> Result<BasicProperties, BrokerError> {
    let p = &message.properties;
    let short = |s: &String| ShortString::from(s.as_str());
    let mut props = BasicProperties::default().with_headers(to_field_table(&message.headers)?);
    if let Some(v) = &p.content_type {
        props = props.with_content_type(short(v));
    }
    if let Some(v) = &p.content_encoding {
        props = props.with_content_encoding(short(v));
    }
    if let Some(v) = &p.correlation_id {
        props = props.with_correlation_id(short(v));
    }
    if let Some(v) = &p.reply_to {
        props = props.with_reply_to(short(v));
    }
    if let Some(v) = p.delivery_mode {
        props = props.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        props = props.with_priority(v);
    }
    if let Some(v) = &p.expiration {
        props = props.with_expiration(short(v));
    }
    Ok(props)
}
