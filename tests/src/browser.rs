//! A real browser for tests: headless Chromium driven through
//! chromedriver (WebDriver), as Debian packages them (`chromium`,
//! `chromium-driver`; `scripts/ensure-chromium` installs them).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder};
use serde_json::json;
use tokio::process::{Child, Command};

/// A chromedriver process and a browser session on it; the driver and the
/// Chromium it started are killed when this is dropped (a test that fails
/// before [`close`](Browser::close) leaves nothing running).
#[derive(Debug)]
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            // The process group, spelt after `--` with the signal named by
            // `-s`: procps's `kill -KILL -16820` reads `-1` out of the
            // group id and sends SIGKILL to every process on the machine.
            let _ = std::process::Command::new("kill")
                .args(["-s", "KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

/// chromedriver on `PATH` (or at `$CHROMEDRIVER`), or an error saying how
/// to install it.
fn chromedriver() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMEDRIVER") {
        return Ok(PathBuf::from(path));
    }
    let found = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("chromedriver"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_default();
    found.context(
        "chromedriver is not installed: the dashboard's browser test needs Chromium and its \
         WebDriver (`scripts/ensure-chromium`, or `apt-get install chromium chromium-driver`)",
    )
}

impl Browser {
    /// Starts chromedriver on a free local port and opens a headless
    /// Chromium window of 1400×900.
    pub async fn start() -> Result<Browser> {
        let driver_path = chromedriver()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            // Its own process group, so the Chromium it starts goes with it.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", driver_path.display()))?;
        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1400,900",
                ]
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match ClientBuilder::new(connector.clone())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Ok(Browser { client, driver });
                }
                Err(e) if tokio::time::Instant::now() > deadline => {
                    bail!("chromedriver at {url} did not open a Chromium session in 30 s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Ends the session (the driver process goes with `self`).
    pub async fn close(self) -> Result<()> {
        self.client.clone().close().await?;
        Ok(())
    }
}
