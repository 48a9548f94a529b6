//! The large-body benchmarks' task argument: a document holding a text and
//! a batch of ids, built to a given size. Shared by the `payload` scenario
//! and `drain_cost --payload`, so both measure the same bytes.

use serde_json::{Value, json};

/// One dict argument of about `bytes` JSON bytes: a text (half the bytes)
/// and a list of integers (the other half), as a task carrying a document
/// and a batch of ids would.
pub(crate) fn document(bytes: usize) -> Value {
    let half = bytes / 2;
    let sentence = "The quick brown fox jumps over the lazy dog. ";
    let text: String = sentence.chars().cycle().take(half).collect();
    let mut ids = Vec::new();
    let mut written = 0;
    while written < half {
        let id = 1_000_000 + ids.len() as u64;
        written += id.to_string().len() + 2; // the digits and ", "
        ids.push(id);
    }
    json!({ "text": text, "ids": ids })
}
