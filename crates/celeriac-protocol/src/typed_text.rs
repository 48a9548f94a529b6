//! A typed value read straight from JSON text, with exactly the result
//! `serde_json::from_str` gives, at less cost for the large arguments tasks
//! carry.
//!
//! serde_json reads a number or a string one byte at a time, through a few
//! layers of calls per byte, so a list of integers costs it about 280
//! instructions per element. This reader takes the commonest shapes
//! itself: integers that fit in 64 bits, strings without escapes, `null`,
//! `true` and `false`, and the arrays and objects around them. Whatever
//! else it meets (a float, an escaped string, a number read as a JSON value,
//! an enum, bytes) it hands, that value alone, to serde_json. For each of
//! the shapes it takes, it calls the visitor the way serde_json's
//! deserializer does (which `visit_*` method, borrowed or not). Anything
//! it does not understand, including every error, makes it give up: the
//! whole text is then read by serde_json, so a success is serde_json's
//! value and a failure is serde_json's error, message included.
//!
//! The tests hold it to that on hand-picked texts and on random texts
//! read as 32 target types.

use serde::de::{self, DeserializeOwned, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Error;
use serde_json::de::StrRead;

use std::ops::Range;

use crate::body_scan::{non_digits, number_end, plain_string_end, value_end, whitespace_end};

/// Deserializes `T` from JSON `text`: the same result as
/// `serde_json::from_str(text)`, faster for integer lists and plain
/// strings.
///
/// ```
/// #[derive(serde::Deserialize, Debug, PartialEq)]
/// struct Batch { name: String, ids: Vec<u64>, weight: f64 }
///
/// let text = r#"{"name": "nightly", "ids": [3, 1, 2], "weight": 0.5}"#;
/// let batch: Batch = celeriac_protocol::json::from_str(text).unwrap();
/// assert_eq!(batch, serde_json::from_str::<Batch>(text).unwrap());
/// ```
pub fn from_str<T: DeserializeOwned>(text: &str) -> serde_json::Result<T> {
    let mut reader = Reader {
        text,
        at: 0,
        depth: 0,
    };
    match T::deserialize(&mut reader) {
        Ok(value) if whitespace_end(text.as_bytes(), reader.at) == text.len() => Ok(value),
        _ => serde_json::from_str(text),
    }
}

/// How deep serde_json lets arrays and objects nest (one level more is an
/// error): this reader gives up rather than nest deeper.
const DEPTH_LIMIT: usize = 127;

/// What makes the reader give up: never seen by a caller, who gets
/// serde_json's own result instead.
fn give_up() -> Error {
    de::Error::custom("left to serde_json")
}

/// A position in the text, and how many arrays and objects it is inside.
struct Reader<'de> {
    text: &'de str,
    at: usize,
    depth: usize,
}

/// An integer token that fits the type serde_json would read it as.
enum Integer {
    /// Non-negative: serde_json calls `visit_u64`.
    Unsigned(u64),
    /// Negative: serde_json calls `visit_i64`.
    Signed(i64),
}

impl<'de> Reader<'de> {
    /// The next byte after whitespace (which is skipped).
    fn peek(&mut self) -> Option<u8> {
        self.at = whitespace_end(self.text.as_bytes(), self.at);
        self.text.as_bytes().get(self.at).copied()
    }

    /// Takes `word` if it comes next (after whitespace).
    fn literal(&mut self, word: &str) -> bool {
        self.peek();
        let found = self.text[self.at..].starts_with(word);
        if found {
            self.at += word.len();
        }
        found
    }

    /// The integer at the current position (after whitespace), if it is
    /// one serde_json reads as a `u64` or an `i64` and has no fraction or
    /// exponent; taken if so.
    #[inline(always)]
    fn integer(&mut self) -> Option<Integer> {
        let text = self.text.as_bytes();
        let start = whitespace_end(text, self.at);
        let negative = text.get(start) == Some(&b'-');
        let (magnitude, end) = digits_value(text, start + usize::from(negative))?;
        // A fraction or exponent makes it a float: serde_json's to read.
        if matches!(text.get(end), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        let integer = if !negative {
            Integer::Unsigned(magnitude)
        } else if magnitude == 0 || magnitude > 1 << 63 {
            // `-0` is a float to serde_json, and below `i64::MIN` too.
            return None;
        } else {
            Integer::Signed((magnitude as i64).wrapping_neg())
        };
        self.at = end;
        Some(integer)
    }

    /// The string at the current position (its opening quote next), if
    /// it has no escape: taken, and its text borrowed.
    fn plain_string(&mut self) -> Option<&'de str> {
        let text: &'de str = self.text;
        let end = plain_string_end(text.as_bytes(), self.at)?;
        let inner = &text[self.at + 1..end - 1];
        self.at = end;
        Some(inner)
    }

