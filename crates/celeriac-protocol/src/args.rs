//! A task body's arguments, held as values or as the JSON text they
//! arrived in.
//!
//! Building a `serde_json::Value` tree costs an allocation per string and
//! per number (numbers keep their text, see [`crate::json`]), and for a
//! large argument that is most of a worker's cost per task. So a large
//! received body keeps its text, split into one slice per argument: a
//! typed parameter is deserialized straight from its slice, and the value
//! tree is built only when something reads the arguments as values.
//! Either way [`Args`] reads as a `[Value]` and [`Kwargs`] as a
//! `Map<String, Value>`.

use std::borrow::Cow;
use std::fmt;
use std::ops::{Deref, Range};
use std::sync::OnceLock;

use bytestring::ByteString;

use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use crate::body_scan::scan_body;

/// Positional arguments. Reads as a slice of values; see [`Args::text`]
/// for an argument's JSON text when the body kept it.
///
/// ```
/// use celeriac_protocol::Args;
/// use serde_json::json;
/// let args = Args::from(vec![json!(2), json!("two")]);
/// assert_eq!(args.len(), 2);
/// assert_eq!(args[1], "two");
/// assert_eq!(args.text(0), None);
/// ```
#[derive(Clone, Default)]
pub struct Args {
    values: OnceLock<Vec<Value>>,
    text: Option<ArgTexts>,
}

/// Where each positional argument sits in the body's text.
#[derive(Clone)]
struct ArgTexts {
    body: ByteString,
    spans: Vec<Range<usize>>,
}

impl Args {
    /// How many arguments there are (without reading them as values).
    pub fn len(&self) -> usize {
        match &self.text {
            Some(text) => text.spans.len(),
            None => self.values().len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Argument `index`'s JSON text, if the body was kept as text.
    pub fn text(&self, index: usize) -> Option<&str> {
        let text = self.text.as_ref()?;
        text.spans.get(index).map(|span| &text.body[span.clone()])
    }

    /// Argument `index` as a value: read from its own text alone if the
    /// body was kept as text (the others stay text), else borrowed.
    pub fn value(&self, index: usize) -> Option<Cow<'_, Value>> {
        match &self.text {
            Some(_) => self.text(index).map(|text| Cow::Owned(value_of(text))),
            None => self.values().get(index).map(Cow::Borrowed),
        }
    }

    /// The arguments as values, read from the text on first use.
    pub fn values(&self) -> &[Value] {
        self.values.get_or_init(|| match &self.text {
            Some(text) => text
                .spans
                .iter()
                .map(|span| value_of(&text.body[span.clone()]))
                .collect(),
            None => Vec::new(),
        })
    }

    /// The arguments as owned values.
    pub fn into_values(mut self) -> Vec<Value> {
        self.values();
        self.values.take().unwrap_or_default()
    }
}

impl Deref for Args {
    type Target = [Value];

    fn deref(&self) -> &[Value] {
        self.values()
    }
}

impl From<Vec<Value>> for Args {
    fn from(values: Vec<Value>) -> Args {
        Args {
            values: OnceLock::from(values),
            text: None,
        }
    }
}

impl PartialEq for Args {
    fn eq(&self, other: &Args) -> bool {
        self.values() == other.values()
    }
}

impl PartialEq<Vec<Value>> for Args {
    fn eq(&self, other: &Vec<Value>) -> bool {
        self.values() == other.as_slice()
    }
}

impl Serialize for Args {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.values().serialize(serializer)
    }
}

impl fmt::Debug for Args {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.values()).finish()
    }
}

/// Keyword arguments. Reads as a map of values; see [`Kwargs::text`] for
/// an argument's JSON text when the body kept it.
///
/// ```
/// use celeriac_protocol::Kwargs;
/// use serde_json::json;
/// let kwargs = Kwargs::from(json!({"width": 800}).as_object().unwrap().clone());
/// assert_eq!(kwargs.names().collect::<Vec<_>>(), ["width"]);
/// assert_eq!(kwargs["width"], 800);
/// ```
#[derive(Clone, Default)]
pub struct Kwargs {
    values: OnceLock<Map<String, Value>>,
    text: Option<KwargTexts>,
}

/// Where each keyword argument's value sits in the body's text.
#[derive(Clone)]
struct KwargTexts {
    body: ByteString,
    spans: Vec<(String, Range<usize>)>,
}

