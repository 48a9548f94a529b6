//! Signed messages (Celery's `auth` serializer) between Python Celery and
//! Celeriac, both ways: what each side accepts, what it refuses, and the
//! configuration mistakes that stop a worker before it starts. Keys and
//! certificates are made by `tests/interop/make_certs.py` for each test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::broker::dead_letter::{EXCEPTION_MESSAGE_HEADER, REASON_HEADER};
use celeriac::result::{DatabaseBackend, RedisBackend, ResultBackend, ResultSettings};
use celeriac::{App, Queue, Request, ResultMeta, Security, State};
use celeriac_demo::tasks as demo;
use celeriac_protocol::{ExtendedMeta, auth};
use celeriac_tests::postgres::TestDatabase;
use celeriac_tests::require_redis;
use celeriac_tests::worker::{RunningWorker, cleanup, client, dead_letters, header};
use celeriac_tests::{
    PythonWorker, broker_url, celery_version, interop_python, interop_result_column, repo_root,
    unique,
};
use celeriac_worker::WorkerConfig;
use serde::Deserialize;

/// A directory of keys and certificates, removed when dropped.
struct Certs(PathBuf);

impl Certs {
    async fn make() -> Result<Certs> {
        let dir = std::env::temp_dir().join(unique("certs"));
        let output = tokio::process::Command::new(interop_python()?)
            .arg(repo_root().join("tests/interop/make_certs.py"))
            .arg(&dir)
            .output()
            .await?;
        ensure!(
            output.status.success(),
            "make_certs.py failed (is `cryptography` in the interop venv? run \
             scripts/setup-interop): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(Certs(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Signing as `signer` (whose key is encrypted with `password`, if
    /// given), trusting the certificates in `store`, in the envelope layout
    /// of the interop venv's Celery.
    fn security(&self, signer: &str, password: Option<&str>, store: &str) -> Result<Security> {
        let (major, minor) = celery_version()?;
        let security = Security::from_files(
            self.path(&format!("{signer}.key")),
            password,
            self.path(&format!("{signer}.pem")),
            self.path(store),
            "sha256",
        )?;
        Ok(security.envelope_for(&format!("{major}.{minor}"))?)
    }

    /// The Rust side's own: `rust.key`, encrypted.
    fn rust(&self) -> Result<Security> {
        self.security("rust", Some("rust-secret"), "store")
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What `tests/interop/drive_signed.py` reports.
#[derive(Debug, Deserialize)]
struct Driven {
    result: i64,
    pongs: usize,
    chord: Option<i64>,
    unsigned: String,
    tampered: String,
    stranger: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_worker_runs_python_signed_tasks_and_dead_letters_the_rest() -> Result<()> {
    rust_worker_runs_python_signed_tasks("rpc://").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_results_and_chords_in_redis_from_a_rust_worker_read_in_python() -> Result<()> {
    rust_worker_runs_python_signed_tasks(&require_redis()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_results_and_chords_in_the_database_from_a_rust_worker_read_in_python() -> Result<()>
{
    let database = TestDatabase::create("signed_rust").await?;
    rust_worker_runs_python_signed_tasks(&database.backend_url()).await
}

/// A Python producer with security set up drives a Rust worker that
/// stores results in `backend` (see `drive_signed.py`).
async fn rust_worker_runs_python_signed_tasks(backend: &str) -> Result<()> {
    let certs = Certs::make().await?;
    let queue = Queue::celery_default(unique("signed-in"));
    let app = demo::register(App::builder())
        .broker_url(broker_url())
        .result_backend(backend)
        .database_result_column(interop_result_column()?)
        .security(certs.rust()?)
        .queue(queue.clone())
        .default_queue(queue.name.clone())
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![queue.name.clone()],
        concurrency: 4,
        mingle: false,
        ..WorkerConfig::default()
    };
    let mut worker = RunningWorker::run(app, config);
    let driver = tokio::process::Command::new(interop_python()?)
        .arg(repo_root().join("tests/interop/drive_signed.py"))
        .args([broker_url(), queue.name.clone()])
        .arg(&certs.0)
        .arg(backend)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), worker.while_running(driver))
        .await
        .context("drive_signed.py did not finish in 120 s")???;
    ensure!(
        output.status.success(),
        "drive_signed.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let driven: Driven = serde_json::from_slice(&output.stdout)?;
    // Python read the result the Rust worker signed, with its store, and
    // its signed ping was answered with a signed pong.
    ensure!(driven.result == 5 && driven.pongs == 1, "{driven:?}");
    if !backend.starts_with("rpc") {
        ensure!(driven.chord == Some(6), "the signed chord: {driven:?}");
    }

    let reader = client(&queue).await?;
    let letters = dead_letters(&reader, &queue.name, 3).await?;
    let by_id: HashMap<String, (String, String)> = letters
        .iter()
        .map(|l| {
            let id = header(l, "id");
            (
                id,
                (
                    header(l, REASON_HEADER),
                    header(l, EXCEPTION_MESSAGE_HEADER),
                ),
            )
        })
        .collect();
    let expect = |id: &str, reason: &str, says: &str| -> Result<()> {
        let (got, message) = by_id
            .get(id)
            .with_context(|| format!("task {id} was not dead-lettered: {by_id:?}"))?;
        ensure!(
            got == reason && message.contains(says),
            "task {id}: expected reason {reason} saying {says:?}, got {got} {message:?}"
        );
        Ok(())
    };
    expect(&driven.unsigned, "unsigned", "not signed")?;
    expect(&driven.tampered, "bad_signature", "does not match the body")?;
    expect(&driven.stranger, "bad_signature", "not among the trusted")?;

    let summary = worker.stop().await?;
    // add, then the chord's three members and its body; on the database
    // also the `celery.chord_unlock` that joined it (its polls are retries).
    let runs = match backend {
        b if b.starts_with("redis") => 5,
        b if b.starts_with("db+") => 6,
        _ => 1,
    };
    ensure!(
        summary.succeeded == runs && summary.dead_lettered == 3 && summary.failed == 0,
        "{runs} runs and three dead letters expected: {summary:?}"
    );
    cleanup(&reader, &queue.name).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_worker_runs_rust_signed_tasks_and_refuses_a_stranger() -> Result<()> {
    python_worker_runs_rust_signed_tasks("rpc://").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_results_in_redis_from_a_python_worker_read_in_rust() -> Result<()> {
    python_worker_runs_rust_signed_tasks(&require_redis()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_results_in_the_database_from_a_python_worker_read_in_rust() -> Result<()> {
    let database = TestDatabase::create("signed_python").await?;
    python_worker_runs_rust_signed_tasks(&database.backend_url()).await
}

/// A Rust producer with security set up drives a Python worker that
/// stores signed results in `backend`.
async fn python_worker_runs_rust_signed_tasks(backend: &str) -> Result<()> {
    let certs = Certs::make().await?;
    let queue = unique("signed-out");
    let python = PythonWorker::start_signed(&queue, &certs.0, backend).await?;
    let app = App::builder()
        .broker_url(broker_url())
        .result_backend(backend)
        .database_result_column(interop_result_column()?)
        .security(certs.rust()?)
        .build()
        .await?;
    // The Python worker accepts signed messages only, and signs its
    // result, which this app verifies.
    let sum: i64 = app
        .send_task("interop.add")
        .args(serde_json::json!([2, 3]))
        .queue(&queue)
        .apply()
        .await?
        .get_as(Duration::from_secs(60))
        .await
        .with_context(|| python.log())?;
    ensure!(sum == 5, "interop.add(2, 3) returned {sum}");

    // Signed by a key whose certificate the Python side does not trust.
    let stranger = App::builder()
        .broker_url(broker_url())
        .security(certs.security("stranger", None, "store")?)
        .build()
        .await?;
    let refused = stranger
        .send_task("interop.add")
        .args(serde_json::json!([2, 3]))
        .queue(&queue)
        .apply()
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !python.log().contains("Unknown certificate") {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the Python worker did not refuse the stranger's message: {}",
            python.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        !python
            .log()
            .contains(&format!("[{}] succeeded", refused.id())),
        "the Python worker ran the stranger's task: {}",
        python.log()
    );
    stranger.close().await;
    // Stopped first, so it does not declare the queue again.
    drop(python);
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test]
async fn signing_set_up_wrongly_is_refused_with_the_reason() -> Result<()> {
    let certs = Certs::make().await?;
    let refusal = |result: Result<Security>| match result {
        Ok(_) => "accepted".to_owned(),
        Err(e) => e.to_string(),
    };
    let cases = [
        (
            certs.security("rust", None, "store"),
            "password",
            "an encrypted key without its password",
        ),
        (
            certs.security("rust", Some("wrong"), "store"),
            "cannot be read",
            "an encrypted key with the wrong password",
        ),
        (
            certs.security("python", None, "expired-store"),
            "has expired",
            "a store holding an expired certificate",
        ),
        (
            Security::from_files(
                certs.path("rust.key"),
                Some("rust-secret"),
                certs.path("python.pem"),
                certs.path("store"),
                "sha256",
            )
            .map_err(Into::into),
            "not the key of the certificate",
            "a key that does not match its certificate",
        ),
        (
            certs.security("python", None, "no-such-dir/*.pem"),
            "holds no certificate",
            "an empty store",
        ),
        (
            Security::from_files(
                certs.path("python.key"),
                None,
                certs.path("python.pem"),
                certs.path("store"),
                "md5",
            )
            .map_err(Into::into),
            "not supported",
            "an unsupported digest",
        ),
    ];
    for (result, says, case) in cases {
        let refusal = refusal(result);
        ensure!(
            refusal.contains(says),
            "{case}: expected {says:?}, got {refusal:?}"
        );
    }
    // The stranger's key is PKCS#1, the others PKCS#8: both load.
    certs.security("stranger", None, "store")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_success_in_redis_is_never_overwritten_in_either_layout() -> Result<()> {
    let certs = Certs::make().await?;
    for layout in ["5.5", "5.4"] {
        let security = certs.rust()?.envelope_for(layout)?;
        let backend = RedisBackend::new(&require_redis()?, ResultSettings::default())?
            .with_security(Some(security));
        let id = unique("signed-success");
        let request = Request::detached("demo.add", id.clone());
        let success = ResultMeta::new(id.clone(), State::Success, 42.into());
        backend.store(&success, &request).await?;
        let late = ResultMeta::new(id.clone(), State::Started, serde_json::Value::Null);
        backend.store(&late, &request).await?;
        let stored = backend.get(&id).await?.context("the result is there")?;
        ensure!(
            stored.status == State::Success && stored.result == 42,
            "layout {layout}: a late STARTED replaced the signed SUCCESS: {stored:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_rows_are_sealed_column_by_column_and_forgeries_refused() -> Result<()> {
    let certs = Certs::make().await?;
    let database = TestDatabase::create("signed_rows").await?;
    let url = database.backend_url();
    let signed =
        DatabaseBackend::new(&url, ResultSettings::default())?.with_security(Some(certs.rust()?));
    let id = unique("signed-row");
    let request = Request::detached("demo.add", id.clone());
    let mut success = ResultMeta::new(id.clone(), State::Success, 42.into());
    success.extended = Some(ExtendedMeta {
        name: Some("demo.add".into()),
        args: serde_json::json!([40, 2]),
        kwargs: serde_json::json!({}),
        worker: Some("test@host".into()),
        retries: Some(0),
        queue: Some("celery".into()),
    });
    signed.store(&success, &request).await?;

    // Each JSON column holds an envelope, as Celery 5.7 seals it.
    let client = database.connect().await?;
    let row = client
        .query_one(
            "SELECT result, args, kwargs FROM celery_taskmeta WHERE task_id = $1",
            &[&id],
        )
        .await?;
    for (name, index) in [("result", 0), ("args", 1), ("kwargs", 2)] {
        let stored: Vec<u8> = row.get(index);
        ensure!(
            auth::looks_sealed(&stored),
            "the {name} column is not sealed: {:?}",
            String::from_utf8_lossy(&stored)
        );
    }
    let read = signed
        .get(&id)
        .await?
        .context("the signed row reads back")?;
    ensure!(read.result == 42, "{read:?}");
    ensure!(
        read.extended
            .as_ref()
            .is_some_and(|e| e.args == serde_json::json!([40, 2])),
        "{read:?}"
    );

    // A row written without signing is refused by the signing app, and a
    // sealed column whose body was changed fails its signature.
    let plain = DatabaseBackend::new(&url, ResultSettings::default())?;
    let forged = unique("forged-row");
    plain
        .store(
            &ResultMeta::new(forged.clone(), State::Success, 666.into()),
            &Request::detached("demo.add", forged.clone()),
        )
        .await?;
    let refused = signed.get(&forged).await.unwrap_err().to_string();
    ensure!(refused.contains("not signed"), "{refused}");
    let sealed: Vec<u8> = row.get(0);
    let tampered = tamper(&sealed, b"42", b"43")?;
    client
        .execute(
            "UPDATE celery_taskmeta SET result = $1 WHERE task_id = $2",
            &[&tampered, &id],
        )
        .await?;
    let refused = signed.get(&id).await.unwrap_err().to_string();
    ensure!(refused.contains("signature refused"), "{refused}");
    // And an app without certificates says what it is missing.
    let blind = plain.get(&id).await.unwrap_err().to_string();
    ensure!(blind.contains("--security-cert-store"), "{blind}");
    Ok(())
}

/// `sealed` with its signed body's `from` replaced by `to`, the signature
/// kept (the body is the envelope's plain tail in either layout).
fn tamper(sealed: &[u8], from: &[u8], to: &[u8]) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut raw = engine.decode(sealed)?;
    let at = raw
        .windows(from.len())
        .rposition(|w| w == from)
        .context("the body is not in the envelope")?;
    raw[at..at + from.len()].copy_from_slice(to);
    Ok(engine.encode(raw).into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_control_is_signed_and_an_unsigned_request_is_ignored() -> Result<()> {
    let certs = Certs::make().await?;
    let queue = Queue::celery_default(unique("signed-control"));
    let node = format!("test@{}", queue.name);
    let worker =
        RunningWorker::start(App::builder().security(certs.rust()?), &queue, |_| {}).await?;
    let signed = App::builder()
        .broker_url(broker_url())
        .security(certs.rust()?)
        .build()
        .await?;
    let unsigned = App::builder().broker_url(broker_url()).build().await?;
    let timeout = Duration::from_secs(3);
    // The worker's control queue exists once it answers a signed ping.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let pongs = signed.control().to([&node]).timeout(timeout).ping().await?;
        if !pongs.is_empty() {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the worker never answered a signed ping"
        );
    }
    let ignored = unsigned
        .control()
        .to([&node])
        .timeout(timeout)
        .ping()
        .await?;
    ensure!(
        ignored.is_empty(),
        "a worker with signing set up answered an unsigned ping: {ignored:?}"
    );
    worker.stop().await?;
    unsigned.close().await;
    cleanup(&signed, &queue.name).await;
    Ok(())
}
