//! Coordination that RabbitMQ holds for us, for processes that must agree
//! without another service (one active beat among several):
//!
//! - **locks**: [`Broker::try_lock`] declares an exclusive queue
//!   ([`Queue::lock`]); the connection that declared it holds it, every other
//!   one is refused, and RabbitMQ frees it when the holder's connection ends;
//! - **latest-value slots**: [`Broker::save_latest`] publishes (confirmed)
//!   to a durable queue that keeps only its newest message
//!   ([`Queue::latest_value`]); [`Broker::load_latest`] reads it in place.

use celeriac_protocol::RawMessage;

use crate::error::ReplyCode;
use crate::publish::Nacks;
use crate::topology::Queue;
use crate::{Broker, BrokerError};

impl Broker {
    /// Takes the lock `name`, or confirms that this connection still holds
    /// it: `Ok(false)` if another connection holds it.
    ///
    /// The lock is not re-declared after a reconnect: a holder whose
    /// connection dropped has lost it, and finds out at its next call.
    pub async fn try_lock(&self, name: &str) -> Result<bool, BrokerError> {
        match self.declare_once(&Queue::lock(name)).await {
            Ok(()) => Ok(true),
            Err(e) if e.reply_code() == Some(ReplyCode::ResourceLocked) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Stores `message` as the newest value of slot `name` and waits for the
    /// confirm; older values are dropped by the broker. A negative confirm
    /// is an error at once, not sent again until `publish_wait` is over:
    /// the next save supersedes this one, and a caller such as beat must
    /// not be held up by a slot that is unavailable for a while.
    pub async fn save_latest(&self, name: &str, message: &RawMessage) -> Result<(), BrokerError> {
        self.declare_slot(name).await?;
        self.publish_with("", name, message, Nacks::Fail).await
    }

    /// The newest value saved in slot `name`, left in place; `None` if none
    /// was saved.
    pub async fn load_latest(&self, name: &str) -> Result<Option<RawMessage>, BrokerError> {
        self.declare_slot(name).await?;
        self.peek(name).await
    }

    /// Declares slot `name` (once per handle) as `state_queue_type` says. A
    /// slot that already exists as the other queue type (a classic slot
    /// from before a switch to quorum) is used as it is, with a warning
    /// saying how to move it.
    async fn declare_slot(&self, name: &str) -> Result<(), BrokerError> {
        let slot = Queue::latest_value(name, self.config().state_queue_type);
        self.declare_of_either_type(&slot).await.map(drop)
    }
}
