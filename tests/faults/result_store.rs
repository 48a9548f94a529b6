//! The result store lost under load: 10,000 tasks with results stored in a
//! Redis (the test's own, which keeps what it acknowledged) that is stopped
//! for two seconds while they run, and 5,000 stored in PostgreSQL (a
//! database of the test's own) whose connections are cut ten times while
//! they run. A delivery is acked only once its result is stored (the row
//! committed), so every task id must end with its result.

use std::time::Duration;

use anyhow::{Result, ensure};
use celeriac::{App, TaskCall};
use celeriac_demo::tasks as demo;
use celeriac_tests::postgres::TestDatabase;
use celeriac_tests::redis_server::RedisServer;
use celeriac_tests::worker::{RunningWorker, cleanup};
use celeriac_tests::{broker_url, disturbing, unique};
use celeriac_worker::WorkerConfig;
use serde_json::{Value, json};

const TASKS: i64 = 10_000;

/// How many of `ids` have their `SUCCESS` stored with the right value, and
/// the first few that do not.
async fn stored(
    redis: &mut redis::aio::MultiplexedConnection,
    ids: &[String],
) -> Result<(usize, Vec<String>)> {
    let mut good = 0;
    let mut missing = Vec::new();
    for (chunk_index, chunk) in ids.chunks(500).enumerate() {
        let keys: Vec<String> = chunk
            .iter()
            .map(|id| format!("celery-task-meta-{id}"))
            .collect();
        let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(redis).await?;
        for (offset, value) in values.into_iter().enumerate() {
            let index = i64::try_from(chunk_index * 500 + offset)?;
            let ok = value
                .and_then(|v| serde_json::from_str::<Value>(&v).ok())
                .is_some_and(|doc| doc["status"] == "SUCCESS" && doc["result"] == json!(index + 1));
            if ok {
                good += 1;
            } else if missing.len() < 5 {
                missing.push(chunk[offset].clone());
            }
        }
    }
    Ok((good, missing))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_under_load_loses_no_result() -> Result<()> {
    let _serial = disturbing().await;
    let mut server = RedisServer::start()?;
    let queue = unique("fault-redis");
    let worker_app = demo::register(App::builder())
        .broker_url(broker_url())
        .result_backend(server.url())
        .default_queue(queue.clone())
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![queue.clone()],
        concurrency: 16,
        ..WorkerConfig::default()
    };
    let worker = RunningWorker::run(worker_app, config);
    let client = App::builder()
        .broker_url(broker_url())
        .result_backend(server.url())
        .default_queue(queue.clone())
        .build()
        .await?;
    let calls = (0..TASKS).map(|i| TaskCall::<Value>::new("demo.add", vec![json!(i), json!(1)]));
    let sent = client.send_many(calls).await?;
    let ids: Vec<String> = sent.iter().map(|r| r.id().to_owned()).collect();
    let mut redis = redis::Client::open(server.url())?
        .get_multiplexed_async_connection()
        .await?;

    // Restart the store while the worker is busy storing results.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut before = 0;
    while tokio::time::Instant::now() < deadline {
        before = stored(&mut redis, &ids).await?.0;
        if before >= 1_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        before < ids.len(),
        "every result was stored before the fault ({before}); the test proves nothing"
    );
    tokio::task::block_in_place(|| server.restart(Duration::from_secs(2)))?;
    let mut redis = redis::Client::open(server.url())?
        .get_multiplexed_async_connection()
        .await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let (mut good, mut missing) = (0, Vec::new());
    while tokio::time::Instant::now() < deadline {
        (good, missing) = stored(&mut redis, &ids).await?;
        if good == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let summary = worker.stop().await?;
    println!(
        "redis restart: sent {TASKS}, confirmed {}, stored before the restart {before}, \
         stored in the end {good}, lost {}; worker {summary:?}",
        ids.len(),
        ids.len() - good
    );
    ensure!(
        good == ids.len(),
        "{} results lost, e.g. {missing:?}",
        ids.len() - good
    );
    cleanup(&client, &queue).await;
    Ok(())
}

/// How many of `ids` have their `SUCCESS` row with the right value in the
/// PostgreSQL backend's table, and the first few that do not.
async fn rows_stored(
    database: &tokio_postgres::Client,
    ids: &[String],
) -> Result<(usize, Vec<String>)> {
    let rows = database
        .query(
            "SELECT task_id, status, result FROM celery_taskmeta WHERE task_id = ANY($1)",
            &[&ids],
        )
        .await?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        let task_id: String = row.get(0);
        let status: Option<String> = row.get(1);
        let result: Option<Vec<u8>> = row.get(2);
        found.insert(task_id, (status, result));
    }
    let mut good = 0;
    let mut missing = Vec::new();
    for (index, id) in ids.iter().enumerate() {
        let want = (index + 1).to_string().into_bytes();
        match found.get(id) {
            Some((Some(status), Some(result))) if status == "SUCCESS" && *result == want => {
                good += 1;
            }
            _ if missing.len() < 5 => missing.push(id.clone()),
            _ => {}
        }
    }
    Ok((good, missing))
}

/// Cuts every connection to `database` but the caller's, as a server
/// restart or a failover would.
async fn cut_connections(admin: &tokio_postgres::Client, database: &str) -> Result<u64> {
    let cut = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&database],
        )
        .await?;
    Ok(u64::try_from(cut.len())?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_database_connections_under_load_lose_no_result() -> Result<()> {
    const ROWS: i64 = 5_000;
    let database = TestDatabase::create("fault").await?;
    let queue = unique("fault-postgres");
    let worker_app = demo::register(App::builder())
        .broker_url(broker_url())
        .result_backend(database.backend_url())
        .default_queue(queue.clone())
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![queue.clone()],
        concurrency: 16,
        ..WorkerConfig::default()
    };
    let worker = RunningWorker::run(worker_app, config);
    let client = App::builder()
        .broker_url(broker_url())
        .default_queue(queue.clone())
        .build()
        .await?;
    let calls = (0..ROWS).map(|i| TaskCall::<Value>::new("demo.add", vec![json!(i), json!(1)]));
    let sent = client.send_many(calls).await?;
    let ids: Vec<String> = sent.iter().map(|r| r.id().to_owned()).collect();
    let observer = database.connect().await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut before = 0;
    while tokio::time::Instant::now() < deadline {
        before = observer
            .query_one("SELECT count(*) FROM celery_taskmeta", &[])
            .await
            .map_or(0, |row| row.get::<_, i64>(0));
        if before >= 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        usize::try_from(before)? < ids.len(),
        "every result was stored before the fault ({before}); the test proves nothing"
    );
    // Cut the worker's connections ten times, 200 ms apart, while it stores.
    let admin = TestDatabase::admin().await?;
    let mut cut = 0;
    for _ in 0..10 {
        cut += cut_connections(&admin, database.name()).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let observer = database.connect().await?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let (mut good, mut missing) = (0, Vec::new());
    while tokio::time::Instant::now() < deadline {
        (good, missing) = rows_stored(&observer, &ids).await?;
        if good == ids.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let summary = worker.stop().await?;
    println!(
        "postgres connections cut: sent {ROWS}, confirmed {}, stored before {before}, \
         connections cut {cut}, stored in the end {good}, lost {}; worker {summary:?}",
        ids.len(),
        ids.len() - good
    );
    ensure!(cut > 0, "no connection was cut; the test proves nothing");
    ensure!(
        good == ids.len(),
        "{} results lost, e.g. {missing:?}",
        ids.len() - good
    );
    cleanup(&client, &queue).await;
    Ok(())
}
