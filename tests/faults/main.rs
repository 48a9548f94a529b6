//! Faults that disturb the whole broker: restarts, connections closed by
//! the broker, alarms, short consumer timeouts, killed workers. Each test
//! holds `celeriac_tests::disturbing()`, so they run one at a time, and
//! restores the broker before it returns; cargo runs this binary apart
//! from the others.

mod broker;
mod reliability;
mod worker;
