//! Building workflows from Rust: [`chain`], [`group`] and [`chord`], like
//! Celery's canvas. Steps are typed calls (`add::s(2, 2)`, `add::si(..)`)
//! or by-name signatures (`Signature::new("demo.add").with_arg(4)`), in
//! any mix, Python tasks included.
//!
//! Before anything is sent, every id is fixed (Celery's `freeze`): each
//! task gets its task id, a group its group id, a chord's body the id the
//! chord's result is read by, and a group followed by another step in a
//! chain becomes a chord, as Celery turns `group | task` into one.

use celeriac_protocol::{Signature, SignatureKind};
use serde_json::Value;

use super::apply::{NO_CHORDS, joins_chords};
use crate::{App, Apply, AsyncResult, Error, GroupResult, TaskCall};

/// One step of a workflow: a typed call or any signature. Built from a
/// [`TaskCall`] (whose argument errors are reported when the workflow is
/// sent), a [`Signature`], or a nested [`Chain`], [`Group`] or [`Chord`].
#[derive(Debug, Clone)]
pub struct Step(Result<Signature, String>);

impl From<Signature> for Step {
    fn from(signature: Signature) -> Step {
        Step(Ok(signature))
    }
}

impl<O> From<TaskCall<O>> for Step {
    fn from(call: TaskCall<O>) -> Step {
        match &call.error {
            Some(error) => Step(Err(format!("{}: {error}", call.name))),
            None => Step(Ok(call.into())),
        }
    }
}

impl From<Chain> for Step {
    fn from(chain: Chain) -> Step {
        chain.signature().into()
    }
}

impl From<Group> for Step {
    fn from(group: Group) -> Step {
        group.signature().into()
    }
}

impl From<Chord> for Step {
    fn from(chord: Chord) -> Step {
        chord.signature().into()
    }
}

/// The steps' signatures, or the first argument error among them.
fn signatures(steps: Vec<Step>) -> Result<Vec<Signature>, String> {
    steps.into_iter().map(|s| s.0).collect()
}

/// Steps run one after another, each receiving the previous one's result
/// as its first argument (unless immutable): Celery's `chain`.
///
/// ```no_run
/// # async fn demo(app: celeriac::App) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use celeriac::{chain, Signature};
/// let total = chain([
///     Signature::new("demo.add").with_arg(2).with_arg(2),
///     Signature::new("demo.add").with_arg(4),
/// ])
/// .apply_async(&app)
/// .await?;
/// assert_eq!(total.get_as::<i64>(Duration::from_secs(10)).await?, 8);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Chain {
    steps: Vec<Step>,
}

/// A chain of `steps`.
pub fn chain<S: Into<Step>>(steps: impl IntoIterator<Item = S>) -> Chain {
    Chain {
        steps: steps.into_iter().map(Into::into).collect(),
    }
}

impl Chain {
    /// Adds a step at the end.
    pub fn then(mut self, step: impl Into<Step>) -> Chain {
        self.steps.push(step.into());
        self
    }

    /// The `celery.chain` signature, as Python's canvas writes it.
    pub fn signature(&self) -> Signature {
        Signature::chain(self.steps.iter().filter_map(|s| s.0.clone().ok()).collect())
    }

    /// Sends the chain (its first step, carrying the rest) and returns the
    /// result of its last step, which is the chain's result. A chain must
    /// end in a task or a chord.
    pub async fn apply_async(self, app: &App) -> Result<AsyncResult<Value>, Error> {
        let steps = signatures(self.steps).map_err(|e| arguments("celery.chain", e))?;
        let frozen = freeze(Signature::chain(steps), reply_to(app).as_deref());
        let id = result_id(&frozen).ok_or_else(|| {
            arguments(
                "celery.chain",
                "a chain must end in a task or a chord to have a result; end it with a task, \
                 or turn a final group into a chord"
                    .into(),
            )
        })?;
        app.apply_signature(&frozen, Apply::default()).await?;
        Ok(app.async_result(id))
    }
}

/// Tasks run in parallel: Celery's `group`.
#[derive(Debug, Clone)]
pub struct Group {
    members: Vec<Step>,
    id: Option<String>,
}

/// A group of `members`.
pub fn group<S: Into<Step>>(members: impl IntoIterator<Item = S>) -> Group {
    Group {
        members: members.into_iter().map(Into::into).collect(),
        id: None,
    }
}

