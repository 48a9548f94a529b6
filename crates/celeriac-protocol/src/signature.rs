//! Canvas signatures (§5.1): the JSON form of `add.s(2, 2)`, chains, groups
//! and chords, as they travel in `embed` and in signature options.
//!
//! A [`Signature`] keeps every key it was given, in order, so it re-encodes
//! to the same JSON text Python wrote. Composite signatures keep their members
//! in `kwargs` exactly as Python lays them out; [`Signature::kind`] gives the
//! typed view.

use serde_json::{Map, Value};

use crate::DecodeError;

/// Task name of a chain signature.
pub const CHAIN: &str = "celery.chain";
/// Task name of a group signature.
pub const GROUP: &str = "celery.group";
/// Task name of a chord signature.
pub const CHORD: &str = "celery.chord";

/// A Celery signature: a task name with arguments and send options.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature {
    /// Task name, or `celery.chain` / `celery.group` / `celery.chord`.
    pub task: String,
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
    /// `apply_async` options (`task_id`, `queue`, `countdown`, `link`, ...).
    pub options: Map<String, Value>,
    /// `null`, or `chain`, `group`, `chord`, `chunks`, `xmap`, `xstarmap`.
    pub subtask_type: Option<String>,
    /// An immutable signature ignores the parent's result (`.si()`).
    pub immutable: bool,
    /// Celery 5.0.x's `chord_size` key, kept when present.
    pub chord_size: Option<Value>,
    /// Any other keys, kept in order.
    pub extra: Map<String, Value>,
}

/// The typed view of a signature's shape.
#[derive(Debug, Clone, PartialEq)]
pub enum SignatureKind {
    /// A single task.
    Task,
    /// `celery.chain`: run the tasks one after another.
    Chain(Vec<Signature>),
    /// `celery.group`: run the tasks in parallel.
    Group(Vec<Signature>),
    /// `celery.chord`: run the header in parallel, then the body with their results.
    Chord {
        /// The header tasks (a list, or the members of a group signature).
        header: Vec<Signature>,
        /// The body, applied to the list of header results.
        body: Box<Signature>,
    },
}

impl Signature {
    /// A signature for `task` with no arguments or options.
    ///
    /// ```
    /// use celeriac_protocol::{json::to_python_json, Signature};
    /// let sig = Signature::new("proj.tasks.add").with_args(vec![2.into(), 2.into()]);
    /// assert_eq!(
    ///     to_python_json(&sig.to_json()),
    ///     r#"{"task": "proj.tasks.add", "args": [2, 2], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}"#
    /// );
    /// ```
    pub fn new(task: impl Into<String>) -> Signature {
        Signature {
            task: task.into(),
            args: Vec::new(),
            kwargs: Map::new(),
            options: Map::new(),
            subtask_type: None,
            immutable: false,
            chord_size: None,
            extra: Map::new(),
        }
    }

    /// Sets the positional arguments.
    pub fn with_args(mut self, args: Vec<Value>) -> Signature {
        self.args = args;
        self
    }

    /// Sets the keyword arguments.
    pub fn with_kwargs(mut self, kwargs: Map<String, Value>) -> Signature {
        self.kwargs = kwargs;
        self
    }

    /// Sets one send option (e.g. `task_id`, `queue`, `countdown`).
    pub fn with_option(mut self, key: impl Into<String>, value: impl Into<Value>) -> Signature {
        self.options.insert(key.into(), value.into());
        self
    }

    /// Makes the signature immutable (Python's `.si()`): a parent's result
    /// is not prepended to its args.
    pub fn immutable(mut self) -> Signature {
        self.immutable = true;
        self
    }

    /// Adds a positional argument.
    pub fn with_arg(mut self, arg: impl Into<Value>) -> Signature {
        self.args.push(arg.into());
        self
    }

    /// Fixes the task id (`options.task_id`).
    pub fn with_task_id(self, id: impl Into<String>) -> Signature {
        self.with_option("task_id", id.into())
    }

    /// Sends it to `queue` (`options.queue`).
    pub fn with_queue(self, queue: impl Into<String>) -> Signature {
        self.with_option("queue", queue.into())
    }

    /// Sets its message priority (`options.priority`).
    pub fn with_priority(self, priority: u8) -> Signature {
        self.with_option("priority", priority)
    }

    /// Runs it no earlier than `seconds` after it is sent
    /// (`options.countdown`).
    pub fn with_countdown(self, seconds: f64) -> Signature {
        self.with_option("countdown", seconds)
    }

    /// Applies `callback` to its result on success (appended to
    /// `options.link`).
    pub fn with_link(self, callback: Signature) -> Signature {
        self.push_option("link", callback)
    }

    /// Applies `errback` with its task id on failure (appended to
    /// `options.link_error`).
    pub fn with_link_error(self, errback: Signature) -> Signature {
        self.push_option("link_error", errback)
    }

    fn push_option(mut self, key: &str, signature: Signature) -> Signature {
        let entry = self
            .options
            .entry(key)
            .or_insert_with(|| Value::Array(Vec::new()));
        match entry {
            Value::Array(items) => items.push(signature.to_json()),
            other => {
                let previous = other.take();
                *other = Value::Array(vec![previous, signature.to_json()]);
            }
        }
        self
    }

