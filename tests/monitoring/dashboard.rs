//! `celeriac dashboard` over HTTP against the real RabbitMQ: dead letters a
//! worker left are listed, filtered, shown, requeued (and run once the fix
//! is deployed) and purged; queues and workers are live; actions need the
//! page's token, and a read-only or password-protected dashboard holds.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use celeriac::broker::Queue;
use celeriac::{App, AsyncResult};
use celeriac_cli::dashboard::{Access, Dashboard, DashboardConfig, DashboardError};
use celeriac_cli::dlq::dead_letter_queue;
use celeriac_demo::tasks as demo;
use celeriac_tests::worker::{RunningWorker, cleanup, client, fill_dead_letters};
use celeriac_tests::{broker_url, unique};
use celeriac_worker::WorkerConfig;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION, ORIGIN, WWW_AUTHENTICATE};
use serde_json::{Value, json};

/// Three dead letters in `<queue>.dead`, as a worker leaves them: two
/// failures of `demo.fail`, and a `demo.add` that worker did not know (its
/// fix is not deployed yet). The worker has stopped.
pub(crate) struct Scene {
    /// The task queue.
    pub(crate) queue: Queue,
    /// The app that sent them, awaiting their results by `rpc://`.
    pub(crate) client: App,
    /// Task ids of the two failures.
    pub(crate) failed: Vec<String>,
    /// The unknown `demo.add(2, 3)`.
    pub(crate) add: AsyncResult<Value>,
}

impl Scene {
    pub(crate) async fn new(what: &str) -> Result<Scene> {
        let queue = Queue::celery_default(unique(what));
        let old_release = App::builder()
            .task(demo::fail)
            .broker_url(broker_url())
            .queue(queue.clone())
            .build()
            .await?;
        let worker = RunningWorker::run(
            old_release,
            WorkerConfig {
                queues: vec![queue.name.clone()],
                mingle: false,
                ..WorkerConfig::default()
            },
        );
        let client = client(&queue).await?;
        let mut failed = Vec::new();
        for n in 1..=2 {
            let sent = client
                .send_task("demo.fail")
                .args(json!([format!("boom-{n}")]))
                .apply()
                .await?;
            failed.push(sent.id().to_owned());
        }
        let add = client
            .send_task("demo.add")
            .args(json!([2, 3]))
            .apply()
            .await?;
        let scene = Scene {
            queue,
            client,
            failed,
            add,
        };
        scene.wait_for_dead_letters(3).await?;
        worker.stop().await?;
        Ok(scene)
    }

    /// The dead-letter queue's name.
    pub(crate) fn dead_letter_queue(&self) -> String {
        dead_letter_queue(self.client.broker(), &self.queue.name).name
    }

    /// Dead letters waiting now.
    pub(crate) async fn dead_letters(&self) -> Result<u32> {
        let counts = self
            .client
            .broker()
            .queue_counts(&self.dead_letter_queue())
            .await?;
        Ok(counts.map_or(0, |(messages, _)| messages))
    }

    /// Waits until `count` dead letters wait.
    pub(crate) async fn wait_for_dead_letters(&self, count: u32) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let now = self.dead_letters().await?;
            if now == count {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{now} dead letters after 30 s, expected {count}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The fixed release: a worker that knows every demo task.
    pub(crate) async fn deploy_fix(&self) -> Result<RunningWorker> {
        RunningWorker::start(App::builder(), &self.queue, |_| {}).await
    }

    /// A dashboard on a free local port watching this queue.
    pub(crate) async fn dashboard(
        &self,
        configure: impl FnOnce(&mut DashboardConfig),
    ) -> Result<Dashboard> {
        let mut config = DashboardConfig {
            listen: "127.0.0.1:0".parse()?,
            queues: vec![self.queue.name.clone()],
            sample_every: Duration::from_millis(250),
            broker_label: broker_url(),
            ..DashboardConfig::default()
        };
        configure(&mut config);
        Ok(Dashboard::start(self.client.clone(), config).await?)
    }

    /// `/dead-letters` of this queue on `dashboard`, with `query` added.
    pub(crate) fn list_url(&self, dashboard: &Dashboard, query: &str) -> String {
        format!(
            "http://{}/dead-letters?shelf=queue:{}{query}",
            dashboard.addr(),
            self.queue.name
        )
    }

    pub(crate) async fn cleanup(self) {
        cleanup(&self.client, &self.queue.name).await;
        self.client.close().await;
    }
}

/// An HTTP client that does not follow redirects (to see them).
fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

async fn get(url: &str) -> Result<(StatusCode, String)> {
    let response = http()?.get(url).send().await?;
    Ok((response.status(), response.text().await?))
}

/// Posts `fields` as a form, with `origin` as the `Origin` header if given.
async fn post(
    url: &str,
    fields: &[(&str, &str)],
    origin: Option<&str>,
) -> Result<reqwest::Response> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    let mut request = http()?
        .post(url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body);
    if let Some(origin) = origin {
        request = request.header(ORIGIN, origin);
    }
    Ok(request.send().await?)
}

