//! The PostgreSQL backend from Rust, with a Rust worker: the tables it
//! creates are the ones Celery's SQLAlchemy models create; results, saved
//! groups and chords (joined by `celery.chord_unlock`) work from Rust
//! alone; `celery.backend_cleanup` deletes the expired rows and keeps the
//! rest.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use celeriac::result::{DatabaseBackend, DjangoBackend, ResultBackend, ResultSettings};
use celeriac::{App, Request, ResultMeta, Signature, State, chord, group};
use celeriac_demo::tasks::{self as demo, add};
use celeriac_tests::postgres::TestDatabase;
use celeriac_tests::worker::{RunningWorker, cleanup, failure};
use celeriac_tests::{broker_url, interop_python, unique};
use celeriac_worker::WorkerConfig;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// A Rust worker with the demo tasks storing results in `database`, and an
/// app sending to it, both keeping results for `expires`.
async fn setup(
    database: &TestDatabase,
    queue: &str,
    expires: Duration,
) -> Result<(App, RunningWorker)> {
    let worker_app = demo::register(App::builder())
        .broker_url(broker_url())
        .result_backend(database.backend_url())
        .result_expires(expires)
        .default_queue(queue)
        .build()
        .await?;
    let config = WorkerConfig {
        queues: vec![queue.to_owned()],
        concurrency: 4,
        ..WorkerConfig::default()
    };
    let worker = RunningWorker::run(worker_app, config);
    let client = App::builder()
        .broker_url(broker_url())
        .result_backend(database.backend_url())
        .result_expires(expires)
        .default_queue(queue)
        .build()
        .await?;
    Ok((client, worker))
}

