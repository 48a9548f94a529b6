//! Binding a message's `args` and `kwargs` to a task's typed parameters,
//! the way Python binds a call: parameter `i` comes from `args[i]` or, if
//! there are fewer positional args, from `kwargs[name]`.
//!
//! Every mistake a Python caller can make is a `TypeError` naming the
//! parameter, as Python would raise: a missing argument, the same argument
//! twice, too many positional arguments, an unknown keyword, or a value of
//! the wrong type (with the type expected).

use std::borrow::Cow;
use std::sync::Arc;

use celeriac_protocol::TaskMessage;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::TaskError;

/// A task call's arguments, consumed parameter by parameter.
///
/// ```
/// use celeriac::Arguments;
/// use serde_json::json;
///
/// let mut args = Arguments::new("images.resize", vec![json!("a.png")], json!({"width": 800}).as_object().unwrap().clone());
/// let url: String = args.take(0, "url").unwrap();
/// let width: u32 = args.take(1, "width").unwrap();
/// let height: Option<u32> = args.take_optional(2, "height").unwrap();
/// args.finish().unwrap();
/// assert_eq!((url.as_str(), width, height), ("a.png", 800, None));
/// ```
#[derive(Debug, Clone)]
pub struct Arguments {
    task: String,
    values: Values,
    parameters: usize,
}

/// Where a call's values are, and which have been taken.
#[derive(Debug, Clone)]
enum Values {
    /// Owned by the call: each is moved out when taken.
    Owned {
        args: Vec<Option<Value>>,
        kwargs: Map<String, Value>,
    },
    /// A task message's, shared with the worker that runs it: each is read
    /// in place, so a large argument is not copied to be bound.
    Shared {
        message: Arc<TaskMessage>,
        taken_args: Vec<bool>,
        taken_kwargs: Vec<bool>,
    },
}

/// One argument's value, owned or read in place from a shared message.
enum Arg {
    Owned(Value),
    Shared(Arc<TaskMessage>, Place),
}

/// Where a shared argument sits in its message.
#[derive(Clone)]
enum Place {
    Positional(usize),
    Keyword(String),
}

impl Arg {
    /// The argument's JSON text, when its message kept the body as text.
    fn text(&self) -> Option<&str> {
        match self {
            Arg::Owned(_) => None,
            Arg::Shared(message, Place::Positional(i)) => message.body.args.text(*i),
            Arg::Shared(message, Place::Keyword(name)) => message.body.kwargs.text(name),
        }
    }

    /// Whether the argument is `null` (Python's `None`).
    fn is_null(&self) -> bool {
        match self.text() {
            Some(text) => text == "null",
            None => self.value().is_null(),
        }
    }

    /// The argument as a value: read from its own text if its message
    /// kept the body as text, else borrowed.
    fn value(&self) -> Cow<'_, Value> {
        let shared = match self {
            Arg::Owned(value) => return Cow::Borrowed(value),
            Arg::Shared(message, Place::Positional(i)) => message.body.args.value(*i),
            Arg::Shared(message, Place::Keyword(name)) => message.body.kwargs.value(name),
        };
        shared.unwrap_or(Cow::Owned(Value::Null))
    }

    fn into_value(self) -> Value {
        match self {
            Arg::Owned(value) => value,
            shared => shared.value().into_owned(),
        }
    }
}

impl Arguments {
    /// The arguments of one call of `task`.
    pub fn new(task: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Arguments {
        Arguments {
            task: task.into(),
            values: Values::Owned {
                args: args.into_iter().map(Some).collect(),
                kwargs,
            },
            parameters: 0,
        }
    }

    /// The arguments of a task message, read in place: a parameter is
    /// deserialized straight from the message's text where the message
    /// kept it (large bodies do, see [`celeriac_protocol::Args`]), else
    /// from its value, which is copied only for a parameter that is itself
    /// a JSON [`Value`].
    pub fn of_message(message: Arc<TaskMessage>) -> Arguments {
        let (args, kwargs) = (message.body.args.len(), message.body.kwargs.len());
        Arguments {
            task: message.headers.task.clone(),
            values: Values::Shared {
                message,
                taken_args: vec![false; args],
                taken_kwargs: vec![false; kwargs],
            },
            parameters: 0,
        }
    }

    /// Takes required parameter number `index` called `name`.
    pub fn take<T: DeserializeOwned + 'static>(
        &mut self,
        index: usize,
        name: &str,
    ) -> Result<T, TaskError> {
        match self.take_value(index, name)? {
            Some(value) => self.convert(value, name),
            None => Err(TaskError::type_error(format!(
                "{}() missing required argument: '{name}' (expected {})",
                self.task,
                type_label::<T>()
            ))),
        }
    }

