//! The tables Celery's SQLAlchemy models create on PostgreSQL, with the
//! same types, sequences, constraint and index names, so that whichever of
//! a Python or a Rust process starts first creates them and the other
//! finds what it expects. Columns that older Celery versions lacked
//! (`children`, the extended ones, `stamps`) are added when missing, as
//! Celery 5.7 does.
//!
//! The catalog is read first and nothing is changed when all is there, so
//! a role that may only read and write rows (the tables made by a
//! migration owner) works, and no worker start takes a table lock.

use tokio_postgres::Client;
use tracing::warn;

/// The columns each table must have, and the sequences.
const TASK_COLUMNS: [&str; 14] = [
    "id",
    "task_id",
    "status",
    "result",
    "date_done",
    "traceback",
    "children",
    "name",
    "args",
    "kwargs",
    "worker",
    "retries",
    "queue",
    "stamps",
];
const GROUP_COLUMNS: [&str; 4] = ["id", "taskset_id", "result", "date_done"];
const SEQUENCES: [&str; 2] = ["task_id_sequence", "taskset_id_sequence"];

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

/// Makes sure the tables are there: creates what is missing, unless
/// nothing is. If creating fails while the tables exist (a role without
/// DDL rights, missing only a column older Celery lacked), that is logged
/// and the tables are used as they are, as Celery does.
pub(super) async fn prepare(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    if everything_exists(client).await? {
        return Ok(());
    }
    match create_missing(client).await {
        Ok(()) => Ok(()),
        Err(error) if tables_exist(client).await.unwrap_or(false) => {
            warn!(%error, "could not add what Celery's result tables lack; using them as they are");
            Ok(())
        }
        Err(error) => Err(error),
    }
}

/// Whether both tables have every column, and both sequences exist.
async fn everything_exists(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.relname::text, a.attname::text FROM pg_attribute a \
             JOIN pg_class c ON c.oid = a.attrelid \
             WHERE a.attrelid IN (to_regclass('celery_taskmeta'), to_regclass('celery_tasksetmeta')) \
               AND a.attnum > 0 AND NOT a.attisdropped",
            &[],
        )
        .await?;
    let has = |table: &str, column: &str| {
        rows.iter()
            .any(|r| r.get::<_, String>(0) == table && r.get::<_, String>(1) == column)
    };
    let columns = TASK_COLUMNS.iter().all(|c| has("celery_taskmeta", c))
        && GROUP_COLUMNS.iter().all(|c| has("celery_tasksetmeta", c));
    if !columns {
        return Ok(false);
    }
    for sequence in SEQUENCES {
        let found = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&sequence])
            .await?;
        if !found.get::<_, bool>(0) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether both tables exist, whatever their columns.
async fn tables_exist(client: &Client) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT to_regclass('celery_taskmeta') IS NOT NULL \
                AND to_regclass('celery_tasksetmeta') IS NOT NULL",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Creates the tables, sequences and indexes that are missing.
async fn create_missing(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    transaction.batch_execute(CREATE).await?;
    transaction.commit().await
}
