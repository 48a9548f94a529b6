//! A PostgreSQL database the `postgres` scenario creates for itself on the
//! server it is pointed at, and drops when done, so a run never writes to
//! a database someone else uses.

use anyhow::Context as _;
use tokio_postgres::NoTls;

/// A database of the benchmark's own.
pub(super) struct ScratchDatabase {
    server: String,
    name: String,
}

impl ScratchDatabase {
    /// Creates `celeriac_bench_<pid>` on the server at `server` (a
    /// `postgresql://` URL naming a database to connect to first).
    pub(super) async fn create(server: &str) -> anyhow::Result<ScratchDatabase> {
        let name = format!("celeriac_bench_{}", std::process::id());
        let admin = connect(server).await?;
        // One statement each: PostgreSQL runs a multi-statement query in
        // one transaction, which CREATE DATABASE refuses.
        for statement in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            admin
                .batch_execute(&statement)
                .await
                .with_context(|| format!("creating the scratch database {name}"))?;
        }
        Ok(ScratchDatabase {
            server: server.to_owned(),
            name,
        })
    }

    /// Celery's URL for it (`db+postgresql://…`).
    pub(super) fn backend_url(&self) -> String {
        let base = self
            .server
            .rsplit_once('/')
            .map_or(self.server.as_str(), |(base, _)| base);
        format!("db+{base}/{}", self.name)
    }

    /// Drops it, with any connection left to it.
    pub(super) async fn drop_it(self) -> anyhow::Result<()> {
        let admin = connect(&self.server).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .with_context(|| format!("dropping the scratch database {}", self.name))
    }
}

async fn connect(server: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(server, NoTls)
        .await
        .with_context(|| {
            format!(
                "connecting to PostgreSQL at {}: start it, or point --postgres at a server",
                celeriac::broker::url::redact(server)
            )
        })?;
    tokio::spawn(connection);
    Ok(client)
}
