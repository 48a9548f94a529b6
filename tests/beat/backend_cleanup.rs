//! `celeriac-beat --result-backend db+postgresql://...`: results in a
//! database do not expire by themselves, so beat schedules Celery's daily
//! `celery.backend_cleanup` as Celery's beat does, and leaves a schedule
//! that already sends it alone.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac_tests::postgres::TestDatabase;
use celeriac_tests::worker::binary;
use celeriac_tests::{broker_url, unique};
use tokio::io::{AsyncBufReadExt as _, BufReader};

const SCHEDULED: &str = "scheduled celery.backend_cleanup daily at 04:00 UTC";

/// Runs beat on `schedule` until it is active, and returns what it logged.
async fn beat_log(schedule: &str, backend: &str) -> Result<String> {
    let dir = std::env::temp_dir().join(unique("beat-cleanup"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("schedule.toml");
    std::fs::write(&path, schedule)?;
    let mut beat = tokio::process::Command::new(binary("celeriac-beat")?)
        .args(["--broker", &broker_url(), "--result-backend", backend])
        .args(["--name", &unique("beat-cleanup"), "--loglevel", "info"])
        .arg("--schedule")
        .arg(&path)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = beat.stdout.take().context("beat's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut log = String::new();
    let reading = async {
        while let Some(line) = lines.next_line().await? {
            log.push_str(&line);
            log.push('\n');
            if line.contains("this beat is active") {
                break;
            }
        }
        anyhow::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), reading).await;
    beat.kill().await?;
    let _ = std::fs::remove_dir_all(&dir);
    ensure!(
        log.contains("this beat is active"),
        "beat did not start within 20 s:\n{log}"
    );
    Ok(log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beat_schedules_backend_cleanup_for_a_database_backend() -> Result<()> {
    let database = TestDatabase::create("beat").await?;
    let tick = "[entries.tick]\ntask = \"demo.add\"\nevery = 3600\nargs = [1, 2]\n";
    let log = beat_log(tick, &database.backend_url()).await?;
    ensure!(
        log.contains(SCHEDULED),
        "beat did not schedule the cleanup:\n{log}"
    );

    let own = format!(
        "{tick}[entries.nightly]\ntask = \"celery.backend_cleanup\"\ncrontab = {{ minute = \"30\", hour = \"2\" }}\n"
    );
    let log = beat_log(&own, &database.backend_url()).await?;
    ensure!(
        !log.contains(SCHEDULED),
        "beat added a second cleanup beside the schedule's own:\n{log}"
    );
    Ok(())
}
