//! Unique tasks (`unique_for`): at most one task of a name and arguments
//! (or of a custom key) queued or running at a time. The producer takes a
//! lock in the result store before it publishes, and sends nothing when
//! another task holds it (returning that task's id); the worker releases
//! the lock when the task is done, and it expires on its own after its
//! time to live, so a task that never finishes does not hold it forever.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::result::{BackendError, ResultBackend};
use crate::{Error, SendOptions, TaskOptions};

/// Header naming the lock a unique task holds, for the worker to release.
pub const UNIQUE_KEY_HEADER: &str = "x-celeriac-unique-key";

/// A call's unique lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UniqueLock {
    /// `<task name>:<custom key or digest of the arguments>`.
    pub(crate) key: String,
    /// How long the lock lasts unless released.
    pub(crate) ttl: Duration,
}

/// The lock a call of `name` must take, if the call or its task is unique.
pub(crate) fn lock_for(
    name: &str,
    args: &[Value],
    kwargs: &Map<String, Value>,
    options: &SendOptions,
    defaults: &TaskOptions,
) -> Result<Option<UniqueLock>, Error> {
    let Some(ttl) = options.unique_for.or(defaults.unique_for) else {
        if options.unique_key.is_some() {
            return Err(Error::Config(format!(
                "a call of {name} has a unique_key but no unique_for: set how long it stays \
                 unique, on the call or on the task"
            )));
        }
        return Ok(None);
    };
    let what = match &options.unique_key {
        Some(key) => key.clone(),
        None => arguments_digest(args, kwargs),
    };
    Ok(Some(UniqueLock {
        key: format!("{name}:{what}"),
        ttl,
    }))
}

/// A SHA-256 of the arguments as JSON, in hex: the same arguments give the
/// same digest whichever process sends them, keyword arguments in any
/// order.
fn arguments_digest(args: &[Value], kwargs: &Map<String, Value>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(Value::from(args.to_vec()).to_string());
    let sorted: BTreeMap<&String, &Value> = kwargs.iter().collect();
    for (name, value) in sorted {
        hasher.update(b"\n");
        hasher.update(name.as_bytes());
        hasher.update(b"=");
        hasher.update(value.to_string());
    }
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Takes `lock` for task `id`: `None` if taken (send the task), or the id
/// of the task holding it (send nothing).
pub(crate) async fn claim(
    backend: Option<&Arc<dyn ResultBackend>>,
    lock: &UniqueLock,
    id: &str,
) -> Result<Option<String>, Error> {
    let Some(locks) = backend.and_then(|b| b.unique_locks()) else {
        return Err(Error::Backend(BackendError::Unsupported {
            backend: "configured",
            what: "unique tasks",
            fix: "unique_for keeps its locks beside the results: give the app a Redis result \
                  backend (redis://...)",
        }));
    };
    Ok(locks.claim(&lock.key, id, lock.ttl).await?)
}

/// Releases `lock` for task `id` after its message could not be sent; a
/// failure leaves the lock to expire.
pub(crate) async fn release_unsent(
    backend: Option<&Arc<dyn ResultBackend>>,
    lock: &UniqueLock,
    id: &str,
) {
    if let Some(locks) = backend.and_then(|b| b.unique_locks())
        && let Err(e) = locks.release(&lock.key, id).await
    {
        tracing::warn!(key = %lock.key, error = %e, "could not release the lock of a task that was not sent; it expires on its own");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(unique_for: Option<u64>, key: Option<&str>) -> SendOptions {
        SendOptions {
            unique_for: unique_for.map(Duration::from_secs),
            unique_key: key.map(str::to_owned),
            ..SendOptions::default()
        }
    }

    #[test]
    fn the_same_arguments_give_the_same_lock_and_others_another() {
        let none = TaskOptions::default();
        let kwargs = Map::new();
        let lock = |args: &[Value]| {
            lock_for("t", args, &kwargs, &options(Some(60), None), &none)
                .unwrap()
                .unwrap()
        };
        assert_eq!(lock(&[json!(1), json!("a")]), lock(&[json!(1), json!("a")]));
        assert_ne!(lock(&[json!(1)]).key, lock(&[json!(2)]).key);
        assert!(lock(&[json!(1)]).key.starts_with("t:"));
        assert_eq!(lock(&[json!(1)]).ttl, Duration::from_secs(60));
    }

    #[test]
    fn keyword_arguments_in_another_order_give_the_same_lock() {
        let none = TaskOptions::default();
        let mut ab = Map::new();
        ab.insert("a".into(), json!(1));
        ab.insert("b".into(), json!(2));
        let mut ba = Map::new();
        ba.insert("b".into(), json!(2));
        ba.insert("a".into(), json!(1));
        let lock = |kwargs: &Map<String, Value>| {
            lock_for("t", &[], kwargs, &options(Some(60), None), &none)
                .unwrap()
                .unwrap()
                .key
        };
        assert_eq!(lock(&ab), lock(&ba));
    }

    #[test]
    fn a_custom_key_replaces_the_arguments_and_the_call_overrides_the_task() {
        let task = TaskOptions {
            unique_for: Some(Duration::from_secs(600)),
            ..TaskOptions::default()
        };
        let lock = lock_for(
            "t",
            &[json!(1)],
            &Map::new(),
            &options(None, Some("acct-7")),
            &task,
        )
        .unwrap()
        .unwrap();
        assert_eq!(lock.key, "t:acct-7");
        assert_eq!(lock.ttl, Duration::from_secs(600));
        let shorter = lock_for("t", &[], &Map::new(), &options(Some(5), None), &task)
            .unwrap()
            .unwrap();
        assert_eq!(shorter.ttl, Duration::from_secs(5));
    }

    #[test]
    fn a_call_that_is_not_unique_takes_no_lock_and_a_key_alone_is_an_error() {
        let none = TaskOptions::default();
        assert_eq!(
            lock_for("t", &[], &Map::new(), &options(None, None), &none).unwrap(),
            None
        );
        let err = lock_for("t", &[], &Map::new(), &options(None, Some("k")), &none).unwrap_err();
        assert!(err.to_string().contains("no unique_for"), "{err}");
    }
}
