//! A PostgreSQL database of the test's own on the shared server (127.0.0.1,
//! trust auth, as `.ci/run` expects), created empty and dropped on drop,
//! so tests never touch the `test` and `postgres` databases and may run
//! side by side.

use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio_postgres::NoTls;

/// The server the tests use: `CELERIAC_TEST_POSTGRES` (a `postgresql://`
/// URL naming a database the test user may connect to), by default the
/// local one.
pub fn server_url() -> String {
    std::env::var("CELERIAC_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh database, dropped (with its connections) on drop.
#[derive(Debug)]
pub struct TestDatabase {
    name: String,
}

impl TestDatabase {
    /// Creates `celeriac_<tag>_<random>`; fails saying what to start if the
    /// server is not there.
    pub async fn create(tag: &str) -> Result<TestDatabase> {
        let name = format!("celeriac_{tag}_{:08x}", fastrand::u32(..));
        let admin = admin().await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("creating database {name}"))?;
        Ok(TestDatabase { name })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Celery's URL for it: `db+postgresql://.../<name>`.
    pub fn backend_url(&self) -> String {
        format!("db+{}", self.url())
    }

    /// Celeriac's URL for django-celery-results' tables in it:
    /// `django-db+postgresql://.../<name>`.
    pub fn django_backend_url(&self) -> String {
        format!("django-db+{}", self.url())
    }

    /// Creates django-celery-results' tables in it with Django's own
    /// migrations (`tests/interop/django_results`, the interop venv).
    pub async fn migrate_django(&self) -> Result<()> {
        let output = tokio::process::Command::new(crate::interop_python()?)
            .args(["-m", "django", "migrate", "--verbosity", "0"])
            .current_dir(crate::repo_root().join("tests/interop"))
            .env("DJANGO_SETTINGS_MODULE", "django_results.settings")
            .env("CELERIAC_TEST_DJANGO_DB", self.url())
            .output()
            .await
            .context("running Django's migrations")?;
        anyhow::ensure!(
            output.status.success(),
            "Django's migrations failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Its plain `postgresql://` URL.
    pub fn url(&self) -> String {
        let server = server_url();
        let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
        format!("{base}/{}", self.name)
    }

    /// A connection to it, for the test's own queries.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        connect(&self.url()).await
    }

    /// A connection to the server's maintenance database (for
    /// `pg_terminate_backend` and the like).
    pub async fn admin() -> Result<tokio_postgres::Client> {
        admin().await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop may run inside the test's runtime, which cannot block on
        // itself: the DROP runs on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let admin = admin().await?;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

async fn admin() -> Result<tokio_postgres::Client> {
    connect(&server_url()).await
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let connecting = tokio_postgres::connect(url, NoTls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(anyhow::Error::msg)
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| {
            format!(
                "connecting to PostgreSQL at {url}: start it (Debian: `pg_ctlcluster 15 main \
                 start`) or point CELERIAC_TEST_POSTGRES at a server with trust auth"
            )
        })?;
    tokio::spawn(connection);
    Ok(client)
}
