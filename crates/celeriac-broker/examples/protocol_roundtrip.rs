//! Protocol round trip, the demo until the worker lands:
//!
//! 1. reads a message that the pinned Python Celery built for
//!    `chain(add.s(2, 2), add.s(4), add.s(8))` (from `protocol-fixtures/`),
//!    decodes it and prints what a worker would see;
//! 2. builds the same kind of message with Celeriac, prints the exact header
//!    table and body that would go on the wire, and decodes it back.
//!
//! Run: `cargo run -p celeriac-broker --example protocol_roundtrip [FIXTURE.json]`

use std::error::Error;
use std::path::PathBuf;

use base64::Engine as _;
use celeriac_broker::{decode_headers, encode_headers};
use celeriac_protocol::json::to_python_json;
use celeriac_protocol::{DecodeOptions, Properties, RawMessage, Signature, TaskMessage};
use serde_json::{Value, json};

fn main() -> Result<(), Box<dyn Error>> {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../protocol-fixtures/fixtures/chain.json")
        });
    let fixture: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    let b64 = |key: &str| {
        base64::engine::general_purpose::STANDARD.decode(fixture[key].as_str().unwrap_or_default())
    };
    let props = &fixture["properties"];
    let from_python = RawMessage {
        properties: Properties {
            content_type: props["content_type"].as_str().map(str::to_owned),
            content_encoding: props["content_encoding"].as_str().map(str::to_owned),
            correlation_id: props["correlation_id"].as_str().map(str::to_owned),
            ..Properties::default()
        },
        headers: decode_headers(&b64("headers_amqp")?)?,
        body: b64("body")?.into(),
    };

    println!("== Python Celery sent ({})", path.display());
    let msg = TaskMessage::decode(&from_python, &DecodeOptions::default())?;
    println!("task     {}", msg.headers.task);
    println!("id       {}", msg.headers.id);
    println!("args     {}", to_python_json(&msg.body.args));
    if let Some(next) = msg.body.embed.next_chain_step() {
        println!(
            "then     {} {} (id {})",
            next.task,
            to_python_json(&next.args),
            next.task_id().unwrap_or("?")
        );
    }

    println!("\n== Celeriac builds");
    let mut ours = TaskMessage::new("proj.tasks.add", "6f1c2a52-4d0e-4f3e-9a55-0c9f7f2b1e01")
        .with_args(vec![json!(2), json!(2)]);
    ours.body.embed.chain = Some(vec![
        Signature::new("proj.tasks.add").with_args(vec![json!(4)]),
    ]);
    let wire = ours.encode()?;
    let table = encode_headers(&wire.headers)?;
    println!(
        "headers  {} bytes of AMQP field table: {:?}",
        table.len(),
        wire.headers.keys().collect::<Vec<_>>()
    );
    println!("body     {}", String::from_utf8_lossy(&wire.body));
    let back = TaskMessage::decode(
        &RawMessage {
            headers: decode_headers(&table)?,
            ..wire
        },
        &DecodeOptions::default(),
    )?;
    assert_eq!(back.body, ours.body);
    println!(
        "decoded back: {} {} — round trip ok",
        back.headers.task,
        to_python_json(&back.body.args)
    );
    Ok(())
}
