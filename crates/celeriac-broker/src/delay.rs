//! Delayed delivery through RabbitMQ itself, compatible with Celery 5.5+
//! native delayed delivery (§2.5): a message that must wait leaves the
//! worker instead of being held unacked past RabbitMQ's `consumer_timeout`.
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
//! Celeriac publishes to the exchange of the delay's highest set bit
//! instead ([`entry_exchange`]): the levels above it would only pass the
//! message down, and each of those topic-exchange hops costs the broker. On
//! RabbitMQ 3.10 here, 2,000 concurrent confirmed publishes of a 3 s delay
//! ran at about 400/s through `celery_delayed_27` and 6,000/s through
//! `celery_delayed_1`. The message, its routing key and where it waits are
//! the same either way.
//!
//! Celery binds *topic* application exchanges to `celery_delayed_delivery`;
//! Celeriac's default queues are direct (as Python's are), so each queue a
//! delayed message returns to is bound the first time, through an exchange
//! of Celeriac's own ([`ROUTER_EXCHANGE`]). Python producers never use the
//! topology for direct queues, so nothing changes for them.
//!
//! # Why the extra exchange
//!
//! The levels are quorum queues with *at-least-once* dead-lettering, as
//! Celery declares them. RabbitMQ forwards a level's expired messages from
//! a buffer of 32 (`dead_letter_worker_consumer_prefetch`) and keeps each
//! one there until some queue takes it. A message whose queue was deleted
//! while it waited is taken by none, so it stays in that buffer for good;
//! 32 of them and the level stops forwarding anything, for every app on
//! the broker (reproduced on RabbitMQ 3.10 with kombu's declarations; a
//! test cannot show it without jamming the shared broker).
//!
//! So Celeriac binds each queue to [`ROUTER_EXCHANGE`], binds that exchange
//! to `celery_delayed_delivery` for the queue's messages, and gives it an
//! alternate exchange: once the queue is gone, the binding
//! between the exchanges is still there, the router finds no queue, and
//! the message goes to the [`ORPHANS`] queue, where it stays (durable,
//! never dropped) until an operator requeues or purges it
//! (`celeriac dlq list --orphans`). Both bindings use [`binding_key`],
//! which matches one queue's messages only.

use std::time::Duration;

use celeriac_protocol::RawMessage;
use tracing::info;

use crate::topology::{Exchange, ExchangeKind, Queue, QueueArguments, QueueType};
use crate::{Broker, BrokerError};

/// Number of delay levels, as in Celery: delays up to 2²⁸ − 1 s (~8.5 years).
pub const LEVELS: u32 = 28;
/// The exchange delayed messages leave through, back to their queue.
pub const DELIVERY_EXCHANGE: &str = "celery_delayed_delivery";
/// Celeriac's exchange between [`DELIVERY_EXCHANGE`] and the queues
/// delayed messages return to; what it cannot route goes to [`ORPHANS`].
pub const ROUTER_EXCHANGE: &str = "celeriac.delayed";
/// The fanout exchange and durable queue where a delayed message waits
/// when the queue it was delayed for no longer exists.
pub const ORPHANS: &str = "celeriac.delayed.orphans";
/// The prefix of every level's exchange and queue name.
const LEVEL_PREFIX: &str = "celery_delayed_";

/// The name of delay level `level`'s exchange and queue (`celery_delayed_<level>`).
pub fn level_name(level: u32) -> String {
    format!("{LEVEL_PREFIX}{level}")
}

/// Whether `exchange` belongs to the delay topology (a delivery that came
/// back through it was published there, not to its queue's exchange).
///
/// ```
/// use celeriac_broker::delay::is_delay_exchange;
/// assert!(is_delay_exchange("celery_delayed_delivery"));
/// assert!(is_delay_exchange("celery_delayed_27"));
/// assert!(!is_delay_exchange("celery"));
/// ```
pub fn is_delay_exchange(exchange: &str) -> bool {
    exchange.starts_with(LEVEL_PREFIX)
}

