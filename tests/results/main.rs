//! Results and the canvas against the real RabbitMQ and Redis: the Redis
//! backend read and written by Python and Rust alike, groups and chords
//! joined across Python and Rust workers, the canvas built from Rust, and a
//! 1,000-member chord joined exactly once by two worker processes.

mod chord_scale;
mod python_redis;
mod rust_redis;
