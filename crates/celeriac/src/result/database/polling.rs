//! Waiting on a database: nothing tells a reader that a row changed, so a
//! waiter reads it again, soon at first, then every half second (as
//! Celery's database backends poll).

use std::future::Future;
use std::time::Duration;

use celeriac_protocol::ResultMeta;
use tokio::time::Instant;

use crate::result::BackendError;

/// The first pause between reads.
const FIRST_POLL: Duration = Duration::from_millis(20);
/// The longest pause between reads.
const SLOWEST_POLL: Duration = Duration::from_millis(500);

/// Reads with `read` until it finds a ready result, or `timeout` passes
/// (`None`).
pub(super) async fn until_ready<F, R>(
    timeout: Duration,
    mut read: F,
) -> Result<Option<ResultMeta>, BackendError>
where
    F: FnMut() -> R,
    R: Future<Output = Result<Option<ResultMeta>, BackendError>>,
{
    let deadline = Instant::now() + timeout;
    let mut interval = FIRST_POLL;
    loop {
        if let Some(meta) = read().await?
            && meta.status.is_ready()
        {
            return Ok(Some(meta));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        tokio::time::sleep_until((now + interval).min(deadline)).await;
        interval = (interval * 2).min(SLOWEST_POLL);
    }
}