/// The rows of a dead-letter page: their task ids, in order.
fn rows(html: &str) -> Vec<String> {
    html.split("<tr class=\"letter\"")
        .skip(1)
        .filter_map(|row| {
            let start = row.find("data-id=\"")? + "data-id=\"".len();
            let end = row[start..].find('"')? + start;
            Some(row[start..end].to_owned())
        })
        .collect()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// The form token on a page.
fn csrf(html: &str) -> Result<String> {
    let start = html
        .find("name=\"csrf\" value=\"")
        .context("the page has no form token")?
        + "name=\"csrf\" value=\"".len();
    let end = html[start..].find('"').context("unterminated token")? + start;
    Ok(html[start..end].to_owned())
}

/// Reads server-sent events from `url` until one contains `needle`.
async fn event_containing(url: &str, needle: &str) -> Result<String> {
    let mut response = reqwest::Client::new().get(url).send().await?;
    ensure!(
        response
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream")),
        "{url} is not an event stream"
    );
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk()).await??;
        let Some(chunk) = chunk else { break };
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(event) = seen.split("\n\n").find(|event| event.contains(needle)) {
            return Ok(event.to_owned());
        }
    }
    bail!("no event from {url} contained {needle:?}; got {seen:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_filtered_requeued_and_purged_over_http() -> Result<()> {
    let scene = Scene::new("dash-http").await?;
    let dashboard = scene.dashboard(|_| {}).await?;
    let base = format!("http://{}", dashboard.addr());

    // The root leads to the dead letters.
    let response = http()?.get(format!("{base}/")).send().await?;
    ensure!(response.status().is_redirection());
    ensure!(response.headers()[LOCATION] == "/dead-letters");

    // All three, with their reasons and errors.
    let (status, page) = get(&scene.list_url(&dashboard, "")).await?;
    ensure!(status == StatusCode::OK, "{status}: {page}");
    let listed = rows(&page);
    ensure!(listed.len() == 3, "expected 3 rows, got {listed:?}");
    ensure!(page.matches(">failed<").count() == 2, "{page}");
    ensure!(page.contains(">unknown_task<"), "{page}");
    ensure!(
        page.contains("ValueError") && page.contains("boom-1"),
        "{page}"
    );
    ensure!(page.contains("3 dead letters in"), "{page}");
    // The broker's password is never shown.
    ensure!(page.contains("guest:***@") && !page.contains("guest:guest@"));

    // Filters: by reason, by task, both.
    let (_, unknown) = get(&scene.list_url(&dashboard, "&reason=unknown_task")).await?;
    ensure!(rows(&unknown) == [scene.add.id()], "{unknown}");
    ensure!(
        unknown.contains("1 of 3 dead letters read match"),
        "{unknown}"
    );
    let (_, fails) = get(&scene.list_url(&dashboard, "&task=demo.fail")).await?;
    ensure!(
        sorted(rows(&fails)) == sorted(scene.failed.clone()),
        "{fails}"
    );
    let (_, none) = get(&scene.list_url(&dashboard, "&task=demo.fail&reason=unknown_task")).await?;
    ensure!(
        rows(&none).is_empty() && none.contains("Nothing here."),
        "{none}"
    );
    // Three fit on the first page of 50: no "Older" link, an empty second.
    ensure!(!page.contains("rel=\"next\""));
    let (_, second) = get(&scene.list_url(&dashboard, "&page=2")).await?;
    ensure!(rows(&second).is_empty(), "{second}");

    // One in full, with its headers and body; an unknown id is a 404.
    let letter_url = |id: &str| {
        format!(
            "{base}/dead-letters/letter?shelf=queue:{}&id={id}",
            scene.queue.name
        )
    };
    let (status, shown) = get(&letter_url(&scene.failed[0])).await?;
    ensure!(status == StatusCode::OK, "{status}");
    ensure!(
        shown.contains("x-celeriac-reason") && shown.contains("boom-1"),
        "{shown}"
    );
    ensure!(
        shown.contains("x-celeriac-first-dead-lettered-at"),
        "{shown}"
    );
    let (status, _) = get(&letter_url("no-such-id")).await?;
    ensure!(status == StatusCode::NOT_FOUND, "{status}");

    // Actions need the page's token, and no foreign origin.
    let requeue = format!("{base}/dead-letters/requeue");
    let shelf = format!("queue:{}", scene.queue.name);
    let add_id = scene.add.id().to_owned();
    let no_token = post(
        &requeue,
        &[("shelf", &shelf), ("one", &add_id), ("confirmed", "yes")],
        None,
    )
    .await?;
    ensure!(
        no_token.status() == StatusCode::FORBIDDEN,
        "{}",
        no_token.status()
    );
    let token = csrf(&page)?;
    let fields = [
        ("csrf", token.as_str()),
        ("shelf", &shelf),
        ("one", &add_id),
        ("confirmed", "yes"),
    ];
    let foreign = post(&requeue, &fields, Some("https://evil.example")).await?;
    ensure!(foreign.status() == StatusCode::FORBIDDEN);
    ensure!(
        scene.dead_letters().await? == 3,
        "a refused action changed something"
    );

    // Without `confirmed` an action only asks.
    let asked = post(&requeue, &fields[..3], None).await?;
    ensure!(asked.status() == StatusCode::OK);
    let question = asked.text().await?;
    ensure!(
        question.contains("Yes, requeue") && question.contains(&add_id),
        "{question}"
    );
    ensure!(scene.dead_letters().await? == 3, "asking changed something");

    // Deploy the fix, requeue the unknown task: it runs and succeeds.
    let worker = scene.deploy_fix().await?;
    let own_origin = format!("http://{}", dashboard.addr());
    let done = post(&requeue, &fields, Some(&own_origin)).await?;
    ensure!(done.status() == StatusCode::SEE_OTHER, "{}", done.status());
    let location = done.headers()[LOCATION].to_str()?.to_owned();
    ensure!(
        location.contains("notice=Requeued+1+dead+letter"),
        "{location}"
    );
    let sum = scene.add.get(Duration::from_secs(30)).await?;
    ensure!(sum == json!(5), "the requeued demo.add returned {sum}");
    let (_, after) = get(&format!("{base}{location}")).await?;
    ensure!(after.contains("Requeued 1 dead letter(s)"), "{after}");
    ensure!(
        sorted(rows(&after)) == sorted(scene.failed.clone()),
        "{after}"
    );

    // Purge everything matching the task filter, after confirming.
    let purge = format!("{base}/dead-letters/purge");
    let purged = post(
        &purge,
        &[
            ("csrf", &token),
            ("shelf", &shelf),
            ("scope", "matching"),
            ("task", "demo.fail"),
            ("confirmed", "yes"),
        ],
        None,
    )
    .await?;
    ensure!(purged.status() == StatusCode::SEE_OTHER);
    ensure!(purged.headers()[LOCATION].to_str()?.contains("Purged+2"));
    ensure!(scene.dead_letters().await? == 0);

    // Queues and workers, live.
    let (status, queues) = get(&format!("{base}/queues")).await?;
    ensure!(status == StatusCode::OK && queues.contains("/live/queues"));
    let row = format!("data-queue=\"{}\"", scene.queue.name);
    let event = event_containing(&format!("{base}/live/queues"), &row).await?;
    ensure!(event.starts_with("event: update"), "{event}");
    let node = format!("data-worker=\"test@{}\"", scene.queue.name);
    let event = event_containing(&format!("{base}/live/workers"), &node).await?;
    ensure!(event.contains(&scene.queue.name), "{event}");

    dashboard.stop().await;
    worker.stop().await?;
    scene.cleanup().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_or_protected_dashboard_holds() -> Result<()> {
    let scene = Scene::new("dash-guard").await?;

    // Read-only: no buttons, and a forged action is refused.
    let read_only = scene.dashboard(|c| c.read_only = true).await?;
    let (status, page) = get(&scene.list_url(&read_only, "")).await?;
    ensure!(status == StatusCode::OK && rows(&page).len() == 3);
    ensure!(
        !page.contains(">Requeue<") && !page.contains(">Purge<"),
        "{page}"
    );
    let purge = format!("http://{}/dead-letters/purge", read_only.addr());
    let shelf = format!("queue:{}", scene.queue.name);
    let refused = post(
        &purge,
        &[
            ("shelf", &shelf),
            ("scope", "matching"),
            ("confirmed", "yes"),
        ],
        None,
    )
    .await?;
    ensure!(refused.status() == StatusCode::FORBIDDEN);
    ensure!(scene.dead_letters().await? == 3);
    read_only.stop().await;

    // A password: asked for, and checked.
    let protected = scene
        .dashboard(|c| c.access = Access::basic("oncall:s3cret").unwrap())
        .await?;
    let url = scene.list_url(&protected, "");
    let asked = http()?.get(&url).send().await?;
    ensure!(asked.status() == StatusCode::UNAUTHORIZED);
    ensure!(asked.headers().contains_key(WWW_AUTHENTICATE));
    let wrong = http()?
        .get(&url)
        .basic_auth("oncall", Some("guess"))
        .send()
        .await?;
    ensure!(wrong.status() == StatusCode::UNAUTHORIZED);
    let right = http()?
        .get(&url)
        .basic_auth("oncall", Some("s3cret"))
        .send()
        .await?;
    ensure!(right.status() == StatusCode::OK);
    ensure!(right.headers()["x-frame-options"] == "DENY");
    protected.stop().await;

    // No password on a public address: refused before it listens.
    let exposed = scene
        .dashboard(|c| c.listen = "0.0.0.0:0".parse().unwrap())
        .await;
    ensure!(
        matches!(exposed, Err(ref e) if e.downcast_ref::<DashboardError>().is_some_and(|e| matches!(e, DashboardError::Exposed(_)))),
        "{exposed:?}"
    );

    scene.cleanup().await;
    Ok(())
}

/// Dead letters in the many-dead-letters test.
const MANY: usize = 100_000;

/// The peak resident memory of process `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/<pid>/status")?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmHWM")?
        .parse()?;
    Ok(kib / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_dead_letters_page_without_loading_them_all() -> Result<()> {
    let broker = celeriac_tests::connect().await?;
    let queue = unique("dash-many");
    let dead = dead_letter_queue(&broker, &queue);
    // As a worker leaves them: one in ten for an unknown task.
    fill_dead_letters(&broker, &queue, "many", MANY, |i| {
        if i % 10 == 0 {
            ("proj.unknown", "unknown_task")
        } else {
            ("proj.fails", "failed")
        }
    })
    .await?;

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut dashboard = tokio::process::Command::new(celeriac_tests::worker::binary("celeriac")?)
        .args([
            "dashboard",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "-Q",
            &queue,
        ])
        .env("CELERIAC_BROKER_URL", broker_url())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = dashboard.id().context("the dashboard exited at once")?;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while get(&format!("{base}/healthz")).await.is_err() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the dashboard did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = format!("{base}/dead-letters?shelf=queue:{queue}");
    let before = peak_rss_mib(pid)?;

    let started = std::time::Instant::now();
    let (status, first) = get(&list).await?;
    let first_view = started.elapsed();
    ensure!(status == StatusCode::OK);
    ensure!(
        rows(&first).len() == 50,
        "the first page holds {} rows",
        rows(&first).len()
    );
    ensure!(
        first.contains("100,000 dead letters in"),
        "the count is missing"
    );

    let started = std::time::Instant::now();
    let (_, filtered) = get(&format!("{list}&reason=unknown_task&page=3")).await?;
    let filtered_view = started.elapsed();
    let page_three = rows(&filtered);
    ensure!(
        page_three.len() == 50 && page_three[0] == "many-1000",
        "{page_three:?}"
    );
    ensure!(
        filtered.contains("1,000 of 10,000 dead letters read match")
            && filtered.contains("90,000 more past the first 10,000"),
        "the filtered summary is missing"
    );

    // The last page the list reaches, and the note past it.
    let (_, deepest) = get(&format!("{list}&page=200")).await?;
    ensure!(rows(&deepest).last().map(String::as_str) == Some("many-9999"));
    ensure!(deepest.contains("Pages reach the first 10,000"));

    let peak = peak_rss_mib(pid)?;
    println!(
        "{MANY} dead letters: first page in {first_view:.2?}, a filtered page (10,000 read) in \
         {filtered_view:.2?}; dashboard peak RSS {before:.1} MiB idle, {peak:.1} MiB after paging"
    );
    // Every message held in memory at once would take well over this.
    ensure!(peak < 150.0, "the dashboard peaked at {peak:.1} MiB");
    // Nothing was taken: what the reads held comes back as they close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready = broker.queue_counts(&dead.name).await?.map_or(0, |c| c.0);
        if ready == MANY as u32 {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{ready} of {MANY} dead letters are back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    dashboard.kill().await?;
    broker.delete_queue(&dead.name).await?;
    Ok(())
}
