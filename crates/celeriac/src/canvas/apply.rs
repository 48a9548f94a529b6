//! Applying a signature in the dict form Python writes it (§5): what a
//! worker does for callbacks, errbacks, chain steps and chord bodies, and
//! what the builders do once they have fixed every id.
//!
//! - A task signature is sent with the parent's result prepended to its args
//!   (unless it is immutable) and its own options (`task_id`, `queue`,
//!   `countdown`, `reply_to`, `link`, ...).
//! - `celery.chain` sends its first step carrying the rest, reversed, in
//!   `embed.chain`; `celery.group` sends each member with the group id and
//!   its index.
//! - `celery.chord` records the chord in the result store (the header's
//!   size, or its ids), then
//!   sends each header task with the group id, its index and the body in
//!   `embed.chord`, for a backend that counts chord results (Redis). On a
//!   backend that cannot count (SQL databases) it first sends
//!   `celery.chord_unlock`, which polls the header's results and applies
//!   the body, as Celery does (§5.6). Over `rpc://` it is an error, as in
//!   Python.

use celeriac_protocol::store::ResultTuple;
use celeriac_protocol::{HeaderValue, Signature, SignatureKind};
use serde_json::{Value, json};

use crate::call::{TaskCall, Workflow};
use crate::result::BackendError;
use crate::{App, Error, Request};

/// How to apply a signature: the values to prepend to its args and the
/// task applying it.
#[derive(Debug, Default)]
pub struct Apply<'a> {
    /// Prepended to the signature's args (a parent's result, or a failed
    /// task's id for errbacks), unless the signature is immutable.
    pub prepend: Vec<Value>,
    /// The task on whose behalf it is sent (for `parent_id` and `root_id`).
    pub parent: Option<&'a Request>,
    /// Remaining chain steps to carry, reversed (for a chain's next step).
    pub chain: Option<Vec<Signature>>,
}

/// Chords over a backend that cannot count their results.
pub(crate) const NO_CHORDS: BackendError = BackendError::Unsupported {
    backend: "configured",
    what: "chords",
    fix: "chords need a result backend that keeps results by id: use Redis (redis://...) or \
          PostgreSQL (db+postgresql://...); rpc:// cannot, and Python refuses chords over rpc:// \
          too",
};

/// The task that joins a chord by polling its header's results, on
/// backends that cannot count them (§5.6).
pub const CHORD_UNLOCK: &str = "celery.chord_unlock";

/// Whether `app`'s result backend can join chords, by counting or by
/// polling.
pub(crate) fn joins_chords(app: &App) -> bool {
    app.result_backend()
        .is_some_and(|b| b.chords().is_some() || b.polls_chords())
}

impl App {
    /// Sends a signature (task, chain, group or chord) as a worker does for
    /// callbacks and chain steps. Returns the ids of the messages sent.
    pub async fn apply_signature(
        &self,
        signature: &Signature,
        apply: Apply<'_>,
    ) -> Result<Vec<String>, Error> {
        match signature
            .kind()
            .map_err(|e| signature_error(signature, &e.to_string()))?
        {
            SignatureKind::Task => {
                let workflow = Workflow {
                    chain: apply.chain,
                    ..Workflow::default()
                };
                let call = call_for(signature, apply.prepend, apply.parent, workflow)?;
                let result = self.send_call::<Value>(call).await?;
                Ok(vec![result.id().to_owned()])
            }
            SignatureKind::Chain(steps) => {
                let Some((first, rest)) = steps.split_first() else {
                    return Ok(Vec::new());
                };
                let mut remaining: Vec<Signature> = rest.iter().rev().cloned().collect();
                if let Some(carried) = apply.chain {
                    remaining.splice(0..0, carried);
                }
                let chain = (!remaining.is_empty()).then_some(remaining);
                Box::pin(self.apply_signature(first, Apply { chain, ..apply })).await
            }
            SignatureKind::Group(members) => {
                let group_id = group_id(signature);
                self.apply_members(&members, &group_id, None, &apply).await
            }
            SignatureKind::Chord { header, body } => {
                self.apply_chord(signature, header, *body, apply).await
            }
        }
    }

