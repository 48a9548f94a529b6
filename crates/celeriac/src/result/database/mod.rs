//! Celery's `database` result backend on PostgreSQL (`db+postgresql://`),
//! row for row what Celery 5.7's SQLAlchemy backend writes and reads (or,
//! with `ResultColumn::Pickle`, what 5.0 to 5.6 write)
//! ([`celeriac_protocol::sql_row`]): results in `celery_taskmeta`, saved
//! groups in `celery_tasksetmeta`, both created when missing. A stored
//! `SUCCESS` is never overwritten, as in Celery, and a write without the
//! extended fields (`result_extended` off) leaves those already stored, as
//! Celery's non-extended model does.
//!
//! The database has no counter a chord could join on, so chords are joined
//! by polling with the `celery.chord_unlock` task, as in Celery, and
//! results do not expire by themselves: the `celery.backend_cleanup` task
//! deletes the expired ones (beat runs it daily).
//!
//! With message signing set up, every JSON column (`result`, `children`,
//! `args`, `kwargs`, `stamps`, a saved group's `result`) is sealed as
//! Celery 5.7 seals each with `result_serializer = 'auth'`, and verified
//! when read. A pickled `result` column (Celery 5.0 to 5.6) is not signed
//! there, since those versions pickle the plain value whatever the
//! serializer: it is accepted only when this app writes pickles itself.
//!
//! A database that cannot be reached is [`BackendError::Unavailable`],
//! which the worker retries with backoff before it settles a delivery, so
//! a result is stored (committed) before its task message is acked.

mod django;
mod polling;
mod pool;
mod schema;
mod tls;
mod url;

use std::time::Duration;

use celeriac_protocol::sql_row::{TaskRow, group_column, parse_group_column};
use celeriac_protocol::store::ResultTuple;
use celeriac_protocol::{ResultMeta, State};

pub use self::django::DjangoBackend;
use self::pool::{Pool, Tables, column};
pub(crate) use self::url::{is_database_url, is_django_url};
use super::history::StateHistory;
use super::signing::Documents;
use super::{BackendError, BoxFuture, ResultBackend, ResultColumn, ResultSettings};
use crate::{Request, Security};

const STORE: &str = "
INSERT INTO celery_taskmeta
    (id, task_id, status, result, date_done, traceback, children,
     name, args, kwargs, worker, retries, queue, stamps)
VALUES (nextval('task_id_sequence'), $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (task_id) DO UPDATE SET
    status = EXCLUDED.status, result = EXCLUDED.result, date_done = EXCLUDED.date_done,
    traceback = EXCLUDED.traceback, children = EXCLUDED.children,
    name = COALESCE(EXCLUDED.name, celery_taskmeta.name),
    args = COALESCE(EXCLUDED.args, celery_taskmeta.args),
    kwargs = COALESCE(EXCLUDED.kwargs, celery_taskmeta.kwargs),
    worker = COALESCE(EXCLUDED.worker, celery_taskmeta.worker),
    retries = COALESCE(EXCLUDED.retries, celery_taskmeta.retries),
    queue = COALESCE(EXCLUDED.queue, celery_taskmeta.queue),
    stamps = COALESCE(EXCLUDED.stamps, celery_taskmeta.stamps)
WHERE celery_taskmeta.status IS DISTINCT FROM 'SUCCESS'";

const READ: &str = "
SELECT task_id, status, result, date_done, traceback, children,
       name, args, kwargs, worker, retries, queue, stamps
FROM celery_taskmeta WHERE task_id = $1";

const FORGET: &str = "DELETE FROM celery_taskmeta WHERE task_id = $1";

const SAVE_GROUP: &str = "
INSERT INTO celery_tasksetmeta (id, taskset_id, result, date_done)
VALUES (nextval('taskset_id_sequence'), $1, $2, (now() AT TIME ZONE 'UTC'))
ON CONFLICT (taskset_id) DO UPDATE SET result = EXCLUDED.result, date_done = EXCLUDED.date_done";

const RESTORE_GROUP: &str = "SELECT result FROM celery_tasksetmeta WHERE taskset_id = $1";

const CLEAN_TASKS: &str = "
DELETE FROM celery_taskmeta
WHERE date_done < (now() AT TIME ZONE 'UTC') - make_interval(secs => $1)";

const CLEAN_GROUPS: &str = "
DELETE FROM celery_tasksetmeta
WHERE date_done < (now() AT TIME ZONE 'UTC') - make_interval(secs => $1)";

/// The PostgreSQL result backend (`db+postgresql://`).
pub struct DatabaseBackend {
    pool: Pool,
    settings: ResultSettings,
    seen: StateHistory,
    documents: Documents,
}

impl std::fmt::Debug for DatabaseBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseBackend")
            .field("url", &self.pool.url())
            .finish_non_exhaustive()
    }
}

impl DatabaseBackend {
    /// A backend for `url` (`db+postgresql://user:password@host:port/db`,
    /// optionally `db+postgresql+<python driver>://`); nothing connects
    /// until the first use, so a program starts while the database is down.
    pub fn new(url: &str, settings: ResultSettings) -> Result<DatabaseBackend, BackendError> {
        let connection = url::parse(url).map_err(BackendError::Config)?;
        let redacted = celeriac_broker::url::redact(url);
        Ok(DatabaseBackend {
            pool: Pool::new(connection, redacted, Tables::Celery)?,
            settings,
            seen: StateHistory::default(),
            documents: Documents::default(),
        })
    }

    /// The same backend signing what it writes with `security`'s key and
    /// verifying what it reads against its certificates (Celery's
    /// `result_serializer = 'auth'`).
    pub fn with_security(mut self, security: Option<Security>) -> DatabaseBackend {
        self.documents = Documents::new(security);
        self
    }

