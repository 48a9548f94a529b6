//! Long ETAs leave the worker through a delay topology compatible with
//! Celery 5.5+ native delayed delivery (§2.5), instead of being held unacked
//! past RabbitMQ's `consumer_timeout`.
//!
//! The topology is Celery's, declared with the same arguments so Python
//! workers can share it: topic exchanges and queues `celery_delayed_0` …
//! `celery_delayed_27`, where queue *n* holds a message for 2ⁿ seconds
//! (`x-message-ttl`) and then dead-letters it to level *n − 1*, and
//! `celery_delayed_delivery`, the final exchange. A message is published to
//! `celery_delayed_27` with its delay as 28 binary digits in the routing key
//! (most significant first), then the destination:
//! `0.0.…0.1.0.1.0.<queue>` for 10 s. Each level's binding routes the
//! message into its queue when its bit is 1, or straight to the next level
//! when it is 0, so it waits exactly its delay.
//!
//! Celery binds *topic* application exchanges to `celery_delayed_delivery`;
//! Celeriac's default queues are direct (as Python's are), so the worker binds
//! each consumed queue itself with `#.<queue>`. Python producers never use the
//! topology for direct queues, so nothing changes for them.

use std::time::Duration;

use celeriac_broker::{Broker, BrokerError, Exchange, Queue, QueueArguments, QueueType};
use celeriac_protocol::RawMessage;
use tokio::sync::OnceCell;
use tracing::info;

/// Number of delay levels, as in Celery: delays up to 2²⁸ − 1 s (~8.5 years).
const LEVELS: u32 = 28;
/// The exchange delayed messages leave through.
pub(crate) const DELIVERY_EXCHANGE: &str = "celery_delayed_delivery";

fn level_name(level: u32) -> String {
    format!("celery_delayed_{level}")
}

/// The routing key for a `delay` to `destination`.
///
/// ```text
/// 10 s to "celery" -> 0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.1.0.celery
/// ```
pub(crate) fn routing_key(delay: Duration, destination: &str) -> String {
    let seconds = delay.as_secs().min((1 << LEVELS) - 1);
    let mut key = String::with_capacity(2 * LEVELS as usize + destination.len());
    for bit in (0..LEVELS).rev() {
        key.push(if seconds >> bit & 1 == 1 { '1' } else { '0' });
        key.push('.');
    }
    key.push_str(destination);
    key
}

/// Removes a delay prefix (28 binary words) from a routing key, so retries
/// of a delayed message route to the plain destination (§9 item 9).
pub(crate) fn strip_prefix(routing_key: &str) -> &str {
    let mut rest = routing_key;
    for _ in 0..LEVELS {
        match rest.split_once('.') {
            Some(("0" | "1", tail)) => rest = tail,
            _ => return routing_key,
        }
    }
    rest
}

/// The delay topology, declared once per worker.
pub(crate) struct DelayTopology {
    queue_type: QueueType,
    declared: OnceCell<()>,
}

impl DelayTopology {
    pub(crate) fn new(queue_type: &str) -> DelayTopology {
        DelayTopology {
            queue_type: if queue_type == "classic" {
                QueueType::Classic
            } else {
                QueueType::Quorum
            },
            declared: OnceCell::new(),
        }
    }

    /// Declares the levels (once), and binds `queue` to the final exchange.
    pub(crate) async fn prepare(&self, broker: &Broker, queue: &str) -> Result<(), BrokerError> {
        self.declared
            .get_or_try_init(|| self.declare(broker))
            .await?;
        broker
            .bind_queue(queue, DELIVERY_EXCHANGE, &format!("#.{queue}"))
            .await
    }

    async fn declare(&self, broker: &Broker) -> Result<(), BrokerError> {
        broker
            .declare_exchange(&Exchange::topic(DELIVERY_EXCHANGE))
            .await?;
        for level in (0..LEVELS).rev() {
            let name = level_name(level);
            let next = if level == 0 {
                DELIVERY_EXCHANGE.to_owned()
            } else {
                level_name(level - 1)
            };
            let quorum = self.queue_type == QueueType::Quorum;
            let queue = Queue::celery_default(name.clone())
                .bound_to(
                    Exchange::topic(name.clone()),
                    format!("{}1.#", "*.".repeat((LEVELS - 1 - level) as usize)),
                )
                .with_arguments(QueueArguments {
                    queue_type: Some(self.queue_type),
                    overflow: Some("reject-publish".into()),
                    message_ttl: Some(Duration::from_secs(1 << level)),
                    dead_letter_exchange: Some(next),
                    dead_letter_strategy: quorum.then(|| "at-least-once".into()),
                    ..QueueArguments::default()
                });
            broker.declare(&queue).await?;
        }
        for level in (1..LEVELS).rev() {
            let pattern = format!("{}0.#", "*.".repeat((LEVELS - 1 - level) as usize));
            broker
                .bind_exchange(&level_name(level - 1), &level_name(level), &pattern)
                .await?;
        }
        let last = format!("{}0.#", "*.".repeat((LEVELS - 1) as usize));
        broker
            .bind_exchange(DELIVERY_EXCHANGE, &level_name(0), &last)
            .await?;
        info!("declared the delayed-delivery topology (celery_delayed_0..27)");
        Ok(())
    }

    /// Publishes `message` to come back to `queue` after `delay`.
    pub(crate) async fn publish(
        &self,
        broker: &Broker,
        queue: &str,
        delay: Duration,
        message: &RawMessage,
    ) -> Result<(), BrokerError> {
        self.prepare(broker, queue).await?;
        broker
            .publish(&level_name(LEVELS - 1), &routing_key(delay, queue), message)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_keys_match_celerys() {
        // The example of the wire reference (§2.5).
        assert_eq!(
            routing_key(Duration::from_secs(10), "celery"),
            "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.1.0.celery"
        );
        assert!(routing_key(Duration::from_secs(u64::MAX), "q").starts_with("1.1.1"));
    }

    #[test]
    fn prefixes_strip_once() {
        let key = routing_key(Duration::from_secs(7), "a.b");
        assert_eq!(strip_prefix(&key), "a.b");
        assert_eq!(strip_prefix("celery"), "celery");
        assert_eq!(
            strip_prefix("1.0.celery"),
            "1.0.celery",
            "shorter than 28 levels: not a prefix"
        );
    }
}
