//! A 3-node RabbitMQ cluster of the test's own, through `scripts/cluster`
//! (its own ports and data directory, apart from the one `scripts/test`
//! runs the soak on), taken down when dropped.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, ensure};

use crate::repo_root;

/// A running cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    /// The broker URL list (`amqp://...;amqp://...;amqp://...`).
    pub urls: String,
}

/// AMQP port of the first node; the others follow.
const PORT: u16 = 5691;
/// Erlang distribution port of the first node; the others follow.
const DIST_PORT: u16 = 25691;
/// Node names: this, then the node's number, `@localhost`.
const NAME: &str = "celeriac-test-c";

impl Cluster {
    /// Starts three nodes and joins them (about 30 s). Fails saying what is
    /// missing if RabbitMQ is not installed.
    pub fn up() -> Result<Cluster> {
        let mut cluster = Cluster {
            dir: std::env::temp_dir().join("celeriac-test-cluster"),
            urls: String::new(),
        };
        // Whatever an interrupted run left behind.
        let _ = cluster.script(&["down"]);
        cluster.script(&["up"])?;
        cluster.urls = cluster.script(&["urls"])?;
        Ok(cluster)
    }

    /// `scripts/cluster args...` for this cluster; its standard output.
    pub fn script(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(repo_root().join("scripts/cluster"))
            .args(args)
            .env("CELERIAC_CLUSTER_DIR", &self.dir)
            .env("CELERIAC_CLUSTER_PORT", PORT.to_string())
            .env("CELERIAC_CLUSTER_DIST_PORT", DIST_PORT.to_string())
            .env("CELERIAC_CLUSTER_NAME", NAME)
            .output()
            .context("running scripts/cluster")?;
        ensure!(
            output.status.success(),
            "scripts/cluster {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// The node (1..3) leading quorum queue `queue`.
    pub fn leader(&self, queue: &str) -> Result<String> {
        self.script(&["leader", queue])
    }

    /// `rabbitmqctl` with `args` on the first live node.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        self.script(&[&["ctl"], args].concat())
    }

    /// The number (1..3) of node `node` (`celeriac-test-c2@localhost`).
    pub fn number_of(node: &str) -> Option<&str> {
        node.strip_prefix(NAME)?.split('@').next()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script(&["down"]);
    }
}
