//! Declarations and queue operations. Each runs on its own short-lived
//! channel, so a refusal (a `406` clash, a `405` lock held elsewhere, a
//! missing queue) never closes a channel that publishers or consumers use.

use lapin::Channel;
use lapin::options::{
    BasicGetOptions, BasicNackOptions, ExchangeBindOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};

use celeriac_protocol::RawMessage;

use crate::BrokerError;
use crate::connection::Broker;
use crate::declare::{binding_error, declare_exchange, declare_queue};
use crate::error::{ReplyCode, channel_error};
use crate::topology::{Exchange, Queue, QueueType};
use crate::wire::raw_message;
use tracing::warn;

impl Broker {
    /// Runs `op` on a fresh channel, closing it afterwards.
    async fn on_scratch<T>(
        &self,
        op: impl AsyncFnOnce(&Channel) -> Result<T, BrokerError>,
    ) -> Result<T, BrokerError> {
        let session = self.session().await?;
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(|e| channel_error("opening a channel", &e))?;
        let result = op(&channel).await;
        close_quietly(&channel).await;
        result
    }

    /// Declares `queue` with its exchange and binding, exactly as given, and
    /// remembers it so it is declared again after every reconnect.
    ///
    /// A clash with an existing declaration is a [`BrokerError::Inequivalent`]
    /// naming the argument, both values and the matching Python declaration.
    pub async fn declare(&self, queue: &Queue) -> Result<(), BrokerError> {
        self.on_scratch(async |channel| declare_queue(channel, queue).await)
            .await?;
        self.remember(queue);
        Ok(())
    }

    /// Declares `queue` (once per handle), or, if it already exists as the
    /// other queue type (RabbitMQ answers 406), the existing one as it is,
    /// with a warning naming how to move it. Returns the queue as declared.
    /// For queues Celeriac owns whose type follows a setting that can
    /// change: dead-letter queues and beat's state slot.
    pub async fn declare_of_either_type(&self, queue: &Queue) -> Result<Queue, BrokerError> {
        let wanted = queue.arguments.queue_type.unwrap_or(QueueType::Classic);
        let other_type = match wanted {
            QueueType::Quorum => QueueType::Classic,
            QueueType::Classic => QueueType::Quorum,
        };
        let mut other = queue.clone();
        other.arguments.queue_type = (other_type == QueueType::Quorum).then_some(other_type);
        for declared in [queue, &other] {
            if self.is_declared(declared) {
                return Ok(declared.clone());
            }
        }
        match self.declare(queue).await {
            Ok(()) => Ok(queue.clone()),
            Err(e) if e.reply_code() == Some(ReplyCode::PreconditionFailed) => {
                warn!(
                    queue = %queue.name,
                    "{} exists as a {other_type} queue, not {wanted}; using it as it is \
                     (delete it while it is empty and unused to have it declared {wanted})",
                    queue.name
                );
                self.declare(&other).await?;
                Ok(other)
            }
            Err(e) => Err(e),
        }
    }

    /// Declares `queue` like [`declare`](Self::declare) but without
    /// re-declaring it after reconnects: for exclusive queues used as locks,
    /// whose owner must notice when it lost them.
    pub async fn declare_once(&self, queue: &Queue) -> Result<(), BrokerError> {
        self.on_scratch(async |channel| declare_queue(channel, queue).await)
            .await
    }

    /// Declares an exchange on its own (queues declare theirs).
    pub async fn declare_exchange(&self, exchange: &Exchange) -> Result<(), BrokerError> {
        self.on_scratch(async |channel| declare_exchange(channel, exchange, None).await)
            .await
    }

