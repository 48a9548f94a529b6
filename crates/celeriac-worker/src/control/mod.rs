//! Remote control (§6): the worker's own pidbox queue, consumed beside its
//! task queues; each request meant for this node is dispatched to an
//! inspect or control command and, if it is a call, answered with the
//! request's ticket. A command the worker cannot honour answers
//! `{"error": ...}` saying why; an unknown one says so too.

mod commands;
mod inspect;
mod mingle;

use std::sync::Arc;

use celeriac::broker::control::reply_exchange;
use celeriac::broker::{ConsumeOptions, Consumer, Exchange, ExchangeKind, Queue, ReplyCode};
use celeriac::protocol::control::{ControlOutcome, ControlReply, ControlRequest};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub(crate) use mingle::mingle;

use crate::WorkerError;
use crate::context::Context;

/// Subscribes to this worker's pidbox queue (before the worker says it is
/// ready, so the first broadcast after that reaches it). `None` if another
/// worker with the same node name holds the queue: this one then runs its
/// tasks without answering remote control, and says so loudly.
pub(crate) async fn subscribe(ctx: &Context) -> Result<Option<Consumer>, WorkerError> {
    let node = &ctx.config.hostname;
    let options = ConsumeOptions {
        queues: vec![Queue::control(node)],
        prefetch: 100,
    };
    match ctx.app.broker().consume(options).await {
        Ok(consumer) => Ok(Some(consumer)),
        Err(e) if e.reply_code() == Some(ReplyCode::ResourceLocked) => {
            error!(
                node = %node,
                "another worker is running with this node name (it holds the control queue \
                 {node}.celery.pidbox): this worker runs tasks but will not answer inspect or \
                 control commands; give each worker its own name with -n/--hostname"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Answers control requests until `stop`.
pub(crate) async fn serve(ctx: Arc<Context>, mut consumer: Consumer, stop: CancellationToken) {
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => break,
            delivery = consumer.next() => match delivery {
                Some(delivery) => delivery,
                None => break,
            },
        };
        // Control messages are never redelivered: ack on receipt, as
        // Celery's no-ack consumer would have taken them.
        let _ = delivery.ack().await;
        if let Some(clock) = delivery.message.headers.get("clock").and_then(|c| match c {
            celeriac::protocol::HeaderValue::Int(c) => u64::try_from(*c).ok(),
            _ => None,
        }) {
            ctx.app.clock().adjust(clock);
        }
        // Signed, and only signed, with message signing set up: kombu's
        // mailbox serializes with the task serializer.
        let request = match ControlRequest::decode(&delivery.message, &ctx.decode) {
            Ok(request) => request,
            Err(e) => {
                warn!(error = %e, "ignoring an undecodable control message");
                continue;
            }
        };
        if !request.is_for(&ctx.config.hostname) {
            continue;
        }
        debug!(method = %request.method, ticket = ?request.ticket, "control request");
        // Each request is answered on its own task, so a slow one (say a
        // revoke that stores results) does not hold up a ping.
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let reply = dispatch(&ctx, &request).await;
            if let (Some(reply), Some(ticket), Some(reply_to)) =
                (reply, &request.ticket, &request.reply_to)
            {
                send_reply(
                    &ctx,
                    ticket,
                    &reply_to.exchange,
                    &reply_to.routing_key,
                    reply,
                )
                .await;
            }
        });
    }
    consumer.stop();
}

/// Runs one command; `None` for commands that send no reply (`shutdown`).
async fn dispatch(ctx: &Arc<Context>, request: &ControlRequest) -> Option<Value> {
    let args = &request.arguments;
    if let Some(reply) = inspect::run(ctx, &request.method, args).await {
        return reply;
    }
    if let Some(reply) = commands::run(ctx, &request.method, args).await {
        return reply;
    }
    info!(method = %request.method, "unknown control command");
    Some(
        ControlOutcome::error(format!(
            "unknown command {:?}: Celeriac workers answer Celery's inspect and control commands; see docs/monitoring.md",
            request.method
        ))
        .to_json(),
    )
}

async fn send_reply(ctx: &Context, ticket: &str, exchange: &str, routing_key: &str, value: Value) {
    let reply = ControlReply::new(ticket, ctx.config.hostname.clone(), value);
    let mut message = reply.encode(ctx.app.clock().forward());
    if let Some(security) = ctx.app.security() {
        celeriac::protocol::auth::seal_message(&mut message, security.signer());
    }
    let exchange = if exchange == reply_exchange().name {
        reply_exchange()
    } else {
        Exchange {
            durable: false,
            ..Exchange::new(exchange, ExchangeKind::Direct)
        }
    };
    if let Err(e) = ctx
        .app
        .broker()
        .publish_transient(&exchange, routing_key, &message)
        .await
    {
        warn!(error = %e, "could not send a control reply");
    }
}
