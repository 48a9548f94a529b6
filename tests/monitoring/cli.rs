//! `celeriac inspect` and `celeriac control` against a Rust worker, as an
//! operator types them.

use anyhow::{Result, ensure};
use celeriac_tests::worker::{binary, demo_worker};
use celeriac_tests::{broker_url, delete_queue, unique};

use super::{client, node, wait_for_node};

async fn celeriac(args: &[&str]) -> Result<(i32, String)> {
    let output = tokio::process::Command::new(binary("celeriac")?)
        .args(["--broker", &broker_url()])
        .args(args)
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.code().unwrap_or(-1), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_inspects_and_controls_workers() -> Result<()> {
    let queue = unique("cli-ctl");
    let worker = node("cli");
    let _running = demo_worker(&queue, &["-n", &worker])?;
    wait_for_node(&client("rpc://").await?, &worker).await?;

    let (code, out) = celeriac(&["inspect", "ping", "-d", &worker]).await?;
    ensure!(
        code == 0 && out.contains(&format!("->  {worker}: OK")) && out.contains("pong"),
        "{out}"
    );
    ensure!(out.contains("1 node online."), "{out}");
    let (code, out) = celeriac(&["inspect", "registered", "-d", &worker]).await?;
    ensure!(code == 0 && out.contains("* demo.add"), "{out}");
    let (code, out) =
        celeriac(&["control", "rate_limit", "demo.add", "10/m", "-d", &worker]).await?;
    ensure!(
        code == 0 && out.contains("new rate limit set successfully"),
        "{out}"
    );
    let (code, out) = celeriac(&["control", "rate_limit", "nope", "10/m", "-d", &worker]).await?;
    ensure!(
        code == 0 && out.contains("ERROR") && out.contains("unknown task"),
        "{out}"
    );
    let (code, out) = celeriac(&["inspect", "stats", "--json", "-d", &worker]).await?;
    let stats: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(
        code == 0 && stats[&worker]["pool"]["max-concurrency"].is_u64(),
        "{out}"
    );
    let (code, _) = celeriac(&["control", "shutdown", "-d", &worker]).await?;
    ensure!(code == 0);
    let (code, out) = celeriac(&["inspect", "ping", "-d", &worker, "-t", "0.5"]).await?;
    ensure!(
        code == 69 && out.contains("No nodes replied"),
        "a stopped worker: {code} {out}"
    );
    delete_queue(&queue);
    Ok(())
}
