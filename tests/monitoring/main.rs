//! The on-call dashboard over HTTP and in a real browser; remote control,
//! revocation and events against the real tools: Python
//! Celery 5.7's `app.control`, `celery inspect` / `celery control`, its
//! event receiver, `celery events` and Flower, all pointed at Rust
//! workers (`tests/interop/drive_control.py`, `flower_check.py`); the
//! Rust control client and `celeriac inspect` / `control` against Python
//! and Rust workers; revocations kept across restarts (`--statedb`) and
//! shared through mingle.

mod cli;
mod dashboard;
mod dashboard_browser;
mod python_tools;
mod revocation;
mod rust_client;

use std::time::Duration;

use anyhow::{Result, bail};
use celeriac::App;
use celeriac_tests::broker_url;

/// Waits until worker `node` answers a ping.
async fn wait_for_node(app: &App, node: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let replies = app
            .control()
            .to([node])
            .timeout(Duration::from_millis(500))
            .ping()
            .await?;
        if !replies.is_empty() {
            return Ok(());
        }
    }
    bail!("worker {node} did not answer a ping within 60 s")
}

/// A client app on the test broker with results in `backend`.
async fn client(backend: &str) -> Result<App> {
    Ok(App::builder()
        .broker_url(broker_url())
        .result_backend(backend)
        .build()
        .await?)
}

/// A node name no other test uses.
fn node(what: &str) -> String {
    format!("{}@celeriac-tests", celeriac_tests::unique(what))
}
