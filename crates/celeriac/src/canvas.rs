//! Applying canvas signatures (§5): callbacks, errbacks and chain steps a
//! worker sends on a task's behalf, in the dict form Python writes them.
//!
//! - A task signature is sent with the parent's result prepended to its args
//!   (unless it is immutable) and its own options (`task_id`, `queue`,
//!   `countdown`, `reply_to`, `link`, ...).
//! - `celery.chain` sends its first step carrying the rest, reversed, in
//!   `embed.chain`; `celery.group` sends each member with a group id and
//!   index. `celery.chord` needs a backend that counts chord parts, which
//!   `rpc://` cannot do (Python refuses it too), so it is an error.

use celeriac_protocol::{HeaderValue, Signature, SignatureKind};
use serde_json::Value;

use crate::call::{TaskCall, Workflow};
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

impl App {
    /// Sends a signature (task, chain or group) as a worker does for
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
                let call = call_for(signature, apply.prepend, apply.parent, apply.chain, None)?;
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
                let group_id = signature
                    .task_id()
                    .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
                let mut ids = Vec::with_capacity(members.len());
                for (index, member) in members.iter().enumerate() {
                    let group = Some((group_id.clone(), i64::try_from(index).unwrap_or(i64::MAX)));
                    let call = call_for(member, apply.prepend.clone(), apply.parent, None, group)?;
                    ids.push(self.send_call::<Value>(call).await?.id().to_owned());
                }
                Ok(ids)
            }
            SignatureKind::Chord { .. } => Err(signature_error(
                signature,
                "chords need a result backend that counts the header's results (Redis); \
                 rpc:// cannot, and Python refuses chords over rpc:// too",
            )),
        }
    }
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
    chain: Option<Vec<Signature>>,
    group: Option<(String, i64)>,
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
    let group = group.or_else(|| {
        let id = text("group_id")?;
        Some((
            id,
            options
                .get("group_index")
                .and_then(Value::as_i64)
                .unwrap_or(0),
        ))
    });
    call.workflow = Workflow {
        chain,
        group,
        reply_to: text("reply_to"),
        parent: parent.map(|p| (p.id.clone(), p.root_id.clone())),
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
