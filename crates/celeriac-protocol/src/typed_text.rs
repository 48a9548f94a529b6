//! A typed value read straight from JSON text, with exactly the result
//! `serde_json::from_str` gives, at less cost for the large arguments tasks
//! carry.
//!
//! serde_json reads an integer one digit at a time, through a few layers
//! of calls per digit, so a list of integers costs it about 280
//! instructions per element. This reader takes the commonest shapes
//! itself: integers that fit in 64 bits, strings without escapes, `null`,
//! `true` and `false`, and the arrays and objects around them. Whatever
//! else it meets (a float, a number beyond 64 bits, an enum, bytes, a
//! `RawValue`) it hands, that value alone, to serde_json, and a string with
//! escapes it has serde_json unescape. For each value it calls the visitor
//! the way serde_json's deserializer does (which `visit_*` method,
//! borrowed or not). Anything it does not understand, and every error
//! (even one a type catches and goes on from), makes it give up: the whole
//! text is then read by serde_json, so a success is serde_json's value and
//! a failure is serde_json's error, message included.
//!
//! The tests hold it to that on hand-picked texts and on random texts
//! read as 35 target types.

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
    let mut reader = Reader::new(text);
    match T::deserialize(&mut reader) {
        Ok(value) if reader.finished() => Ok(value),
        _ => serde_json::from_str(text),
    }
}

/// How deep serde_json lets arrays and objects nest (one level more is an
/// error): this reader gives up rather than nest deeper.
const DEPTH_LIMIT: usize = 127;

/// A position in the text, how many arrays and objects it is inside, and
/// whether anything has failed.
struct Reader<'de> {
    text: &'de str,
    at: usize,
    depth: usize,
    /// Set by every error the reader makes or is handed (by a visitor, by
    /// serde_json). A type may catch an error and go on, but after one
    /// this reader's position need not be serde_json's (serde_json, for
    /// one, still takes an array's closing bracket after an element's
    /// error), so its result is not used.
    failed: bool,
    /// How many numbers it has handed to serde_json one by one.
    numbers_handed_over: usize,
}

/// How many numbers (floats, integers beyond 64 bits) the reader hands to
/// serde_json one by one before it gives the whole text to serde_json
/// instead: each costs it a new serde_json deserializer, about half again
/// serde_json's own cost for the number.
const NUMBERS_HANDED_OVER_LIMIT: usize = 32;

/// One of JSON's three literals.
#[derive(Debug, PartialEq)]
enum Literal {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
}

/// An integer token that fits the type serde_json would read it as.
enum Integer {
    /// Non-negative: serde_json calls `visit_u64`.
    Unsigned(u64),
    /// Negative: serde_json calls `visit_i64`.
    Signed(i64),
}