impl Group {
    /// Fixes the group id (default: a new UUID).
    pub fn group_id(mut self, id: impl Into<String>) -> Group {
        self.id = Some(id.into());
        self
    }

    /// The `celery.group` signature, as Python's canvas writes it.
    pub fn signature(&self) -> Signature {
        let mut signature = Signature::group(
            self.members
                .iter()
                .filter_map(|s| s.0.clone().ok())
                .collect(),
        );
        if let Some(id) = &self.id {
            signature = signature.with_task_id(id.clone());
        }
        signature
    }

    /// Sends every member (each carries the group id and its index) and
    /// returns their results, in order.
    pub async fn apply_async(self, app: &App) -> Result<GroupResult, Error> {
        let members = signatures(self.members).map_err(|e| arguments("celery.group", e))?;
        let mut signature = Signature::group(members);
        if let Some(id) = self.id {
            signature = signature.with_task_id(id);
        }
        let frozen = freeze(signature, reply_to(app).as_deref());
        let Ok(SignatureKind::Group(members)) = frozen.kind() else {
            return Err(arguments("celery.group", "not a group".into()));
        };
        let group_id = frozen.task_id().unwrap_or_default().to_owned();
        app.apply_signature(&frozen, Apply::default()).await?;
        let results = members
            .iter()
            .map(|m| app.async_result(m.task_id().unwrap_or_default().to_owned()))
            .collect();
        Ok(GroupResult::new(
            group_id,
            results,
            app.result_backend().cloned(),
        ))
    }
}

/// A header of tasks run in parallel, then a body that receives their
/// results, in order, as its first argument: Celery's `chord`. Needs a
/// result backend that counts the header's results (Redis).
#[derive(Debug, Clone)]
pub struct Chord {
    header: Vec<Step>,
    body: Step,
}

/// A chord of `header` then `body`.
pub fn chord<S: Into<Step>>(header: impl IntoIterator<Item = S>, body: impl Into<Step>) -> Chord {
    Chord {
        header: header.into_iter().map(Into::into).collect(),
        body: body.into(),
    }
}

impl Chord {
    /// The `celery.chord` signature, as Python's canvas writes it.
    pub fn signature(&self) -> Signature {
        Signature::chord(
            self.header
                .iter()
                .filter_map(|s| s.0.clone().ok())
                .collect(),
            self.body
                .0
                .clone()
                .unwrap_or_else(|_| Signature::new("celery.invalid")),
        )
    }

    /// Records the chord in the result store (or, on a database, sends
    /// `celery.chord_unlock`), sends the header (each task carrying the
    /// body), and returns the body's result, which is the chord's. Over
    /// `rpc://` it is an error before anything is sent, as in Python.
    pub async fn apply_async(self, app: &App) -> Result<AsyncResult<Value>, Error> {
        if !joins_chords(app) {
            return Err(Error::Backend(NO_CHORDS));
        }
        let header = signatures(self.header).map_err(|e| arguments("celery.chord", e))?;
        let body = self.body.0.map_err(|e| arguments("celery.chord", e))?;
        let frozen = freeze(Signature::chord(header, body), reply_to(app).as_deref());
        let id = result_id(&frozen).unwrap_or_default();
        app.apply_signature(&frozen, Apply::default()).await?;
        Ok(app.async_result(id))
    }
}

fn arguments(task: &str, detail: String) -> Error {
    Error::Arguments {
        task: task.to_owned(),
        detail,
    }
}

