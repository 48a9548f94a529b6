//! django-celery-results' tables (`django-db+postgresql://`), row for row
//! what its `DatabaseBackend` writes ([`DjangoTaskRow`]): results in
//! `django_celery_results_taskresult` with the fields its admin shows
//! (task name, the arguments' reprs, worker, periodic task name, creation,
//! start and completion times), saved groups in
//! `django_celery_results_groupresult`, and chords counted down in
//! `django_celery_results_chordcounter`, as its workers count them, so a
//! header may run on any mix of Python and Rust workers. Django's
//! migrations create the tables; until they exist, storing waits.

use std::time::Duration;

use celeriac_protocol::sql_row::{CallRepr, DjangoTaskRow, group_column, parse_group_column};
use celeriac_protocol::store::{ChordPart, ResultTuple};
use celeriac_protocol::{ResultMeta, State};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::GenericClient;
use tracing::warn;

use super::pool::{Pool, Tables, column};
use super::{polling, url};
use crate::Request;
use crate::result::history::StateHistory;
use crate::result::{
    BackendError, BoxFuture, ChordClaim, ChordJoin, ChordStore, ResultBackend, ResultSettings,
};

const STORE: &str = "
INSERT INTO django_celery_results_taskresult AS t
    (task_id, status, content_type, content_encoding, result, traceback, meta,
     task_args, task_kwargs, task_name, worker, periodic_task_name,
     date_created, date_done, date_started)
VALUES ($1, $2::varchar, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, now(), now(),
        CASE WHEN $2::varchar = 'STARTED' THEN now() END)
ON CONFLICT (task_id) DO UPDATE SET
    status = EXCLUDED.status, content_type = EXCLUDED.content_type,
    content_encoding = EXCLUDED.content_encoding, result = EXCLUDED.result,
    traceback = EXCLUDED.traceback, meta = EXCLUDED.meta,
    task_args = EXCLUDED.task_args, task_kwargs = EXCLUDED.task_kwargs,
    task_name = EXCLUDED.task_name, worker = EXCLUDED.worker,
    periodic_task_name = EXCLUDED.periodic_task_name, date_done = now(),
    date_started = CASE WHEN EXCLUDED.status = 'STARTED' THEN now() ELSE t.date_started END
WHERE t.status <> 'SUCCESS'";

const READ: &str = "
SELECT task_id, status, content_type, content_encoding, result, traceback, meta,
       task_args, task_kwargs, task_name, worker, periodic_task_name, date_done
FROM django_celery_results_taskresult WHERE task_id = $1";

const FORGET: &str = "DELETE FROM django_celery_results_taskresult WHERE task_id = $1";

const SAVE_GROUP: &str = "
INSERT INTO django_celery_results_groupresult
    (group_id, date_created, date_done, content_type, content_encoding, result)
VALUES ($1, now(), now(), 'application/json', 'utf-8', $2)
ON CONFLICT (group_id) DO UPDATE SET
    result = EXCLUDED.result, content_type = EXCLUDED.content_type,
    content_encoding = EXCLUDED.content_encoding, date_done = now()";

const RESTORE_GROUP: &str = "
SELECT result, content_encoding FROM django_celery_results_groupresult WHERE group_id = $1";

const CLEAN_TASKS: &str = "
DELETE FROM django_celery_results_taskresult WHERE date_done < now() - make_interval(secs => $1)";

const CLEAN_GROUPS: &str = "
DELETE FROM django_celery_results_groupresult WHERE date_done < now() - make_interval(secs => $1)";

const START_CHORD: &str = "
INSERT INTO django_celery_results_chordcounter (group_id, sub_tasks, count)
VALUES ($1, $2, $3)
ON CONFLICT (group_id) DO UPDATE SET sub_tasks = EXCLUDED.sub_tasks, count = EXCLUDED.count";

const LOCK_CHORD: &str = "
SELECT sub_tasks, count FROM django_celery_results_chordcounter WHERE group_id = $1 FOR UPDATE";

const COUNT_DOWN: &str =
    "UPDATE django_celery_results_chordcounter SET count = $2 WHERE group_id = $1";

const END_CHORD: &str = "DELETE FROM django_celery_results_chordcounter WHERE group_id = $1";

const READ_PARTS: &str = "
SELECT task_id, status, content_encoding, result
FROM django_celery_results_taskresult WHERE task_id = ANY($1)";

/// django-celery-results' tables on PostgreSQL (`django-db+postgresql://`).
pub struct DjangoBackend {
    pool: Pool,
    settings: ResultSettings,
    seen: StateHistory,
}

