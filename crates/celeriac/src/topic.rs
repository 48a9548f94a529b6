//! Durable fan-out: one message published to a topic exchange reaches one
//! durable queue per subscribing service, each with its own workers,
//! retries and dead letters. Subscribers declare their queue bound to the
//! exchange with a pattern (in Rust,
//! `Queue::celery_default("billing.events").bound_to(Exchange::topic("events"), "order.*")`;
//! in Python, a `task_queues` entry with a topic `Exchange`), and each runs
//! its own task of the event's name.

use tokio::sync::OnceCell;

use crate::broker::Exchange;
use crate::{App, Error, TaskCall};

/// A topic exchange that events are published to ([`App::topic`]).
#[derive(Debug)]
pub struct Topic {
    app: App,
    exchange: Exchange,
    declared: OnceCell<()>,
}

impl Topic {
    pub(crate) fn new(app: App, exchange: Exchange) -> Topic {
        Topic {
            app,
            exchange,
            declared: OnceCell::new(),
        }
    }

    /// The exchange's name.
    pub fn name(&self) -> &str {
        &self.exchange.name
    }

    /// Publishes `call` once, with `routing_key`: every queue bound to the
    /// exchange with a matching pattern gets a copy, and each subscribing
    /// service runs its own task of the call's name. Returns the task id
    /// all copies share.
    ///
    /// The exchange is declared (durable, as Python's `Exchange(name,
    /// type='topic')`) before the first publish. No result is stored: each
    /// subscriber's run would write one under the same id. A routing key
    /// that no queue is bound for is an error ([`BrokerError::Unroutable`]):
    /// an event nobody subscribes to is not dropped silently.
    ///
    /// [`BrokerError::Unroutable`]: crate::broker::BrokerError::Unroutable
    pub async fn publish<O: serde::de::DeserializeOwned>(
        &self,
        routing_key: &str,
        call: TaskCall<O>,
    ) -> Result<String, Error> {
        self.declared
            .get_or_try_init(|| async { self.app.broker().declare_exchange(&self.exchange).await })
            .await?;
        let call = call
            .exchange(self.exchange.name.clone())
            .routing_key(routing_key)
            .ignore_result(true);
        let sent = self.app.send_call(call).await?;
        Ok(sent.id().to_owned())
    }
}
