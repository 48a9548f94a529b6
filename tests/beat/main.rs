//! celeriac-beat against the real RabbitMQ: Python workers running what it
//! sends, restarts, and one active beat among several.

mod failover;
mod python;