    /// A `celery.chain` signature over `tasks`.
    pub fn chain(tasks: Vec<Signature>) -> Signature {
        Self::composite(CHAIN, "chain", tasks)
    }

    /// A `celery.group` signature over `tasks`.
    pub fn group(tasks: Vec<Signature>) -> Signature {
        Self::composite(GROUP, "group", tasks)
    }

    /// A `celery.chord` signature: `header` in parallel, then `body`.
    pub fn chord(header: Vec<Signature>, body: Signature) -> Signature {
        let mut kwargs = Map::new();
        kwargs.insert("kwargs".into(), Value::Object(Map::new()));
        kwargs.insert(
            "header".into(),
            Value::Array(header.iter().map(Signature::to_json).collect()),
        );
        kwargs.insert("body".into(), body.to_json());
        let mut sig = Signature::new(CHORD).with_kwargs(kwargs);
        sig.subtask_type = Some("chord".into());
        sig
    }

    fn composite(task: &str, subtask_type: &str, tasks: Vec<Signature>) -> Signature {
        let mut kwargs = Map::new();
        kwargs.insert(
            "tasks".into(),
            Value::Array(tasks.iter().map(Signature::to_json).collect()),
        );
        let mut sig = Signature::new(task).with_kwargs(kwargs);
        sig.subtask_type = Some(subtask_type.into());
        sig
    }

    /// The task id fixed in `options.task_id`, if any.
    pub fn task_id(&self) -> Option<&str> {
        self.options.get("task_id").and_then(Value::as_str)
    }

    /// The typed shape of this signature, parsing nested members.
    ///
    /// ```
    /// use celeriac_protocol::{Signature, SignatureKind};
    /// let chain = Signature::chain(vec![Signature::new("a"), Signature::new("b")]);
    /// let SignatureKind::Chain(steps) = chain.kind().unwrap() else { unreachable!() };
    /// assert_eq!(steps[1].task, "b");
    /// ```
    pub fn kind(&self) -> Result<SignatureKind, DecodeError> {
        let path = format!("signature {:?}", self.task);
        match self.task.as_str() {
            CHAIN => Ok(SignatureKind::Chain(self.member_list("tasks", &path)?)),
            GROUP => Ok(SignatureKind::Group(self.member_list("tasks", &path)?)),
            CHORD => {
                let header_value = self
                    .kwargs
                    .get("header")
                    .ok_or_else(|| missing(&path, "header"))?;
                let header = match header_value {
                    Value::Array(_) => list_of(header_value, &format!("{path}.header"))?,
                    _ => match Signature::from_json(header_value, &format!("{path}.header"))?
                        .kind()?
                    {
                        SignatureKind::Group(members) => members,
                        _ => {
                            return Err(sig_error(
                                &path,
                                "chord header is neither a list nor a group",
                            ));
                        }
                    },
                };
                let body_value = self
                    .kwargs
                    .get("body")
                    .ok_or_else(|| missing(&path, "body"))?;
                let body = Signature::from_json(body_value, &format!("{path}.body"))?;
                Ok(SignatureKind::Chord {
                    header,
                    body: Box::new(body),
                })
            }
            _ => Ok(SignatureKind::Task),
        }
    }

    fn member_list(&self, key: &str, path: &str) -> Result<Vec<Signature>, DecodeError> {
        let value = self.kwargs.get(key).ok_or_else(|| missing(path, key))?;
        list_of(value, &format!("{path}.{key}"))
    }

    /// A copy applied to a parent's result, as a callback or chain step is:
    /// `result` is prepended to the args unless the signature is immutable.
    pub fn with_parent_result(&self, result: Value) -> Signature {
        let mut sig = self.clone();
        if !sig.immutable {
            sig.args.insert(0, result);
        }
        sig
    }

    /// Reads a signature from its JSON object; `path` names it in errors.
    pub fn from_json(value: &Value, path: &str) -> Result<Signature, DecodeError> {
        let map = value.as_object().ok_or_else(|| {
            sig_error(
                path,
                &format!("expected an object, found {}", kind_of(value)),
            )
        })?;
        let mut sig = Signature::new(String::new());
        let mut saw_task = false;
        for (key, item) in map {
            match key.as_str() {
                "task" => {
                    sig.task = item
                        .as_str()
                        .ok_or_else(|| sig_error(path, "`task` must be a string"))?
                        .to_owned();
                    saw_task = true;
                }
                "args" => sig.args = array_or_empty(item, path, "args")?,
                "kwargs" => sig.kwargs = object_or_empty(item, path, "kwargs")?,
                "options" => sig.options = object_or_empty(item, path, "options")?,
                "subtask_type" => {
                    sig.subtask_type = match item {
                        Value::Null => None,
                        Value::String(s) => Some(s.clone()),
                        _ => {
                            return Err(sig_error(path, "`subtask_type` must be a string or null"));
                        }
                    }
                }
                "immutable" => {
                    sig.immutable = match item {
                        Value::Null => false,
                        Value::Bool(b) => *b,
                        _ => return Err(sig_error(path, "`immutable` must be a boolean")),
                    }
                }
                "chord_size" => sig.chord_size = Some(item.clone()),
                _ => {
                    sig.extra.insert(key.clone(), item.clone());
                }
            }
        }
        if !saw_task {
            return Err(missing(path, "task"));
        }
        Ok(sig)
    }

