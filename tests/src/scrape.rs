//! Reading a worker's `/metrics`, `/healthz` and `/readyz` over plain
//! HTTP/1.1, and picking a free port for its listener.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A free port on 127.0.0.1 (bound and released; the worker binds it next).
pub fn free_local_addr() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// `GET path` on `addr`: the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET {path} on {addr}: no answer in 10 s"))??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {path}: not an HTTP response: {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("GET {path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Waits (up to 10 s) until the listener on `addr` answers `/healthz`.
pub async fn wait_for_listener(addr: SocketAddr) -> Result<()> {
    for _ in 0..100 {
        if http_get(addr, "/healthz").await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nothing answers on {addr} (was the worker started with metrics_addr?)")
}

/// The value of the sample `series` (name and labels exactly as rendered,
/// e.g. `celery_worker_up{hostname="h"}`) in a `/metrics` text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}
