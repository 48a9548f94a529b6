//! Results and the canvas against the real RabbitMQ, Redis and PostgreSQL:
//! the Redis and database backends read and written by Python and Rust
//! alike, groups and chords
//! joined across Python and Rust workers, the canvas built from Rust, and a
//! 1,000-member chord joined exactly once by two worker processes.

mod chord_scale;
mod python_stores;
mod rust_database;
mod rust_redis;
