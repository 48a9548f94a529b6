//! Faults that disturb the whole broker or a result store: a node lost
//! from a RabbitMQ cluster, restarts,
//! connections closed by the broker, alarms, short consumer timeouts,
//! killed workers, a restarted Redis; and a rate limit's measured rate,
//! which other tests running beside it would distort. Each test holds
//! `celeriac_tests::disturbing()`, so they run one at a time, and restores
//! what it disturbed before it returns; cargo runs this binary apart from
//! the others.

mod broker;
mod cluster;
mod declarations;
mod rate_limit;
mod reliability;
mod result_store;
mod worker;
