//! Exactly one active beat, using locks RabbitMQ holds for us.
//!
//! - **The lock** is an exclusive queue, `celeriac.beat.<name>.lock`: only the
//!   connection that declared it may declare it again, and RabbitMQ deletes
//!   it when that connection dies. The beat that declares it is active;
//!   others get `RESOURCE_LOCKED` and stand by, retrying every second. A
//!   standby therefore takes over about a second after the active beat's
//!   connection is gone (at once for a clean exit; within the heartbeat
//!   timeout for a host that vanished).
//! - **The shared state** is a durable queue, `celeriac.beat.<name>.state`,
//!   holding only the newest state message (`x-max-length: 1`,
//!   `x-overflow: drop-head`). The active beat publishes its state (confirmed)
//!   after every send; a beat taking over reads it, so it does not send again
//!   what the previous one sent.
//! - The active beat re-declares the lock before each batch of sends: if its
//!   connection dropped and another beat took over meanwhile, it finds out and
//!   stands by instead of sending.

use celeriac_broker::{Broker, BrokerError, Exchange, Queue, QueueArguments};
use celeriac_protocol::{Properties, RawMessage};

use crate::scheduler::State;

/// The lock and shared state of one beat cluster.
pub struct Leadership {
    broker: Broker,
    lock: Queue,
    state: Queue,
}

impl Leadership {
    /// The lock and state queues for cluster `name`.
    pub fn new(broker: Broker, name: &str) -> Leadership {
        let lock_name = format!("celeriac.beat.{name}.lock");
        let lock = Queue {
            exchange: Exchange::direct(""),
            routing_key: lock_name.clone(),
            name: lock_name,
            durable: false,
            exclusive: true,
            auto_delete: true,
            arguments: QueueArguments::default(),
        };
        let state_name = format!("celeriac.beat.{name}.state");
        let state = Queue {
            exchange: Exchange::direct(""),
            routing_key: state_name.clone(),
            name: state_name,
            durable: true,
            exclusive: false,
            auto_delete: false,
            arguments: QueueArguments {
                max_length: Some(1),
                overflow: Some("drop-head".into()),
                ..QueueArguments::default()
            },
        };
        Leadership {
            broker,
            lock,
            state,
        }
    }

    /// Takes (or confirms holding) the lock: `Ok(false)` if another beat has it.
    pub async fn acquire(&self) -> Result<bool, BrokerError> {
        match self.broker.declare_once(&self.lock).await {
            Ok(()) => Ok(true),
            Err(BrokerError::Declare { detail, .. }) if detail.contains("RESOURCE_LOCKED") => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// The newest shared state, if any beat saved one.
    pub async fn load(&self) -> Result<Option<State>, BrokerError> {
        self.broker.declare(&self.state).await?;
        let Some(message) = self.broker.peek(&self.state.name).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&message.body).ok())
    }

    /// Publishes the state (confirmed).
    pub async fn save(&self, state: &State) -> Result<(), BrokerError> {
        let message = RawMessage {
            properties: Properties {
                content_type: Some("application/json".into()),
                content_encoding: Some("utf-8".into()),
                delivery_mode: Some(2),
                ..Properties::default()
            },
            headers: Default::default(),
            body: serde_json::to_vec(state).unwrap_or_default(),
        };
        self.broker.publish("", &self.state.name, &message).await
    }
}