impl std::fmt::Debug for DjangoBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DjangoBackend")
            .field("url", &self.pool.url())
            .finish_non_exhaustive()
    }
}

impl DjangoBackend {
    /// A backend for `url` (`django-db+postgresql://user:password@host/db`,
    /// the database Django's `DATABASES` names); nothing connects until the
    /// first use.
    pub fn new(url: &str, settings: ResultSettings) -> Result<DjangoBackend, BackendError> {
        debug_assert!(url::is_django_url(url));
        let connection = url::parse(url).map_err(BackendError::Config)?;
        let redacted = celeriac_broker::url::redact(url);
        Ok(DjangoBackend {
            pool: Pool::new(connection, redacted, Tables::Django)?,
            settings,
            seen: StateHistory::default(),
        })
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
        let task_row = DjangoTaskRow {
            task_id: column(&row, 0)?,
            status: column(&row, 1)?,
            content_type: column(&row, 2)?,
            content_encoding: column(&row, 3)?,
            result: column(&row, 4)?,
            traceback: column(&row, 5)?,
            meta: column(&row, 6)?,
            task_args: column(&row, 7)?,
            task_kwargs: column(&row, 8)?,
            task_name: column(&row, 9)?,
            worker: column(&row, 10)?,
            periodic_task_name: column(&row, 11)?,
        };
        let date_done: DateTime<Utc> = column(&row, 12)?;
        let meta = task_row
            .to_meta(Some(date_done.fixed_offset()))
            .map_err(|e| BackendError::Document(e.to_string()))?;
        self.seen.record(&meta);
        Ok(Some(meta))
    }

    async fn write(&self, meta: &ResultMeta, request: &Request) -> Result<(), BackendError> {
        let call = CallRepr {
            argsrepr: request.argsrepr.clone(),
            kwargsrepr: request.kwargsrepr.clone(),
            periodic_task_name: request
                .headers
                .get("periodic_task_name")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
        };
        let row = DjangoTaskRow::from_meta(meta, &call);
        let client = self.pool.connection().await?;
        let failed = |e| self.pool.error("storing a result", &e);
        let statement = client.prepare_cached(STORE).await.map_err(failed)?;
        client
            .execute(
                &statement,
                &[
                    &row.task_id,
                    &row.status,
                    &row.content_type,
                    &row.content_encoding,
                    &row.result,
                    &row.traceback,
                    &row.meta,
                    &row.task_args,
                    &row.task_kwargs,
                    &row.task_name,
                    &row.worker,
                    &row.periodic_task_name,
                ],
            )
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Counts one header task down, in one transaction holding the
    /// counter's row lock, as django-celery-results does. The task that
    /// brings it to zero reads the header's results and deletes the
    /// counter in that same transaction, so a failure on the way rolls
    /// the count back and the retry counts again.
    async fn count_down(&self, group_id: &str) -> Result<ChordJoin, BackendError> {
        let mut client = self.pool.connection().await?;
        let failed = |e| self.pool.error("counting a chord down", &e);
        let transaction = client.transaction().await.map_err(failed)?;
        let Some(counter) = transaction
            .query_opt(LOCK_CHORD, &[&group_id])
            .await
            .map_err(failed)?
        else {
            warn!(group = %group_id, "no chord counter for this group (finished already, or never started)");
            return Ok(ChordJoin::Waiting);
        };
        let sub_tasks: String = column(&counter, 0)?;
        let count: i32 = column(&counter, 1)?;
        let left = (count - 1).max(0);
        if left > 0 {
            transaction
                .execute(COUNT_DOWN, &[&group_id, &left])
                .await
                .map_err(failed)?;
            transaction.commit().await.map_err(failed)?;
            return Ok(ChordJoin::Waiting);
        }
        let header = header_ids(group_id, &sub_tasks)?;
        let parts = self.parts(&*transaction, &header).await?;
        transaction
            .execute(END_CHORD, &[&group_id])
            .await
            .map_err(failed)?;
        transaction.commit().await.map_err(failed)?;
        match parts {
            Some(parts) => Ok(ChordJoin::Complete {
                parts,
                claim: ChordClaim {
                    token: group_id.to_owned(),
                },
            }),
            None => {
                warn!(group = %group_id, "the chord counter reached zero before every header result was stored; its body is not applied (as in django-celery-results)");
                Ok(ChordJoin::Waiting)
            }
        }
    }

    /// The header's final results in order, or `None` if one is missing or
    /// not ready.
    async fn parts(
        &self,
        client: &impl GenericClient,
        header: &[String],
    ) -> Result<Option<Vec<ChordPart>>, BackendError> {
        let rows = client
            .query(READ_PARTS, &[&header])
            .await
            .map_err(|e| self.pool.error("reading a chord's header results", &e))?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let task_row = DjangoTaskRow {
                task_id: column(&row, 0)?,
                status: column(&row, 1)?,
                content_encoding: column(&row, 2)?,
                result: column(&row, 3)?,
                ..DjangoTaskRow::default()
            };
            let meta = task_row
                .to_meta(None)
                .map_err(|e| BackendError::Document(e.to_string()))?;
            found.insert(meta.task_id.clone(), meta);
        }
        let mut parts = Vec::with_capacity(header.len());
        for id in header {
            match found.remove(id).and_then(ChordPart::of_ready) {
                Some(part) => parts.push(part),
                None => return Ok(None),
            }
        }
        Ok(Some(parts))
    }
}

