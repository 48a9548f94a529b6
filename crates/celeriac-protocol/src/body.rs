//! The protocol v2 body, `[args, kwargs, embed]` (§1.4).

use bytes::Bytes;
use bytestring::ByteString;
use serde_json::{Map, Value};

use crate::args::{self, Args, Kwargs};
use crate::signature::{kind_of, list_of};
use crate::{DecodeError, Signature, json};

/// What a task is called with, plus the workflow that follows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskBody {
    /// Positional arguments.
    pub args: Args,
    /// Keyword arguments.
    pub kwargs: Kwargs,
    /// Callbacks, errbacks, chain and chord.
    pub embed: Embed,
}

/// The body's third element: what to do after the task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Embed {
    /// `link`: signatures applied to the result on success.
    pub callbacks: Option<Vec<Signature>>,
    /// `link_error`: signatures applied on failure.
    pub errbacks: Option<Vec<Signature>>,
    /// The remaining chain steps, **in reverse order**: the next step is the
    /// last element (§5.3).
    pub chain: Option<Vec<Signature>>,
    /// The chord body, on chord header tasks.
    pub chord: Option<Box<Signature>>,
    /// Any other keys, kept and re-emitted.
    pub extra: Map<String, Value>,
}

impl TaskBody {
    /// Reads a decoded v2 body. It must be a 3-element array; `embed` may be
    /// `null` or lack keys, as the Python worker allows.
    pub fn from_json(value: Value) -> Result<TaskBody, DecodeError> {
        let Value::Array(parts) = value else {
            return Err(DecodeError::Body(format!(
                "expected a [args, kwargs, embed] array, found {}",
                kind_of(&value)
            )));
        };
        let Ok::<[Value; 3], _>([args, kwargs, embed]) = parts.try_into() else {
            return Err(DecodeError::Body(
                "expected a 3-element [args, kwargs, embed] array; a 2-element body is not \
                 a valid protocol v2 message (Python workers fail on it too)"
                    .into(),
            ));
        };
        Ok(TaskBody {
            args: args_of(args)?.into(),
            kwargs: kwargs_of(kwargs)?.into(),
            embed: Embed::from_json(&embed)?,
        })
    }

    /// Reads a v2 body from its JSON text, keeping each argument as text
    /// until it is read (see [`Args`]); the arguments share `text`'s buffer.
    /// `None` when the text is not UTF-8 or not a well-formed
    /// `[args, kwargs, embed]` array: [`from_json`](Self::from_json) then
    /// says what is wrong with it.
    pub fn from_text(text: Bytes) -> Option<Result<TaskBody, DecodeError>> {
        let split = args::split(ByteString::try_from(text).ok()?)?;
        Some(Embed::from_json(&split.embed).map(|embed| TaskBody {
            args: split.args,
            kwargs: split.kwargs,
            embed,
        }))
    }

    /// The body's JSON text as Python writes it, without copying the
    /// arguments into a new value first.
    pub fn to_python_json(&self) -> String {
        json::to_python_json(&(
            self.args.values(),
            self.kwargs.values(),
            self.embed.to_json(),
        ))
    }

    /// The body as Python writes it.
    pub fn to_json(&self) -> Value {
        Value::Array(vec![
            Value::Array(self.args.to_vec()),
            Value::Object(self.kwargs.values().clone()),
            self.embed.to_json(),
        ])
    }
}

/// Reads positional args: a JSON array (`null` means none).
pub(crate) fn args_of(value: Value) -> Result<Vec<Value>, DecodeError> {
    match value {
        Value::Array(items) => Ok(items),
        Value::Null => Ok(Vec::new()),
        other => Err(DecodeError::Body(format!(
            "args must be a list, found {}",
            kind_of(&other)
        ))),
    }
}

/// Reads keyword args: a JSON object (`null` means none).
pub(crate) fn kwargs_of(value: Value) -> Result<Map<String, Value>, DecodeError> {
    match value {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(Map::new()),
        other => Err(DecodeError::Body(format!(
            "kwargs must be an object, found {}",
            kind_of(&other)
        ))),
    }
}

impl Embed {
    /// Reads `embed` (or, for v1 messages, the body's top-level keys).
    pub fn from_json(value: &Value) -> Result<Embed, DecodeError> {
        let map = match value {
            Value::Null => return Ok(Embed::default()),
            Value::Object(map) => map,
            other => {
                return Err(DecodeError::Body(format!(
                    "embed must be an object or null, found {}",
                    kind_of(other)
                )));
            }
        };
        let mut embed = Embed::default();
        for (key, item) in map {
            let known = matches!(key.as_str(), "callbacks" | "errbacks" | "chain" | "chord");
            if known && item.is_null() {
                // Python writes all four, mostly null: nothing to read.
                continue;
            }
            let path = format!("embed.{key}");
            match key.as_str() {
                "callbacks" => embed.callbacks = opt_list(item, &path)?,
                "errbacks" => embed.errbacks = opt_list(item, &path)?,
                "chain" => embed.chain = opt_list(item, &path)?,
                "chord" => embed.chord = Some(Box::new(Signature::from_json(item, &path)?)),
                _ => {
                    embed.extra.insert(key.clone(), item.clone());
                }
            }
        }
        Ok(embed)
    }

    /// Writes all four keys, `null` where unused, as Python does.
    pub fn to_json(&self) -> Value {
        let list = |sigs: &Option<Vec<Signature>>| {
            sigs.as_ref().map_or(Value::Null, |s| {
                Value::Array(s.iter().map(Signature::to_json).collect())
            })
        };
        let mut map = Map::with_capacity(4 + self.extra.len());
        map.insert("callbacks".into(), list(&self.callbacks));
        map.insert("errbacks".into(), list(&self.errbacks));
        map.insert("chain".into(), list(&self.chain));
        map.insert(
            "chord".into(),
            self.chord.as_ref().map_or(Value::Null, |c| c.to_json()),
        );
        for (key, value) in &self.extra {
            map.insert(key.clone(), value.clone());
        }
        Value::Object(map)
    }

    /// The next chain step, if any (the last element of `chain`).
    pub fn next_chain_step(&self) -> Option<&Signature> {
        self.chain.as_ref()?.last()
    }
}

fn opt_list(value: &Value, path: &str) -> Result<Option<Vec<Signature>>, DecodeError> {
    match value {
        Value::Null => Ok(None),
        other => list_of(other, path).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn embed_may_be_null_or_partial() {
        let body = TaskBody::from_json(json!([[1], {"a": 2}, null])).unwrap();
        assert_eq!(body.embed, Embed::default());
        let body = TaskBody::from_json(json!([[], {}, {"chain": null}])).unwrap();
        assert_eq!(body.embed, Embed::default());
    }

    #[test]
    fn two_element_bodies_are_refused() {
        let err = TaskBody::from_json(json!([[1], {}])).unwrap_err();
        assert!(err.to_string().contains("3-element"), "{err}");
        assert!(TaskBody::from_json(json!({"args": []})).is_err());
        assert!(TaskBody::from_json(json!([{}, {}, null])).is_err());
    }

    #[test]
    fn next_chain_step_is_the_last_element() {
        let body = TaskBody::from_json(json!([[], {}, {"chain": [
            {"task": "c", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false},
            {"task": "b", "args": [], "kwargs": {}, "options": {}, "subtask_type": null, "immutable": false}
        ]}]))
        .unwrap();
        assert_eq!(
            body.embed.next_chain_step().map(|s| s.task.as_str()),
            Some("b")
        );
    }
}
