//! JSON text as kombu reads and writes it (§1.6.2).
//!
//! Writing mirrors Python's `json.dumps` defaults: `", "` and `": "`
//! separators and `ensure_ascii=True` (every non-ASCII character, and DEL,
//! escaped as `\uXXXX`). Numbers keep the exact text they arrived with
//! (serde_json's `arbitrary_precision`), so Python's unbounded integers and
//! float spellings survive a round trip, and object keys keep their order.
//!
//! Reading refuses Python's bare `NaN`/`Infinity` tokens with a specific
//! error rather than a generic syntax error, since no JSON value can hold them.

use std::io;
use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Serialize;
use serde_json::Value;
use serde_json::ser::Formatter;

use crate::DecodeError;

pub use crate::typed_text::from_str;

/// Serializes a value exactly as Python's `json.dumps(value)` would.
///
/// ```
/// use celeriac_protocol::json::to_python_json;
/// let text = to_python_json(&serde_json::json!([[2, 2], {"k": "é"}]));
/// assert_eq!(text, r#"[[2, 2], {"k": "\u00e9"}]"#);
/// ```
pub fn to_python_json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    // Serializing a `Value` (or our own types) into a Vec cannot fail: there
    // are no maps with non-string keys and no I/O errors.
    if value.serialize(&mut ser).is_err() {
        return String::from("null");
    }
    // The formatter only ever writes ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// Parses JSON text, turning Python's non-finite number tokens into
/// [`DecodeError::NonFiniteNumber`].
///
/// ```
/// use celeriac_protocol::{json::from_slice, DecodeError};
/// assert!(from_slice(b"[1, 2]").is_ok());
/// let err = from_slice(b"[1, NaN]").unwrap_err();
/// assert!(matches!(err, DecodeError::NonFiniteNumber { token: "NaN", offset: 4 }));
/// ```
pub fn from_slice(bytes: &[u8]) -> Result<Value, DecodeError> {
    serde_json::from_slice(bytes).map_err(|err| match find_non_finite(bytes) {
        Some((token, offset)) => DecodeError::NonFiniteNumber { token, offset },
        None => DecodeError::Json(err.to_string()),
    })
}

/// Finds the first bare `NaN`, `Infinity` or `-Infinity` outside a string.
fn find_non_finite(bytes: &[u8]) -> Option<(&'static str, usize)> {
    const TOKENS: [&str; 3] = ["-Infinity", "Infinity", "NaN"];
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        if b == b'"' {
            in_string = true;
            continue;
        }
        if let Some(token) = TOKENS.iter().find(|t| bytes[i..].starts_with(t.as_bytes())) {
            return Some((token, i));
        }
    }
    None
}

/// How deep serde_json lets arrays and objects nest when it parses a
/// value: one level more is an error.
const VALUE_DEPTH_LIMIT: usize = 127;

/// Whether JSON text that serde_json has already accepted as syntax
/// (split into raw slices, say) also parses into the same values: it nests
/// no deeper than [`from_slice`] allows, has no unpaired surrogate escape
/// (`"\ud800"`, which Python's `json.dumps` writes and serde_json refuses),
/// and does not name serde_json's private keys (an object keyed
/// `$serde_json::private::Number` or `...::RawValue` is read as a number
/// or as embedded JSON, not as an object). It may say no to text that would
/// parse the same (a private key), never yes to text that would not.
pub(crate) fn parses_as_values(text: &[u8]) -> bool {
    // Built once: `memmem::find` builds a searcher on every call.
    static PRIVATE_KEY_FINDER: LazyLock<Finder<'static>> =
        LazyLock::new(|| Finder::new(SERDE_JSON_PRIVATE));
    PRIVATE_KEY_FINDER.find(text).is_none()
        && nests_within(text, VALUE_DEPTH_LIMIT)
        && surrogates_are_paired(text)
}

/// The prefix of the keys serde_json's value parser treats specially.
const SERDE_JSON_PRIVATE: &[u8] = b"$serde_json::private::";

/// Whether arrays and objects nest at most `limit` deep, brackets inside
/// strings aside.
fn nests_within(text: &[u8], limit: usize) -> bool {
    // No more brackets than the limit in all: nothing to walk.
    if memchr::memchr2_iter(b'[', b'{', text).nth(limit).is_none() {
        return true;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => match string_end(text, i + 1) {
                Some(end) => i = end,
                None => return true,
            },
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    true
}

/// The index of the quote that closes the string whose text starts at
/// `from`.
fn string_end(text: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + memchr::memchr2(b'"', b'\\', text.get(from..)?)?;
        if text[at] == b'"' {
            return Some(at);
        }
        from = at + 2;
    }
}

