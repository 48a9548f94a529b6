//! Our message model to lapin's AMQP properties and back: the only place
//! where a [`RawMessage`] meets `lapin::BasicProperties`.

use lapin::BasicProperties;
use lapin::types::ShortString;

use celeriac_protocol::{Properties, RawMessage};

use crate::BrokerError;
use crate::field_table::{from_field_table, to_field_table};

/// Our view of an AMQP message's properties and body.
pub(crate) fn raw_message(p: &BasicProperties, body: Vec<u8>) -> RawMessage {
    let text = |v: &Option<ShortString>| v.as_ref().map(|s| s.as_str().to_owned());
    RawMessage {
        properties: Properties {
            content_type: text(p.content_type()),
            content_encoding: text(p.content_encoding()),
            correlation_id: text(p.correlation_id()),
            reply_to: text(p.reply_to()),
            delivery_mode: *p.delivery_mode(),
            priority: *p.priority(),
            expiration: text(p.expiration()),
        },
        headers: p
            .headers()
            .as_ref()
            .map(from_field_table)
            .unwrap_or_default(),
        body: body.into(),
    }
}

/// Our properties and headers as lapin's AMQP basic properties, exactly as
/// they are published.
pub(crate) fn basic_properties(message: &RawMessage) -> Result<BasicProperties, BrokerError> {
    let p = &message.properties;
    let short = |s: &String| ShortString::from(s.as_str());
    let mut props = BasicProperties::default().with_headers(to_field_table(&message.headers)?);
    if let Some(v) = &p.content_type {
        props = props.with_content_type(short(v));
    }
    if let Some(v) = &p.content_encoding {
        props = props.with_content_encoding(short(v));
    }
    if let Some(v) = &p.correlation_id {
        props = props.with_correlation_id(short(v));
    }
    if let Some(v) = &p.reply_to {
        props = props.with_reply_to(short(v));
    }
    if let Some(v) = p.delivery_mode {
        props = props.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        props = props.with_priority(v);
    }
    if let Some(v) = &p.expiration {
        props = props.with_expiration(short(v));
    }
    Ok(props)
}