    /// Sends a group's (or a chord header's) members with the group id and
    /// their index; `chord` is the body each header task carries.
    async fn apply_members(
        &self,
        members: &[Signature],
        group_id: &str,
        chord: Option<&Signature>,
        apply: &Apply<'_>,
    ) -> Result<Vec<String>, Error> {
        let mut calls = Vec::with_capacity(members.len());
        for (index, member) in members.iter().enumerate() {
            if !matches!(member.kind(), Ok(SignatureKind::Task)) {
                return Err(not_a_task_member(member));
            }
            let workflow = Workflow {
                group: Some((
                    group_id.to_owned(),
                    Some(i64::try_from(index).unwrap_or(i64::MAX)),
                )),
                chord: chord.cloned(),
                ..Workflow::default()
            };
            calls.push(call_for(
                member,
                apply.prepend.clone(),
                apply.parent,
                workflow,
            )?);
        }
        let sent = self.send_many::<Value>(calls).await?;
        Ok(sent.iter().map(|r| r.id().to_owned()).collect())
    }

    /// Applies a chord: the chord recorded in the result store (or its
    /// `celery.chord_unlock` sent) first, then the header's tasks, each
    /// carrying the body; an empty header applies the body at once with
    /// `[]`. A header that cannot be sent is refused before anything is.
    async fn apply_chord(
        &self,
        signature: &Signature,
        header: Vec<Signature>,
        body: Signature,
        apply: Apply<'_>,
    ) -> Result<Vec<String>, Error> {
        if !joins_chords(self) {
            return Err(Error::Backend(NO_CHORDS));
        }
        let group_id = signature
            .options
            .get("group_id")
            .and_then(Value::as_str)
            .map_or_else(new_id, str::to_owned);
        let mut body = body;
        if body.task_id().is_none() {
            body = body.with_task_id(new_id());
        }
        body = body.with_option("group_id", group_id.clone());
        if header.is_empty() {
            let empty = Apply {
                prepend: vec![Value::Array(Vec::new())],
                parent: apply.parent,
                chain: None,
            };
            return Box::pin(self.apply_signature(&body, empty)).await;
        }
        if let Some(member) = header
            .iter()
            .find(|m| !matches!(m.kind(), Ok(SignatureKind::Task)))
        {
            return Err(not_a_task_member(member));
        }
        let header: Vec<Signature> = header
            .into_iter()
            .map(|h| match h.task_id() {
                Some(_) => h,
                None => h.with_task_id(new_id()),
            })
            .collect();
        match self.result_backend().and_then(|b| b.chords()) {
            Some(chords) => {
                let ids: Vec<String> = header
                    .iter()
                    .filter_map(|h| h.task_id().map(str::to_owned))
                    .collect();
                chords.start_chord(&group_id, &ids).await?;
            }
            None => self.send_chord_unlock(&group_id, &header, &body).await?,
        }
        self.apply_members(&header, &group_id, Some(&body), &apply)
            .await
    }