impl<'de> Reader<'de> {
    /// A reader at the start of `text`.
    fn new(text: &'de str) -> Reader<'de> {
        Reader {
            text,
            at: 0,
            depth: 0,
            failed: false,
            numbers_handed_over: 0,
        }
    }

    /// Whether the text was read to its end (whitespace aside) with no
    /// error on the way.
    fn finished(&self) -> bool {
        !self.failed && whitespace_end(self.text.as_bytes(), self.at) == self.text.len()
    }

    /// What makes the reader give up: never seen by a caller, who gets
    /// serde_json's own result instead.
    fn give_up(&mut self) -> Error {
        self.failed = true;
        de::Error::custom("left to serde_json")
    }

    /// `result`, noting an error.
    fn watch<T>(&mut self, result: Result<T, Error>) -> Result<T, Error> {
        self.failed |= result.is_err();
        result
    }

    /// The next byte after whitespace (which is skipped).
    fn peek(&mut self) -> Option<u8> {
        self.at = whitespace_end(self.text.as_bytes(), self.at);
        self.text.as_bytes().get(self.at).copied()
    }

    /// `null`, `true` or `false`, if one comes next (after whitespace):
    /// taken if so.
    fn literal_value(&mut self) -> Option<Literal> {
        self.peek();
        let rest = &self.text[self.at..];
        let (literal, length) = if rest.starts_with("null") {
            (Literal::Null, 4)
        } else if rest.starts_with("true") {
            (Literal::Bool(true), 4)
        } else if rest.starts_with("false") {
            (Literal::Bool(false), 5)
        } else {
            return None;
        };
        self.at += length;
        Some(literal)
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

    /// The string with escapes whose opening quote comes next, unescaped
    /// by serde_json into a buffer and visited with `visit_str`, as
    /// serde_json visits such a string. (Read as a stream of one value,
    /// which says where it ended.)
    fn escaped_string<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Error> {
        let text: &'de str = self.text;
        let start = whitespace_end(text.as_bytes(), self.at);
        let mut strings = serde_json::Deserializer::from_str(&text[start..]).into_iter::<String>();
        let value = match strings.next() {
            Some(Ok(string)) => {
                self.at = start + strings.byte_offset();
                visitor.visit_str(&string)
            }
            _ => return Err(self.give_up()),
        };
        self.watch(value)
    }

    /// Hands the next value, alone, to serde_json's `read` (the same
    /// deserializer method this reader was asked for).
    fn delegate<V, F>(&mut self, visitor: V, read: F) -> Result<V::Value, Error>
    where
        V: Visitor<'de>,
        F: FnOnce(&mut serde_json::Deserializer<StrRead<'de>>, V) -> Result<V::Value, Error>,
    {
        let start = whitespace_end(self.text.as_bytes(), self.at);
        let (end, depth) = value_end(self.text.as_bytes(), start).ok_or_else(|| self.give_up())?;
        self.hand_over(start..end, depth, visitor, read)
    }

    /// [`delegate`](Self::delegate) for a value that must be a number
    /// (found by the number grammar alone, which costs less).
    fn delegate_number<V, F>(&mut self, visitor: V, read: F) -> Result<V::Value, Error>
    where
        V: Visitor<'de>,
        F: FnOnce(&mut serde_json::Deserializer<StrRead<'de>>, V) -> Result<V::Value, Error>,
    {
        // Many of them (a list of floats, say) cost less read by
        // serde_json alone than handed over one by one.
        self.numbers_handed_over += 1;
        if self.numbers_handed_over > NUMBERS_HANDED_OVER_LIMIT {
            return Err(self.give_up());
        }
        let start = whitespace_end(self.text.as_bytes(), self.at);
        let end = number_end(self.text.as_bytes(), start).ok_or_else(|| self.give_up())?;
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
            return Err(self.give_up());
        }
        let text: &'de str = self.text;
        let end = span.end;
        let mut inner = serde_json::Deserializer::from_str(&text[span]);
        let value = read(&mut inner, visitor).and_then(|value| inner.end().map(|()| value));
        self.at = end;
        self.watch(value)
    }

    /// An integer, as serde_json's number methods read it; anything else
    /// goes to serde_json's `read`.
    fn number<V, F>(&mut self, visitor: V, read: F) -> Result<V::Value, Error>
    where
        V: Visitor<'de>,
        F: FnOnce(&mut serde_json::Deserializer<StrRead<'de>>, V) -> Result<V::Value, Error>,
    {
        let value = match self.integer() {
            Some(Integer::Unsigned(n)) => visitor.visit_u64(n),
            Some(Integer::Signed(n)) => visitor.visit_i64(n),
            None if matches!(self.peek(), Some(b'-' | b'0'..=b'9')) => {
                return self.delegate_number(visitor, read);
            }
            // Not a number: serde_json's error.
            None => return Err(self.give_up()),
        };
        self.watch(value)
    }

    /// An array read by `visitor`, the next byte being its `[`.
    fn array<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Error> {
        self.enter()?;
        let value = visitor.visit_seq(Elements {
            reader: self,
            first: true,
        });
        let value = self.watch(value)?;
        self.leave(b']')?;
        Ok(value)
    }

    /// An object read by `visitor`, the next byte being its `{`.
    fn object<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value, Error> {
        self.enter()?;
        let value = visitor.visit_map(Entries {
            reader: self,
            first: true,
        });
        let value = self.watch(value)?;
        self.leave(b'}')?;
        Ok(value)
    }

    /// Takes an opening bracket, one level deeper.
    fn enter(&mut self) -> Result<(), Error> {
        if self.depth == DEPTH_LIMIT {
            return Err(self.give_up());
        }
        self.depth += 1;
        self.at += 1;
        Ok(())
    }

    /// Takes the closing bracket (what the visitor left unread is an error
    /// to serde_json too).
    fn leave(&mut self, closer: u8) -> Result<(), Error> {
        if self.peek() != Some(closer) {
            return Err(self.give_up());
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

/// serde_json's string methods: a plain string is borrowed here, one with
/// escapes unescaped by serde_json.
macro_rules! string_methods {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            if self.peek() != Some(b'"') {
                // Not a string: serde_json's error.
                return Err(self.give_up());
            }
            let value = match self.plain_string() {
                Some(text) => visitor.visit_borrowed_str(text),
                None => return self.escaped_string(visitor),
            };
            self.watch(value)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = Error;

    number_methods! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_f64
    }

    // serde_json reads an `f32` from a float's text at single precision.
    delegated_methods! {
        deserialize_f32 deserialize_i128 deserialize_u128 deserialize_bytes deserialize_byte_buf
    }

    string_methods! {
        deserialize_char deserialize_str deserialize_string deserialize_identifier
    }

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let any = |inner: &mut serde_json::Deserializer<StrRead<'de>>, visitor: V| {
            inner.deserialize_any(visitor)
        };
        let value = match self.peek() {
            Some(b'[') => return self.array(visitor),
            Some(b'{') => return self.object(visitor),
            Some(b'"') => match self.plain_string() {
                Some(text) => visitor.visit_borrowed_str(text),
                None => return self.escaped_string(visitor),
            },
            // An integer that fits 64 bits is visited as one, as serde_json
            // visits it even with `arbitrary_precision`; any other number
            // keeps its text, which serde_json reads.
            Some(b'-' | b'0'..=b'9') => match self.integer() {
                Some(Integer::Unsigned(n)) => visitor.visit_u64(n),
                Some(Integer::Signed(n)) => visitor.visit_i64(n),
                None => return self.delegate_number(visitor, any),
            },
            Some(b'n' | b't' | b'f') => match self.literal_value() {
                Some(Literal::Null) => visitor.visit_unit(),
                Some(Literal::Bool(b)) => visitor.visit_bool(b),
                None => return Err(self.give_up()),
            },
            _ => return Err(self.give_up()),
        };
        self.watch(value)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let value = match self.literal_value() {
            Some(Literal::Bool(b)) => visitor.visit_bool(b),
            // Not a boolean: serde_json's error.
            _ => return Err(self.give_up()),
        };
        self.watch(value)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let value = if self.peek() == Some(b'n') && self.literal_value() == Some(Literal::Null) {
            visitor.visit_none()
        } else {
            visitor.visit_some(&mut *self)
        };
        self.watch(value)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let value = match self.literal_value() {
            Some(Literal::Null) => visitor.visit_unit(),
            // Not `null`: serde_json's error.
            _ => return Err(self.give_up()),
        };
        self.watch(value)
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
        let value = visitor.visit_newtype_struct(&mut *self);
        self.watch(value)
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
        let (end, _) = value_end(self.text.as_bytes(), start).ok_or_else(|| self.give_up())?;
        self.at = end;
        let value = visitor.visit_unit();
        self.watch(value)
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
                    return Err(self.reader.give_up());
                }
            }
            _ if self.first => {}
            _ => return Err(self.reader.give_up()),
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
            _ => return Err(self.reader.give_up()),
        }
        self.first = false;
        if self.reader.peek() != Some(b'"') {
            return Err(self.reader.give_up());
        }
        seed.deserialize(Key(&mut *self.reader)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        if self.reader.peek() != Some(b':') {
            return Err(self.reader.give_up());
        }
        self.reader.at += 1;
        seed.deserialize(&mut *self.reader)
    }
}

/// Key methods this reader leaves to serde_json (by giving up).
macro_rules! key_methods_giving_up {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
            Err(self.0.give_up())
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
        let value = match self.0.plain_string() {
            Some(text) => visitor.visit_borrowed_str(text),
            None => return Err(self.0.give_up()),
        };
        self.0.watch(value)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _visitor: V,
    ) -> Result<V::Value, Error> {
        Err(self.0.give_up())
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Error> {
        Err(self.0.give_up())
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
        let mut reader = Reader::new(text);
        let value = T::deserialize(&mut reader).ok()?;
        reader.finished().then_some(value)
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

    /// Every visitor call serde_json's deserializer (or the reader) makes
    /// for a value read as "any", in order: told apart are `visit_u64`
    /// from `visit_i64` and a borrowed string from a copied one, which
    /// values alone do not show.
    #[derive(Debug, PartialEq)]
    struct Recorded(Vec<String>);

    impl<'de> Deserialize<'de> for Recorded {
        fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Recorded, D::Error> {
            let mut calls = Vec::new();
            deserializer.deserialize_any(Recorder(&mut calls))?;
            Ok(Recorded(calls))
        }
    }

    /// Writes each visitor call into its list.
    struct Recorder<'a>(&'a mut Vec<String>);

    impl<'de> DeserializeSeed<'de> for Recorder<'_> {
        type Value = ();

        fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Recorder<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("anything")
        }
        fn visit_bool<E>(self, v: bool) -> Result<(), E> {
            self.0.push(format!("bool {v}"));
            Ok(())
        }
        fn visit_i64<E>(self, v: i64) -> Result<(), E> {
            self.0.push(format!("i64 {v}"));
            Ok(())
        }
        fn visit_u64<E>(self, v: u64) -> Result<(), E> {
            self.0.push(format!("u64 {v}"));
            Ok(())
        }
        fn visit_f64<E>(self, v: f64) -> Result<(), E> {
            self.0.push(format!("f64 {v}"));
            Ok(())
        }
        fn visit_str<E>(self, v: &str) -> Result<(), E> {
            self.0.push(format!("str {v:?}"));
            Ok(())
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
            self.0.push(format!("borrowed str {v:?}"));
            Ok(())
        }
        fn visit_string<E>(self, v: String) -> Result<(), E> {
            self.0.push(format!("string {v:?}"));
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            self.0.push("unit".to_owned());
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            self.0.push("[".to_owned());
            while seq.next_element_seed(Recorder(self.0))?.is_some() {}
            self.0.push("]".to_owned());
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            self.0.push("{".to_owned());
            while map.next_key_seed(Recorder(self.0))?.is_some() {
                map.next_value_seed(Recorder(self.0))?;
            }
            self.0.push("}".to_owned());
            Ok(())
        }
    }

