//! Mingle (§6.6): at start-up the worker asks its peers, Python and Rust,
//! for the ids they hold revoked and their clocks (`hello`), and answers
//! theirs, so a task revoked before this worker started stays revoked.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tracing::{debug, info};

use super::inspect::strings;
use crate::context::Context;

/// How long mingle waits for its peers (Celery's 1 s).
const MINGLE_TIMEOUT: Duration = Duration::from_secs(1);

/// Asks every other worker for its revoked ids and clock, and takes them.
pub(crate) async fn mingle(ctx: &Context) {
    info!("mingle: searching for neighbors");
    let arguments = json!({"from_node": ctx.config.hostname, "revoked": ctx.revoked.ids()});
    let replies = match ctx
        .app
        .control()
        .timeout(MINGLE_TIMEOUT)
        .call("hello", arguments)
        .await
    {
        Ok(replies) => replies,
        Err(e) => {
            info!(error = %e, "mingle: could not ask the other workers; going on alone");
            return;
        }
    };
    let mut synced = 0;
    for reply in replies {
        if reply.node == ctx.config.hostname {
            continue;
        }
        let Ok(Value::Object(reply)) = reply.value else {
            continue;
        };
        if let Some(clock) = reply.get("clock").and_then(Value::as_u64) {
            ctx.app.clock().adjust(clock);
        }
        ctx.revoked.add(revoked_ids(reply.get("revoked")));
        synced += 1;
    }
    if synced == 0 {
        info!("mingle: all alone");
    } else {
        info!(nodes = synced, "mingle: sync complete");
    }
}

/// Answers another worker's `hello`: takes its revoked ids, and returns
/// ours (`{id: revoked-at}` with float stamps, which Celery 5.5 needs and
/// 5.6+ reads as ids) with our clock. Our own `hello` gets `null`, as in
/// Celery.
pub(super) fn hello(ctx: &Arc<Context>, args: &Map<String, Value>) -> Option<Value> {
    let from = args.get("from_node").and_then(Value::as_str).unwrap_or("");
    if from == ctx.config.hostname {
        return Some(Value::Null);
    }
    debug!(from, "mingle: sync with a starting worker");
    ctx.revoked.add(revoked_ids(args.get("revoked")));
    let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
    let revoked: Map<String, Value> = ctx
        .revoked
        .ids()
        .into_iter()
        .map(|id| (id, json!(now)))
        .collect();
    Some(json!({"revoked": revoked, "clock": ctx.app.clock().forward()}))
}

/// Revoked ids as peers send them: a list of ids, or (Celery ≤ 5.5) a
/// mapping of id to stamp.
fn revoked_ids(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Object(map)) => map.keys().cloned().collect(),
        other => strings(other),
    }
}