    /// A column's JSON, its seal verified and removed.
    fn open(&self, stored: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, BackendError> {
        stored
            .map(|bytes| Ok(self.documents.open(&bytes)?.into_owned()))
            .transpose()
    }

    /// The `result` column's content, verified: as [`open`](Self::open),
    /// except that a pickle (Celery 5.0 to 5.6 never sign it) is taken as
    /// it is where this app writes pickles too.
    fn open_result(&self, stored: Option<Vec<u8>>) -> Result<Option<Vec<u8>>, BackendError> {
        match stored {
            Some(bytes)
                if celeriac_protocol::pickle::is_pickle(&bytes)
                    && self.settings.database_result_column == ResultColumn::Pickle =>
            {
                Ok(Some(bytes))
            }
            other => self.open(other),
        }
    }

    /// `row` with its JSON columns sealed (a no-op without security).
    fn seal(&self, mut row: TaskRow) -> TaskRow {
        let seal = |column: Option<Vec<u8>>| column.map(|bytes| self.documents.seal(bytes));
        if self.settings.database_result_column == ResultColumn::Json {
            row.result = seal(row.result);
        }
        row.children = seal(row.children);
        row.args = seal(row.args);
        row.kwargs = seal(row.kwargs);
        row.stamps = seal(row.stamps);
        row
    }

    async fn read(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        let client = self.pool.connection().await?;
        let failed = |e| self.pool.error("reading a result", &e);
        let statement = client.prepare_cached(READ).await.map_err(failed)?;
        let Some(row) = client
            .query_opt(&statement, &[&task_id])
            .await
            .map_err(failed)?
        else {
            return Ok(None);
        };
        let task_row = TaskRow {
            task_id: column(&row, 0)?,
            status: column::<Option<String>>(&row, 1)?.unwrap_or_default(),
            result: self.open_result(column(&row, 2)?)?,
            date_done: column(&row, 3)?,
            traceback: column(&row, 4)?,
            children: self.open(column(&row, 5)?)?,
            name: column(&row, 6)?,
            args: self.open(column(&row, 7)?)?,
            kwargs: self.open(column(&row, 8)?)?,
            worker: column(&row, 9)?,
            retries: column(&row, 10)?,
            queue: column(&row, 11)?,
            stamps: self.open(column(&row, 12)?)?,
        };
        let meta = task_row
            .to_meta()
            .map_err(|e| BackendError::Document(format!("task {task_id}: {e}")))?;
        self.seen.record(&meta);
        Ok(Some(meta))
    }

    async fn write(&self, meta: &ResultMeta) -> Result<(), BackendError> {
        let row = TaskRow::from_meta(meta, self.settings.database_result_column)
            .map_err(|e| BackendError::Document(e.to_string()))?;
        let row = self.seal(row);
        let client = self.pool.connection().await?;
        let failed = |e| self.pool.error("storing a result", &e);
        let statement = client.prepare_cached(STORE).await.map_err(failed)?;
        client
            .execute(
                &statement,
                &[
                    &row.task_id,
                    &row.status,
                    &row.result,
                    &row.date_done,
                    &row.traceback,
                    &row.children,
                    &row.name,
                    &row.args,
                    &row.kwargs,
                    &row.worker,
                    &row.retries,
                    &row.queue,
                    &row.stamps,
                ],
            )
            .await
            .map_err(failed)?;
        Ok(())
    }
}

impl ResultBackend for DatabaseBackend {
    fn url(&self) -> String {
        self.pool.url().to_owned()
    }

    fn prepare<'a>(&'a self, _task_id: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    fn get<'a>(
        &'a self,
        task_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ResultMeta>, BackendError>> {
        Box::pin(self.read(task_id))
    }

    fn wait<'a>(
        &'a self,
        task_id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<ResultMeta>, BackendError>> {
        Box::pin(polling::until_ready(timeout, move || self.read(task_id)))
    }

    fn history(&self, task_id: &str) -> Vec<State> {
        self.seen.of(task_id)
    }

    fn store<'a>(
        &'a self,
        meta: &'a ResultMeta,
        _request: &'a Request,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(self.write(meta))
    }

    fn forget<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            self.pool
                .execute("forgetting a result", FORGET, &[&task_id])
                .await
                .map(drop)
        })
    }

    fn save_group<'a>(&'a self, group: &'a ResultTuple) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let column = self.documents.seal(group_column(group));
            self.pool
                .execute("saving a group", SAVE_GROUP, &[&group.id(), &column])
                .await
                .map(drop)
        })
    }

    fn restore_group<'a>(
        &'a self,
        group_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ResultTuple>, BackendError>> {
        Box::pin(async move {
            let client = self.pool.connection().await?;
            let row = client
                .query_opt(RESTORE_GROUP, &[&group_id])
                .await
                .map_err(|e| self.pool.error("restoring a group", &e))?;
            let Some(row) = row else {
                return Ok(None);
            };
            let Some(stored) = column::<Option<Vec<u8>>>(&row, 0)? else {
                return Ok(None);
            };
            // A group Celery 5.6 saved is a pickled object, never signed:
            // say that rather than "not signed".
            let stored = if celeriac_protocol::pickle::is_pickle(&stored) {
                std::borrow::Cow::Owned(stored)
            } else {
                self.documents.open(&stored)?
            };
            parse_group_column(&stored)
                .map(Some)
                .map_err(|e| BackendError::Document(format!("group {group_id}: {e}")))
        })
    }

    fn polls_chords(&self) -> bool {
        true
    }

    fn needs_cleanup(&self) -> bool {
        self.settings.expires.is_some()
    }

    fn cleanup(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        let expired = [CLEAN_TASKS, CLEAN_GROUPS];
        Box::pin(self.pool.delete_expired(expired, self.settings.expires))
    }
}