    /// Sends `celery.chord_unlock` for a chord whose header is about to be
    /// sent, as Celery's `fallback_chord_unlock` does: one second from now,
    /// to the body's queue, with the header's result tuples.
    async fn send_chord_unlock(
        &self,
        group_id: &str,
        header: &[Signature],
        body: &Signature,
    ) -> Result<(), Error> {
        let results: Vec<Value> = header
            .iter()
            .filter_map(Signature::task_id)
            .map(|id| ResultTuple::task(id).to_json())
            .collect();
        let mut unlock = Signature::new(CHORD_UNLOCK)
            .with_args(vec![json!(group_id), body.to_json()])
            .with_option("countdown", 1)
            .with_option("ignore_result", true);
        unlock.kwargs.insert("interval".into(), Value::Null);
        unlock.kwargs.insert("max_retries".into(), Value::Null);
        unlock.kwargs.insert("result".into(), Value::Array(results));
        for option in ["queue", "priority", "exchange", "routing_key"] {
            if let Some(value) = body.options.get(option).filter(|v| !v.is_null()) {
                unlock = unlock.with_option(option, value.clone());
            }
        }
        if !body.options.contains_key("queue")
            && let Ok(destination) = self.router().resolve(&body.task, &Default::default())
            && let Some(queue) = destination.queue
        {
            unlock = unlock.with_option("queue", queue.name);
        }
        let call = call_for(&unlock, Vec::new(), None, Workflow::default())?;
        self.send_many::<Value>(vec![call]).await?;
        Ok(())
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A group signature's id: its `task_id` option, else a new one.
fn group_id(signature: &Signature) -> String {
    signature.task_id().map_or_else(new_id, str::to_owned)
}

/// The error for a group or chord header member that is not a task.
fn not_a_task_member(member: &Signature) -> Error {
    signature_error(
        member,
        "a group or chord header member must be a task signature (nest chains in a chord's \
         body instead)",
    )
}

fn signature_error(signature: &Signature, detail: &str) -> Error {
    Error::Arguments {
        task: signature.task.clone(),
        detail: detail.to_owned(),
    }
}

/// The call a task signature describes, with its options applied.
fn call_for(
    signature: &Signature,
    prepend: Vec<Value>,
    parent: Option<&Request>,
    workflow: Workflow,
) -> Result<TaskCall<Value>, Error> {
    let mut args = signature.args.clone();
    if !signature.immutable {
        args.splice(0..0, prepend);
    }
    let mut call = TaskCall::<Value>::new(signature.task.clone(), args);
    call.kwargs = signature.kwargs.clone();
    let options = &signature.options;
    let text = |key: &str| options.get(key).and_then(Value::as_str).map(str::to_owned);
    let secs = |key: &str| {
        options
            .get(key)
            .and_then(Value::as_f64)
            .filter(|s| *s >= 0.0)
            .map(std::time::Duration::from_secs_f64)
    };
    let o = &mut call.options;
    o.task_id = text("task_id");
    o.queue = text("queue");
    o.exchange = text("exchange");
    o.routing_key = text("routing_key");
    o.shadow = text("shadow");
    o.priority = options
        .get("priority")
        .and_then(Value::as_u64)
        .and_then(|p| u8::try_from(p).ok());
    o.countdown = secs("countdown");
    o.time_limit = secs("time_limit");
    o.soft_time_limit = secs("soft_time_limit");
    o.ignore_result = options.get("ignore_result").and_then(Value::as_bool);
    o.eta = options
        .get("eta")
        .and_then(celeriac_protocol::kombu::datetime_lenient)
        .map(|t| t.to_utc());
    match options.get("expires") {
        Some(Value::Number(n)) => o.expires_in = n.as_f64().map(std::time::Duration::from_secs_f64),
        Some(other) => {
            o.expires_at = celeriac_protocol::kombu::datetime_lenient(other).map(|t| t.to_utc());
        }
        None => {}
    }
    if let Some(Value::Object(headers)) = options.get("headers") {
        for (key, value) in headers {
            let value =
                HeaderValue::from_json(value).map_err(|e| signature_error(signature, &e))?;
            o.headers.insert(key.clone(), value);
        }
    }
    o.link = signatures(options.get("link"), signature)?;
    o.link_error = signatures(options.get("link_error"), signature)?;
    let group = workflow.group.or_else(|| {
        let id = text("group_id")?;
        Some((id, options.get("group_index").and_then(Value::as_i64)))
    });
    call.workflow = Workflow {
        group,
        reply_to: text("reply_to"),
        parent: parent.map(|p| (p.id.clone(), p.root_id.clone())),
        trace: parent.and_then(|p| p.trace),
        ..workflow
    };
    Ok(call)
}

/// `link`/`link_error` options: one signature or a list.
fn signatures(value: Option<&Value>, owner: &Signature) -> Result<Vec<Signature>, Error> {
    let parse = |v: &Value| {
        Signature::from_json(v, "options.link").map_err(|e| signature_error(owner, &e.to_string()))
    };
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(parse).collect(),
        Some(one) => Ok(vec![parse(one)?]),
    }
}
