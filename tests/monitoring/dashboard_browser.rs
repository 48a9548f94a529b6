//! The dashboard in a real browser (headless Chromium through
//! chromedriver): three dead letters with their reasons, a filter, a
//! requeue clicked and confirmed, the row gone and its task run. It also
//! takes the screenshots in docs/dashboard.md: they are written to
//! `target/dashboard-screenshots/`, and to `docs/images/` when
//! `CELERIAC_UPDATE_SCREENSHOTS=1`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use celeriac::broker::Queue;
use celeriac::protocol::TaskMessage;
use celeriac_tests::browser::Browser;
use celeriac_tests::{repo_root, unique};
use fantoccini::{Client, Locator};
use serde_json::json;

use crate::dashboard::Scene;

/// Where screenshots go.
fn screenshot_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![repo_root().join("target/dashboard-screenshots")];
    if std::env::var_os("CELERIAC_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        dirs.push(repo_root().join("docs/images"));
    }
    dirs
}

async fn screenshot(client: &Client, name: &str) -> Result<()> {
    let png = client.screenshot().await?;
    for dir in screenshot_dirs() {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("dashboard-{name}.png")), &png)?;
    }
    Ok(())
}

/// The task ids of the dead-letter rows on the page.
async fn rows(client: &Client) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    for row in client.find_all(Locator::Css("tr.letter")).await? {
        ids.push(
            row.attr("data-id")
                .await?
                .context("a row without data-id")?,
        );
    }
    Ok(ids)
}

/// Waits until the list shows exactly the dead letters `expected` (a
/// click's navigation may still be loading when it returns); fails with
/// `what` and the rows last seen.
async fn wait_for_rows(client: &Client, expected: &[String], what: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Rows of a page being replaced may vanish while read: read again.
        let shown = rows(client).await.unwrap_or_default();
        if shown == expected {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: the page shows {shown:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `css` matches an element whose text contains `text`.
async fn wait_for_text(client: &Client, css: &str, text: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // A live view replaces its elements as updates arrive: one gone
        // before its text was read is looked for again.
        for element in client.find_all(Locator::Css(css)).await? {
            if element.text().await.is_ok_and(|shown| shown.contains(text)) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            let url = client.current_url().await?;
            let page = client.find(Locator::Css("body")).await?.text().await?;
            bail!("no {css} showed {text:?} within 30 s; {url} shows: {page}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engineer_finds_filters_and_requeues_a_dead_letter_in_a_browser() -> Result<()> {
    let browser = Browser::start().await?;
    let client = &browser.client;
    let scene = Scene::new("dash-browser").await?;
    // A queue nobody consumes, filling up while the queues view watches.
    let backlog = Queue::celery_default(unique("reports"));
    scene.client.broker().declare(&backlog).await?;
    let dashboard = scene
        .dashboard(|config| config.queues.push(backlog.name.clone()))
        .await?;

    // Three dead letters with their reasons.
    client.goto(&scene.list_url(&dashboard, "")).await?;
    let listed = rows(client).await?;
    ensure!(listed.len() == 3, "the page shows {listed:?}");
    let mut reasons = Vec::new();
    for reason in client
        .find_all(Locator::Css("tr.letter span.reason"))
        .await?
    {
        reasons.push(reason.text().await?);
    }
    reasons.sort();
    ensure!(
        reasons == ["failed", "failed", "unknown_task"],
        "{reasons:?}"
    );
    // The traceback-less failures still show their error.
    let body = client.find(Locator::Css("main")).await?.text().await?;
    ensure!(body.contains("ValueError: boom-1"), "{body}");
    screenshot(client, "dead-letters").await?;

    // Filter to the unknown task.
    let reason = client
        .find(Locator::Css("form.filter input[name=reason]"))
        .await?;
    reason.send_keys("unknown_task").await?;
    client
        .find(Locator::Css("form.filter button[type=submit]"))
        .await?
        .click()
        .await?;
    let add_id = scene.add.id().to_owned();
    wait_for_rows(
        client,
        std::slice::from_ref(&add_id),
        "the filter did not narrow to demo.add",
    )
    .await?;

    // Deploy the fix, then requeue it: a confirmation first.
    let worker = scene.deploy_fix().await?;
    let button = format!("tr.letter[data-id='{add_id}'] td.actions button[name=one]");
    client.find(Locator::Css(&button)).await?.click().await?;
    wait_for_text(client, ".question", &add_id).await?;
    screenshot(client, "confirm").await?;
    client.find(Locator::Id("confirm")).await?.click().await?;

    // Back on the list: the report, and the row is gone.
    wait_for_text(client, ".notice", "Requeued 1 dead letter(s)").await?;
    wait_for_rows(client, &[], "the requeued dead letter is still listed").await?;
    let sum = scene.add.get(Duration::from_secs(30)).await?;
    ensure!(sum == json!(5), "the requeued demo.add returned {sum}");
    ensure!(scene.dead_letters().await? == 2);

    // The live views, once they have something to show: the backlog
    // growing in steps (the page updates itself), a task running.
    client
        .goto(&format!("http://{}/queues", dashboard.addr()))
        .await?;
    wait_for_text(client, "table.queues", &backlog.name).await?;
    let broker = scene.client.broker();
    for step in 0..12 {
        for n in 0..25 {
            let message = TaskMessage::new("proj.reports.render", format!("report-{step}-{n}"));
            broker
                .publish("", &backlog.name, &message.encode()?)
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for_text(
        client,
        &format!("tr[data-queue='{}'] .ready", backlog.name),
        "300",
    )
    .await?;
    screenshot(client, "queues").await?;
    let running = scene
        .client
        .send_task("demo.sleep")
        .args(json!([8.0]))
        .apply()
        .await?;
    client
        .goto(&format!("http://{}/workers", dashboard.addr()))
        .await?;
    wait_for_text(client, "table.workers", running.id()).await?;
    screenshot(client, "workers").await?;

    browser.close().await?;
    running.get(Duration::from_secs(30)).await?;
    broker.delete_queue(&backlog.name).await?;
    dashboard.stop().await;
    worker.stop().await?;
    scene.cleanup().await;
    Ok(())
}
