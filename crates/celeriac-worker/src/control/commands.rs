//! The control commands (§6.4): revocation, shutdown, events, rate and time
//! limits, consumers and the pool size, with Celery's reply texts.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use celeriac::broker::{Exchange, ExchangeKind};
use celeriac::protocol::control::ControlOutcome;
use celeriac::protocol::{ExceptionInfo, State, TaskMessage};
use celeriac::{DeliveryInfo, Request};
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::inspect::strings;
use crate::context::Context;
use crate::limits::TimeLimits;

/// Runs control command `method`; `None` if it is not one. The inner
/// `None` means no reply (`shutdown`).
pub(super) async fn run(
    ctx: &Arc<Context>,
    method: &str,
    args: &Map<String, Value>,
) -> Option<Option<Value>> {
    let outcome = match method {
        "revoke" => revoke(ctx, strings(args.get("task_id")), terminate_flag(args)).await,
        "terminate" => revoke(ctx, strings(args.get("task_id")), true).await,
        "revoke_by_stamped_headers" => revoke_by_stamps(ctx, args),
        "shutdown" => {
            let message = args
                .get("msg")
                .and_then(Value::as_str)
                .unwrap_or("Got shutdown from remote");
            warn!("{message}");
            ctx.stop.cancel();
            return Some(None);
        }
        "enable_events" => toggle_events(ctx, true),
        "disable_events" => toggle_events(ctx, false),
        "heartbeat" => {
            ctx.events.wake_up().await;
            return Some(Some(Value::Null));
        }
        "election" => return Some(Some(Value::Null)),
        "rate_limit" => rate_limit(ctx, args),
        "time_limit" => time_limit(ctx, args),
        "add_consumer" => add_consumer(ctx, args).await,
        "cancel_consumer" => {
            let queue = text(args, "queue");
            ctx.consumer.cancel_queue(&queue).await;
            info!(queue = %queue, "no longer consuming from a queue (remote control)");
            ControlOutcome::ok(format!("no longer consuming from {queue}"))
        }
        "pool_grow" => {
            ctx.pool.grow(count(args, "n").unwrap_or(1));
            ControlOutcome::ok("pool will grow")
        }
        "pool_shrink" => match ctx.pool.shrink(count(args, "n").unwrap_or(1)) {
            Ok(_) => ControlOutcome::ok("pool will shrink"),
            Err(why) => ControlOutcome::error(why),
        },
        "autoscale" => autoscale(ctx, args),
        "pool_restart" => ControlOutcome::error(
            "pool_restart is not supported: a Celeriac worker runs tasks in its own process, \
             so new code needs a restart of the worker",
        ),
        _ => return None,
    };
    Some(Some(outcome.to_json()))
}

