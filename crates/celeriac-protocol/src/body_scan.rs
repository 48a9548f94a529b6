//! One pass over a v2 body's text, `[args, kwargs, embed]`: checks that it
//! is JSON of that shape and finds where each argument's text is, without
//! building a value or parsing a number.
//!
//! serde_json can split a body into raw slices too, but it reads every
//! number digit by digit as it goes, which for a body full of integers
//! cost more than deserializing the task's typed parameters afterwards.
//! This scanner checks the same grammar with less work per byte: a
//! string's plain run found by `memchr`, numbers as runs of digits eight at
//! a time, Python's `, `-separated integers a word each. It accepts exactly the
//! text serde_json's split accepts (its tests hold it to that); with
//! `json::parses_as_values` checked first (nesting depth, paired
//! surrogates), a body it splits is one whose every slice parses.

use std::collections::HashMap;
use std::ops::Range;

/// Where a body's parts sit in its text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BodySpans {
    /// Each positional argument's span (none for `null`).
    pub(crate) args: Vec<Range<usize>>,
    /// Each keyword argument's name (unescaped) and value span, in order;
    /// a repeated name keeps its first place and its last value, as a JSON
    /// object read into a map does.
    pub(crate) kwargs: Vec<(String, Range<usize>)>,
    /// The `embed` value's span.
    pub(crate) embed: Range<usize>,
}

/// Scans `text` as a `[args, kwargs, embed]` body: `None` unless it is
/// one (args a list or `null`, kwargs an object or `null`, valid JSON
/// throughout, nothing after it but whitespace).
pub(crate) fn scan_body(text: &str) -> Option<BodySpans> {
    let mut scan = Scanner::new(text.as_bytes(), 0);
    scan.expect(b'[')?;
    let args = scan.args()?;
    scan.expect(b',')?;
    let kwargs = scan.kwargs(text)?;
    scan.expect(b',')?;
    let embed = scan.value()?;
    scan.expect(b']')?;
    scan.whitespace();
    (scan.at == scan.text.len()).then_some(BodySpans {
        args,
        kwargs,
        embed,
    })
}

/// Where the JSON value starting at `at` (after whitespace) ends, and how
/// deeply it nests arrays and objects (0 for a scalar); `None` unless one
/// valid value starts there. It accepts exactly the values serde_json
/// parses (nesting aside: no limit here) and ends where serde_json ends
/// them, which `typed_text` relies on when it skips a value serde_json
/// would skip (`ignore_value`) or hands one to serde_json.
pub(crate) fn value_end(text: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut scan = Scanner::new(text, at);
    scan.value()?;
    Some((scan.at, scan.deepest))
}

/// Where the string whose opening quote is at `at` ends (just after its
/// closing quote), if it holds neither an escape nor a control character:
/// its text is then exactly its bytes between the quotes.
pub(crate) fn plain_string_end(text: &[u8], at: usize) -> Option<usize> {
    let mut scan = Scanner::new(text, at + 1);
    scan.skip_plain();
    (scan.peek()? == b'"').then_some(scan.at + 1)
}