fn reply_to(app: &App) -> Option<String> {
    app.result_backend()
        .and_then(|b| b.reply_to())
        .map(str::to_owned)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Fixes every id in a signature tree (see the module docs); `reply_to`
/// (the `rpc://` reply queue) is set on every task, so results come back.
pub(crate) fn freeze(signature: Signature, reply_to: Option<&str>) -> Signature {
    let Ok(kind) = signature.kind() else {
        return signature;
    };
    match kind {
        SignatureKind::Task => {
            let mut task = signature;
            if task.task_id().is_none() {
                task = task.with_task_id(new_id());
            }
            if let Some(queue) = reply_to
                && !task.options.contains_key("reply_to")
            {
                task = task.with_option("reply_to", queue.to_owned());
            }
            task
        }
        SignatureKind::Chain(steps) => {
            let steps: Vec<Signature> = steps.into_iter().map(|s| freeze(s, reply_to)).collect();
            let mut upgraded: Vec<Signature> = Vec::with_capacity(steps.len());
            let mut iter = steps.into_iter().peekable();
            while let Some(step) = iter.next() {
                match (step.kind(), iter.peek()) {
                    (Ok(SignatureKind::Group(members)), Some(_)) => {
                        let body = iter.next().unwrap_or_else(|| Signature::new(""));
                        let mut chord = Signature::chord(members, body);
                        if let Some(id) = step.task_id() {
                            chord = chord.with_option("group_id", id.to_owned());
                        }
                        upgraded.push(chord);
                    }
                    _ => upgraded.push(step),
                }
            }
            rebuild(signature.options, Signature::chain(upgraded))
        }
        SignatureKind::Group(members) => {
            let members = members.into_iter().map(|m| freeze(m, reply_to)).collect();
            let mut group = rebuild(signature.options, Signature::group(members));
            if group.task_id().is_none() {
                group = group.with_task_id(new_id());
            }
            group
        }
        SignatureKind::Chord { header, body } => {
            let header = header.into_iter().map(|m| freeze(m, reply_to)).collect();
            let body = freeze(*body, reply_to);
            let mut chord = rebuild(signature.options, Signature::chord(header, body));
            if !chord.options.contains_key("group_id") {
                chord = chord.with_option("group_id", new_id());
            }
            chord
        }
    }
}

fn rebuild(options: serde_json::Map<String, Value>, mut signature: Signature) -> Signature {
    signature.options = options;
    signature
}

/// The id a frozen signature's result is read by: a task's own, a chain's
/// last step's, a chord's body's; `None` for a group.
pub(crate) fn result_id(signature: &Signature) -> Option<String> {
    match signature.kind().ok()? {
        SignatureKind::Task => signature.task_id().map(str::to_owned),
        SignatureKind::Chain(steps) => steps.last().and_then(result_id),
        SignatureKind::Chord { body, .. } => result_id(&body),
        SignatureKind::Group(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str) -> Signature {
        Signature::new(name)
    }

    #[test]
    fn freezing_fixes_every_id_and_the_chain_result_is_its_last_step() {
        let frozen = freeze(Signature::chain(vec![task("a"), task("b")]), Some("reply"));
        let Ok(SignatureKind::Chain(steps)) = frozen.kind() else {
            panic!("a chain")
        };
        assert!(steps.iter().all(|s| s.task_id().is_some()));
        assert!(steps.iter().all(|s| s.options["reply_to"] == "reply"));
        assert_eq!(result_id(&frozen).as_deref(), steps[1].task_id());
    }

    #[test]
    fn a_group_followed_by_a_step_becomes_a_chord() {
        let chain = Signature::chain(vec![
            task("a"),
            Signature::group(vec![task("b"), task("c")]),
            task("d"),
        ]);
        let frozen = freeze(chain, None);
        let Ok(SignatureKind::Chain(steps)) = frozen.kind() else {
            panic!("a chain")
        };
        assert_eq!(steps.len(), 2);
        let Ok(SignatureKind::Chord { header, body }) = steps[1].kind() else {
            panic!("the group and the next step became a chord: {steps:?}")
        };
        assert_eq!(header.len(), 2);
        assert_eq!(body.task, "d");
        assert_eq!(result_id(&frozen).as_deref(), body.task_id());
        assert!(steps[1].options.contains_key("group_id"));
    }

    #[test]
    fn groups_get_an_id_and_have_no_single_result() {
        let frozen = freeze(Signature::group(vec![task("a")]), None);
        assert!(frozen.task_id().is_some());
        assert_eq!(result_id(&frozen), None);
        let ended = freeze(
            Signature::chain(vec![task("a"), Signature::group(vec![task("b")])]),
            None,
        );
        assert_eq!(result_id(&ended), None, "a chain ending in a group");
    }

    #[test]
    fn argument_errors_of_typed_steps_are_kept_for_sending() {
        let mut call = TaskCall::<Value>::new("t", vec![]);
        call.error = Some("argument 'x' cannot be serialized".into());
        let step = Step::from(call);
        assert!(step.0.unwrap_err().contains("argument 'x'"));
    }
}