    /// Binds `queue` to `exchange` with `routing_key`, in addition to the
    /// queue's own binding (e.g. a topic pattern).
    pub async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        self.on_scratch(async |channel| {
            channel
                .queue_bind(
                    queue.into(),
                    exchange.into(),
                    routing_key.into(),
                    QueueBindOptions::default(),
                    Default::default(),
                )
                .await
                .map_err(|e| binding_error(&format!("{queue} <- {exchange} ({routing_key})"), &e))
        })
        .await
    }

    /// Removes the binding of `queue` to `exchange` with `routing_key` (a
    /// binding that is not there is no error).
    pub async fn unbind_queue(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        self.on_scratch(async |channel| {
            channel
                .queue_unbind(
                    queue.into(),
                    exchange.into(),
                    routing_key.into(),
                    Default::default(),
                )
                .await
                .map_err(|e| binding_error(&format!("{queue} <- {exchange} ({routing_key})"), &e))
        })
        .await
    }

    /// Binds exchange `destination` to exchange `source` with `routing_key`
    /// (an exchange-to-exchange binding, a RabbitMQ extension).
    pub async fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
    ) -> Result<(), BrokerError> {
        self.on_scratch(async |channel| {
            channel
                .exchange_bind(
                    destination.into(),
                    source.into(),
                    routing_key.into(),
                    ExchangeBindOptions::default(),
                    Default::default(),
                )
                .await
                .map_err(|e| {
                    binding_error(&format!("{destination} <- {source} ({routing_key})"), &e)
                })
        })
        .await
    }

    /// The message at the head of `queue`, left in place (fetched, then
    /// requeued), or `None` if the queue is empty.
    pub async fn peek(&self, queue: &str) -> Result<Option<RawMessage>, BrokerError> {
        self.on_scratch(async |channel| {
            let fetched = channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(|e| channel_error("basic.get", &e))?;
            let Some(message) = fetched else {
                return Ok(None);
            };
            let raw = raw_message(&message.delivery.properties, message.delivery.data.clone());
            let _ = message
                .delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await;
            Ok(Some(raw))
        })
        .await
    }

    /// How many messages are ready in `queue` and how many consumers it
    /// has (a passive declare: the queue is not created). `None` if the
    /// queue does not exist.
    pub async fn queue_counts(&self, queue: &str) -> Result<Option<(u32, u32)>, BrokerError> {
        self.on_scratch(async |channel| {
            let options = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match channel
                .queue_declare(queue.into(), options, Default::default())
                .await
            {
                Ok(q) => Ok(Some((q.message_count(), q.consumer_count()))),
                Err(e) if ReplyCode::of(&e) == Some(ReplyCode::NotFound) => Ok(None),
                Err(e) => Err(channel_error("queue.declare (passive)", &e)),
            }
        })
        .await
    }

    /// Removes every ready message from `queue`, returning how many.
    pub async fn purge_queue(&self, queue: &str) -> Result<u32, BrokerError> {
        self.on_scratch(async |channel| {
            channel
                .queue_purge(queue.into(), QueuePurgeOptions::default())
                .await
                .map_err(|e| channel_error("queue.purge", &e))
        })
        .await
    }

    /// Deletes a queue and the messages in it, returning how many there were;
    /// it is no longer re-declared after reconnects. Deleting a queue that
    /// does not exist is not an error.
    pub async fn delete_queue(&self, name: &str) -> Result<u32, BrokerError> {
        let deleted = self
            .on_scratch(async |channel| {
                channel
                    .queue_delete(name.into(), QueueDeleteOptions::default())
                    .await
                    .map_err(|e| channel_error("queue.delete", &e))
            })
            .await?;
        self.forget(name);
        Ok(deleted)
    }

    /// Deletes an exchange (not the default one). Deleting an exchange that
    /// does not exist is not an error.
    pub async fn delete_exchange(&self, name: &str) -> Result<(), BrokerError> {
        self.on_scratch(async |channel| {
            channel
                .exchange_delete(name.into(), ExchangeDeleteOptions::default())
                .await
                .map_err(|e| channel_error("exchange.delete", &e))
        })
        .await
    }
}

async fn close_quietly(channel: &Channel) {
    if channel.status().connected() {
        let _ = channel.close(200, "done".into()).await;
    }
}
