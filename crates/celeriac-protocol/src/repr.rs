//! Python-style `repr` of arguments, for the `argsrepr` and `kwargsrepr`
//! headers that Flower, `celery inspect` and logs display (§9 item 20).
//!
//! Display only: nothing parses these strings. Special kombu envelopes are
//! shown as the dicts they are on the wire.

use serde_json::{Map, Value};

/// Python's `saferepr` cuts at 1024 characters.
const MAX_LEN: usize = 1024;

/// `repr(tuple(args))`, e.g. `(2, 2)` or `('a',)`.
///
/// ```
/// use celeriac_protocol::repr::args_repr;
/// assert_eq!(args_repr(&[2.into(), "x".into()]), "(2, 'x')");
/// assert_eq!(args_repr(&[true.into()]), "(True,)");
/// ```
pub fn args_repr(args: &[Value]) -> String {
    let mut out = String::from("(");
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_value(&mut out, arg);
    }
    if args.len() == 1 {
        out.push(',');
    }
    out.push(')');
    truncate(out)
}

/// `repr(kwargs)`, e.g. `{'x': 1}`.
pub fn kwargs_repr(kwargs: &Map<String, Value>) -> String {
    let mut out = String::new();
    write_map(&mut out, kwargs);
    truncate(out)
}

/// `repr(value)`, e.g. `'a'`, `[1, None]`, cut at 1024 characters (the
/// `result` of a `task-succeeded` event).
///
/// ```
/// use celeriac_protocol::repr::value_repr;
/// assert_eq!(value_repr(&serde_json::json!([1, null, "a"])), "[1, None, 'a']");
/// ```
pub fn value_repr(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    truncate(out)
}

/// `repr(exc)` for an exception of `exc_type` with these args, as Python
/// prints it: `ValueError('boom')`, `KeyError('a', 1)`, `TimeoutError()`.
///
/// ```
/// use celeriac_protocol::repr::exception_repr;
/// assert_eq!(exception_repr("ValueError", &["boom".into()]), "ValueError('boom')");
/// ```
pub fn exception_repr(exc_type: &str, args: &[Value]) -> String {
    let mut out = String::from(exc_type);
    out.push('(');
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_value(&mut out, arg);
    }
    out.push(')');
    truncate(out)
}

fn truncate(mut s: String) -> String {
    if s.chars().count() > MAX_LEN {
        s = s.chars().take(MAX_LEN).collect();
        s.push_str("...");
    }
    s
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_map(out, map),
    }
}

fn write_map(out: &mut String, map: &Map<String, Value>) {
    out.push('{');
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_str(out, key);
        out.push_str(": ");
        write_value(out, value);
    }
    out.push('}');
}

/// Python's string repr: single quotes unless the text has `'` and no `"`.
fn write_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_repr() {
        // Expected strings are what CPython 3.11 prints for the same values.
        assert_eq!(args_repr(&[]), "()");
        assert_eq!(
            args_repr(&[json!(null), json!([1, "a"])]),
            "(None, [1, 'a'])"
        );
        assert_eq!(args_repr(&[json!("it's")]), "(\"it's\",)");
        assert_eq!(args_repr(&[json!("a\nb\u{0}")]), "('a\\nb\\x00',)");
        let kwargs = json!({"x": 1, "y": {"z": false}});
        assert_eq!(
            kwargs_repr(kwargs.as_object().unwrap()),
            "{'x': 1, 'y': {'z': False}}"
        );
    }

    #[test]
    fn long_reprs_are_cut() {
        let long = args_repr(&[json!("x".repeat(5000))]);
        assert_eq!(long.chars().count(), MAX_LEN + 3);
    }
}
