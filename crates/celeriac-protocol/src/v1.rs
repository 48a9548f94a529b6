//! Protocol v1 and hybrid bodies, converted to the v2 model (§1.8).
//!
//! A v1 message has an empty header table and an object body holding
//! everything. A hybrid message has a `task` header and such an object body.
//! Like the Python worker, we lift the body's metadata into v2 headers,
//! let the real headers win where both exist, and move `callbacks`,
//! `errbacks` and `chord` into `embed`. `taskset` is v1's name for `group`.
//! v1's `utc` flag is not kept: naive times are read as UTC, as for v2.

use serde_json::{Map, Value};

use crate::body::{args_of, kwargs_of};
use crate::header::{HeaderValue, Headers};
use crate::{DecodeError, Embed, TaskBody, TaskHeaders};

/// Body keys that are not headers.
const BODY_ONLY: [&str; 7] = [
    "args",
    "kwargs",
    "callbacks",
    "errbacks",
    "chord",
    "chain",
    "utc",
];

/// Converts a v1 (or hybrid) object body plus the message's own headers.
pub(crate) fn to_v2(
    mut body: Map<String, Value>,
    message_headers: &Headers,
) -> Result<(TaskHeaders, TaskBody), DecodeError> {
    let args = args_of(body.remove("args").unwrap_or(Value::Null))?;
    let kwargs = kwargs_of(body.remove("kwargs").unwrap_or(Value::Null))?;
    let mut embed_fields = Map::new();
    for key in ["callbacks", "errbacks", "chord"] {
        if let Some(value) = body.remove(key) {
            embed_fields.insert(key.to_owned(), value);
        }
    }
    let embed = Embed::from_json(&Value::Object(embed_fields))?;

    let mut headers = Headers::new();
    for (key, value) in body {
        if BODY_ONLY.contains(&key.as_str()) {
            continue;
        }
        let key = if key == "taskset" {
            "group".to_owned()
        } else {
            key
        };
        if key == "group" && headers.contains_key("group") && value.is_null() {
            continue;
        }
        let header = HeaderValue::from_json(&value).map_err(|detail| DecodeError::HeaderType {
            name: key.clone(),
            expected: "a value an AMQP header can hold",
            found: detail,
        })?;
        headers.insert(key, header);
    }
    for (key, value) in message_headers {
        headers.insert(key.clone(), value.clone());
    }
    let headers = TaskHeaders::from_headers(&headers)?;
    Ok((
        headers,
        TaskBody {
            args: args.into(),
            kwargs: kwargs.into(),
            embed,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn v1_fields_become_headers_and_embed() {
        let body = object(json!({
            "task": "proj.tasks.add", "id": "abc", "args": [2, 2], "kwargs": {},
            "retries": 1, "eta": "2030-01-02T03:04:05Z", "taskset": "g1", "utc": true,
            "timelimit": [10, null], "callbacks": [{"task": "cb", "args": [], "kwargs": {},
            "options": {}, "subtask_type": null, "immutable": false}], "errbacks": null, "chord": null
        }));
        let (h, b) = to_v2(body, &Headers::new()).unwrap();
        assert_eq!(
            (h.task.as_str(), h.id.as_str(), h.retries),
            ("proj.tasks.add", "abc", 1)
        );
        assert_eq!(h.group.as_deref(), Some("g1"));
        assert!(h.eta.is_some());
        assert_eq!(b.args, vec![json!(2), json!(2)]);
        assert_eq!(
            b.embed.callbacks.map(|c| c[0].task.clone()).as_deref(),
            Some("cb")
        );
    }

    #[test]
    fn real_headers_win_over_body_fields() {
        let mut message_headers = Headers::new();
        message_headers.insert("id".into(), HeaderValue::Str("from-header".into()));
        let body = object(json!({"task": "t", "id": "from-body", "args": []}));
        let (h, _) = to_v2(body, &message_headers).unwrap();
        assert_eq!(h.id, "from-header");
    }

    #[test]
    fn a_v1_body_without_id_is_invalid() {
        let err = to_v2(object(json!({"task": "t"})), &Headers::new()).unwrap_err();
        assert_eq!(err, DecodeError::MissingHeader("id"));
    }
}