    /// A value that catches its own error and reads as `None`, as a
    /// `default_on_error` field does: the reader must not go on from a
    /// place serde_json would not.
    #[derive(Debug, PartialEq)]
    struct Lenient<T>(Option<T>);

    impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
        fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Lenient<T>, D::Error> {
            Ok(Lenient(T::deserialize(deserializer).ok()))
        }
    }

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
        agrees::<Recorded>(text);
        agrees::<Vec<Lenient<Vec<u8>>>>(text);
        agrees::<(Lenient<(u32, u32)>, u32)>(text);
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
            assert!(agrees::<Vec<i64>>(&text), "{text}");
            assert!(agrees::<Vec<Recorded>>(&text), "{text}");
            assert!(
                agrees::<Vec<u64>>(&format!("[{number}, {number}]")),
                "{text}"
            );
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
        // Past 32 numbers handed over one by one, serde_json reads the
        // whole text.
        let floats: Vec<String> = (0..40).map(|i| format!("{i}.5")).collect();
        assert!(!agrees::<Vec<f64>>(&format!("[{}]", floats.join(", "))));
        assert!(agrees::<Vec<f64>>(&format!(
            "[{}]",
            floats[..32].join(", ")
        )));
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
    fn an_error_a_type_catches_hands_the_text_to_serde_json() {
        for text in [
            "[[300, 5]",
            "[[1,]",
            "[[1, 2, 3]",
            "[[1, 2, 3], 4]",
            "[[1, \"x\"], 2]",
        ] {
            agrees::<(Lenient<Vec<u8>>, u8)>(text);
            agrees::<Vec<Lenient<Vec<u32>>>>(text);
            agrees::<(Lenient<(u32, u32)>, u32)>(text);
        }
        // A caught error leaves the reader's result unused even when the
        // text is valid.
        assert!(!agrees::<(Lenient<Vec<u8>>, u8)>("[[300, 5], 5]"));
        assert!(!agrees::<(Lenient<(u32, u32)>, u32)>("[[1, 2, 3], 4]"));
    }

    #[test]
    fn visits_as_serde_json_visits() {
        assert!(agrees::<Recorded>(
            r#"{"a": [1, -2, 18446744073709551615, "x", null, true], "b": {}}"#
        ));
        // Escaped strings, floats and big integers, read by serde_json.
        assert!(agrees::<Recorded>(
            r#"["caf\u00e9", 1.5, -0, 18446744073709551616, -9223372036854775809]"#
        ));
        assert!(agrees::<Vec<String>>(r#"["plain", "caf\u00e9", "a\"b"]"#));
    }

    #[test]
    fn nests_as_deep_as_serde_json_and_no_deeper() {
        let deepest = format!("{}1{}", "[".repeat(127), "]".repeat(127));
        assert!(agrees::<Value>(&deepest));
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
            "12345678",
            "-123456789",
            "12345678901",
            "123456789012345678",
            "1234567890123456789",
            "-1234567890123456789",
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
        fn hands_floats_to_serde_json(
            x in any::<f64>(),
            digits in "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,25})?([eE][+-]?[0-9]{1,3})?",
        ) {
            for text in [format!("[{x:?}, {x:e}]"), format!("[{digits}]")] {
                agrees::<Vec<f64>>(&text);
                agrees::<Vec<f32>>(&text);
                agrees::<Recorded>(&text);
                agrees::<Value>(&text);
            }
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
