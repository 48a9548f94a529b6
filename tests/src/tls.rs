//! Real TLS listeners for the transport-security tests: a CA and
//! certificates made for the test (`tests/interop/make_tls_certs.py`), a
//! second RabbitMQ node on this machine with a TLS listener (and RabbitMQ's
//! EXTERNAL mechanism), and a Redis with a TLS port. Each is stopped and its
//! files removed on drop; nothing touches the shared broker or Redis.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};

use crate::{interop_python, repo_root, unique};

/// The user RabbitMQ's EXTERNAL mechanism logs the client certificate in as
/// (its common name).
pub const CLIENT_USER: &str = "celeriac-client";

/// A test CA, a server certificate for `localhost` only, a client
/// certificate, and a CA that signed neither, as PEM files in a directory
/// of their own.
#[derive(Debug)]
pub struct TlsCerts {
    dir: PathBuf,
}

impl TlsCerts {
    /// Makes them (readable by the `rabbitmq` user, which runs the node).
    pub fn make() -> Result<TlsCerts> {
        let dir = std::env::temp_dir().join(unique("tls"));
        let output = Command::new(interop_python()?)
            .arg(repo_root().join("tests/interop/make_tls_certs.py"))
            .arg(&dir)
            .output()?;
        ensure!(
            output.status.success(),
            "make_tls_certs.py failed (is `cryptography` in the interop venv? run \
             scripts/setup-interop): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let certs = TlsCerts { dir };
        chmod(&certs.dir, "a+rX")?;
        Ok(certs)
    }

    /// The PEM file `name` (`ca.pem`, `server.key`, `client.pem`, ...).
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `file(name)` as URL query text.
    pub fn path(&self, name: &str) -> String {
        self.file(name).to_string_lossy().into_owned()
    }
}

impl Drop for TlsCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chmod(path: &Path, mode: &str) -> Result<()> {
    let status = Command::new("chmod")
        .arg("-R")
        .arg(mode)
        .arg(path)
        .status()?;
    ensure!(
        status.success(),
        "chmod -R {mode} {} failed",
        path.display()
    );
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A RabbitMQ node of the test's own, listening with TLS (and plain TCP),
/// verifying client certificates when offered, with EXTERNAL enabled and a
/// user for the client certificate.
#[derive(Debug)]
pub struct TlsRabbit {
    node: String,
    dir: PathBuf,
    /// The TLS listener's port.
    pub tls_port: u16,
}

impl TlsRabbit {
    /// Starts the node with `certs` and waits until it serves (a few
    /// seconds). Fails saying what is missing if RabbitMQ is not installed.
    pub fn start(certs: &TlsCerts) -> Result<TlsRabbit> {
        let name = unique("tls").replace('.', "-");
        let node = format!("{name}@localhost");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(dir.join("data"))?;
        let (tls_port, tcp_port, dist_port) = (free_port()?, free_port()?, free_port()?);
        let config = format!(
            "listeners.tcp.default = {tcp_port}\n\
             listeners.ssl.default = {tls_port}\n\
             ssl_options.cacertfile = {ca}\n\
             ssl_options.certfile = {cert}\n\
             ssl_options.keyfile = {key}\n\
             ssl_options.verify = verify_peer\n\
             ssl_options.fail_if_no_peer_cert = false\n\
             auth_mechanisms.1 = PLAIN\n\
             auth_mechanisms.2 = AMQPLAIN\n\
             auth_mechanisms.3 = EXTERNAL\n\
             ssl_cert_login_from = common_name\n",
            ca = certs.path("ca.pem"),
            cert = certs.path("server.pem"),
            key = certs.path("server.key"),
        );
        std::fs::write(dir.join("rabbitmq.conf"), config)?;
        std::fs::write(
            dir.join("enabled_plugins"),
            "[rabbitmq_auth_mechanism_ssl].\n",
        )?;
        chmod(&dir, "a+rwX")?;
        let rabbit = TlsRabbit {
            node,
            dir,
            tls_port,
        };
        // The packaged `rabbitmq-server` runs the node as the `rabbitmq`
        // user (whose Erlang cookie `rabbitmqctl` uses too).
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", &rabbit.node)
            .env("RABBITMQ_NODE_PORT", tcp_port.to_string())
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", rabbit.dir.join("rabbitmq.conf"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                rabbit.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_MNESIA_BASE", rabbit.dir.join("data/mnesia"))
            .env("RABBITMQ_LOG_BASE", rabbit.dir.join("data/log"))
            .env("RABBITMQ_PID_FILE", rabbit.dir.join("data/pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("starting rabbitmq-server: these tests need RabbitMQ installed")?;
        ensure!(status.success(), "rabbitmq-server -detached failed");
        rabbit.wait_until_listening()?;
        rabbit.ctl(&["add_user", CLIENT_USER, &unique("unused-password")])?;
        rabbit.ctl(&["set_permissions", "-p", "/", CLIENT_USER, ".*", ".*", ".*"])?;
        Ok(rabbit)
    }

    fn wait_until_listening(&self) -> Result<()> {
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", self.tls_port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the TLS node {} did not listen on port {} within 60 s; its log is in {}",
            self.node,
            self.tls_port,
            self.dir.join("data/log").display()
        )
    }

    /// `rabbitmqctl -n <node> args...`.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("rabbitmqctl")
            .args(["-n", &self.node])
            .args(args)
            .output()
            .context("running rabbitmqctl")?;
        ensure!(
            output.status.success(),
            "rabbitmqctl -n {} {} failed: {}",
            self.node,
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// An `amqps://` URL for `host` with `query` (already URL text).
    pub fn url(&self, host: &str, query: &str) -> String {
        format!("amqps://guest:guest@{host}:{}//?{query}", self.tls_port)
    }
}

impl Drop for TlsRabbit {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis of the test's own with only a TLS port (client certificates
/// optional), stopped on drop.
#[derive(Debug)]
pub struct TlsRedis {
    child: Child,
    /// Its TLS port.
    pub port: u16,
}

impl TlsRedis {
    /// Starts it with `certs`.
    pub fn start(certs: &TlsCerts) -> Result<TlsRedis> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-auth-clients", "optional"])
            .arg("--tls-cert-file")
            .arg(certs.file("server.pem"))
            .arg("--tls-key-file")
            .arg(certs.file("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certs.file("ca.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (Debian: redis-server, built with TLS)")?;
        let redis = TlsRedis { child, port };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(redis);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("redis-server did not listen with TLS on port {port} within 5 s")
    }

    /// A `rediss://` URL for `host` with `query`.
    pub fn url(&self, host: &str, query: &str) -> String {
        format!("rediss://{host}:{}/0?{query}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
