//! The tables Celery's SQLAlchemy models create on PostgreSQL, with the
//! same types, sequences, constraint and index names, so that whichever of
//! a Python or a Rust process starts first creates them and the other
//! finds what it expects. Columns that older Celery versions lacked
//! (`children`, the extended ones, `stamps`) are added when missing, as
//! Celery 5.7 does.

use tokio_postgres::Client;

/// Serializes schema creation between processes that start together
/// (any constant; this one spells "celeriac" in hex, truncated).
const SCHEMA_LOCK: i64 = 0x6365_6c65_7269_6163;

/// Creates what is missing, in one transaction under an advisory lock.
const CREATE: &str = "
CREATE SEQUENCE IF NOT EXISTS task_id_sequence;
CREATE SEQUENCE IF NOT EXISTS taskset_id_sequence;
CREATE TABLE IF NOT EXISTS celery_taskmeta (
    id INTEGER NOT NULL,
    task_id VARCHAR(155),
    status VARCHAR(50),
    result BYTEA,
    date_done TIMESTAMP WITHOUT TIME ZONE,
    traceback TEXT,
    children BYTEA,
    name VARCHAR(155),
    args BYTEA,
    kwargs BYTEA,
    worker VARCHAR(155),
    retries INTEGER,
    queue VARCHAR(155),
    stamps BYTEA,
    CONSTRAINT celery_taskmeta_pkey PRIMARY KEY (id),
    CONSTRAINT celery_taskmeta_task_id_key UNIQUE (task_id)
);
CREATE INDEX IF NOT EXISTS ix_celery_taskmeta_date_done ON celery_taskmeta (date_done);
CREATE TABLE IF NOT EXISTS celery_tasksetmeta (
    id INTEGER NOT NULL,
    taskset_id VARCHAR(155),
    result BYTEA,
    date_done TIMESTAMP WITHOUT TIME ZONE,
    CONSTRAINT celery_tasksetmeta_pkey PRIMARY KEY (id),
    CONSTRAINT celery_tasksetmeta_taskset_id_key UNIQUE (taskset_id)
);
CREATE INDEX IF NOT EXISTS ix_celery_tasksetmeta_date_done ON celery_tasksetmeta (date_done);
ALTER TABLE celery_taskmeta
    ADD COLUMN IF NOT EXISTS children BYTEA,
    ADD COLUMN IF NOT EXISTS name VARCHAR(155),
    ADD COLUMN IF NOT EXISTS args BYTEA,
    ADD COLUMN IF NOT EXISTS kwargs BYTEA,
    ADD COLUMN IF NOT EXISTS worker VARCHAR(155),
    ADD COLUMN IF NOT EXISTS retries INTEGER,
    ADD COLUMN IF NOT EXISTS queue VARCHAR(155),
    ADD COLUMN IF NOT EXISTS stamps BYTEA;
";

/// Creates the tables, sequences and indexes that are missing.
pub(super) async fn create_missing(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    transaction.batch_execute(CREATE).await?;
    transaction.commit().await
}