/// A position in the text being scanned.
struct Scanner<'a> {
    text: &'a [u8],
    at: usize,
    /// The closing brackets of the arrays and objects the scan is inside.
    open: Vec<u8>,
    /// The most brackets `open` has held.
    deepest: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a [u8], at: usize) -> Scanner<'a> {
        Scanner {
            text,
            at,
            open: Vec::new(),
            deepest: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    /// Skips JSON whitespace.
    fn whitespace(&mut self) {
        self.at = whitespace_end(self.text, self.at);
    }

    /// Skips whitespace, then takes `byte`.
    fn expect(&mut self, byte: u8) -> Option<()> {
        self.whitespace();
        (self.next()? == byte).then_some(())
    }

    /// Whether `word` (`null`, `true` or `false`) comes next; takes it if so.
    fn literal(&mut self, word: &[u8]) -> bool {
        let found = self.text[self.at..].starts_with(word);
        if found {
            self.at += word.len();
        }
        found
    }

    /// The positional arguments: a list's elements' spans, or none for
    /// `null`.
    fn args(&mut self) -> Option<Vec<Range<usize>>> {
        self.whitespace();
        if self.literal(b"null") {
            return Some(Vec::new());
        }
        self.expect(b'[')?;
        let mut spans = Vec::new();
        self.whitespace();
        if self.peek()? == b']' {
            self.at += 1;
            return Some(spans);
        }
        loop {
            spans.push(self.value()?);
            self.whitespace();
            match self.next()? {
                b',' => {}
                b']' => return Some(spans),
                _ => return None,
            }
        }
    }

    /// The keyword arguments: an object's names and value spans, or none
    /// for `null`.
    fn kwargs(&mut self, text: &str) -> Option<Vec<(String, Range<usize>)>> {
        self.whitespace();
        if self.literal(b"null") {
            return Some(Vec::new());
        }
        self.expect(b'{')?;
        let mut kwargs: Vec<(String, Range<usize>)> = Vec::new();
        // Where each name is in `kwargs`: a body may hold a million names.
        let mut places: HashMap<String, usize> = HashMap::new();
        self.whitespace();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(kwargs);
        }
        loop {
            self.whitespace();
            let name = self.string()?;
            let name = unescape(&text[name])?;
            self.expect(b':')?;
            let span = self.value()?;
            match places.get(&name) {
                Some(&at) => kwargs[at].1 = span,
                None => {
                    places.insert(name.clone(), kwargs.len());
                    kwargs.push((name, span));
                }
            }
            self.whitespace();
            match self.next()? {
                b',' => {}
                b'}' => return Some(kwargs),
                _ => return None,
            }
        }
    }

    /// Skips one value (after whitespace) and returns its span.
    fn value(&mut self) -> Option<Range<usize>> {
        self.whitespace();
        let start = self.at;
        self.open.clear();
        loop {
            self.whitespace();
            match self.peek()? {
                b'[' | b'{' => {
                    let closer = if self.next()? == b'[' { b']' } else { b'}' };
                    self.whitespace();
                    if self.peek()? == closer {
                        self.at += 1;
                        self.deepest = self.deepest.max(self.open.len() + 1);
                    } else {
                        self.open.push(closer);
                        self.deepest = self.deepest.max(self.open.len());
                        if closer == b'}' {
                            self.key()?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b'-' | b'0'..=b'9' => self.at = number_end(self.text, self.at)?,
                _ => {
                    if !(self.literal(b"null") || self.literal(b"true") || self.literal(b"false")) {
                        return None;
                    }
                }
            }
            // A value is complete: close what it completes, or go on to
            // the next element of the innermost array or object.
            loop {
                let Some(&closer) = self.open.last() else {
                    return Some(start..self.at);
                };
                self.whitespace();
                match self.next()? {
                    b',' if closer == b'}' => {
                        self.key()?;
                        break;
                    }
                    b',' => {
                        // A list of numbers, the commonest large argument:
                        // its numbers are read here, one after another,
                        // without going round either loop.
                        if !self.numbers()? {
                            break;
                        }
                    }
                    byte if byte == closer => {
                        self.open.pop();
                    }
                    _ => return None,
                }
            }
        }
    }

    /// Just after a list's comma: skips the numbers that follow, each after
    /// a comma, and stops after the last one, before what follows it (the
    /// list's `]`, say, or something invalid, for the caller to judge).
    /// `Some(false)` if the element after the comma is no number (left for
    /// the caller to read), `None` if a number is malformed.
    fn numbers(&mut self) -> Option<bool> {
        let text = self.text;
        let mut at = whitespace_end(text, self.at);
        if !matches!(text.get(at), Some(b'-' | b'0'..=b'9')) {
            return Some(false);
        }
        loop {
            while let Some(step) = integer_and_comma(text, at) {
                at += step;
            }
            at = number_end(text, at)?;
            // Python writes `, ` between a list's items.
            let next = match text.get(at..at + 2) {
                Some(b", ") => whitespace_end(text, at + 2),
                _ => {
                    let comma = whitespace_end(text, at);
                    if text.get(comma) != Some(&b',') {
                        self.at = at;
                        return Some(true);
                    }
                    whitespace_end(text, comma + 1)
                }
            };
            if !matches!(text.get(next), Some(b'-' | b'0'..=b'9')) {
                // A comma and then no number: back to the comma, for the
                // caller to read it and what follows.
                self.at = at;
                return Some(true);
            }
            at = next;
        }
    }

    /// Skips an object's key and its colon.
    fn key(&mut self) -> Option<()> {
        self.whitespace();
        self.string()?;
        self.expect(b':')
    }

    /// Skips a string (the next byte must be its opening quote) and returns
    /// the span of its text between the quotes.
    fn string(&mut self) -> Option<Range<usize>> {
        if self.next()? != b'"' {
            return None;
        }
        let start = self.at;
        loop {
            self.skip_plain();
            match self.next()? {
                b'"' => return Some(start..self.at - 1),
                b'\\' => match self.next()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = self.text.get(self.at..self.at + 4)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        self.at += 4;
                    }
                    _ => return None,
                },
                // A control character, which JSON strings may not hold.
                _ => return None,
            }
        }
    }

    /// Skips a string's bytes up to its next quote, backslash or control
    /// character: memchr finds the quote or backslash, then one pass with
    /// no early exit (which the compiler turns into vector instructions)
    /// checks the bytes before it for a control character.
    fn skip_plain(&mut self) {
        let rest = &self.text[self.at..];
        let stop = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
        let plain = &rest[..stop];
        let has_control = plain.iter().fold(false, |any, &byte| any | (byte < 0x20));
        self.at += match has_control {
            false => stop,
            true => plain.iter().position(|&byte| byte < 0x20).unwrap_or(stop),
        };
    }
}

