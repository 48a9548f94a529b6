//! Beat's ticks as a test receives them: the task ids sent for each due
//! time and who sent them, and the check every failover test makes.

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use celeriac_beat::DUE_HEADER;
use celeriac_protocol::RawMessage;

/// The ticks received so far.
#[derive(Debug, Default)]
pub struct Ticks {
    /// Task ids received for each due time (RFC 3339), in order.
    dues: BTreeMap<String, Vec<String>>,
    /// The `origin` header of every tick, in order.
    origins: Vec<String>,
}

impl Ticks {
    /// Records one tick message.
    pub fn add(&mut self, message: &RawMessage) {
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned()
        };
        self.dues
            .entry(header(DUE_HEADER))
            .or_default()
            .push(header("id"));
        self.origins.push(header("origin"));
    }

    /// Distinct due times received.
    pub fn due_times(&self) -> usize {
        self.dues.len()
    }

    /// The `origin` of every tick (`gen<pid>@<host>`), in order.
    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    /// Every due time arrived once, but for at most one sent twice with
    /// one task id (docs/beat.md's window), and none was skipped: they lie
    /// `step` apart with no hole.
    pub fn ensure_each_once_without_a_hole(&self, step: chrono::Duration) -> Result<()> {
        let repeated: Vec<_> = self.dues.iter().filter(|(_, ids)| ids.len() > 1).collect();
        ensure!(
            repeated.len() <= 1,
            "ticks sent more than once: {repeated:?}"
        );
        for (due, ids) in &repeated {
            ensure!(
                ids.len() == 2 && ids[0] == ids[1],
                "tick {due} repeated with different task ids or more than twice: {ids:?}"
            );
        }
        let times = self
            .dues
            .keys()
            .map(|due| chrono::DateTime::parse_from_rfc3339(due))
            .collect::<Result<Vec<_>, _>>()?;
        for pair in times.windows(2) {
            ensure!(
                pair[1] - pair[0] == step,
                "a due time was skipped or is off the {step} grid: {:?}",
                self.dues.keys().collect::<Vec<_>>()
            );
        }
        Ok(())
    }
}