/// The routing key for a `delay` to `destination`.
///
/// ```
/// use std::time::Duration;
/// use celeriac_broker::delay::routing_key;
/// assert_eq!(
///     routing_key(Duration::from_secs(10), "celery"),
///     "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.1.0.celery"
/// );
/// ```
pub fn routing_key(delay: Duration, destination: &str) -> String {
    let seconds = delay.as_secs().min((1 << LEVELS) - 1);
    let mut key = String::with_capacity(2 * LEVELS as usize + destination.len());
    for bit in (0..LEVELS).rev() {
        key.push(if seconds >> bit & 1 == 1 { '1' } else { '0' });
        key.push('.');
    }
    key.push_str(destination);
    key
}

/// The binding key that takes the delayed messages for `queue` and no
/// other: one word per level, then the queue's name. (A key `#.<queue>`
/// would also take those of a queue named `a.<queue>`.)
///
/// ```
/// use celeriac_broker::delay::binding_key;
/// let key = binding_key("email");
/// assert!(key.starts_with("*.*.") && key.ends_with(".*.email"));
/// assert_eq!(key.matches('*').count(), 28);
/// ```
pub fn binding_key(queue: &str) -> String {
    format!("{}{queue}", "*.".repeat(LEVELS as usize))
}

/// The exchange a message delayed by `delay` enters the topology through:
/// the level of its highest set bit (level 0 for less than 2 s).
///
/// ```
/// use std::time::Duration;
/// use celeriac_broker::delay::entry_exchange;
/// assert_eq!(entry_exchange(Duration::from_secs(10)), "celery_delayed_3");
/// assert_eq!(entry_exchange(Duration::from_secs(1)), "celery_delayed_0");
/// assert_eq!(entry_exchange(Duration::ZERO), "celery_delayed_0");
/// assert_eq!(entry_exchange(Duration::from_secs(u64::MAX)), "celery_delayed_27");
/// ```
pub fn entry_exchange(delay: Duration) -> String {
    let seconds = delay.as_secs().min((1 << LEVELS) - 1);
    level_name(seconds.checked_ilog2().unwrap_or(0))
}

/// Removes a delay prefix (28 binary words) from a routing key, so retries
/// of a delayed message route to the plain destination (§9 item 9).
pub fn strip_prefix(routing_key: &str) -> &str {
    let mut rest = routing_key;
    for _ in 0..LEVELS {
        match rest.split_once('.') {
            Some(("0" | "1", tail)) => rest = tail,
            _ => return routing_key,
        }
    }
    rest
}

/// The level queues, each bound to its own exchange, with Celery's
/// arguments for `queue_type`.
fn level_queues(queue_type: QueueType) -> impl Iterator<Item = Queue> {
    (0..LEVELS).rev().map(move |level| {
        let name = level_name(level);
        let next = if level == 0 {
            DELIVERY_EXCHANGE.to_owned()
        } else {
            level_name(level - 1)
        };
        let quorum = queue_type == QueueType::Quorum;
        Queue::celery_default(name.clone())
            .bound_to(
                Exchange::topic(name),
                format!("{}1.#", "*.".repeat((LEVELS - 1 - level) as usize)),
            )
            .with_arguments(QueueArguments {
                queue_type: Some(queue_type),
                overflow: Some("reject-publish".into()),
                message_ttl: Some(Duration::from_secs(1 << level)),
                dead_letter_exchange: Some(next),
                dead_letter_strategy: quorum.then(|| "at-least-once".into()),
                ..QueueArguments::default()
            })
    })
}

/// The queue orphaned delayed messages wait in, bound to its fanout
/// exchange, of the delay levels' queue type.
pub fn orphans_queue(queue_type: QueueType) -> Queue {
    Queue::celery_default(ORPHANS)
        .bound_to(Exchange::new(ORPHANS, ExchangeKind::Fanout), "")
        .with_arguments(QueueArguments {
            queue_type: Some(queue_type),
            ..QueueArguments::default()
        })
}