/// Whether every `\uD800`–`\uDBFF` escape is followed by a `\uDC00`–`\uDFFF`
/// one, and no `\uDC00`–`\uDFFF` stands alone.
fn surrogates_are_paired(text: &[u8]) -> bool {
    static ESCAPE_FINDER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br"\u"));
    let unit = |at: usize| -> Option<u16> {
        let hex = text.get(at + 2..at + 6)?;
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    };
    let mut after_pair = 0;
    for at in ESCAPE_FINDER.find_iter(text) {
        // After an odd run of backslashes this one is escaped itself: the
        // text `\\u` is a backslash and a `u`, not an escape.
        let run = text[..at].iter().rev().take_while(|&&b| b == b'\\').count();
        if at < after_pair || run % 2 == 1 {
            continue;
        }
        match unit(at) {
            Some(0xD800..=0xDBFF) => {
                let low = text.get(at + 6..at + 8) == Some(br"\u".as_slice())
                    && matches!(unit(at + 6), Some(0xDC00..=0xDFFF));
                if !low {
                    return false;
                }
                after_pair = at + 12;
            }
            Some(0xDC00..=0xDFFF) => return false,
            _ => {}
        }
    }
    true
}

/// `json.dumps` separators and `ensure_ascii=True` escaping.
struct PythonFormatter;

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if fragment.bytes().all(|b| b < 0x7f) {
            return w.write_all(fragment.as_bytes());
        }
        let mut units = [0u16; 2];
        for c in fragment.chars() {
            if (c as u32) < 0x7f {
                w.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut units) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_dumps_byte_for_byte() {
        // Expected strings are what CPython 3.11 `json.dumps` prints.
        let cases = [
            (
                json!({"a": [1, 2], "b": null}),
                r#"{"a": [1, 2], "b": null}"#,
            ),
            (json!("😀"), r#""\ud83d\ude00""#),
            (json!("\u{7f}\u{0}\t\"\\"), r#""\u007f\u0000\t\"\\""#),
            (json!([]), "[]"),
            (json!({}), "{}"),
            (json!([true, false, -1]), "[true, false, -1]"),
        ];
        for (value, expected) in cases {
            assert_eq!(to_python_json(&value), expected);
        }
    }

    #[test]
    fn number_text_survives_a_round_trip() {
        let text = "[1e+100, -0.0, 0.1, 1267650600228229401496703205376, -9223372036854775809]";
        let value = from_slice(text.as_bytes()).unwrap();
        assert_eq!(to_python_json(&value), text);
    }

    #[test]
    fn key_order_is_kept() {
        let text = r#"{"z": 1, "a": 2, "m": 3}"#;
        assert_eq!(to_python_json(&from_slice(text.as_bytes()).unwrap()), text);
    }

    /// A task body whose one argument is `1` inside arrays: `depth`
    /// levels in all, the body's own included.
    fn nested(depth: usize) -> String {
        let inner = depth - 1;
        format!("[{}1{}, {{}}, null]", "[".repeat(inner), "]".repeat(inner))
    }

    #[test]
    fn text_parses_as_values_exactly_when_serde_json_says_so() {
        let long_flat = format!("[[{}], {{}}, null]", vec!["[1]"; 500].join(", "));
        let cases = [
            nested(VALUE_DEPTH_LIMIT - 1),
            nested(VALUE_DEPTH_LIMIT),
            nested(VALUE_DEPTH_LIMIT + 1),
            nested(100_000),
            format!(r#"[["{}"], {{}}, null]"#, "[".repeat(1000)),
            long_flat,
            r#"[["\ud83d\ude00 \u00e9"], {}, null]"#.into(),
            r#"[["\ud800"], {}, null]"#.into(),
            r#"[["\ud800x"], {}, null]"#.into(),
            r#"[["\udc00\ud83d"], {}, null]"#.into(),
            r#"[["\ud83d\u0041"], {}, null]"#.into(),
            r#"[["a\"\\"], {}, null]"#.into(),
            r#"[["\\ud800"], {}, null]"#.into(),
            r#"[["\\ud83d\ude00"], {}, null]"#.into(),
            r#"[["\\\ud800\udc00"], {}, null]"#.into(),
        ];
        for text in cases {
            let parses = from_slice(text.as_bytes()).is_ok();
            assert_eq!(parses_as_values(text.as_bytes()), parses, "{text:.80}");
        }
    }

    #[test]
    fn non_finite_tokens_are_named() {
        let err = from_slice(br#"["NaN", -Infinity]"#).unwrap_err();
        assert_eq!(
            err,
            DecodeError::NonFiniteNumber {
                token: "-Infinity",
                offset: 8
            }
        );
        assert!(matches!(from_slice(b"[1,"), Err(DecodeError::Json(_))));
    }
}