    /// Takes optional parameter number `index` called `name`: absent or
    /// `null` gives `None`.
    pub fn take_optional<T: DeserializeOwned + 'static>(
        &mut self,
        index: usize,
        name: &str,
    ) -> Result<Option<T>, TaskError> {
        match self.take_value(index, name)? {
            None => Ok(None),
            Some(arg) if arg.is_null() => Ok(None),
            Some(arg) => self.convert(arg, name).map(Some),
        }
    }

    /// Checks that nothing is left over: no extra positional arguments and no
    /// unknown keyword arguments.
    pub fn finish(self) -> Result<(), TaskError> {
        let (given, unknown) = match &self.values {
            Values::Owned { args, kwargs } => {
                (args.len(), kwargs.keys().next().map(String::as_str))
            }
            Values::Shared {
                message,
                taken_kwargs,
                ..
            } => (
                message.body.args.len(),
                message
                    .body
                    .kwargs
                    .names()
                    .zip(taken_kwargs)
                    .find(|(_, taken)| !**taken)
                    .map(|(name, _)| name),
            ),
        };
        if given > self.parameters {
            return Err(TaskError::type_error(format!(
                "{}() takes {} positional arguments but {given} were given",
                self.task, self.parameters,
            )));
        }
        if let Some(name) = unknown {
            return Err(TaskError::type_error(format!(
                "{}() got an unexpected keyword argument '{name}'",
                self.task
            )));
        }
        Ok(())
    }

    fn take_value(&mut self, index: usize, name: &str) -> Result<Option<Arg>, TaskError> {
        self.parameters = self.parameters.max(index + 1);
        let (positional, keyword) = match &mut self.values {
            Values::Owned { args, kwargs } => (
                args.get_mut(index).and_then(Option::take).map(Arg::Owned),
                kwargs.shift_remove(name).map(Arg::Owned),
            ),
            Values::Shared {
                message,
                taken_args,
                taken_kwargs,
            } => {
                let take = |taken: Option<&mut bool>, place: Place| match taken {
                    Some(taken) if !*taken => {
                        *taken = true;
                        Some(Arg::Shared(message.clone(), place))
                    }
                    _ => None,
                };
                let keyword_at = message.body.kwargs.names().position(|key| key == name);
                (
                    take(taken_args.get_mut(index), Place::Positional(index)),
                    keyword_at.and_then(|at| {
                        take(taken_kwargs.get_mut(at), Place::Keyword(name.to_owned()))
                    }),
                )
            }
        };
        match (positional, keyword) {
            (Some(_), Some(_)) => Err(TaskError::type_error(format!(
                "{}() got multiple values for argument '{name}'",
                self.task
            ))),
            (Some(v), None) | (None, Some(v)) => Ok(Some(v)),
            (None, None) => Ok(None),
        }
    }

    /// `arg` as the parameter's type. A JSON value parameter takes it as
    /// it is (a shared one is copied); any other type is read from its
    /// text if it has one, else from its value in place, so that the value
    /// is still there to describe if it does not fit.
    fn convert<T: DeserializeOwned + 'static>(&self, arg: Arg, name: &str) -> Result<T, TaskError> {
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<Value>() {
            let mut slot = Some(arg.into_value());
            let any: &mut dyn std::any::Any = &mut slot;
            // `T` is `Value`: the downcast holds.
            return any
                .downcast_mut::<Option<T>>()
                .and_then(Option::take)
                .ok_or_else(|| TaskError::new(format!("argument '{name}' could not be bound")));
        }
        if let Some(text) = arg.text()
            && let Ok(typed) = celeriac_protocol::json::from_str(text)
        {
            return Ok(typed);
        }
        // Read from the value: the same binding as from text, and on a
        // mismatch the error names the value as it does for any message.
        let value = arg.value();
        T::deserialize(&*value).map_err(|e| {
            TaskError::type_error(format!(
                "{}() argument '{name}' must be {}, got {}: {e}",
                self.task,
                type_label::<T>(),
                describe(&value)
            ))
        })
    }
}

