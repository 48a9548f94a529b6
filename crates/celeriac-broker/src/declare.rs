//! Declaring exchanges, queues and bindings on a channel, and turning the
//! broker's refusals into [`BrokerError`]s that name the fix.
//!
//! The connection (re-declaring after a reconnect), consumers (declaring
//! what they consume) and the one-off operations all declare through here.

use lapin::Channel;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};

use crate::BrokerError;
use crate::error::{Inequivalent, ReplyCode, parse_inequivalent};
use crate::field_table::to_field_table;
use crate::topology::{Exchange, ExchangeKind, Queue};

/// Declares a queue's exchange, the queue and the binding on `channel`.
pub(crate) async fn declare_queue(channel: &Channel, queue: &Queue) -> Result<(), BrokerError> {
    let exchange = &queue.exchange;
    if !exchange.is_default() {
        declare_exchange(channel, exchange, Some(queue)).await?;
    }
    let options = QueueDeclareOptions {
        durable: queue.durable,
        exclusive: queue.exclusive,
        auto_delete: queue.auto_delete,
        ..QueueDeclareOptions::default()
    };
    let arguments = to_field_table(&queue.arguments.to_headers())?;
    channel
        .queue_declare(queue.name.as_str().into(), options, arguments)
        .await
        .map_err(|e| declare_error("queue", &queue.name, queue, &e))?;
    if !exchange.is_default() {
        channel
            .queue_bind(
                queue.name.as_str().into(),
                exchange.name.as_str().into(),
                queue.routing_key.as_str().into(),
                QueueBindOptions::default(),
                Default::default(),
            )
            .await
            .map_err(|e| declare_error("binding", &queue.name, queue, &e))?;
    }
    Ok(())
}

/// Declares an exchange on `channel`; `queue` (if any) is the declaration
/// that needed it, for the fix in a 406 message.
pub(crate) async fn declare_exchange(
    channel: &Channel,
    exchange: &Exchange,
    queue: Option<&Queue>,
) -> Result<(), BrokerError> {
    let options = ExchangeDeclareOptions {
        durable: exchange.durable,
        auto_delete: exchange.auto_delete,
        ..ExchangeDeclareOptions::default()
    };
    let fallback;
    let queue = if let Some(q) = queue {
        q
    } else {
        fallback = Queue::celery_default(exchange.name.clone()).bound_to(exchange.clone(), "");
        &fallback
    };
    channel
        .exchange_declare(
            exchange.name.as_str().into(),
            lapin_kind(exchange.kind),
            options,
            to_field_table(&exchange.arguments())?,
        )
        .await
        .map_err(|e| declare_error("exchange", &exchange.name, queue, &e))
}

/// A failed binding (`queue.bind` or `exchange.bind`) of `name`.
pub(crate) fn binding_error(name: &str, error: &lapin::Error) -> BrokerError {
    BrokerError::Declare {
        entity: "binding",
        name: name.to_owned(),
        code: ReplyCode::of(error),
        detail: error.to_string(),
    }
}

fn lapin_kind(kind: ExchangeKind) -> lapin::ExchangeKind {
    match kind {
        ExchangeKind::Direct => lapin::ExchangeKind::Direct,
        ExchangeKind::Topic => lapin::ExchangeKind::Topic,
        ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
        ExchangeKind::Headers => lapin::ExchangeKind::Headers,
    }
}

fn declare_error(
    entity: &'static str,
    name: &str,
    queue: &Queue,
    error: &lapin::Error,
) -> BrokerError {
    let text = error.to_string();
    match parse_inequivalent(&text) {
        Some(diff) => BrokerError::Inequivalent(Box::new(Inequivalent {
            entity,
            name: name.to_owned(),
            argument: diff.argument,
            broker_has: diff.broker_has,
            we_asked: diff.we_asked,
            python: queue.python_declaration(),
        })),
        None => BrokerError::Declare {
            entity,
            name: name.to_owned(),
            code: ReplyCode::of(error),
            detail: text,
        },
    }
}
