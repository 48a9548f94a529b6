//! What every delivery's handler shares: the app, the settings, the
//! concurrency permits, the shutdown signal, the outbox and the counts.

use std::sync::Arc;

use celeriac::broker::{Delivery, Queue};
use celeriac::protocol::TaskMessage;
use celeriac::{App, DeliveryInfo, Request};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::outbox::Outbox;
use crate::{Stats, WorkerConfig};

/// Shared by every delivery's handler.
pub(crate) struct Context {
    pub(crate) app: App,
    pub(crate) config: WorkerConfig,
    /// One permit per task allowed to run at once.
    pub(crate) permits: Arc<Semaphore>,
    /// Cancelled when the worker starts shutting down.
    pub(crate) shutdown: CancellationToken,
    /// Everything the worker publishes goes through here.
    pub(crate) outbox: Outbox,
    pub(crate) stats: Arc<Stats>,
    /// The queues consumed, as declared.
    pub(crate) queues: Vec<Queue>,
}

impl Context {
    /// Whether `queue` is configured for broker-native dead-lettering.
    pub(crate) fn native_dead_lettering(&self, queue: &str) -> bool {
        self.queues
            .iter()
            .any(|q| q.name == queue && q.arguments.dead_letter_exchange.is_some())
    }

    /// The request context of a delivery.
    pub(crate) fn request_for(&self, delivery: &Delivery, message: &TaskMessage) -> Request {
        let info = DeliveryInfo {
            exchange: delivery.exchange.clone(),
            routing_key: delivery.routing_key.clone(),
            priority: delivery.priority(),
            redelivered: delivery.redelivered,
        };
        let request = Request::from_message(message, info, self.config.hostname.clone());
        match self.app.result_backend() {
            Some(backend) => {
                let extended = self.app.result_settings().extended;
                request.with_results(backend.clone(), message, extended)
            }
            None => request,
        }
    }

    /// Whether the task of `message` stores no result.
    pub(crate) fn ignores_result(&self, message: &TaskMessage) -> bool {
        message
            .headers
            .ignore_result
            .or(self.app.task_options(&message.headers.task).ignore_result)
            .unwrap_or(false)
    }
}
