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
    let mut out = Repr::default();
    out.push_str("(");
    write_items(&mut out, args);
    if args.len() == 1 {
        out.push_str(",");
    }
    out.push_str(")");
    out.finish()
}

/// `repr(kwargs)`, e.g. `{'x': 1}`.
pub fn kwargs_repr(kwargs: &Map<String, Value>) -> String {
    let mut out = Repr::default();
    write_map(&mut out, kwargs);
    out.finish()
}

/// `repr(value)`, e.g. `'a'`, `[1, None]`, cut at 1024 characters (the
/// `result` of a `task-succeeded` event).
///
/// ```
/// use celeriac_protocol::repr::value_repr;
/// assert_eq!(value_repr(&serde_json::json!([1, null, "a"])), "[1, None, 'a']");
/// ```
pub fn value_repr(value: &Value) -> String {
    let mut out = Repr::default();
    write_value(&mut out, value);
    out.finish()
}

/// `repr(exc)` for an exception of `exc_type` with these args, as Python
/// prints it: `ValueError('boom')`, `KeyError('a', 1)`, `TimeoutError()`.
///
/// ```
/// use celeriac_protocol::repr::exception_repr;
/// assert_eq!(exception_repr("ValueError", &["boom".into()]), "ValueError('boom')");
/// ```
pub fn exception_repr(exc_type: &str, args: &[Value]) -> String {
    let mut out = Repr::default();
    out.push_str(exc_type);
    out.push_str("(");
    write_items(&mut out, args);
    out.push_str(")");
    out.finish()
}

/// A repr being written, which stops taking text once it is longer than
/// [`MAX_LEN`] characters: writing the repr of a megabyte-long argument
/// costs no more than writing its head.
#[derive(Default)]
struct Repr {
    out: String,
    chars: usize,
}

impl Repr {
    /// Whether the repr is already too long to show in full.
    fn is_full(&self) -> bool {
        self.chars > MAX_LEN
    }

    fn push_str(&mut self, text: &str) {
        for c in text.chars() {
            if !self.push(c) {
                return;
            }
        }
    }

    /// Adds `c`; `false` once the repr is full.
    fn push(&mut self, c: char) -> bool {
        if self.is_full() {
            return false;
        }
        self.out.push(c);
        self.chars += 1;
        true
    }

    /// The repr, cut at [`MAX_LEN`] characters with `...` if it is longer.
    fn finish(mut self) -> String {
        if self.is_full() {
            self.out.pop();
            self.out.push_str("...");
        }
        self.out
    }
}

/// Items separated by `, `.
fn write_items(out: &mut Repr, items: &[Value]) {
    for (i, item) in items.iter().enumerate() {
        if out.is_full() {
            return;
        }
        if i > 0 {
            out.push_str(", ");
        }
        write_value(out, item);
    }
}

fn write_value(out: &mut Repr, value: &Value) {
    match value {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push_str("[");
            write_items(out, items);
            out.push_str("]");
        }
        Value::Object(map) => write_map(out, map),
    }
}

fn write_map(out: &mut Repr, map: &Map<String, Value>) {
    out.push_str("{");
    for (i, (key, value)) in map.iter().enumerate() {
        if out.is_full() {
            return;
        }
        if i > 0 {
            out.push_str(", ");
        }
        write_str(out, key);
        out.push_str(": ");
        write_value(out, value);
    }
    out.push_str("}");
}

/// Python's string repr: single quotes unless the text has `'` and no `"`.
fn write_str(out: &mut Repr, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        if out.is_full() {
            return;
        }
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
            c => {
                out.push(c);
            }
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
        assert_eq!(long, format!("('{}...", "x".repeat(MAX_LEN - 2)));
    }

    #[test]
    fn a_repr_is_cut_only_when_longer_than_the_limit() {
        // `(` + quote + text + quote + `,)`: 5 characters around the text.
        let exactly = args_repr(&[json!("é".repeat(MAX_LEN - 5))]);
        assert_eq!(exactly.chars().count(), MAX_LEN);
        assert!(!exactly.ends_with("..."));
        let one_more = args_repr(&[json!("é".repeat(MAX_LEN - 4))]);
        assert_eq!(one_more, format!("('{}',...", "é".repeat(MAX_LEN - 4)));
        let many = args_repr(&[json!((0..100_000).collect::<Vec<_>>())]);
        assert!(
            many.starts_with("([0, 1, 2, ") && many.ends_with("..."),
            "{many}"
        );
        assert_eq!(many.chars().count(), MAX_LEN + 3);
    }
}
