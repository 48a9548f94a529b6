//! Exactly one active beat, using coordination RabbitMQ holds for us.
//!
//! - **The lock** `celeriac.beat.<name>.lock` ([`Broker::try_lock`]): only
//!   the connection that took it holds it, and RabbitMQ frees it when that
//!   connection dies. The beat that holds it is active; others stand by,
//!   retrying every second. A standby therefore takes over about a second
//!   after the active beat's connection is gone (at once for a clean exit;
//!   within the heartbeat timeout for a host that vanished).
//! - **The shared state** is the latest-value slot `celeriac.beat.<name>.state`
//!   ([`Broker::save_latest`]). The active beat saves its state (confirmed)
//!   after every batch of sends; a beat taking over reads it, so it does not
//!   send again what the previous one sent.
//! - The active beat confirms the lock before each batch of sends: if its
//!   connection dropped and another beat took over meanwhile, it finds out
//!   and stands by instead of sending.

use celeriac::broker::Broker;
use celeriac::protocol::{Properties, RawMessage};

use crate::BeatError;
use crate::scheduler::State;

/// The lock and shared state of one beat cluster.
#[derive(Debug)]
pub struct Leadership {
    broker: Broker,
    lock: String,
    state: String,
}

impl Leadership {
    /// The lock and state of cluster `name`.
    pub fn new(broker: Broker, name: &str) -> Leadership {
        Leadership {
            broker,
            lock: format!("celeriac.beat.{name}.lock"),
            state: format!("celeriac.beat.{name}.state"),
        }
    }

    /// Takes (or confirms holding) the lock: `Ok(false)` if another beat has it.
    pub async fn acquire(&self) -> Result<bool, BeatError> {
        Ok(self.broker.try_lock(&self.lock).await?)
    }

    /// The newest shared state, if any beat saved one; a state that does not
    /// decode (written by an incompatible version) counts as none.
    pub async fn load(&self) -> Result<Option<State>, BeatError> {
        let Some(message) = self.broker.load_latest(&self.state).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&message.body).ok())
    }

    /// Saves the state (confirmed).
    pub async fn save(&self, state: &State) -> Result<(), BeatError> {
        let message = RawMessage {
            properties: Properties {
                content_type: Some("application/json".into()),
                content_encoding: Some("utf-8".into()),
                delivery_mode: Some(2),
                ..Properties::default()
            },
            headers: celeriac::Headers::default(),
            body: serde_json::to_vec(state)
                .map_err(BeatError::EncodeState)?
                .into(),
        };
        Ok(self.broker.save_latest(&self.state, &message).await?)
    }
}
