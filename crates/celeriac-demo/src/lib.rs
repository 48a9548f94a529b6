//! # celeriac-demo
//!
//! The demo tasks ([`tasks`]) that the README's quick start, the interop
//! tests and the benchmarks run, and the quick start itself
//! ([`quickstart`]), and a tour of the canvas ([`canvas`]). Kept out of the worker library so production workers
//! never register them (`demo.crash` aborts its process).

pub mod canvas;
pub mod quickstart;
pub mod tasks;