/// A value as a Python caller would recognise it: a short repr and its
/// Python type, e.g. `-1 (int)`, `2.5 (float)`, `'two' (str)`. It costs
/// the same for a megabyte-long value as for a short one: only the head
/// of the value is written out.
fn describe(value: &Value) -> String {
    const LONGEST: usize = 40;
    // A char is at most four bytes: this many bytes hold more than LONGEST.
    const HEAD_BYTES: usize = (LONGEST + 1) * 4;
    let (repr, kind) = match value {
        Value::Null => ("None".to_owned(), "NoneType"),
        Value::Bool(b) => ((if *b { "True" } else { "False" }).to_owned(), "bool"),
        Value::Number(n) => {
            let text = n.to_string();
            let kind = if text.contains(['.', 'e', 'E']) {
                "float"
            } else {
                "int"
            };
            (text, kind)
        }
        Value::String(s) => {
            let head: String = s.chars().take(LONGEST + 1).collect();
            (format!("{head:?}").replace('"', "'"), "str")
        }
        Value::Array(_) => (json_head(value, HEAD_BYTES), "list"),
        Value::Object(_) => (json_head(value, HEAD_BYTES), "dict"),
    };
    let repr = if repr.chars().count() > LONGEST {
        format!("{}...", repr.chars().take(LONGEST).collect::<String>())
    } else {
        repr
    };
    format!("{repr} ({kind})")
}

/// The first `bytes` bytes of `value` as JSON (all of it if shorter),
/// without writing out the rest.
fn json_head(value: &Value, bytes: usize) -> String {
    let mut head = Head {
        out: Vec::with_capacity(bytes.min(256)),
        room: bytes,
    };
    // Stops with an error once the head is full: the point of it.
    let _ = serde_json::to_writer(&mut head, value);
    String::from_utf8_lossy(&head.out).into_owned()
}

/// A writer that keeps the first `room` bytes and refuses the rest.
struct Head {
    out: Vec<u8>,
    room: usize,
}