fn text(args: &Map<String, Value>, name: &str) -> String {
    match args.get(name) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn count(args: &Map<String, Value>, name: &str) -> Option<usize> {
    match args.get(name)? {
        Value::Number(n) => n.as_u64().and_then(|n| usize::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn seconds(args: &Map<String, Value>, name: &str) -> Option<Duration> {
    let value = match args.get(name)? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (value.is_finite() && value > 0.0).then(|| Duration::from_secs_f64(value))
}

fn terminate_flag(args: &Map<String, Value>) -> bool {
    match args.get("terminate") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => {
            matches!(s.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        }
        _ => false,
    }
}

/// Python's repr of a set of ids: `{'a', 'b'}`.
fn python_set(ids: &BTreeSet<String>) -> String {
    let items: Vec<String> = ids.iter().map(|id| format!("'{id}'")).collect();
    format!("{{{}}}", items.join(", "))
}

/// `revoke`: remembers the ids (so they never run here), settles those
/// waiting here as `REVOKED`, stores `REVOKED` for those that have no
/// state yet (as Celery 5.6.2+ does when the command arrives), and with
/// `terminate` stops running async tasks at their next await.
async fn revoke(ctx: &Arc<Context>, ids: Vec<String>, terminate: bool) -> ControlOutcome {
    let ids: BTreeSet<String> = ids.into_iter().collect();
    if ids.is_empty() {
        return ControlOutcome::error("revoke needs task_id: one id or a list of ids");
    }
    ctx.revoked.add(ids.iter().cloned());
    let held = ctx
        .tracker
        .revoke(terminate, |m| ids.contains(&m.headers.id));
    info!(ids = ?ids, terminate, "tasks flagged as revoked");
    for id in &ids {
        if !held.iter().any(|h| &h.id == id) {
            store_revoked(ctx, id).await;
        }
    }
    if !terminate {
        return ControlOutcome::ok(format!("tasks {} flagged as revoked", python_set(&ids)));
    }
    let running: Vec<_> = held.iter().filter(|h| h.running).collect();
    let blocking: Vec<&str> = running
        .iter()
        .filter(|h| h.blocking)
        .map(|h| h.id.as_str())
        .collect();
    if !blocking.is_empty() {
        return ControlOutcome::error(format!(
            "cannot terminate {}: a synchronous task runs on a blocking thread, which cannot be \
             interrupted; it is flagged as revoked and will run to its end",
            blocking.join(", ")
        ));
    }
    if running.is_empty() {
        return ControlOutcome::ok("terminate: tasks unknown");
    }
    let terminated: Vec<&str> = running.iter().map(|h| h.id.as_str()).collect();
    ControlOutcome::ok(format!("terminate: {}", terminated.join(", ")))
}

/// Stores `REVOKED` for a task this worker does not hold, unless it has a
/// final state already or another worker started it (Celery's rule).
/// Over `rpc://` there is nobody to tell: the result goes to the caller
/// only when the task's message is met.
async fn store_revoked(ctx: &Context, id: &str) {
    let Some(backend) = ctx.app.result_backend() else {
        return;
    };
    if backend.reply_to().is_some() {
        return;
    }
    match backend.get(id).await {
        Ok(Some(meta))
            if !matches!(meta.status, State::Pending | State::Received | State::Retry) =>
        {
            return;
        }
        Err(e) => {
            warn!(id, error = %e, "could not read a revoked task's state; not storing REVOKED now");
            return;
        }
        _ => {}
    }
    // Only the task id matters to a key/value store.
    let message = TaskMessage::new("", id);
    let request = Request::from_message(
        &message,
        DeliveryInfo::default(),
        ctx.config.hostname.clone(),
    );
    let exc = ExceptionInfo::new("celery.exceptions", "TaskRevokedError", "revoked");
    let meta = request.result_meta(State::Revoked, exc.to_json());
    if let Err(e) = backend.store(&meta, &request).await {
        warn!(id, error = %e, "could not store REVOKED for a revoked task");
    }
}

/// `revoke_by_stamped_headers`: tasks whose stamps match never run here;
/// with `terminate`, matching running async tasks stop.
fn revoke_by_stamps(ctx: &Context, args: &Map<String, Value>) -> ControlOutcome {
    let headers: Map<String, Value> = match args.get("headers") {
        Some(Value::Object(headers)) => headers.clone(),
        Some(Value::Array(pairs)) => pairs
            .iter()
            .filter_map(|p| p.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
            .collect(),
        _ => {
            return ControlOutcome::error(
                "revoke_by_stamped_headers needs headers: {stamp: value} or [\"stamp=value\"]",
            );
        }
    };
    ctx.revoked.add_stamps(&headers);
    let described = Value::Object(headers).to_string();
    if !terminate_flag(args) {
        return ControlOutcome::ok(format!(
            "headers {described} flagged as revoked, but not terminated"
        ));
    }
    let held = ctx.tracker.revoke(true, |m| ctx.revoked.contains(m));
    if held.iter().any(|h| h.running) {
        ControlOutcome::ok(format!("headers {described} revoked"))
    } else {
        ControlOutcome::ok(format!("headers {described} were not terminated"))
    }
}

fn toggle_events(ctx: &Context, on: bool) -> ControlOutcome {
    let was = ctx.events.set_task_events(on);
    let word = if on { "enabled" } else { "disabled" };
    if was == on {
        ControlOutcome::ok(format!("task events already {word}"))
    } else {
        info!("task events {word} by remote control");
        ControlOutcome::ok(format!("task events {word}"))
    }
}

fn rate_limit(ctx: &Context, args: &Map<String, Value>) -> ControlOutcome {
    let task = text(args, "task_name");
    let rate = text(args, "rate_limit");
    if ctx.app.registry().get(&task).is_none() {
        warn!(task = %task, "rate limit for an unknown task");
        return ControlOutcome::error("unknown task");
    }
    if ctx.app.task_options(&task).global_rate_limit.is_some() {
        return ControlOutcome::error(
            "this task has a global rate limit across workers; a per-worker one is refused",
        );
    }
    match ctx.rates.set(&task, &rate) {
        Ok(true) => {
            info!(task = %task, rate = %rate, "new rate limit");
            ControlOutcome::ok("new rate limit set successfully")
        }
        Ok(false) => {
            info!(task = %task, "rate limit disabled");
            ControlOutcome::ok("rate limit disabled successfully")
        }
        Err(why) => ControlOutcome::error(why),
    }
}

fn time_limit(ctx: &Context, args: &Map<String, Value>) -> ControlOutcome {
    let task = text(args, "task_name");
    if ctx.app.registry().get(&task).is_none() {
        warn!(task = %task, "time limit for an unknown task");
        return ControlOutcome::error("unknown task");
    }
    let limits = TimeLimits {
        soft: seconds(args, "soft"),
        hard: seconds(args, "hard"),
    };
    info!(task = %task, soft = ?limits.soft, hard = ?limits.hard, "new time limits");
    ctx.limits.set_time_limits(&task, limits);
    ControlOutcome::ok("time limits set successfully")
}

async fn add_consumer(ctx: &Context, args: &Map<String, Value>) -> ControlOutcome {
    let name = text(args, "queue");
    if name.is_empty() {
        return ControlOutcome::error("add_consumer needs a queue name");
    }
    let mut queue = match ctx.app.router().queue_named(&name) {
        Ok(queue) => queue,
        Err(e) => return ControlOutcome::error(e.to_string()),
    };
    let exchange = text(args, "exchange");
    if !exchange.is_empty() && exchange != queue.exchange.name {
        let kind = match text(args, "exchange_type").as_str() {
            "topic" => ExchangeKind::Topic,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            _ => ExchangeKind::Direct,
        };
        queue.exchange = Exchange::new(exchange, kind);
    }
    let routing_key = text(args, "routing_key");
    if !routing_key.is_empty() {
        queue.routing_key = routing_key;
    }
    match ctx.consumer.add_queue(queue).await {
        Ok(true) => {
            info!(queue = %name, "consuming from a new queue (remote control)");
            ControlOutcome::ok(format!("add consumer {name}"))
        }
        Ok(false) => ControlOutcome::ok(format!("already consuming from {name:?}")),
        Err(e) => ControlOutcome::error(format!("cannot consume {name}: {e}")),
    }
}

/// `autoscale max min`: a Celeriac worker's tasks need no process per
/// slot, so the range's top becomes the number of tasks run at once.
fn autoscale(ctx: &Context, args: &Map<String, Value>) -> ControlOutcome {
    let Some(max) = count(args, "max") else {
        return ControlOutcome::error("autoscale needs max (and optionally min)");
    };
    let min = count(args, "min").unwrap_or(0).min(max);
    match ctx.pool.resize(max) {
        Ok(size) => ControlOutcome::ok(format!("autoscale now max={size} min={min}")),
        Err(why) => ControlOutcome::error(why),
    }
}