/// Every column, constraint, index and sequence of the public schema, as
/// sorted lines.
async fn schema_of(database: &TestDatabase) -> Result<Vec<String>> {
    let client = database.connect().await?;
    let mut lines = Vec::new();
    for row in client
        .query(
            "SELECT table_name, column_name, data_type, \
                    coalesce(character_maximum_length, 0), is_nullable, \
                    coalesce(column_default, '') \
             FROM information_schema.columns WHERE table_schema = 'public'",
            &[],
        )
        .await?
    {
        let (table, column, kind): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let (length, nullable, default): (i32, String, String) =
            (row.get(3), row.get(4), row.get(5));
        lines.push(format!(
            "column {table}.{column} {kind}({length}) null={nullable} default={default:?}"
        ));
    }
    for row in client
        .query(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE connamespace = 'public'::regnamespace",
            &[],
        )
        .await?
    {
        let (name, definition): (String, String) = (row.get(0), row.get(1));
        lines.push(format!("constraint {name} {definition}"));
    }
    for row in client
        .query(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
            &[],
        )
        .await?
    {
        let (name, definition): (String, String) = (row.get(0), row.get(1));
        lines.push(format!("index {name} {definition}"));
    }
    for row in client
        .query(
            "SELECT sequence_name, data_type, start_value, increment \
             FROM information_schema.sequences WHERE sequence_schema = 'public'",
            &[],
        )
        .await?
    {
        let (name, kind, start, step): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        lines.push(format!("sequence {name} {kind} start={start} step={step}"));
    }
    lines.sort();
    Ok(lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tables_rust_creates_are_the_ones_sqlalchemy_creates() -> Result<()> {
    let by_rust = TestDatabase::create("ddl_rust").await?;
    let by_python = TestDatabase::create("ddl_python").await?;

    let backend = DatabaseBackend::new(&by_rust.backend_url(), ResultSettings::default())?;
    // The first use creates the tables.
    backend.get("no-such-task").await?;

    let created = tokio::process::Command::new(interop_python()?)
        .args([
            "-c",
            "import sys\n\
             from celery import Celery\n\
             app = Celery(broker='memory://', backend=sys.argv[1])\n\
             app.conf.result_extended = True\n\
             app.backend.ResultSession().close()\n",
            &by_python.backend_url(),
        ])
        .output()
        .await?;
    ensure!(
        created.status.success(),
        "Celery could not create its tables: {}",
        String::from_utf8_lossy(&created.stderr)
    );

    let rust = schema_of(&by_rust).await?;
    let python = schema_of(&by_python).await?;
    ensure!(
        rust.len() >= 20,
        "the Rust tables look incomplete: {rust:#?}"
    );
    ensure!(
        rust == python,
        "the schemas differ:\nRust:   {rust:#?}\nPython: {python:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_groups_and_chords_work_from_rust_alone() -> Result<()> {
    let database = TestDatabase::create("rust").await?;
    let queue = unique("db-results");
    let (app, worker) = setup(&database, &queue, Duration::from_secs(86_400)).await?;

    let sent = add::new(20, 22).apply_async(&app).await?;
    ensure!(sent.get(WAIT).await? == 42);
    let again = app.async_result::<i64>(sent.id());
    ensure!(again.state().await? == State::Success);
    ensure!(again.get(WAIT).await? == 42, "read twice");

    let failed = app
        .send_task("demo.fail")
        .args(("db broke",))
        .apply()
        .await?;
    let failed = failure(failed.get_as::<Value>(WAIT).await)?;
    ensure!(failed.exc_type == "ValueError", "{failed:?}");

    let members = group((0..5).map(|i| add::s(i, i)))
        .apply_async(&app)
        .await?;
    members.save().await?;
    ensure!(members.join::<i64>(WAIT).await? == [0, 2, 4, 6, 8]);
    let restored = app
        .restore_group(members.id())
        .await?
        .context("the saved group is restorable")?;
    ensure!(restored.results().len() == 5);

    // The header's last task takes two seconds, so `celery.chord_unlock`
    // (sent one second after the chord) finds it not ready and polls again.
    let header = (0..5)
        .map(|i| add::s(i, 1).signature())
        .chain([Signature::new("demo.sleep").with_arg(2.0)]);
    let joined = chord(header, Signature::new("demo.echo"))
        .apply_async(&app)
        .await?
        .get_as::<Value>(WAIT)
        .await?;
    ensure!(
        joined == serde_json::json!([1, 2, 3, 4, 5, 2.0]),
        "the chord's body got {joined}, not the header's results in order"
    );

    let broken = chord(
        [
            Signature::new("demo.add").with_arg(1).with_arg(1),
            Signature::new("demo.fail").with_arg("member broke"),
        ],
        Signature::new("demo.tsum"),
    )
    .apply_async(&app)
    .await?;
    let body = failure(broken.get_as::<Value>(WAIT).await)?;
    ensure!(
        body.exc_type == "ChordError" && body.message.contains("member broke"),
        "the body failed with {body:?}"
    );

    let summary = worker.stop().await?;
    ensure!(
        summary.retried >= 1,
        "celery.chord_unlock never polled again: {summary:?}"
    );
    cleanup(&app, &queue).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_cleanup_deletes_expired_results_only() -> Result<()> {
    let database = TestDatabase::create("cleanup").await?;
    let queue = unique("db-cleanup");
    let (app, worker) = setup(&database, &queue, Duration::from_secs(5)).await?;
    let old: Vec<_> = (0..3).map(|i| add::new(i, i)).collect();
    let mut old_ids = Vec::new();
    for call in old {
        let sent = call.apply_async(&app).await?;
        sent.get(WAIT).await?;
        old_ids.push(sent.id().to_owned());
    }
    let members = group((0..2).map(|i| add::s(i, i)))
        .apply_async(&app)
        .await?;
    members.save().await?;
    members.join::<i64>(WAIT).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let fresh = add::new(5, 5).apply_async(&app).await?;
    fresh.get(WAIT).await?;

    app.send_task("celery.backend_cleanup").apply().await?;
    let client = database.connect().await?;
    let count = |sql: &'static str| {
        let (client, old_ids) = (&client, &old_ids);
        async move {
            let row = if sql.contains("$1") {
                client.query_one(sql, &[old_ids]).await?
            } else {
                client.query_one(sql, &[]).await?
            };
            anyhow::Ok(row.get::<_, i64>(0))
        }
    };
    let old_rows = "SELECT count(*) FROM celery_taskmeta WHERE task_id = ANY($1)";
    let groups = "SELECT count(*) FROM celery_tasksetmeta";
    let deadline = tokio::time::Instant::now() + WAIT;
    while (count(old_rows).await? > 0 || count(groups).await? > 0)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        count(old_rows).await? == 0,
        "expired results were not deleted"
    );
    ensure!(
        count(groups).await? == 0,
        "the expired saved group was not deleted"
    );
    ensure!(
        app.async_result::<i64>(fresh.id()).get(WAIT).await? == 10,
        "the fresh result went with the expired ones"
    );
    for id in old_ids {
        ensure!(app.async_result::<i64>(id).state().await? == State::Pending);
    }
    worker.stop().await?;
    cleanup(&app, &queue).await;
    Ok(())
}

/// Stores `SUCCESS`, then a late `STARTED` (a redelivered copy starting),
/// and reads back `SUCCESS` with its value.
async fn success_stays(backend: &dyn ResultBackend) -> Result<()> {
    let id = unique("success-stays");
    let request = Request::detached("demo.add", id.clone());
    backend
        .store(
            &ResultMeta::new(id.clone(), State::Success, 42.into()),
            &request,
        )
        .await?;
    backend
        .store(
            &ResultMeta::new(id.clone(), State::Started, Value::Null),
            &request,
        )
        .await?;
    let stored = backend.get(&id).await?.context("the result is there")?;
    ensure!(
        stored.status == State::Success && stored.result == 42,
        "a late STARTED replaced the SUCCESS: {stored:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_success_is_never_overwritten() -> Result<()> {
    let celery = TestDatabase::create("success").await?;
    success_stays(&DatabaseBackend::new(
        &celery.backend_url(),
        ResultSettings::default(),
    )?)
    .await?;
    let django = TestDatabase::create("success_django").await?;
    django.migrate_django().await?;
    success_stays(&DjangoBackend::new(
        &django.django_backend_url(),
        ResultSettings::default(),
    )?)
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_may_only_read_and_write_rows_can_use_the_tables() -> Result<()> {
    let database = TestDatabase::create("dml_only").await?;
    // The owner creates the tables (as a migration would).
    let owner = DatabaseBackend::new(&database.backend_url(), ResultSettings::default())?;
    owner.get("no-such-task").await?;
    let role = format!("celeriac_rw_{:08x}", fastrand::u32(..));
    let admin = TestDatabase::admin().await?;
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await?;
    let grants = database.connect().await?;
    grants
        .batch_execute(&format!(
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC; \
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}; \
             GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"
        ))
        .await?;
    let url = database
        .backend_url()
        .replacen("postgres@", &format!("{role}@"), 1);
    let outcome = success_stays(&DatabaseBackend::new(&url, ResultSettings::default())?).await;
    drop(grants);
    drop(database);
    admin.batch_execute(&format!("DROP ROLE {role}")).await?;
    outcome.context("storing and reading as a role without DDL rights")
}

/// The server's own certificate (the test server's is self-signed), to
/// trust as a root; fails saying what to turn on if the server has no TLS.
async fn server_certificate() -> Result<String> {
    let admin = TestDatabase::admin().await?;
    let ssl: String = admin.query_one("SHOW ssl", &[]).await?.get(0);
    ensure!(
        ssl == "on",
        "this test needs TLS on the PostgreSQL server: set ssl = on (with ssl_cert_file and \
         ssl_key_file) in postgresql.conf and reload it"
    );
    Ok(admin.query_one("SHOW ssl_cert_file", &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_postgresql_follows_libpqs_sslmodes() -> Result<()> {
    let certificate = server_certificate().await?;
    let database = TestDatabase::create("tls").await?;
    let url = database.backend_url();
    let on_localhost = url.replacen("@127.0.0.1", "@localhost", 1);
    let backend = |url: String| DatabaseBackend::new(&url, ResultSettings::default());

    // Encrypted, certificate unchecked (libpq's `require`).
    let required = backend(format!("{url}?sslmode=require"))?;
    success_stays(&required).await?;
    let encrypted: i64 = database
        .connect()
        .await?
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = current_database() AND s.ssl AND a.pid <> pg_backend_pid()",
            &[],
        )
        .await?
        .get(0);
    ensure!(encrypted >= 1, "no encrypted connection from the backend");
    drop(required);

    // The chain and the name checked against the server's certificate.
    let trusted = format!("sslrootcert={certificate}");
    success_stays(&backend(format!(
        "{on_localhost}?sslmode=verify-full&{trusted}"
    ))?)
    .await?;
    success_stays(&backend(format!("{url}?sslmode=verify-ca&{trusted}"))?).await?;

    // A name the certificate does not carry, and a root nobody trusts.
    let wrong_name = backend(format!("{url}?sslmode=verify-full&{trusted}"))?;
    let error = wrong_name
        .get("t")
        .await
        .err()
        .context("a wrong name was accepted")?;
    ensure!(error.to_string().contains("certificate"), "{error}");
    let other_root = std::env::temp_dir().join(format!("{}-other-root.pem", database.name()));
    std::fs::write(&other_root, a_public_root()?)?;
    let untrusted = backend(format!(
        "{on_localhost}?sslmode=verify-full&sslrootcert={}",
        other_root.display()
    ))?;
    let refused = untrusted.get("t").await.err();
    let _ = std::fs::remove_file(&other_root);
    let error = refused.context("a certificate no trusted root signed was accepted")?;
    ensure!(error.to_string().contains("certificate"), "{error}");
    Ok(())
}

/// Some public CA's root certificate (the first in the system bundle): a
/// root that did not sign the test server's certificate.
fn a_public_root() -> Result<String> {
    let bundle = std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt")
        .context("reading the system CA bundle (Debian: ca-certificates)")?;
    let end = "-----END CERTIFICATE-----";
    let first = bundle
        .find(end)
        .map(|at| &bundle[..at + end.len()])
        .context("no certificate in the system CA bundle")?;
    Ok(format!("{first}\n"))
}