/// The task ids of a `ChordCounter`'s `sub_tasks` (JSON result tuples).
fn header_ids(group_id: &str, sub_tasks: &str) -> Result<Vec<String>, BackendError> {
    let invalid = |detail: String| {
        BackendError::Document(format!("the chord counter of group {group_id}: {detail}"))
    };
    let value: Value = serde_json::from_str(sub_tasks).map_err(|e| invalid(e.to_string()))?;
    let Value::Array(tuples) = value else {
        return Err(invalid("sub_tasks is not a list".into()));
    };
    tuples
        .iter()
        .map(|t| {
            ResultTuple::from_json(t)
                .map(|t| t.id().to_owned())
                .map_err(|e| invalid(e.to_string()))
        })
        .collect()
}

impl ResultBackend for DjangoBackend {
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
        request: &'a Request,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(self.write(meta, request))
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
            let column = String::from_utf8_lossy(&group_column(group)).into_owned();
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
            let (result, encoding): (Option<String>, String) = (column(&row, 0)?, column(&row, 1)?);
            if encoding != "utf-8" {
                return Err(BackendError::Document(format!(
                    "group {group_id} was saved with content_encoding {encoding:?}; Celeriac \
                     reads JSON only"
                )));
            }
            let Some(result) = result else {
                return Ok(None);
            };
            parse_group_column(result.as_bytes())
                .map(Some)
                .map_err(|e| BackendError::Document(format!("group {group_id}: {e}")))
        })
    }

    fn chords(&self) -> Option<&dyn ChordStore> {
        Some(self)
    }

    fn needs_cleanup(&self) -> bool {
        self.settings.expires.is_some()
    }

    fn cleanup(&self) -> BoxFuture<'_, Result<u64, BackendError>> {
        let expired = [CLEAN_TASKS, CLEAN_GROUPS];
        Box::pin(self.pool.delete_expired(expired, self.settings.expires))
    }
}

impl ChordStore for DjangoBackend {
    fn start_chord<'a>(
        &'a self,
        group_id: &'a str,
        header: &'a [String],
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let tuples: Vec<Value> = header
                .iter()
                .map(|id| ResultTuple::task(id.as_str()).to_json())
                .collect();
            // json.dumps' spacing, as django-celery-results writes it.
            let sub_tasks = celeriac_protocol::json::to_python_json(&tuples);
            let count = i32::try_from(header.len()).map_err(|_| {
                BackendError::Config(format!(
                    "a chord header of {} tasks is too large for ChordCounter",
                    header.len()
                ))
            })?;
            let client = self.pool.connection().await?;
            client
                .execute(START_CHORD, &[&group_id, &sub_tasks, &count])
                .await
                .map_err(|e| self.pool.error("starting a chord", &e))?;
            Ok(())
        })
    }

    fn part_return<'a>(
        &'a self,
        group_id: &'a str,
        _group_index: Option<i64>,
        _part: &'a ChordPart,
    ) -> BoxFuture<'a, Result<ChordJoin, BackendError>> {
        Box::pin(self.count_down(group_id))
    }

    fn extend_claim<'a>(
        &'a self,
        _group_id: &'a str,
        _claim: &'a ChordClaim,
        _lease: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        // The counter's row was deleted by the task that emptied it: no
        // other worker can reach zero again, so the claim cannot be lost.
        Box::pin(async { Ok(true) })
    }

    fn finish<'a>(
        &'a self,
        _group_id: &'a str,
        _claim: &'a ChordClaim,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
}
