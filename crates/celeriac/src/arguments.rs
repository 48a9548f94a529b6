//! Binding a message's `args` and `kwargs` to a task's typed parameters,
//! the way Python binds a call: parameter `i` comes from `args[i]` or, if
//! there are fewer positional args, from `kwargs[name]`.
//!
//! Every mistake a Python caller can make is a `TypeError` naming the
//! parameter, as Python would raise: a missing argument, the same argument
//! twice, too many positional arguments, an unknown keyword, or a value of
//! the wrong type (with the type expected).

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
    args: Vec<Option<Value>>,
    kwargs: Map<String, Value>,
    parameters: usize,
}

impl Arguments {
    /// The arguments of one call of `task`.
    pub fn new(task: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Arguments {
        Arguments {
            task: task.into(),
            args: args.into_iter().map(Some).collect(),
            kwargs,
            parameters: 0,
        }
    }

    /// Takes required parameter number `index` called `name`.
    pub fn take<T: DeserializeOwned>(&mut self, index: usize, name: &str) -> Result<T, TaskError> {
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
    pub fn take_optional<T: DeserializeOwned>(
        &mut self,
        index: usize,
        name: &str,
    ) -> Result<Option<T>, TaskError> {
        match self.take_value(index, name)? {
            None | Some(Value::Null) => Ok(None),
            Some(value) => self.convert(value, name).map(Some),
        }
    }

    /// Checks that nothing is left over: no extra positional arguments and no
    /// unknown keyword arguments.
    pub fn finish(self) -> Result<(), TaskError> {
        let extra_positional = self.args.len().saturating_sub(self.parameters);
        if extra_positional > 0 {
            return Err(TaskError::type_error(format!(
                "{}() takes {} positional arguments but {} were given",
                self.task,
                self.parameters,
                self.args.len()
            )));
        }
        if let Some(name) = self.kwargs.keys().next() {
            return Err(TaskError::type_error(format!(
                "{}() got an unexpected keyword argument '{name}'",
                self.task
            )));
        }
        Ok(())
    }

    fn take_value(&mut self, index: usize, name: &str) -> Result<Option<Value>, TaskError> {
        self.parameters = self.parameters.max(index + 1);
        let positional = self.args.get_mut(index).and_then(Option::take);
        let keyword = self.kwargs.shift_remove(name);
        match (positional, keyword) {
            (Some(_), Some(_)) => Err(TaskError::type_error(format!(
                "{}() got multiple values for argument '{name}'",
                self.task
            ))),
            (Some(v), None) | (None, Some(v)) => Ok(Some(v)),
            (None, None) => Ok(None),
        }
    }

    fn convert<T: DeserializeOwned>(&self, value: Value, name: &str) -> Result<T, TaskError> {
        let received = describe(&value);
        serde_json::from_value(value).map_err(|e| {
            TaskError::type_error(format!(
                "{}() argument '{name}' must be {}, got {received}: {e}",
                self.task,
                type_label::<T>()
            ))
        })
    }
}

/// A value as a Python caller would recognise it: a short repr and its
/// Python type, e.g. `-1 (int)`, `2.5 (float)`, `'two' (str)`.
fn describe(value: &Value) -> String {
    const LONGEST: usize = 40;
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
        Value::String(s) => (format!("{s:?}").replace('"', "'"), "str"),
        Value::Array(_) => (value.to_string(), "list"),
        Value::Object(_) => (value.to_string(), "dict"),
    };
    let repr = if repr.chars().count() > LONGEST {
        format!("{}...", repr.chars().take(LONGEST).collect::<String>())
    } else {
        repr
    };
    format!("{repr} ({kind})")
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

    fn args(positional: Value, keywords: Value) -> Arguments {
        Arguments::new(
            "t",
            positional.as_array().cloned().unwrap_or_default(),
            keywords.as_object().cloned().unwrap_or_default(),
        )
    }

    fn message(result: Result<impl std::fmt::Debug, TaskError>) -> String {
        let err = result.unwrap_err();
        let info = err.exception_info();
        assert_eq!(info.exc_type, "TypeError");
        info.message()
    }

    #[test]
    fn positional_keyword_or_both() {
        let mut a = args(json!([1]), json!({"y": 2}));
        assert_eq!(a.take::<i32>(0, "x").unwrap(), 1);
        assert_eq!(a.take::<i32>(1, "y").unwrap(), 2);
        a.finish().unwrap();
    }

    #[test]
    fn mistakes_are_type_errors_naming_the_parameter() {
        assert_eq!(
            message(args(json!([]), json!({})).take::<u32>(0, "width")),
            "t() missing required argument: 'width' (expected u32)"
        );
        let wrong = message(args(json!(["wide"]), json!({})).take::<u32>(0, "width"));
        assert!(
            wrong.starts_with("t() argument 'width' must be u32, got 'wide' (str): invalid type"),
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

    #[test]
    fn optional_parameters_may_be_absent_or_null() {
        let mut a = args(json!([null]), json!({}));
        assert_eq!(a.take_optional::<String>(0, "a").unwrap(), None);
        assert_eq!(a.take_optional::<String>(1, "b").unwrap(), None);
        a.finish().unwrap();
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