/// Where the JSON whitespace from `at` ends. (This and the number
/// functions are inlined: they run for every number of a list.)
#[inline(always)]
pub(crate) fn whitespace_end(text: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = text.get(at) {
        at += 1;
    }
    at
}

/// In a list of integers as Python writes it (`123, 456`): the length of
/// the integer of one to eight digits at `at` with the `, ` after it, if
/// another number follows (what the number loop would read, the digits one
/// word at a time); `None` for anything else, which the loop then reads. (A
/// ninth digit is no comma, so a longer integer gets `None`.)
#[inline(always)]
fn integer_and_comma(text: &[u8], at: usize) -> Option<usize> {
    let word = u64::from_le_bytes(text.get(at..at + 8)?.try_into().ok()?);
    // Little-endian: the first non-digit is the lowest marked byte (none:
    // eight digits).
    let digits = (non_digits(word).trailing_zeros() / 8) as usize;
    let leading_zero = word as u8 == b'0' && digits > 1;
    if digits == 0 || leading_zero {
        return None;
    }
    match text.get(at + digits..at + digits + 3)? {
        [b',', b' ', b'-' | b'0'..=b'9'] => Some(digits + 2),
        _ => None,
    }
}

/// A mask with the high nibble set in each byte of `word` that is not an
/// ASCII digit: a digit's high nibble is 3, and adding 6 keeps its low one
/// under 16.
#[inline(always)]
pub(crate) fn non_digits(word: u64) -> u64 {
    let high_nibble_not_3 = (word & 0xF0F0_F0F0_F0F0_F0F0) ^ 0x3030_3030_3030_3030;
    let low_nibble_over_9 = (word & 0x0F0F_0F0F_0F0F_0F0F) + 0x0606_0606_0606_0606;
    (high_nibble_not_3 | low_nibble_over_9) & 0xF0F0_F0F0_F0F0_F0F0
}

/// Where the number at `at` ends: `-`, an integer part without leading
/// zeros, an optional fraction and an optional exponent, each with
/// digits. `None` if there is no such number at `at`.
#[inline(always)]
pub(crate) fn number_end(text: &[u8], mut at: usize) -> Option<usize> {
    if text.get(at) == Some(&b'-') {
        at += 1;
    }
    match text.get(at)? {
        b'0' => at += 1,
        b'1'..=b'9' => at = digits_end(text, at + 1),
        _ => return None,
    }
    if text.get(at) == Some(&b'.') {
        at = some_digits_end(text, at + 1)?;
    }
    if let Some(b'e' | b'E') = text.get(at) {
        at += 1;
        if let Some(b'+' | b'-') = text.get(at) {
            at += 1;
        }
        at = some_digits_end(text, at)?;
    }
    Some(at)
}

/// Where the one or more digits from `at` end; `None` if there are none.
fn some_digits_end(text: &[u8], at: usize) -> Option<usize> {
    let end = digits_end(text, at);
    (end > at).then_some(end)
}

/// Where the run of digits from `at` ends: eight at a time, then one at a
/// time.
#[inline(always)]
fn digits_end(text: &[u8], mut at: usize) -> usize {
    while let Some(chunk) = text.get(at..at + 8) {
        let Ok(bytes) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let not_digit = non_digits(u64::from_le_bytes(bytes));
        if not_digit != 0 {
            // Little-endian: the first non-digit is the lowest such byte.
            return at + not_digit.trailing_zeros() as usize / 8;
        }
        at += 8;
    }
    while text.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    at
}

