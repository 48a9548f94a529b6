//! The remote-control and event topology (§2.2), declared exactly as Celery
//! 5.7 declares it, and transient publishing for replies and events.
//!
//! - A worker's control queue `<nodename>.celery.pidbox` is bound to the
//!   `celery.pidbox` fanout exchange; a control client's reply queue
//!   `<oid>.reply.celery.pidbox` to the `reply.celery.pidbox` direct
//!   exchange. Both exchanges are non-durable; both queues non-durable,
//!   exclusive and auto-delete, with `x-expires` 10 s and `x-message-ttl`
//!   300 s (Celery 5.7 made them exclusive for RabbitMQ 4.3, which refuses
//!   transient non-exclusive queues). An exclusive queue is consumed on the
//!   connection that declared it, which [`Broker::consume`] does.
//! - Events go to the durable `celeryev` topic exchange.
//!
//! Replies and events are transient (`delivery_mode` 1) and not
//! `mandatory`: nobody listening is not an error.

use std::time::Duration;

use celeriac_protocol::RawMessage;
use celeriac_protocol::control::{CONTROL_EXCHANGE, REPLY_EXCHANGE};
use celeriac_protocol::event::EVENT_EXCHANGE;
use lapin::Confirmation;
use lapin::options::BasicPublishOptions;
use tokio::time::Instant;

use crate::BrokerError;
use crate::connection::Broker;
use crate::declare::declare_exchange;
use crate::error::channel_error;
use crate::topology::{Exchange, ExchangeKind, Queue, QueueArguments};
use crate::wire::basic_properties;

/// How long an unused control or reply queue lives (`control_queue_expires`).
const CONTROL_QUEUE_EXPIRES: Duration = Duration::from_secs(10);
/// How long a control message waits in a queue (`control_queue_ttl`).
const CONTROL_MESSAGE_TTL: Duration = Duration::from_secs(300);
/// How long a transient publish waits for a connection before giving up.
const TRANSIENT_WAIT: Duration = Duration::from_secs(1);

/// The `celery.pidbox` fanout exchange control requests are broadcast on.
pub fn control_exchange() -> Exchange {
    Exchange {
        durable: false,
        ..Exchange::new(CONTROL_EXCHANGE, ExchangeKind::Fanout)
    }
}

/// The `reply.celery.pidbox` direct exchange control replies go to.
pub fn reply_exchange() -> Exchange {
    Exchange {
        durable: false,
        ..Exchange::new(REPLY_EXCHANGE, ExchangeKind::Direct)
    }
}

/// The durable `celeryev` topic exchange events go to.
pub fn event_exchange() -> Exchange {
    Exchange::topic(EVENT_EXCHANGE)
}

fn control_arguments() -> QueueArguments {
    QueueArguments {
        expires: Some(CONTROL_QUEUE_EXPIRES),
        message_ttl: Some(CONTROL_MESSAGE_TTL),
        ..QueueArguments::default()
    }
}

impl Queue {
    /// Worker `nodename`'s control queue, as Celery 5.7 declares it.
    ///
    /// ```
    /// use celeriac_broker::Queue;
    /// let q = Queue::control("celeriac@w1");
    /// assert_eq!(q.name, "celeriac@w1.celery.pidbox");
    /// assert!(q.exclusive && q.auto_delete && !q.durable);
    /// ```
    pub fn control(nodename: &str) -> Queue {
        Queue {
            name: format!("{nodename}.celery.pidbox"),
            exchange: control_exchange(),
            routing_key: String::new(),
            durable: false,
            exclusive: true,
            auto_delete: true,
            arguments: control_arguments(),
        }
    }

    /// A control client's reply queue for its `oid`, as Celery 5.7 declares
    /// it, bound with the oid as key.
    pub fn control_reply(oid: &str) -> Queue {
        Queue {
            name: format!("{oid}.{REPLY_EXCHANGE}"),
            exchange: reply_exchange(),
            routing_key: oid.to_owned(),
            durable: false,
            exclusive: true,
            auto_delete: true,
            arguments: control_arguments(),
        }
    }
}

impl Broker {
    /// Publishes a transient message (a control reply, an event) to
    /// `exchange`, declaring the exchange first on each new connection.
    /// Not `mandatory`: a message nobody is bound to receive is dropped by
    /// the broker, as for Celery. Fails fast (within a second) while the
    /// connection is down, so callers never pile up behind an outage.
    pub async fn publish_transient(
        &self,
        exchange: &Exchange,
        routing_key: &str,
        message: &RawMessage,
    ) -> Result<(), BrokerError> {
        let session = self.session_until(Instant::now() + TRANSIENT_WAIT).await?;
        if !exchange.is_default() && !self.exchange_ready(session.generation, &exchange.name) {
            let channel = session
                .transient_publisher()
                .await
                .map_err(|e| channel_error("opening the transient publisher channel", &e))?;
            declare_exchange(&channel, exchange, None).await?;
            self.mark_exchange_ready(session.generation, &exchange.name);
        }
        let properties = basic_properties(message)?;
        let channel = session
            .transient_publisher()
            .await
            .map_err(|e| channel_error("opening the transient publisher channel", &e))?;
        let confirm = channel
            .basic_publish(
                exchange.name.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &message.body,
                properties,
            )
            .await
            .map_err(|e| channel_error("basic.publish", &e))?;
        let timeout = self.config().confirm_timeout;
        match tokio::time::timeout(timeout, confirm).await {
            Ok(Ok(Confirmation::Nack(_))) => Err(BrokerError::Nacked {
                exchange: exchange.name.clone(),
                routing_key: routing_key.to_owned(),
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(channel_error("basic.publish", &e)),
            Err(_) => Err(BrokerError::ConfirmTimeout {
                waited: timeout,
                blocked: self.blocked_reason(),
            }),
        }
    }
}
