//! celeriac-beat against the real RabbitMQ: Python workers running what it
//! sends, restarts, one active beat among several, and its metrics.

mod backend_cleanup;
mod failover;
mod metrics;
mod python;