    /// Writes the JSON object Python would write for this signature, keys in
    /// Python's order.
    pub fn to_json(&self) -> Value {
        let mut map = Map::with_capacity(6 + self.extra.len());
        map.insert("task".into(), Value::String(self.task.clone()));
        map.insert("args".into(), Value::Array(self.args.clone()));
        map.insert("kwargs".into(), Value::Object(self.kwargs.clone()));
        map.insert("options".into(), Value::Object(self.options.clone()));
        map.insert(
            "subtask_type".into(),
            self.subtask_type.clone().map_or(Value::Null, Value::String),
        );
        map.insert("immutable".into(), Value::Bool(self.immutable));
        if let Some(size) = &self.chord_size {
            map.insert("chord_size".into(), size.clone());
        }
        for (key, value) in &self.extra {
            map.insert(key.clone(), value.clone());
        }
        Value::Object(map)
    }
}

/// Reads a JSON array of signatures.
pub(crate) fn list_of(value: &Value, path: &str) -> Result<Vec<Signature>, DecodeError> {
    let items = value.as_array().ok_or_else(|| {
        sig_error(
            path,
            &format!("expected a list of signatures, found {}", kind_of(value)),
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| Signature::from_json(item, &format!("{path}[{i}]")))
        .collect()
}

fn array_or_empty(value: &Value, path: &str, key: &str) -> Result<Vec<Value>, DecodeError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => Ok(items.clone()),
        other => Err(sig_error(
            path,
            &format!("`{key}` must be a list, found {}", kind_of(other)),
        )),
    }
}

fn object_or_empty(
    value: &Value,
    path: &str,
    key: &str,
) -> Result<Map<String, Value>, DecodeError> {
    match value {
        Value::Null => Ok(Map::new()),
        Value::Object(map) => Ok(map.clone()),
        other => Err(sig_error(
            path,
            &format!("`{key}` must be an object, found {}", kind_of(other)),
        )),
    }
}

fn missing(path: &str, key: &str) -> DecodeError {
    sig_error(path, &format!("missing `{key}`"))
}

fn sig_error(path: &str, detail: &str) -> DecodeError {
    DecodeError::Signature {
        path: path.to_owned(),
        detail: detail.to_owned(),
    }
}

/// Names a JSON value's type for error messages.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{from_slice, to_python_json};

    #[test]
    fn python_signature_text_round_trips_exactly() {
        let texts = [
            r#"{"task": "proj.tasks.add", "args": [2, 2], "kwargs": {}, "options": {"countdown": 1}, "subtask_type": null, "immutable": false}"#,
            r#"{"task": "proj.tasks.add", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": true, "chord_size": 2}"#,
            r#"{"task": "celery.group", "args": [], "kwargs": {"tasks": [{"task": "a", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}]}, "options": {}, "subtask_type": "group", "immutable": false}"#,
        ];
        for text in texts {
            let sig = Signature::from_json(&from_slice(text.as_bytes()).unwrap(), "sig").unwrap();
            assert_eq!(to_python_json(&sig.to_json()), text);
        }
    }

    #[test]
    fn chord_kind_reads_header_and_body() {
        let chord = Signature::chord(
            vec![Signature::new("h1"), Signature::new("h2")],
            Signature::new("body"),
        );
        let SignatureKind::Chord { header, body } = chord.kind().unwrap() else {
            panic!("not a chord")
        };
        assert_eq!(header.len(), 2);
        assert_eq!(body.task, "body");
    }

    #[test]
    fn chord_header_may_be_a_group_signature() {
        let group = Signature::group(vec![Signature::new("h1")]);
        let mut chord = Signature::chord(vec![], Signature::new("body"));
        chord.kwargs.insert("header".into(), group.to_json());
        let SignatureKind::Chord { header, .. } = chord.kind().unwrap() else {
            panic!("not a chord")
        };
        assert_eq!(header[0].task, "h1");
    }

    #[test]
    fn parent_result_is_prepended_unless_immutable() {
        let sig = Signature::new("add").with_args(vec![4.into()]);
        assert_eq!(
            sig.with_parent_result(2.into()).args,
            vec![Value::from(2), 4.into()]
        );
        assert_eq!(
            sig.immutable().with_parent_result(2.into()).args,
            vec![Value::from(4)]
        );
    }

    #[test]
    fn malformed_signatures_name_the_problem() {
        let err =
            Signature::from_json(&serde_json::json!({"args": []}), "embed.chain[0]").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid signature at embed.chain[0]: missing `task`"
        );
        let err =
            Signature::from_json(&serde_json::json!({"task": "a", "args": 3}), "x").unwrap_err();
        assert!(err.to_string().contains("`args` must be a list"));
    }
}
