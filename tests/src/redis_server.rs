//! A Redis server of the test's own, on a free port, that keeps what it
//! acknowledged across a restart (append-only file, fsync on every write):
//! for fault tests that restart the result store without touching the
//! shared one.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

/// A private `redis-server`, stopped and its files removed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one on a free port; fails saying what to install if
    /// `redis-server` is missing.
    pub fn start() -> Result<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = std::env::temp_dir().join(format!("celeriac-redis-{port}"));
        std::fs::create_dir_all(&dir)?;
        let mut server = RedisServer {
            port,
            dir,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Its URL, database 0.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context(
                "starting redis-server: these fault tests need it on PATH (Debian: redis-server)",
            )?;
        self.child = Some(child);
        // Listening is not serving: while it replays its append-only file,
        // Redis answers every command with LOADING. Wait for a PONG.
        for _ in 0..600 {
            if self.answers_ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "redis-server on port {} did not answer PING within 30 s",
            self.port
        )
    }

    /// Whether it answers `PING` with `PONG` (not refused, not LOADING).
    fn answers_ping(&self) -> bool {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "ping"])
            .output()
            .is_ok_and(|output| output.stdout.starts_with(b"PONG"))
    }

    /// Stops it (every acknowledged write is on disk) and, after `down`,
    /// starts it again on the same port and files.
    pub fn restart(&mut self, down: Duration) -> Result<()> {
        self.stop()?;
        std::thread::sleep(down);
        self.spawn()
    }

    fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running redis-cli shutdown")?;
        if !status.success() {
            let _ = child.kill();
        }
        child.wait()?;
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
