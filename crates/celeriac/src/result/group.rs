//! [`GroupResult`]: the results of a group's members, in order, like
//! Celery's.

use std::sync::Arc;
use std::time::Duration;

use celeriac_protocol::store::ResultTuple;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{AsyncResult, ResultBackend};
use crate::error::ResultError;

/// The results of a group: one [`AsyncResult`] per member, in order.
///
/// ```no_run
/// # async fn demo(app: celeriac::App) -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use celeriac::{group, Signature};
/// let sums = group((0..10).map(|i| Signature::new("demo.add").with_args(vec![i.into(), 1.into()])))
///     .apply_async(&app)
///     .await?;
/// sums.save().await?; // readable by id from any process: GroupResult::restore
/// let values: Vec<i64> = sums.join(Duration::from_secs(30)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct GroupResult {
    id: String,
    results: Vec<AsyncResult<Value>>,
    backend: Option<Arc<dyn ResultBackend>>,
}

impl std::fmt::Debug for GroupResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupResult")
            .field("id", &self.id)
            .field("results", &self.results.len())
            .finish_non_exhaustive()
    }
}

impl GroupResult {
    /// The group `id` with its members' results, read through `backend`.
    pub fn new(
        id: impl Into<String>,
        results: Vec<AsyncResult<Value>>,
        backend: Option<Arc<dyn ResultBackend>>,
    ) -> GroupResult {
        GroupResult {
            id: id.into(),
            results,
            backend,
        }
    }

    /// The group id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The members' results, in order.
    pub fn results(&self) -> &[AsyncResult<Value>] {
        &self.results
    }

    /// The result tuple Celery stores for it.
    pub fn to_tuple(&self) -> ResultTuple {
        ResultTuple::Group {
            id: self.id.clone(),
            parent: None,
            results: self.results.iter().map(AsyncResult::to_tuple).collect(),
        }
    }

    fn backend(&self) -> Result<&Arc<dyn ResultBackend>, ResultError> {
        self.backend
            .as_ref()
            .ok_or_else(|| ResultError::NoBackend(self.id.clone()))
    }

    /// Saves the group in the result store (`celery-taskset-meta-<id>`), so
    /// [`restore`](Self::restore) or Python's `GroupResult.restore(id)` can
    /// read it from any process.
    pub async fn save(&self) -> Result<(), ResultError> {
        Ok(self.backend()?.save_group(&self.to_tuple()).await?)
    }

    /// A group saved by [`save`](Self::save) (or by Python), or `None`.
    pub async fn restore(
        backend: Arc<dyn ResultBackend>,
        id: &str,
    ) -> Result<Option<GroupResult>, ResultError> {
        let Some(tuple) = backend.restore_group(id).await? else {
            return Ok(None);
        };
        let ResultTuple::Group { id, results, .. } = tuple else {
            return Err(ResultError::Backend(super::BackendError::Document(
                format!("{id} holds a task's result tuple, not a group's"),
            )));
        };
        let members = results
            .iter()
            .map(|member| AsyncResult::new(member.id(), Some(backend.clone())))
            .collect();
        Ok(Some(GroupResult::new(id, members, Some(backend))))
    }

    /// How many members finished.
    pub async fn completed_count(&self) -> Result<usize, ResultError> {
        let mut done = 0;
        for result in &self.results {
            if result.ready().await? {
                done += 1;
            }
        }
        Ok(done)
    }

    /// Whether every member finished.
    pub async fn ready(&self) -> Result<bool, ResultError> {
        Ok(self.completed_count().await? == self.results.len())
    }

    /// Waits (up to `timeout` in all) for every member and returns their
    /// values in order, as `T`; the first failure (in member order) is the
    /// error, as Celery's `join()` raises it.
    pub async fn join<T: DeserializeOwned>(
        &self,
        timeout: Duration,
    ) -> Result<Vec<T>, ResultError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut values = Vec::with_capacity(self.results.len());
        for result in &self.results {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            values.push(result.get_as::<T>(left).await?);
        }
        Ok(values)
    }
}