    /// Hands the next value, alone, to serde_json's `read` (the same
    /// deserializer method this reader was asked for).
    fn delegate<V, F>(&mut self, visitor: V, read: F) -> Result<V::Value, Error>
    where
        V: Visitor<'de>,
        F: FnOnce(&mut serde_json::Deserializer<StrRead<'de>>, V) -> Result<V::Value, Error>,
    {
        let start = whitespace_end(self.text.as_bytes(), self.at);
        let (end, depth) = value_end(self.text.as_bytes(), start).ok_or_else(give_up)?;
        self.hand_over(start..end, depth, visitor, read)
    }

    /// [`delegate`](Self::delegate) for a value that must be a number
    /// (found by the number grammar alone, which costs less).
    fn delegate_number<V, F>(&mut self, visitor: V, read: F) -> Result<V::Value, Error>
    where
        V: Visitor<'de>,
        F: FnOnce(&mut serde_json::Deserializer<StrRead<'de>>, V) -> Result<V::Value, Error>,
    {
        let start = whitespace_end(self.text.as_bytes(), self.at);
        let end = number_end(self.text.as_bytes(), start).ok_or_else(give_up)?;
        self.hand_over(start..end, 0, visitor, read)
    }

    /// Has serde_json's `read` read the value at `span`, `depth` arrays
    /// and objects deep, and takes it.
    fn hand_over<V, F>(
        &mut self,
        span: Range<usize>,
        depth: usize,
        visitor: V,
        read: F,
    ) -> Result<V::Value, Error>
    where
        V: Visitor<'de>,
        F: FnOnce(&mut serde_json::Deserializer<StrRead<'de>>, V) -> Result<V::Value, Error>,
    {
        // serde_json alone would count this value's nesting from zero.
        if self.depth + depth > DEPTH_LIMIT {
            return Err(give_up());
        }
        let text: &'de str = self.text;
        let end = span.end;
        let mut inner = serde_json::Deserializer::from_str(&text[span]);
        let value = read(&mut inner, visitor)?;
        inner.end()?;
        self.at = end;
        Ok(value)
    }

    /// An integer, as serde_json's number methods read it; anything else
    /// goes to serde_json's `read`.
    fn number<V, F>(&mut self, visitor: V, read: F) -> Result<V::Value, Error>
    where
        V: Visitor<'de>,
        F: FnOnce(&mut serde_json::Deserializer<StrRead<'de>>, V) -> Result<V::Value, Error>,
    {
        match self.integer() {
            Some(Integer::Unsigned(n)) => visitor.visit_u64(n),
            Some(Integer::Signed(n)) => visitor.visit_i64(n),
            None => self.delegate(visitor, read),
        }
    }

    /// An array read by `visitor`, the next byte being its `[`.
    fn array<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Error> {
        self.enter()?;
        let value = visitor.visit_seq(Elements {
            reader: self,
            first: true,
        })?;
        self.leave(b']')?;
        Ok(value)
    }

    /// An object read by `visitor`, the next byte being its `{`.
    fn object<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Error> {
        self.enter()?;
        let value = visitor.visit_map(Entries {
            reader: self,
            first: true,
        })?;
        self.leave(b'}')?;
        Ok(value)
    }

    /// Takes an opening bracket, one level deeper.
    fn enter(&mut self) -> Result<(), Error> {
        if self.depth == DEPTH_LIMIT {
            return Err(give_up());
        }
        self.depth += 1;
        self.at += 1;
        Ok(())
    }

    /// Takes the closing bracket (what the visitor left unread is an error
    /// to serde_json too).
    fn leave(&mut self, closer: u8) -> Result<(), Error> {
        if self.peek() != Some(closer) {
            return Err(give_up());
        }
        self.depth -= 1;
        self.at += 1;
        Ok(())
    }
}

/// The most digits read here: any 19 fit in a `u64`.
const MOST_DIGITS: usize = 19;

/// The value of the run of decimal digits at `text[at..]` and where it
/// ends, eight digits at a time; `None` if there is none, if it has more
/// than [`MOST_DIGITS`], or if it starts with a zero followed by another
/// digit (not a JSON number).
#[inline(always)]
fn digits_value(text: &[u8], at: usize) -> Option<(u64, usize)> {
    const POWERS: [u64; 9] = [
        1,
        10,
        100,
        1_000,
        10_000,
        100_000,
        1_000_000,
        10_000_000,
        100_000_000,
    ];
    let mut value = 0u64;
    let mut end = at;
    while let Some(chunk) = text.get(end..end + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        // Little-endian: the first non-digit is the lowest marked byte.
        let count = (non_digits(word).trailing_zeros() / 8) as usize;
        if end - at + count > MOST_DIGITS {
            return None;
        }
        if count > 0 {
            value = value * POWERS[count] + leading_digits_value(word, count);
        }
        end += count;
        if count < 8 {
            return number_start_ok(text, at, end).then_some((value, end));
        }
    }
    // Fewer than eight bytes left: one at a time.
    while let Some(digit) = text.get(end).filter(|byte| byte.is_ascii_digit()) {
        if end - at == MOST_DIGITS {
            return None;
        }
        value = value * 10 + u64::from(digit - b'0');
        end += 1;
    }
    number_start_ok(text, at, end).then_some((value, end))
}

/// Whether `text[at..end]` is a JSON integer's digits: some, and no
/// leading zero before another digit.
#[inline(always)]
fn number_start_ok(text: &[u8], at: usize, end: usize) -> bool {
    end > at && (text[at] != b'0' || end == at + 1)
}

/// The value of the first `count` (1 to 8) bytes of `word`, all ASCII
/// digits, the first the most significant: they are moved to the top of
/// an eight-digit number with leading zeros, then combined in pairs, fours
/// and the eight at once.
#[inline(always)]
fn leading_digits_value(word: u64, count: usize) -> u64 {
    const ZEROS: u64 = u64::from_le_bytes([b'0'; 8]);
    let padded = if count == 8 {
        word
    } else {
        (word << (8 * (8 - count))) | (ZEROS >> (8 * count))
    };
    let digits = padded - ZEROS;
    // Each step's products carry into bytes that the next step masks off
    // or shifts out: they wrap on purpose.
    let pairs = digits.wrapping_mul(10).wrapping_add(digits >> 8);
    let low = pairs & 0x0000_00FF_0000_00FF;
    let high = (pairs >> 16) & 0x0000_00FF_0000_00FF;
    low.wrapping_mul(100 + (1_000_000 << 32))
        .wrapping_add(high.wrapping_mul(1 + (10_000 << 32)))
        >> 32
}

/// serde_json's number methods: an integer is read here.
macro_rules! number_methods {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.number(visitor, |inner, visitor| inner.$method(visitor))
        }
    )*};
}

/// Methods this reader leaves to serde_json, value by value.
macro_rules! delegated_methods {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.delegate(visitor, |inner, visitor| inner.$method(visitor))
        }
    )*};
}