impl std::io::Write for Head {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let left = self.room - self.out.len();
        if left == 0 && !buf.is_empty() {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let n = buf.len().min(left);
        self.out.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A readable name for `T`: `u32`, `String`, `Vec<Option<u8>>`.
fn type_label<T: ?Sized>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::with_capacity(full.len());
    let mut path = String::new();
    let flush = |path: &mut String, out: &mut String| {
        out.push_str(path.rsplit("::").next().unwrap_or(path));
        path.clear();
    };
    for c in full.chars() {
        if matches!(c, '<' | '>' | ',' | ' ' | '&' | '[' | ']' | ';' | '(' | ')') {
            flush(&mut path, &mut out);
            out.push(c);
        } else {
            path.push(c);
        }
    }
    flush(&mut path, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// How a call's arguments are built.
    type Build = fn(Value, Value) -> Arguments;

    /// Owned arguments, as a direct call has them.
    fn owned(positional: Value, keywords: Value) -> Arguments {
        Arguments::new(
            "t",
            positional.as_array().cloned().unwrap_or_default(),
            keywords.as_object().cloned().unwrap_or_default(),
        )
    }

    /// A task message's arguments, as the worker binds them.
    fn shared(positional: Value, keywords: Value) -> Arguments {
        let message = TaskMessage::new("t", "id")
            .with_args(positional.as_array().cloned().unwrap_or_default())
            .with_kwargs(keywords.as_object().cloned().unwrap_or_default());
        Arguments::of_message(Arc::new(message))
    }

    /// A task message's arguments kept as text, as the worker binds a
    /// large body's.
    fn shared_text(positional: Value, keywords: Value) -> Arguments {
        let raw = TaskMessage::new("t", "id")
            .with_args(positional.as_array().cloned().unwrap_or_default())
            .with_kwargs(keywords.as_object().cloned().unwrap_or_default())
            .encode()
            .unwrap();
        let options = celeriac_protocol::DecodeOptions {
            keep_args_as_text_from: 0,
            ..Default::default()
        };
        let message = TaskMessage::decode(&raw, &options).unwrap();
        assert_eq!(
            message.body.args.text(0).is_some(),
            !positional.as_array().unwrap().is_empty()
        );
        Arguments::of_message(Arc::new(message))
    }

    const EVERY_SOURCE: [Build; 3] = [owned, shared, shared_text];

    fn message(result: Result<impl std::fmt::Debug, TaskError>) -> String {
        let err = result.unwrap_err();
        let info = err.exception_info();
        assert_eq!(info.exc_type, "TypeError");
        info.message()
    }

    #[test]
    fn positional_keyword_or_both() {
        for args in EVERY_SOURCE {
            let mut a = args(json!([1]), json!({"y": 2}));
            assert_eq!(a.take::<i32>(0, "x").unwrap(), 1);
            assert_eq!(a.take::<i32>(1, "y").unwrap(), 2);
            a.finish().unwrap();
        }
    }

    #[test]
    fn mistakes_are_type_errors_naming_the_parameter() {
        for args in EVERY_SOURCE {
            assert_eq!(
                message(args(json!([]), json!({})).take::<u32>(0, "width")),
                "t() missing required argument: 'width' (expected u32)"
            );
            let wrong = message(args(json!(["wide"]), json!({})).take::<u32>(0, "width"));
            assert!(
                wrong.starts_with(
                    "t() argument 'width' must be u32, got 'wide' (str): invalid type"
                ),
                "{wrong}"
            );
            for (value, shown) in [
                (json!(-1), "got -1 (int)"),
                (json!(2.5), "got 2.5 (float)"),
                (json!(99_999_999_999_u64), "got 99999999999 (int)"),
            ] {
                let numeric = message(args(json!([value]), json!({})).take::<u32>(0, "n"));
                assert!(
                    numeric.starts_with(&format!("t() argument 'n' must be u32, {shown}")),
                    "{numeric}"
                );
            }
            assert_eq!(
                message(args(json!([1]), json!({"x": 1})).take::<u32>(0, "x")),
                "t() got multiple values for argument 'x'"
            );
            let mut extra = args(json!([1, 2]), json!({}));
            extra.take::<u32>(0, "x").unwrap();
            assert_eq!(
                message(extra.finish()),
                "t() takes 1 positional arguments but 2 were given"
            );
            let mut unknown = args(json!([1]), json!({"z": 3}));
            unknown.take::<u32>(0, "x").unwrap();
            assert_eq!(
                message(unknown.finish()),
                "t() got an unexpected keyword argument 'z'"
            );
        }
    }

    #[test]
    fn optional_parameters_may_be_absent_or_null() {
        for args in EVERY_SOURCE {
            let mut a = args(json!([null]), json!({}));
            assert_eq!(a.take_optional::<String>(0, "a").unwrap(), None);
            assert_eq!(a.take_optional::<String>(1, "b").unwrap(), None);
            a.finish().unwrap();
        }
    }

    #[test]
    fn a_long_value_is_described_by_its_head() {
        let long_list = Value::Array((0..100_000).map(Value::from).collect());
        assert_eq!(
            describe(&long_list),
            "[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,1... (list)"
        );
        let long_text = Value::String("é".repeat(100_000));
        assert_eq!(
            describe(&long_text),
            format!("'{}... (str)", "é".repeat(39))
        );
        assert_eq!(describe(&json!({"a": [1]})), "{\"a\":[1]} (dict)");
        assert_eq!(describe(&json!("two")), "'two' (str)");
    }

    #[test]
    fn type_labels_are_short() {
        assert_eq!(type_label::<String>(), "String");
        assert_eq!(type_label::<Vec<Option<u8>>>(), "Vec<Option<u8>>");
        assert_eq!(
            type_label::<std::collections::HashMap<String, i64>>(),
            "HashMap<String, i64>"
        );
    }
}
