//! # celeriac-demo
//!
//! The demo tasks ([`tasks`]) that the README's quick start, the interop
//! tests and the benchmarks run, and the quick start itself
//! ([`quickstart`]). Kept out of the worker library so production workers
//! never register them (`demo.crash` aborts its process).

pub mod quickstart;
pub mod tasks;