impl Broker {
    /// Publishes `message` to come back to `queue` after `delay`, through
    /// the delay topology (declared on first use, with
    /// [`BrokerConfig::delay_queue_type`](crate::BrokerConfig::delay_queue_type)),
    /// and waits for the confirm.
    pub async fn publish_delayed(
        &self,
        queue: &str,
        delay: Duration,
        message: &RawMessage,
    ) -> Result<(), BrokerError> {
        self.prepare_delayed_delivery(queue).await?;
        self.publish(&entry_exchange(delay), &routing_key(delay, queue), message)
            .await
    }

    /// Declares the delay topology (once per handle) and binds `queue` to
    /// it, as the first [`publish_delayed`](Self::publish_delayed) to
    /// `queue` would. Declaring the 28 levels takes the broker about a
    /// second; a worker calls this in the background as it starts, so the
    /// first burst of ETA tasks does not wait for it.
    pub async fn prepare_delayed_delivery(&self, queue: &str) -> Result<(), BrokerError> {
        self.shared
            .delay_declared
            .get_or_try_init(|| self.declare_delay_topology())
            .await?;
        if self.delay_bound(queue) {
            return Ok(());
        }
        let _binding = self.shared.delay_binding.lock().await;
        if !self.delay_bound(queue) {
            let key = binding_key(queue);
            self.bind_exchange(ROUTER_EXCHANGE, DELIVERY_EXCHANGE, &key)
                .await?;
            self.bind_queue(queue, ROUTER_EXCHANGE, &key).await?;
            // Earlier Celeriac bound queues here with `#.<queue>`, which
            // also takes the messages of `a.<queue>`: undo that on brokers
            // it ran on.
            self.unbind_queue(queue, DELIVERY_EXCHANGE, &format!("#.{queue}"))
                .await?;
            self.mark_delay_bound(queue);
        }
        Ok(())
    }

    async fn declare_delay_topology(&self) -> Result<(), BrokerError> {
        self.declare_exchange(&Exchange::topic(DELIVERY_EXCHANGE))
            .await?;
        self.declare(&orphans_queue(self.config().delay_queue_type))
            .await?;
        self.declare_exchange(&Exchange::topic(ROUTER_EXCHANGE).with_alternate_exchange(ORPHANS))
            .await?;
        for queue in level_queues(self.config().delay_queue_type) {
            self.declare(&queue).await?;
        }
        for level in (1..LEVELS).rev() {
            let pattern = format!("{}0.#", "*.".repeat((LEVELS - 1 - level) as usize));
            self.bind_exchange(&level_name(level - 1), &level_name(level), &pattern)
                .await?;
        }
        let last = format!("{}0.#", "*.".repeat((LEVELS - 1) as usize));
        self.bind_exchange(DELIVERY_EXCHANGE, &level_name(0), &last)
            .await?;
        info!("declared the delayed-delivery topology (celery_delayed_0..27, {ROUTER_EXCHANGE})");
        Ok(())
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

    #[test]
    fn level_queues_follow_celery() {
        let queues: Vec<Queue> = level_queues(QueueType::Quorum).collect();
        assert_eq!(queues.len(), 28);
        let top = &queues[0];
        assert_eq!(top.name, "celery_delayed_27");
        assert_eq!(top.routing_key, "1.#");
        let bottom = &queues[27];
        assert_eq!(bottom.name, "celery_delayed_0");
        assert_eq!(bottom.routing_key, format!("{}1.#", "*.".repeat(27)));
        assert_eq!(
            bottom.arguments.dead_letter_exchange.as_deref(),
            Some(DELIVERY_EXCHANGE)
        );
        assert_eq!(bottom.arguments.message_ttl, Some(Duration::from_secs(1)));
        let classic: Vec<Queue> = level_queues(QueueType::Classic).collect();
        assert!(
            classic
                .iter()
                .all(|q| q.arguments.dead_letter_strategy.is_none())
        );
    }
}
