//! Chords on the worker (§4.5): once a chord header task's outcome is
//! stored, its part is recorded in the result store. The worker recording
//! the last part (and winning the claim) applies the body with the header's
//! results in `group_index` order, or, if a header task failed or was
//! revoked, fails the body with `ChordError` and sends the body's errbacks,
//! as Celery does. The bookkeeping is the same Python workers follow, so a
//! header may run on any mix of Python and Rust workers.
//!
//! A delivery is settled only after its part is recorded (and, for the last
//! part, the body sent). On Redis a redelivered header task is not counted
//! twice; django-celery-results' `ChordCounter` cannot tell (see
//! docs/results.md).
//!
//! On a backend that cannot count (SQL databases) nothing is recorded
//! here: the producer sent `celery.chord_unlock`, which polls the header's
//! results ([`crate::builtins`]).

use std::time::Duration;

use celeriac::protocol::store::{ChordPart, join};
use celeriac::protocol::{ExceptionInfo, ResultMeta, TaskMessage};
use celeriac::result::{ChordClaim, ChordJoin, ChordStore};
use celeriac::{Apply, Request, Signature, State};
use serde_json::{Value, json};
use tracing::{error, info, warn};

use crate::context::Context;
use crate::outbox::NotStored;

/// How long the worker applying a chord's body holds its claim (the body's
/// publish may wait for a broker reconnect and its confirm).
const BODY_LEASE: Duration = Duration::from_secs(90);

/// Records the outcome of a chord header task, if `message` is one, and
/// completes the chord when it was the last part.
///
/// Every task's outcome passes here and few are chord parts, so the work
/// of one is boxed: its state (3 KB) is allocated only for a chord part
/// instead of being part of every task's future.
pub(crate) async fn part_return(
    ctx: &Context,
    request: &Request,
    message: &TaskMessage,
    state: State,
    result: &Value,
) -> Result<(), NotStored> {
    match message.body.embed.chord.as_deref() {
        Some(body) => {
            Box::pin(chord_part_return(
                ctx, request, message, body, state, result,
            ))
            .await
        }
        None => Ok(()),
    }
}

/// Records the outcome of a task of the chord whose body is `body`, and
/// completes the chord when it was the last part.
async fn chord_part_return(
    ctx: &Context,
    request: &Request,
    message: &TaskMessage,
    body: &Signature,
    state: State,
    result: &Value,
) -> Result<(), NotStored> {
    let Some(group_id) = message.headers.group.as_deref() else {
        warn!(id = %request.id, "a chord header task without a group id; its chord cannot complete");
        return Ok(());
    };
    let Some(backend) = ctx.app.result_backend() else {
        warn!(id = %request.id, "a chord header task, but this worker has no result backend; its chord cannot complete");
        return Ok(());
    };
    let Some(chords) = backend.chords() else {
        if !backend.polls_chords() {
            warn!(id = %request.id, "a chord header task, but this worker's result backend cannot join chords (use Redis or PostgreSQL)");
        }
        // On a polling backend, `celery.chord_unlock` joins the chord.
        return Ok(());
    };
    let part = ChordPart {
        task_id: request.id.clone(),
        state,
        result: result.clone(),
    };
    let index = message.headers.group_index;
    let joined = ctx
        .outbox
        .with_store("recording a chord part", || {
            chords.part_return(group_id, index, &part)
        })
        .await?;
    let ChordJoin::Complete { parts, claim } = joined else {
        return Ok(());
    };
    match join(&parts) {
        Ok(results) => apply_body(ctx, chords, group_id, &claim, body, request, results).await,
        Err(failure) => {
            warn!(group = %group_id, dependency = %failure.task_id, "a chord header task failed; failing its body");
            fail_body(ctx, body, &failure.chord_error()).await?;
            finish(ctx, chords, group_id, &claim).await
        }
    }
}