/// serde_json's string methods: a plain string is borrowed here.
macro_rules! string_methods {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            if self.peek() == Some(b'"')
                && let Some(text) = self.plain_string()
            {
                return visitor.visit_borrowed_str(text);
            }
            self.delegate(visitor, |inner, visitor| inner.$method(visitor))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Error;

    number_methods! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_f32 deserialize_f64
    }

    delegated_methods! {
        deserialize_i128 deserialize_u128 deserialize_bytes deserialize_byte_buf
    }

    string_methods! {
        deserialize_char deserialize_str deserialize_string deserialize_identifier
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek() {
            Some(b'[') => self.array(visitor),
            Some(b'{') => self.object(visitor),
            Some(b'"') => match self.plain_string() {
                Some(text) => visitor.visit_borrowed_str(text),
                None => self.delegate(visitor, |inner, visitor| inner.deserialize_any(visitor)),
            },
            Some(b'n') if self.literal("null") => visitor.visit_unit(),
            Some(b't') if self.literal("true") => visitor.visit_bool(true),
            Some(b'f') if self.literal("false") => visitor.visit_bool(false),
            // A number read as "any" keeps its text (serde_json's
            // `arbitrary_precision`): serde_json's to read.
            Some(b'-' | b'0'..=b'9') => {
                self.delegate_number(visitor, |inner, visitor| inner.deserialize_any(visitor))
            }
            _ => self.delegate(visitor, |inner, visitor| inner.deserialize_any(visitor)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.literal("true") {
            visitor.visit_bool(true)
        } else if self.literal("false") {
            visitor.visit_bool(false)
        } else {
            self.delegate(visitor, |inner, visitor| inner.deserialize_bool(visitor))
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.literal("null") {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.literal("null") {
            visitor.visit_unit()
        } else {
            self.delegate(visitor, |inner, visitor| inner.deserialize_unit(visitor))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        // serde_json reads its `RawValue` through a newtype of a private
        // name; every other newtype is its content.
        if name.starts_with("$serde_json::") {
            return self.delegate(visitor, |inner, visitor| {
                de::Deserializer::deserialize_newtype_struct(inner, name, visitor)
            });
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek() {
            Some(b'[') => self.array(visitor),
            _ => self.delegate(visitor, |inner, visitor| inner.deserialize_seq(visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.peek() {
            Some(b'{') => self.object(visitor),
            _ => self.delegate(visitor, |inner, visitor| inner.deserialize_map(visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // serde_json reads a struct from an array or an object.
        match self.peek() {
            Some(b'[') => self.array(visitor),
            Some(b'{') => self.object(visitor),
            _ => self.delegate(visitor, |inner, visitor| {
                de::Deserializer::deserialize_struct(inner, name, fields, visitor)
            }),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.delegate(visitor, |inner, visitor| {
            de::Deserializer::deserialize_enum(inner, name, variants, visitor)
        })
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let start = whitespace_end(self.text.as_bytes(), self.at);
        let (end, _) = value_end(self.text.as_bytes(), start).ok_or_else(give_up)?;
        self.at = end;
        visitor.visit_unit()
    }
}

/// An array's elements, as serde_json walks them.
struct Elements<'a, 'de> {
    reader: &'a mut Reader<'de>,
    first: bool,
}

impl<'de> SeqAccess<'de> for Elements<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        match self.reader.peek() {
            Some(b']') => return Ok(None),
            Some(b',') if !self.first => {
                self.reader.at += 1;
                if self.reader.peek() == Some(b']') {
                    return Err(give_up());
                }
            }
            _ if self.first => {}
            _ => return Err(give_up()),
        }
        self.first = false;
        seed.deserialize(&mut *self.reader).map(Some)
    }
}

/// An object's entries, as serde_json walks them.
struct Entries<'a, 'de> {
    reader: &'a mut Reader<'de>,
    first: bool,
}

impl<'de> MapAccess<'de> for Entries<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        match self.reader.peek() {
            Some(b'}') => return Ok(None),
            Some(b',') if !self.first => self.reader.at += 1,
            _ if self.first => {}
            _ => return Err(give_up()),
        }
        self.first = false;
        if self.reader.peek() != Some(b'"') {
            return Err(give_up());
        }
        seed.deserialize(Key(&mut *self.reader)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        if self.reader.peek() != Some(b':') {
            return Err(give_up());
        }
        self.reader.at += 1;
        seed.deserialize(&mut *self.reader)
    }
}

/// Key methods this reader leaves to serde_json (by giving up).
macro_rules! key_methods_giving_up {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
            Err(give_up())
        }
    )*};
}

/// An object's key, its opening quote next. Read as a string, as serde_json
/// reads a key for any method but its numeric, boolean, option, newtype,
/// enum and bytes ones; for those (and for an escaped key) this reader
/// gives up.
struct Key<'a, 'de>(&'a mut Reader<'de>);

impl<'de> de::Deserializer<'de> for Key<'_, 'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0.plain_string() {
            Some(text) => visitor.visit_borrowed_str(text),
            None => Err(give_up()),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _visitor: V,
    ) -> Result<V::Value, Error> {
        Err(give_up())
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Error> {
        Err(give_up())
    }

    key_methods_giving_up! {
        deserialize_bool deserialize_option deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
        deserialize_f32 deserialize_f64 deserialize_bytes deserialize_byte_buf
    }

    serde::forward_to_deserialize_any! {
        char str string unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    use proptest::prelude::*;
    use serde::Deserialize;
    use serde_json::Value;
    use serde_json::value::RawValue;

    use super::*;

    /// What this reader makes of `text` on its own, without serde_json
    /// taking over: `None` where it gives up.
    fn alone<T: DeserializeOwned>(text: &str) -> Option<T> {
        let mut reader = Reader {
            text,
            at: 0,
            depth: 0,
        };
        let value = T::deserialize(&mut reader).ok()?;
        (whitespace_end(text.as_bytes(), reader.at) == text.len()).then_some(value)
    }

    /// `from_str` agrees with serde_json on `text` read as `T`, and so
    /// does the reader alone wherever it does not give up. Returns whether
    /// it read the text alone.
    fn agrees<T: DeserializeOwned + PartialEq + Debug>(text: &str) -> bool {
        let theirs = serde_json::from_str::<T>(text);
        match (from_str::<T>(text), &theirs) {
            (Ok(ours), Ok(theirs)) => assert_eq!(&ours, theirs, "{text:?}"),
            (Err(ours), Err(theirs)) => assert_eq!(ours.to_string(), theirs.to_string()),
            (ours, theirs) => panic!("{text:?}: {ours:?} against serde_json's {theirs:?}"),
        }
        match alone::<T>(text) {
            Some(ours) => {
                assert_eq!(Some(&ours), theirs.as_ref().ok(), "alone, {text:?}");
                true
            }
            None => false,
        }
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Document {
        text: String,
        ids: Vec<u64>,
        #[serde(default)]
        score: Option<f64>,
        #[serde(default)]
        kind: Option<Kind>,
        #[serde(default)]
        nested: Option<Box<Document>>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        a: i32,
        b: Option<String>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    enum Kind {
        Plain,
        Sized(u32),
        Named { x: i64 },
        Payload(Value),
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(untagged)]
    enum Loose {
        Number(i64),
        Text(String),
        List(Vec<Value>),
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Flattened {
        id: u64,
        #[serde(flatten)]
        rest: BTreeMap<String, Value>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Wrapper(u16);

    #[derive(Debug, PartialEq, Deserialize)]
    struct Marker;

    /// A `Box<RawValue>` compared by its text.
    #[derive(Debug, Deserialize)]
    struct Raw(Box<RawValue>);

    impl PartialEq for Raw {
        fn eq(&self, other: &Raw) -> bool {
            self.0.get() == other.0.get()
        }
    }

    /// Every target type the tests read texts as.
    fn agrees_as_every_type(text: &str) {
        agrees::<Value>(text);
        agrees::<Vec<u64>>(text);
        agrees::<Vec<i64>>(text);
        agrees::<Vec<u8>>(text);
        agrees::<Vec<i32>>(text);
        agrees::<Vec<f64>>(text);
        agrees::<Vec<f32>>(text);
        agrees::<Vec<Option<u32>>>(text);
        agrees::<Vec<String>>(text);
        agrees::<Vec<char>>(text);
        agrees::<Vec<bool>>(text);
        agrees::<Vec<()>>(text);
        agrees::<Vec<Value>>(text);
        agrees::<Vec<i128>>(text);
        agrees::<Vec<u128>>(text);
        agrees::<Vec<Kind>>(text);
        agrees::<Vec<Loose>>(text);
        agrees::<Vec<Wrapper>>(text);
        agrees::<Vec<Marker>>(text);
        agrees::<Vec<Raw>>(text);
        agrees::<(String, u64, bool)>(text);
        agrees::<BTreeMap<String, Value>>(text);
        agrees::<BTreeMap<u32, Value>>(text);
        agrees::<BTreeMap<String, Vec<u64>>>(text);
        agrees::<Document>(text);
        agrees::<Strict>(text);
        agrees::<Flattened>(text);
        agrees::<Option<Document>>(text);
        agrees::<Raw>(text);
        agrees::<String>(text);
        agrees::<u64>(text);
        agrees::<f64>(text);
    }

    #[test]
    fn reads_every_length_of_digits() {
        let mut number = String::new();
        for digit in "1234567890987654321".chars() {
            number.push(digit);
            let text = format!("[{number}, -{number}, {number} ]");
            assert!(agrees::<Vec<i128>>(&text) || number.len() > 18, "{text}");
            let value: u64 = number.parse().unwrap();
            for tail in ["", "]", ", 1234567890"] {
                let text = format!("{number}{tail}");
                assert_eq!(
                    digits_value(text.as_bytes(), 0),
                    Some((value, number.len())),
                    "{text}"
                );
            }
        }
        assert_eq!(digits_value(b"99999999999999999990", 0), None);
        assert_eq!(
            digits_value(b"9999999999999999999", 0),
            Some((9_999_999_999_999_999_999, 19))
        );
        assert_eq!(digits_value(b"0", 0), Some((0, 1)));
        assert_eq!(digits_value(b"00", 0), None);
        assert_eq!(digits_value(b"0123456789", 0), None);
        assert_eq!(digits_value(b"x", 0), None);
    }

    #[test]
    fn reads_the_common_shapes_alone() {
        let document = r#"{"text": "The quick brown fox", "ids": [1000000, 1000001, 0, 18446744073709551615]}"#;
        assert!(agrees::<Document>(document));
        assert!(agrees::<Vec<i64>>(
            "[-9223372036854775808, -1, 0, 9223372036854775807]"
        ));
        assert!(agrees::<Vec<f64>>("[1, -2, 3]"));
        assert!(agrees::<Vec<Option<String>>>(r#"["a", null, "b"]"#));
        assert!(agrees::<Strict>(r#"{"a": -5, "b": null}"#));
        assert!(agrees::<Strict>(r#"[7, "by position"]"#));
        assert!(agrees::<Vec<bool>>("[true,false , true]"));
        assert!(agrees::<BTreeMap<String, Vec<u64>>>(
            r#"{"x": [1], "y": []}"#
        ));
        assert!(agrees::<Value>(r#"{"a": [true, null, "x", {}], "b": []}"#));
        assert!(agrees::<Wrapper>("7"));
        assert!(agrees::<Marker>("null"));
    }

    #[test]
    fn leaves_to_serde_json_what_it_does_not_read_alone() {
        // A float, an escaped string, a number as a JSON value, an integer
        // past 64 bits, `-0`, an escaped key: each read by serde_json, the
        // value alone or the whole text.
        assert!(agrees::<Vec<f64>>("[1.5, 2, -0.0, 1e300]"));
        assert!(agrees::<Vec<String>>(r#"["a\"b", "caf\u00e9"]"#));
        assert!(agrees::<Value>("[1, 2.50, 1e3]"));
        assert!(!agrees::<Vec<u64>>("[18446744073709551616]"));
        assert!(!agrees::<Vec<i64>>("[-0]"));
        assert!(!agrees::<Strict>(r#"{"\u0061": 1}"#));
        assert!(agrees::<Vec<Kind>>(
            r#"["Plain", {"Sized": 3}, {"Named": {"x": -1}}]"#
        ));
        assert!(agrees::<Raw>(r#"{"kept": [1, 2.50]}"#));
    }

    #[test]
    fn gives_serde_json_s_errors() {
        for text in [
            "[1, 2,]",
            "[1 2]",
            "[01]",
            "[1] x",
            r#"{"a": 1,}"#,
            r#"{,"a": 1}"#,
            "[,1]",
            "[1,,2]",
            r#"{"a" 1}"#,
            "[256]",
            "[-1]",
            r#"{"a": 1, "c": 2}"#,
            r#"["a\u0001"]"#,
            "[\"\u{1}\"]",
            "[1e400]",
            r#"{"text": "x", "ids": [1, "2"]}"#,
            r#"{"text": "x", "ids": [1], "ids": [2]}"#,
            "[tru]",
            "",
            "   ",
        ] {
            agrees_as_every_type(text);
        }
    }

    #[test]
    fn nests_as_deep_as_serde_json_and_no_deeper() {
        for depth in [1, 126, 127, 128, 129, 400] {
            let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            agrees::<Value>(&nested);
            agrees::<Vec<Value>>(&nested);
            agrees::<Vec<Vec<Value>>>(&nested);
            agrees::<Raw>(&nested);
            // Handed to serde_json one level down.
            agrees::<Vec<Raw>>(&nested);
            agrees::<Vec<Kind>>(&format!(r#"[{{"Payload": {nested}}}]"#));
            let in_struct = format!(r#"{{"a": 1, "b": null, "extra": {nested}}}"#);
            agrees::<Flattened>(&in_struct);
            agrees::<BTreeMap<String, Value>>(&in_struct);
        }
    }

    /// JSON texts built from the tokens that matter: integers at the edges
    /// of 64 bits, floats, strings plain and escaped (and invalid), the
    /// literals, with whitespace or none between them, in arrays and
    /// objects whose keys are the test types' field names and others.
    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop::sample::select(vec![
            "0",
            "1",
            "-1",
            "7",
            "255",
            "256",
            "65535",
            "65536",
            "1000000",
            "-2147483648",
            "2147483648",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "-0",
            "01",
            "1.5",
            "-0.0",
            "2.50",
            "1e3",
            "1E-2",
            "1e400",
            "\"\"",
            "\"a\"",
            "\"text\"",
            "\"Plain\"",
            "\"Sized\"",
            "\"caf\\u00e9\"",
            "\"a\\\"b\"",
            "\"\\ud800\"",
            "\"\u{1}\"",
            "\"\u{e9}\"",
            "null",
            "true",
            "false",
            "tru",
            "x",
        ])
        .prop_map(str::to_owned);
        let key = prop::sample::select(vec![
            "\"text\"",
            "\"ids\"",
            "\"score\"",
            "\"kind\"",
            "\"nested\"",
            "\"a\"",
            "\"b\"",
            "\"id\"",
            "\"x\"",
            "\"Sized\"",
            "\"Named\"",
            "\"12\"",
            "\"-3\"",
            "\"\\u0061\"",
            "\"$serde_json::private::Number\"",
        ]);
        let space = prop::sample::select(vec!["", " ", "\n  ", "\t"]);
        leaf.prop_recursive(5, 64, 6, move |inner| {
            let array = (
                prop::collection::vec((inner.clone(), space.clone()), 0..6),
                space.clone(),
            )
                .prop_map(|(items, end)| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(item, space)| format!("{space}{item}"))
                        .collect();
                    format!("[{}{end}]", items.join(","))
                });
            let object = prop::collection::vec((key.clone(), inner, space.clone()), 0..5).prop_map(
                |entries| {
                    let entries: Vec<String> = entries
                        .into_iter()
                        .map(|(key, value, space)| format!("{space}{key}{space}:{space}{value}"))
                        .collect();
                    format!("{{{}}}", entries.join(","))
                },
            );
            prop_oneof![array, object]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn agrees_with_serde_json_on_random_texts(text in json_text()) {
            agrees_as_every_type(&text);
        }

        #[test]
        fn reads_any_integer_of_up_to_19_digits(n in 0..10_000_000_000_000_000_000u64, tail in "[ ,\\]x0-9]{0,9}") {
            let text = format!("{n}{tail}");
            let digits = text.bytes().take_while(u8::is_ascii_digit).count();
            let expected = (digits <= MOST_DIGITS && (n != 0 || digits == 1))
                .then(|| (text[..digits].parse::<u64>().unwrap(), digits));
            prop_assert_eq!(digits_value(text.as_bytes(), 0), expected, "{}", text);
        }

        #[test]
        fn agrees_with_serde_json_on_random_documents(
            ids in prop::collection::vec(json_text(), 0..20),
            score in json_text(),
            text in json_text(),
        ) {
            let document = format!(r#"{{"text": {text}, "ids": [{}], "score": {score}}}"#, ids.join(", "));
            agrees::<Document>(&document);
            agrees::<Value>(&document);
            agrees::<Flattened>(&document);
        }
    }
}
