//! Task results: the [`ResultBackend`] trait, the [`AsyncResult`] and
//! [`GroupResult`] handles, and the backends:
//!
//! - `rpc://` ([`RpcBackend`]): results as messages to the caller's reply
//!   queue; one reader, no chords;
//! - `redis://` and friends ([`RedisBackend`], cargo feature `redis`, on by
//!   default): results any process can read until they expire, saved
//!   groups, and chords;
//! - `db+postgresql://` ([`DatabaseBackend`], cargo feature `postgres`, on by
//!   default): Celery's SQL tables; chords joined by `celery.chord_unlock`,
//!   expired results deleted by `celery.backend_cleanup`;
//! - `django-db+postgresql://` ([`DjangoBackend`], the same feature):
//!   django-celery-results' tables, chords counted in its `ChordCounter`.

mod async_result;
mod backend;
#[cfg(feature = "postgres")]
mod database;
mod error;
mod group;
mod history;
#[cfg(feature = "redis")]
mod redis;
mod rpc;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod signing;

use std::sync::Arc;

use celeriac_broker::Broker;

use crate::Security;

/// The task that deletes expired results from stores where they do not
/// expire by themselves ([`ResultBackend::needs_cleanup`]); workers run it
/// and beat schedules it daily, as Celery's do.
pub const BACKEND_CLEANUP: &str = "celery.backend_cleanup";

pub use async_result::AsyncResult;
pub use backend::{
    BoxFuture, ChordClaim, ChordJoin, ChordStore, Leases, RateSlots, ResultBackend, ResultSettings,
    Slot, SlotGaps, UniqueLocks,
};
pub use celeriac_protocol::sql_row::ResultColumn;
#[cfg(feature = "postgres")]
pub use database::{DatabaseBackend, DjangoBackend};
pub use error::BackendError;
pub use group::GroupResult;
#[cfg(feature = "redis")]
pub use redis::RedisBackend;
pub use rpc::RpcBackend;

/// The backend a `result_backend` URL names: `None` for none (empty or
/// `disabled`), `rpc://`, a Redis URL (`redis://`, `rediss://`,
/// `redis+socket://`, `sentinel://`), or a PostgreSQL one
/// (`db+postgresql://`, `django-db+postgresql://`). With `security`, results
/// are signed and signed ones verified (`rpc://`, Redis and `db+`;
/// `django-db+` refuses it).
pub fn open_backend(
    url: &str,
    broker: &Broker,
    settings: &ResultSettings,
    security: Option<&Security>,
) -> Result<Option<Arc<dyn ResultBackend>>, BackendError> {
    let redacted = celeriac_broker::url::redact(url);
    if url.is_empty() || url == "disabled" {
        return Ok(None);
    }
    if url.starts_with("rpc://") {
        let expires = settings
            .expires
            .unwrap_or(std::time::Duration::from_secs(86_400));
        let backend = RpcBackend::new(broker.clone(), expires).with_security(security.cloned());
        return Ok(Some(Arc::new(backend)));
    }
    if is_redis(url) {
        return open_redis(url, settings, security);
    }
    if security.is_some() && url.starts_with("django-db+") {
        return Err(BackendError::Config(format!(
            "result backend {redacted:?} cannot store signed results; with message signing \
             set up, use rpc://, Redis or db+postgresql:// (or no result backend)"
        )));
    }
    if is_sql(url) {
        return open_database(url, settings, security);
    }
    if url == "django-db" {
        return Err(BackendError::Config(
            "result backend \"django-db\" takes its database from Django's settings, which a \
             Rust worker does not read; name the database: \
             django-db+postgresql://user:password@host:5432/dbname"
                .into(),
        ));
    }
    Err(BackendError::Config(format!(
        "result backend {redacted:?} is not supported; use rpc://, redis://, rediss://, \
         redis+socket://, sentinel://, db+postgresql:// or django-db+postgresql://"
    )))
}

#[cfg(feature = "postgres")]
fn open_database(
    url: &str,
    settings: &ResultSettings,
    security: Option<&Security>,
) -> Result<Option<Arc<dyn ResultBackend>>, BackendError> {
    if database::is_django_url(url) {
        return Ok(Some(Arc::new(DjangoBackend::new(url, settings.clone())?)));
    }
    debug_assert!(database::is_database_url(url));
    let backend = DatabaseBackend::new(url, settings.clone())?.with_security(security.cloned());
    Ok(Some(Arc::new(backend)))
}

#[cfg(not(feature = "postgres"))]
fn open_database(
    url: &str,
    _settings: &ResultSettings,
    _security: Option<&Security>,
) -> Result<Option<Arc<dyn ResultBackend>>, BackendError> {
    Err(BackendError::Config(format!(
        "result backend {:?} needs the `postgres` cargo feature of the celeriac crate \
         (on by default; it was turned off)",
        celeriac_broker::url::redact(url)
    )))
}

/// Whether `url` names a table store: Celery's database backend or
/// django-celery-results'.
fn is_sql(url: &str) -> bool {
    url.starts_with("db+") || url.starts_with("django-db+")
}

fn is_redis(url: &str) -> bool {
    ["redis://", "rediss://", "redis+socket://", "sentinel://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
}

#[cfg(feature = "redis")]
fn open_redis(
    url: &str,
    settings: &ResultSettings,
    security: Option<&Security>,
) -> Result<Option<Arc<dyn ResultBackend>>, BackendError> {
    debug_assert!(redis::is_redis_url(url));
    let backend = RedisBackend::new(url, settings.clone())?.with_security(security.cloned());
    Ok(Some(Arc::new(backend)))
}

#[cfg(not(feature = "redis"))]
fn open_redis(
    url: &str,
    _settings: &ResultSettings,
    _security: Option<&Security>,
) -> Result<Option<Arc<dyn ResultBackend>>, BackendError> {
    Err(BackendError::Config(format!(
        "result backend {:?} needs the `redis` cargo feature of the celeriac crate \
         (on by default; it was turned off)",
        celeriac_broker::url::redact(url)
    )))
}