/// Applies the body with the header's results, under the claim.
async fn apply_body(
    ctx: &Context,
    chords: &dyn ChordStore,
    group_id: &str,
    claim: &ChordClaim,
    body: &Signature,
    request: &Request,
    results: Vec<Value>,
) -> Result<(), NotStored> {
    let held = ctx
        .outbox
        .with_store("extending a chord claim", || {
            chords.extend_claim(group_id, claim, BODY_LEASE)
        })
        .await?;
    if !held {
        warn!(group = %group_id, "lost the claim on this chord's body; another worker applies it");
        return Ok(());
    }
    let apply = Apply {
        prepend: vec![Value::Array(results)],
        parent: Some(request),
        chain: None,
    };
    match ctx.outbox.apply(body, apply).await {
        Ok(_) => info!(group = %group_id, body = %body.task, "chord complete; body sent"),
        Err(e) => {
            error!(group = %group_id, body = %body.task, error = %e, "sending the chord's body failed; failing it");
            let error = ExceptionInfo::new(
                "celery.exceptions",
                "ChordError",
                format!("Callback error: {e}"),
            );
            fail_body(ctx, body, &error).await?;
        }
    }
    finish(ctx, chords, group_id, claim).await
}

/// Removes the chord's bookkeeping after its body was applied or failed.
async fn finish(
    ctx: &Context,
    chords: &dyn ChordStore,
    group_id: &str,
    claim: &ChordClaim,
) -> Result<(), NotStored> {
    ctx.outbox
        .with_store("finishing a chord", || chords.finish(group_id, claim))
        .await
}

/// Fails a chord's body: `FAILURE` with `error` stored under the body's id
/// (and the ids of any chain it carries), then its errbacks sent with the
/// body's id, as Celery's `chord_error_from_stack` does.
async fn fail_body(
    ctx: &Context,
    body: &Signature,
    error: &ExceptionInfo,
) -> Result<(), NotStored> {
    for (request, meta) in body_failures(body, error) {
        ctx.outbox.store(&request, &meta).await?;
    }
    for (errback, apply) in errbacks_of(body) {
        if let Err(e) = ctx.outbox.apply(&errback, apply).await {
            error!(errback = %errback.task, error = %e, "sending a chord body's errback failed");
        }
    }
    Ok(())
}

/// The `FAILURE` results a failed chord body stores: under the body's id
/// and the ids of any chain it carries.
pub(crate) fn body_failures(body: &Signature, error: &ExceptionInfo) -> Vec<(Request, ResultMeta)> {
    let mut failed = vec![body.clone()];
    if let Some(Value::Array(chained)) = body.options.get("chain") {
        failed.extend(
            chained
                .iter()
                .filter_map(|step| Signature::from_json(step, "options.chain").ok()),
        );
    }
    failed
        .iter()
        .filter_map(|signature| {
            let id = signature.task_id()?;
            let mut request = Request::detached(&signature.task, id);
            request.reply_to = signature
                .options
                .get("reply_to")
                .and_then(Value::as_str)
                .map(str::to_owned);
            request.correlation_id = Some(id.to_owned());
            let meta = request.result_meta(State::Failure, error.to_json());
            Some((request, meta))
        })
        .collect()
}

/// A failed chord body's errbacks, each to be applied with the body's id.
pub(crate) fn errbacks_of(body: &Signature) -> Vec<(Signature, Apply<'static>)> {
    let errbacks: Vec<Signature> = match body.options.get("link_error") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|e| Signature::from_json(e, "options.link_error").ok())
            .collect(),
        Some(one @ Value::Object(_)) => Signature::from_json(one, "options.link_error")
            .into_iter()
            .collect(),
        _ => Vec::new(),
    };
    let body_id = body.task_id().map(str::to_owned);
    errbacks
        .into_iter()
        .map(|errback| {
            let apply = Apply {
                prepend: vec![json!(body_id)],
                parent: None,
                chain: None,
            };
            (errback, apply)
        })
        .collect()
}