impl Kwargs {
    /// How many keyword arguments there are.
    pub fn len(&self) -> usize {
        match &self.text {
            Some(text) => text.spans.len(),
            None => self.values().len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The argument names, in the order they arrived.
    pub fn names(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.text {
            Some(text) => Box::new(text.spans.iter().map(|(name, _)| name.as_str())),
            None => Box::new(self.values().keys().map(String::as_str)),
        }
    }

    /// Keyword argument `name`'s JSON text, if the body was kept as text.
    pub fn text(&self, name: &str) -> Option<&str> {
        let text = self.text.as_ref()?;
        let (_, span) = text.spans.iter().find(|(key, _)| key == name)?;
        Some(&text.body[span.clone()])
    }

    /// Keyword argument `name` as a value: read from its own text alone if
    /// the body was kept as text (the others stay text), else borrowed.
    pub fn value(&self, name: &str) -> Option<Cow<'_, Value>> {
        match &self.text {
            Some(_) => self.text(name).map(|text| Cow::Owned(value_of(text))),
            None => self.values().get(name).map(Cow::Borrowed),
        }
    }

    /// The keyword arguments as values, read from the text on first use.
    pub fn values(&self) -> &Map<String, Value> {
        self.values.get_or_init(|| match &self.text {
            Some(text) => text
                .spans
                .iter()
                .map(|(name, span)| (name.clone(), value_of(&text.body[span.clone()])))
                .collect(),
            None => Map::new(),
        })
    }

    /// The keyword arguments as an owned map.
    pub fn into_values(mut self) -> Map<String, Value> {
        self.values();
        self.values.take().unwrap_or_default()
    }
}

impl Deref for Kwargs {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Map<String, Value> {
        self.values()
    }
}

impl From<Map<String, Value>> for Kwargs {
    fn from(values: Map<String, Value>) -> Kwargs {
        Kwargs {
            values: OnceLock::from(values),
            text: None,
        }
    }
}

impl PartialEq for Kwargs {
    fn eq(&self, other: &Kwargs) -> bool {
        self.values() == other.values()
    }
}

impl Serialize for Kwargs {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.values().serialize(serializer)
    }
}

impl fmt::Debug for Kwargs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.values()).finish()
    }
}

/// A slice of a body kept as text, as a value.
fn value_of(text: &str) -> Value {
    // A body is kept as text only if it parses as values
    // (`json::parses_as_values`, checked before the split), so this parse
    // cannot fail; `null` would stand in only if that check were wrong,
    // which the decode tests compare path against path.
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// A v2 body's text split into its arguments' texts, and its `embed`
/// parsed as a value.
pub(crate) struct SplitBody {
    pub(crate) args: Args,
    pub(crate) kwargs: Kwargs,
    pub(crate) embed: Value,
}

/// Splits `body`, the text of a `[args, kwargs, embed]` body, without
/// building values for the arguments. `None` when the body is not of that
/// shape (not JSON, not a 3-element array, args not a list or `null`,
/// kwargs not an object or `null`): the caller then decodes it as values,
/// which names what is wrong.
pub(crate) fn split(body: ByteString) -> Option<SplitBody> {
    let spans = scan_body(&body)?;
    let embed = serde_json::from_str(&body[spans.embed]).ok()?;
    Some(SplitBody {
        args: Args {
            values: OnceLock::new(),
            text: Some(ArgTexts {
                body: body.clone(),
                spans: spans.args,
            }),
        },
        kwargs: Kwargs {
            values: OnceLock::new(),
            text: Some(KwargTexts {
                body,
                spans: spans.kwargs,
            }),
        },
        embed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn split_text(text: &str) -> Option<SplitBody> {
        split(ByteString::from(text))
    }

    #[test]
    fn arguments_keep_their_text_and_read_as_values() {
        let body = split_text(r#"[[1, "two", {"x": [3]}], {"k": 1.50, "j": null}, null]"#).unwrap();
        assert_eq!(body.args.len(), 3);
        assert_eq!(body.args.text(1), Some(r#""two""#));
        assert_eq!(body.args.text(2), Some(r#"{"x": [3]}"#));
        assert_eq!(body.args, vec![json!(1), json!("two"), json!({"x": [3]})]);
        assert_eq!(body.kwargs.names().collect::<Vec<_>>(), ["k", "j"]);
        assert_eq!(body.kwargs.text("k"), Some("1.50"));
        assert_eq!(body.kwargs.text("missing"), None);
        assert_eq!(body.kwargs["j"], Value::Null);
        assert_eq!(body.embed, Value::Null);
    }

    #[test]
    fn null_args_and_kwargs_are_none() {
        let body = split_text("[null, null, {}]").unwrap();
        assert!(body.args.is_empty() && body.kwargs.is_empty());
    }

    #[test]
    fn a_repeated_name_keeps_its_first_place_and_last_value() {
        let body = split_text(r#"[[], {"a": 1, "b": 2, "a": 3}, null]"#).unwrap();
        let as_value: Value = serde_json::from_str(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
        assert_eq!(Value::Object(body.kwargs.values().clone()), as_value);
        assert_eq!(body.kwargs.text("a"), Some("3"));
    }

    #[test]
    fn other_shapes_are_left_to_the_value_decoder() {
        // Which bodies split is `body_scan`'s to say (its tests hold it to
        // serde_json); here, that a refusal reaches the caller as `None`.
        for text in [r#"{"args": []}"#, "[[1], 2, null]", "[[NaN], {}, null]"] {
            assert!(split_text(text).is_none(), "{text}");
        }
    }
}
