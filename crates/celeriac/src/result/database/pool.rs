//! The connections to PostgreSQL: a deadpool pool that drops connections
//! the server closed, the tables checked (and Celery's created) on first
//! use, and the line between "the database is away, try again"
//! ([`BackendError::Unavailable`]) and "the database refused this"
//! ([`BackendError::Refused`]).

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, PoolError, RecyclingMethod, Runtime};
use tokio::sync::OnceCell;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};

use super::schema;
use super::url::Connection;
use crate::result::BackendError;

/// Connections open at once, at most (per process).
const MAX_CONNECTIONS: usize = 16;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a caller waits for a free connection.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Whose tables the results live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tables {
    /// Celery's SQLAlchemy tables, created when missing.
    Celery,
    /// django-celery-results' tables, which Django's migrations create.
    Django,
}

/// The table whose absence means Django's migrations have not run.
const DJANGO_TABLE: &str = "django_celery_results_taskresult";

/// A pool of connections to one database, its tables ready on first use.
pub(super) struct Pool {
    pool: deadpool_postgres::Pool,
    url: String,
    tables: Tables,
    tables_ready: OnceCell<()>,
}

impl Pool {
    /// A pool for `connection`; nothing connects until the first use, so
    /// a program starts while the database is down.
    pub(super) fn new(
        connection: Connection,
        url: String,
        tables: Tables,
    ) -> Result<Pool, BackendError> {
        let tls = connection
            .tls
            .connector()
            .map_err(|e| BackendError::Config(format!("{url}: {e}")))?;
        let manager = Manager::from_config(
            connection.config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(MAX_CONNECTIONS)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(WAIT_TIMEOUT))
            .build()
            .map_err(|e| BackendError::Config(format!("the PostgreSQL pool for {url}: {e}")))?;
        Ok(Pool {
            pool,
            url,
            tables,
            tables_ready: OnceCell::new(),
        })
    }

    /// The database's URL, password redacted.
    pub(super) fn url(&self) -> &str {
        &self.url
    }

    /// A connection, once the tables exist.
    pub(super) async fn connection(&self) -> Result<Object, BackendError> {
        let mut client = self.pool.get().await.map_err(|e| self.pool_error(e))?;
        self.tables_ready
            .get_or_try_init(|| async {
                match self.tables {
                    Tables::Celery => schema::prepare(&mut client)
                        .await
                        .map_err(|e| self.error("creating the result tables", &e)),
                    Tables::Django => self.check_migrated(&client).await,
                }
            })
            .await?;
        Ok(client)
    }

    /// Whether Django's migrations created django-celery-results' tables;
    /// until they do, storing waits (and retries) rather than fails.
    async fn check_migrated(&self, client: &Object) -> Result<(), BackendError> {
        let found = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&DJANGO_TABLE])
            .await
            .map_err(|e| self.error("looking for the django-celery-results tables", &e))?;
        if found.get::<_, bool>(0) {
            return Ok(());
        }
        Err(BackendError::Unavailable {
            url: self.url.clone(),
            detail: format!(
                "table {DJANGO_TABLE} does not exist: run `python manage.py migrate \
                 django_celery_results` against this database (Celeriac does not create \
                 Django's tables)"
            ),
        })
    }

    /// Runs one statement, and says how many rows it changed.
    pub(super) async fn execute(
        &self,
        operation: &'static str,
        statement: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, BackendError> {
        let client = self.connection().await?;
        client
            .execute(statement, params)
            .await
            .map_err(|e| self.error(operation, &e))
    }

    /// Runs each of the `statements` that delete the rows older than
    /// `expires` (given as seconds), and says how many went; nothing if
    /// results do not expire.
    pub(super) async fn delete_expired(
        &self,
        statements: [&str; 2],
        expires: Option<Duration>,
    ) -> Result<u64, BackendError> {
        let Some(expires) = expires else {
            return Ok(0);
        };
        let seconds = expires.as_secs_f64();
        let mut deleted = 0;
        for statement in statements {
            deleted += self
                .execute("deleting expired results", statement, &[&seconds])
                .await?;
        }
        Ok(deleted)
    }

    fn pool_error(&self, error: PoolError) -> BackendError {
        match error {
            PoolError::Backend(e) => self.error("connecting", &e),
            other => BackendError::Unavailable {
                url: self.url.clone(),
                detail: other.to_string(),
            },
        }
    }

    /// Our error for a client error: a lost or refused connection, a
    /// server shutting down or a transaction that lost a race is worth
    /// trying again; anything else (the statement, its parameters, a
    /// missing permission) is not.
    pub(super) fn error(
        &self,
        operation: &'static str,
        error: &tokio_postgres::Error,
    ) -> BackendError {
        let detail = error
            .as_db_error()
            .map_or_else(|| with_causes(error), |db| db.message().to_owned());
        let retryable = match error.code() {
            None => error.is_closed() || is_io(error),
            Some(code) => {
                code.code().starts_with("08")
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                        SqlState::TOO_MANY_CONNECTIONS,
                        SqlState::T_R_SERIALIZATION_FAILURE,
                        SqlState::T_R_DEADLOCK_DETECTED,
                    ]
                    .contains(code)
            }
        };
        if retryable {
            BackendError::Unavailable {
                url: self.url.clone(),
                detail: format!("{operation}: {detail}"),
            }
        } else {
            BackendError::Refused {
                url: self.url.clone(),
                operation,
                detail,
            }
        }
    }
}

/// Column `index` of `row` as a `T`; a column of another type than
/// Celery's (a table someone altered) is an error naming it, not a panic.
pub(super) fn column<'a, T: FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, BackendError> {
    row.try_get(index).map_err(|e| {
        let name = row.columns().get(index).map_or("?", |c| c.name());
        BackendError::Document(format!("column {name}: {e}"))
    })
}

/// An error's text followed by its causes' ("error performing TLS
/// handshake: invalid peer certificate: ..."), as the client's own text
/// alone does not say why.
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Whether the client failed on the connection itself (refused, reset,
/// timed out) rather than on what it was asked to send.
fn is_io(error: &tokio_postgres::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.is::<std::io::Error>() {
            return true;
        }
        source = cause.source();
    }
    false
}