/// A key's text between its quotes, unescaped; `None` if an escape does
/// not make a string (an unpaired surrogate).
fn unescape(inner: &str) -> Option<String> {
    if !inner.contains('\\') {
        return Some(inner.to_owned());
    }
    serde_json::from_str(&format!("\"{inner}\"")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::de::{self, Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;
    use std::fmt;

    /// What serde_json's own split of the body gives: the reference the
    /// scanner is held to.
    fn serde_split(text: &str) -> Option<BodySpans> {
        let (args, kwargs, embed): (Option<Vec<&RawValue>>, SerdeKwargs<'_>, &RawValue) =
            serde_json::from_str(text).ok()?;
        let span = |raw: &RawValue| {
            let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
            start..start + raw.get().len()
        };
        let mut named: Vec<(String, Range<usize>)> = Vec::new();
        for (name, raw) in kwargs.0 {
            match named.iter_mut().find(|(known, _)| *known == name) {
                Some((_, value)) => *value = span(raw),
                None => named.push((name, span(raw))),
            }
        }
        Some(BodySpans {
            args: args.unwrap_or_default().into_iter().map(span).collect(),
            kwargs: named,
            embed: span(embed),
        })
    }

    struct SerdeKwargs<'a>(Vec<(String, &'a RawValue)>);

    impl<'de: 'a, 'a> de::Deserialize<'de> for SerdeKwargs<'a> {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Each<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for Each<'a> {
                type Value = SerdeKwargs<'a>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an object or null")
                }
                fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                    Ok(SerdeKwargs(Vec::new()))
                }
                fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                    let mut all = Vec::new();
                    while let Some(name) = map.next_key::<String>()? {
                        all.push((name, map.next_value::<&'de RawValue>()?));
                    }
                    Ok(SerdeKwargs(all))
                }
            }
            deserializer.deserialize_any(Each(std::marker::PhantomData))
        }
    }

    fn agrees(text: &str) {
        assert_eq!(scan_body(text), serde_split(text), "{text:?}");
    }

    #[test]
    fn finds_each_argument_as_serde_json_does() {
        let body = scan_body(
            r#" [ [1, "two" , {"x": [3, []]}], {"k": 1.50e+3, "j": null}, {"chord": null} ] "#,
        )
        .unwrap();
        assert_eq!(body.args.len(), 3);
        assert_eq!(body.kwargs[0].0, "k");
        for text in [
            r#"[[1, "two", {"x": [3]}], {"k": 1.50, "j": null}, null]"#,
            "[null, null, {}]",
            r#"[[], {"a": 1, "b": 2, "a": 3}, null]"#,
            r#"[["a\"b\\c\/\b\f\n\r\t\u00e9\ud83d\ude00"], {"\u0061": -0.5E-2}, [true, false]]"#,
            "[[-0, 0.0, 1e5, 12345678901234567890123], {}, null]\n",
            "[[[[[]]], {\"\":{}}], {}, {\"x\": [{}, []]}]",
            // Lists of numbers inside an argument, which the scanner reads
            // in a loop of their own (the args list itself is read
            // element by element).
            "[[[1, 2, 3]], {\"ids\": [10, 20, 30]}, null]",
            "[[[1 , 2 ,3,4,\n5,\t-6, 7.5, 8e2,  9]], {}, null]",
            r#"[[[1, 2, "x", 3, [4, 5], 6]], {}, null]"#,
            "[[[1, 2], [3, 4]], {}, [5, 6]]",
        ] {
            agrees(text);
        }
    }

    #[test]
    fn python_spaced_integer_lists_split_as_serde_json_splits_them() {
        // Lists read a word at a time while a number of up to eight digits
        // and its `, ` come before another number: every length around
        // the word, leading zeros, and what may come after the comma.
        for length in 1..=10 {
            let number: String = "1234567890".chars().take(length).collect();
            let zeroed = format!("0{}", &number[1..]);
            for after in [
                "", " ", "\n", "-", "]", "x", "\"x\"", "0", "01", "1.5", "-0",
            ] {
                for first in [&number, &zeroed] {
                    agrees(&format!("[[[{first}, {number}, {after}]], {{}}, null]"));
                    agrees(&format!("[[[{first}, {after}, {number}]], {{}}, null]"));
                    agrees(&format!("[[[-{first}, {first}, {after}]], {{}}, null]"));
                }
            }
            for separator in [",", ",,", ",x", ", ,", ",\t", ",  ", " ,"] {
                agrees(&format!(
                    "[[[0, {number}{separator}{number}, 1]], {{}}, null]"
                ));
            }
        }
    }

    #[test]
    fn digit_runs_end_where_serde_json_ends_them() {
        // Runs across the eight-byte steps, ended by each byte next to the
        // digits in ASCII and by what may follow a number.
        for length in 1..=20 {
            let digits: String = "9876543210".chars().cycle().take(length).collect();
            for after in ["", "/", ":", "0", ".5", "e7", "E+2", "a", " ", "\u{e9}"] {
                let body = format!("[[1{digits}{after}], {{}}, null]");
                agrees(&body);
                let body = format!("[[-{digits}{after}, 2], {{\"n\": {digits}}}, {digits}]");
                agrees(&body);
            }
        }
    }

    #[test]
    fn strings_end_where_serde_json_ends_them() {
        // A quote, an escape or a control character at every place of the
        // eight-byte steps, among ASCII and multi-byte characters.
        for filler in ["abcdefghijklmnopqrs", "é€😀aé€😀aé€"] {
            for at in 0..=filler.chars().count() {
                let (head, tail): (String, String) = (
                    filler.chars().take(at).collect(),
                    filler.chars().skip(at).collect(),
                );
                for special in ["\\\"", "\\\\", "\\u00e9", "\\n", "\"", "\u{1f}", "\\q"] {
                    agrees(&format!("[[\"{head}{special}{tail}\"], {{}}, null]"));
                }
            }
        }
    }

    #[test]
    fn refuses_what_serde_json_refuses() {
        for text in [
            r#"{"args": []}"#,
            "[[1], {}]",
            "[[1], {}, null, 4]",
            "[1, {}, null]",
            "[[1], [2], null]",
            "[[1], 2, null]",
            "[[NaN], {}, null]",
            "[[1], {}, null",
            "[[1,], {}, null]",
            "[[01], {}, null]",
            "[[1.], {}, null]",
            "[[1e], {}, null]",
            "[[-], {}, null]",
            "[[+1], {}, null]",
            "[[\"a\u{1}\"], {}, null]",
            r#"[["\x"], {}, null]"#,
            r#"[["\u00g0"], {}, null]"#,
            r#"[[{"a" 1}], {}, null]"#,
            r#"[[{1: 1}], {}, null]"#,
            "[[[1}], {}, null]",
            "[[1 2], {}, null]",
            "[[tru], {}, null]",
            "[[1], {}, null] x",
            "[[1], {\"a\":}, null]",
            "[[[1, 2, ]], {}, null]",
            "[[[1, 2 3]], {}, null]",
            "[[[1, 2 :3]], {}, null]",
            "[[[1,, 2]], {}, null]",
            "[[[1, 02]], {}, null]",
            "[[[1, 2}], {}, null]",
            "[[[1, 2, -]], {}, null]",
            "[[[1, 2, 3e]], {}, null]",
        ] {
            assert_eq!(scan_body(text), None, "{text:?}");
            assert_eq!(serde_split(text), None, "{text:?}");
        }
    }

    /// Bodies with the bytes that matter to JSON's grammar changed at
    /// random: the scanner accepts exactly what serde_json accepts, and
    /// finds the same slices.
    fn mutated_body() -> impl Strategy<Value = String> {
        let bodies = [
            r#"[[1, -2.5e3, "a\"b\\ c\u00e9", {"x": [true, false, null], "y": {}}, []], {"k": "v", "k2": [0]}, {"callbacks": null}]"#,
            // Lists of numbers, Python-spaced and not.
            r#"[[10, 2, 300, -4, 5.5, 6], {"ids": [1,2 ,3, 40]}, [7, 8]]"#,
        ];
        let pieces = prop::sample::select(vec![
            "[", "]", "{", "}", "\"", ",", ":", "\\", " ", "0", "1", "-", "+", ".", "e", "E", "u",
            "n", "t", "\u{1}", "a",
        ]);
        let edits = prop::collection::vec((any::<prop::sample::Index>(), 0..3usize, pieces), 1..4);
        (prop::sample::select(bodies.to_vec()), edits).prop_map(move |(body, edits)| {
            let mut text = body.as_bytes().to_vec();
            for (at, kind, piece) in edits {
                let at = at.index(text.len());
                match kind {
                    0 => {
                        text.remove(at);
                    }
                    1 => text.splice(at..at, piece.bytes()).for_each(drop),
                    _ => text.splice(at..=at, piece.bytes()).for_each(drop),
                }
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn agrees_with_serde_json_on_mutated_bodies(text in mutated_body()) {
            prop_assert_eq!(scan_body(&text), serde_split(&text), "{:?}", text);
        }
    }
}
