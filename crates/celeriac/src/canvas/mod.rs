//! The canvas (§5): building workflows from Rust ([`chain`], [`group`],
//! [`chord`]) and applying signatures in the dict form Python writes them
//! ([`App::apply_signature`](crate::App::apply_signature)), which is what
//! workers do for callbacks, errbacks, chain steps and chord bodies.

mod apply;
mod builders;

pub use apply::{Apply, CHORD_UNLOCK};
pub use builders::{Chain, Chord, Group, Step, chain, chord, group};
