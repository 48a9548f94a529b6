//! Celery's Redis result backend (§4.4, §4.5), wire-identical to Python's:
//! results under `celery-task-meta-<id>` with their expiry and published on
//! the key's channel in the same step (an existing `SUCCESS` is never
//! overwritten), saved groups under `celery-taskset-meta-<id>`, and chords
//! joined with Celery 5.7's bookkeeping, so Python and Rust workers can share
//! every key. Waiting wakes on pub/sub, never by polling.
//!
//! Connections go through redis-rs (`ConnectionManager` reconnects after a
//! loss); a store that cannot be reached is [`BackendError::Unavailable`],
//! which the worker retries with backoff before it settles a delivery.

mod connection;
mod scripts;
mod subscriber;
mod url;

use std::sync::Arc;
use std::time::Duration;

use celeriac_protocol::json::to_python_json;
use celeriac_protocol::store::{
    ChordKey, ChordPart, ResultTuple, StoreKeys, group_document, parse_group_document,
};
use celeriac_protocol::{ResultMeta, State};
use redis::AsyncCommands as _;
use tokio::time::Instant;

use self::connection::Store;
use self::subscriber::{Heard, Subscriber};
use self::url::RedisUrl;
pub(crate) use self::url::is_redis_url;
use super::history::StateHistory;
use super::signing::Documents;
use super::{
    BackendError, BoxFuture, ChordClaim, ChordJoin, ChordStore, Leases, RateSlots, ResultBackend,
    ResultSettings, Slot, SlotGaps, UniqueLocks,
};
use crate::{Request, Security};

/// The Redis result backend (`redis://`, `rediss://`, `redis+socket://`,
/// `sentinel://`).
pub struct RedisBackend {
    store: Arc<Store>,
    subscriber: Subscriber,
    keys: StoreKeys,
    settings: ResultSettings,
    seen: StateHistory,
    documents: Documents,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.store.url())
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// A backend for `url` (see the `url` forms in the module docs); nothing
    /// connects until the first use, so a program starts while Redis is
    /// down.
    pub fn new(url: &str, settings: ResultSettings) -> Result<RedisBackend, BackendError> {
        let url = RedisUrl::parse(url).map_err(BackendError::Config)?;
        let store = Arc::new(Store::new(url));
        Ok(RedisBackend {
            subscriber: Subscriber::new(store.clone()),
            store,
            keys: StoreKeys::new(settings.key_prefix.as_deref()),
            settings,
            seen: StateHistory::default(),
            documents: Documents::default(),
        })
    }

    /// Signs what it stores and verifies signed values it reads, with
    /// `security` (Celery's `result_serializer = 'auth'`).
    pub fn with_security(mut self, security: Option<Security>) -> RedisBackend {
        self.documents = Documents::new(security);
        self
    }

    /// Result expiry in whole seconds; 0 for none.
    fn expires(&self) -> u64 {
        self.settings
            .expires
            .map_or(0, |d| d.as_secs().max(u64::from(!d.is_zero())))
    }

    fn decode(&self, bytes: &[u8]) -> Result<ResultMeta, BackendError> {
        let document = self.documents.open(bytes)?;
        let value = celeriac_protocol::json::from_slice(&document)
            .map_err(|e| BackendError::Document(e.to_string()))?;
        ResultMeta::from_json(value).map_err(|e| BackendError::Document(e.to_string()))
    }

    async fn read(&self, task_id: &str) -> Result<Option<ResultMeta>, BackendError> {
        let mut connection = self.store.connection().await?;
        let stored: Option<Vec<u8>> = match connection.get(self.keys.task(task_id)).await {
            Ok(stored) => stored,
            Err(e) => return Err(self.failed("reading a result", &e).await),
        };
        let Some(bytes) = stored else {
            return Ok(None);
        };
        let meta = self.decode(&bytes)?;
        self.seen.record(&meta);
        Ok(Some(meta))
    }

    /// Our error for a client error, noting a lost store.
    async fn failed(&self, operation: &'static str, error: &redis::RedisError) -> BackendError {
        let error = self.store.error(operation, error);
        if error.is_retryable() {
            self.store.lost().await;
        }
        error
    }

    /// How long a worker's claim on a chord body lasts before another may
    /// take over (Celery: twice the join timeout, at least 5 s).
    fn claim_lease(&self) -> u64 {
        (self.settings.chord_join_timeout.as_secs() * 2).max(5)
    }
}

impl ResultBackend for RedisBackend {
    fn url(&self) -> String {
        self.store.url()
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
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let mut subscription = self.subscriber.subscribe(&self.keys.task(task_id)).await;
            let mut check = true;
            loop {
                if check {
                    if let Some(meta) = self.read(task_id).await?
                        && meta.status.is_ready()
                    {
                        return Ok(Some(meta));
                    }
                    check = false;
                }
                let heard = tokio::select! {
                    heard = subscription.next() => heard,
                    () = tokio::time::sleep_until(deadline) => return Ok(None),
                };
                match heard {
                    Heard::Published(bytes) => {
                        let meta = self.decode(&bytes)?;
                        self.seen.record(&meta);
                        if meta.status.is_ready() {
                            return Ok(Some(meta));
                        }
                    }
                    Heard::Resubscribed => check = true,
                }
            }
        })
    }

    fn history(&self, task_id: &str) -> Vec<State> {
        self.seen.of(task_id)
    }

    fn store<'a>(
        &'a self,
        meta: &'a ResultMeta,
        _request: &'a Request,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let document = self.documents.seal(to_python_json(meta));
            let mut connection = self.store.connection().await?;
            let stored = scripts::STORE_RESULT
                .key(self.keys.task(&meta.task_id))
                .arg(document)
                .arg(self.expires())
                .invoke_async::<i64>(&mut connection)
                .await;
            match stored {
                Ok(_) => Ok(()),
                Err(e) => Err(self.failed("storing a result", &e).await),
            }
        })
    }

    fn forget<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            match connection.del::<_, i64>(self.keys.task(task_id)).await {
                Ok(_) => Ok(()),
                Err(e) => Err(self.failed("forgetting a result", &e).await),
            }
        })
    }

    fn save_group<'a>(&'a self, group: &'a ResultTuple) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let key = self.keys.group(group.id());
            let document = self.documents.seal(group_document(group));
            let saved = match self.expires() {
                0 => connection.set::<_, _, ()>(key, document).await,
                expires => connection.set_ex::<_, _, ()>(key, document, expires).await,
            };
            match saved {
                Ok(()) => Ok(()),
                Err(e) => Err(self.failed("saving a group", &e).await),
            }
        })
    }

    fn restore_group<'a>(
        &'a self,
        group_id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ResultTuple>, BackendError>> {
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let stored: Option<Vec<u8>> = match connection.get(self.keys.group(group_id)).await {
                Ok(stored) => stored,
                Err(e) => return Err(self.failed("restoring a group", &e).await),
            };
            stored
                .map(|bytes| {
                    parse_group_document(&self.documents.open(&bytes)?)
                        .map_err(|e| BackendError::Document(e.to_string()))
                })
                .transpose()
        })
    }

    fn chords(&self) -> Option<&dyn ChordStore> {
        Some(self)
    }

    fn unique_locks(&self) -> Option<&dyn UniqueLocks> {
        Some(self)
    }

    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }

    fn slots(&self) -> Option<&dyn RateSlots> {
        Some(self)
    }
}

/// Microseconds of `duration`.
fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

impl RateSlots for RedisBackend {
    fn take<'a>(
        &'a self,
        key: &'a str,
        gaps: SlotGaps,
    ) -> BoxFuture<'a, Result<Slot, BackendError>> {
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let taken = scripts::TAKE_SLOT
                .key(self.keys.rate(key))
                .arg(micros(gaps.interval).max(1))
                .arg(micros(gaps.near))
                .arg(micros(gaps.lead))
                .arg(micros(gaps.horizon))
                .invoke_async::<(i64, i64)>(&mut connection)
                .await;
            match taken {
                Ok((slot, now)) => Ok(Slot {
                    at: (slot >= 0).then_some(slot),
                    now,
                }),
                Err(e) => Err(self.failed("taking a global rate limit's slot", &e).await),
            }
        })
    }

    fn honour<'a>(
        &'a self,
        key: &'a str,
        slot: i64,
        interval: Duration,
    ) -> BoxFuture<'a, Result<i64, BackendError>> {
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let now = scripts::HONOUR_SLOT
                .key(self.keys.rate(key))
                .arg(slot)
                .arg(micros(interval).max(1))
                .invoke_async::<i64>(&mut connection)
                .await;
            match now {
                Ok(now) => Ok(now),
                Err(e) => Err(self
                    .failed("honouring a global rate limit's slot", &e)
                    .await),
            }
        })
    }
}

/// Milliseconds of `ttl`, at least one.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Leases for RedisBackend {
    fn acquire<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        cap: u32,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let taken = scripts::ACQUIRE_LEASE
                .key(self.keys.limit(key))
                .arg(holder)
                .arg(cap)
                .arg(millis(ttl))
                .invoke_async::<i64>(&mut connection)
                .await;
            match taken {
                Ok(taken) => Ok(taken == 1),
                Err(e) => Err(self.failed("taking a global limit's lease", &e).await),
            }
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let renewed = scripts::RENEW_LEASE
                .key(self.keys.limit(key))
                .arg(holder)
                .arg(millis(ttl))
                .invoke_async::<i64>(&mut connection)
                .await;
            match renewed {
                Ok(renewed) => Ok(renewed == 1),
                Err(e) => Err(self.failed("renewing a global limit's lease", &e).await),
            }
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        holder: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            match connection
                .zrem::<_, _, i64>(self.keys.limit(key), holder)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) => Err(self.failed("releasing a global limit's lease", &e).await),
            }
        })
    }

    fn held<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u32, BackendError>> {
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let held = scripts::HELD_LEASES
                .key(self.keys.limit(key))
                .invoke_async::<u32>(&mut connection)
                .await;
            match held {
                Ok(held) => Ok(held),
                Err(e) => Err(self.failed("counting a global limit's leases", &e).await),
            }
        })
    }
}

impl UniqueLocks for RedisBackend {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        task_id: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<String>, BackendError>> {
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
            let claimed = scripts::CLAIM_UNIQUE
                .key(self.keys.unique(key))
                .arg(task_id)
                .arg(millis)
                .invoke_async::<Option<String>>(&mut connection)
                .await;
            match claimed {
                Ok(holder) => Ok(holder),
                Err(e) => Err(self.failed("taking a unique task's lock", &e).await),
            }
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        task_id: &'a str,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let released = scripts::RELEASE_UNIQUE
                .key(self.keys.unique(key))
                .arg(task_id)
                .invoke_async::<i64>(&mut connection)
                .await;
            match released {
                Ok(_) => Ok(()),
                Err(e) => Err(self.failed("releasing a unique task's lock", &e).await),
            }
        })
    }
}

impl ChordStore for RedisBackend {
    fn start_chord<'a>(
        &'a self,
        group_id: &'a str,
        header: &'a [String],
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let size = header.len();
            let mut connection = self.store.connection().await?;
            let mut pipe = redis::pipe();
            pipe.atomic()
                .del(self.keys.chord(group_id, ChordKey::Claim))
                .ignore();
            let size_key = self.keys.chord(group_id, ChordKey::Size);
            match self.expires() {
                0 => pipe.set(size_key, size).ignore(),
                expires => pipe.set_ex(size_key, size, expires).ignore(),
            };
            match pipe.query_async::<()>(&mut connection).await {
                Ok(()) => Ok(()),
                Err(e) => Err(self.failed("setting a chord's size", &e).await),
            }
        })
    }

    fn part_return<'a>(
        &'a self,
        group_id: &'a str,
        group_index: Option<i64>,
        part: &'a ChordPart,
    ) -> BoxFuture<'a, Result<ChordJoin, BackendError>> {
        Box::pin(async move {
            let key = |k| self.keys.chord(group_id, k);
            let claim = ChordClaim {
                token: uuid::Uuid::new_v4().simple().to_string(),
            };
            let mut connection = self.store.connection().await?;
            let recorded = scripts::CHORD_PART
                .key(key(ChordKey::Results))
                .key(key(ChordKey::Adjustment))
                .key(key(ChordKey::Size))
                .key(key(ChordKey::Counted))
                .key(key(ChordKey::Claim))
                .key(self.keys.group(group_id))
                .arg(&part.task_id)
                .arg(self.documents.seal(part.encode()))
                .arg(group_index.map_or_else(|| "+inf".to_owned(), |i| i.to_string()))
                .arg(self.expires())
                .arg(self.expires())
                .arg(self.claim_lease())
                .arg(&claim.token)
                .invoke_async::<(i64, i64, i64)>(&mut connection)
                .await;
            let (_count, _total, claimed) = match recorded {
                Ok(answer) => answer,
                Err(e) => return Err(self.failed("recording a chord part", &e).await),
            };
            if claimed != 1 {
                return Ok(ChordJoin::Waiting);
            }
            let entries: Vec<Vec<u8>> = match connection.zrange(key(ChordKey::Results), 0, -1).await
            {
                Ok(entries) => entries,
                Err(e) => return Err(self.failed("reading a chord's results", &e).await),
            };
            let parts = entries
                .iter()
                .map(|bytes| {
                    ChordPart::decode(&self.documents.open(bytes)?)
                        .map_err(|e| BackendError::Document(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ChordJoin::Complete { parts, claim })
        })
    }

    fn extend_claim<'a>(
        &'a self,
        group_id: &'a str,
        claim: &'a ChordClaim,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let mut connection = self.store.connection().await?;
            let extended = scripts::EXTEND_CLAIM
                .key(self.keys.chord(group_id, ChordKey::Claim))
                .key(self.keys.chord(group_id, ChordKey::Size))
                .arg(&claim.token)
                .arg(lease.as_secs().max(1))
                .invoke_async::<i64>(&mut connection)
                .await;
            match extended {
                Ok(held) => Ok(held == 1),
                Err(e) => Err(self.failed("extending a chord claim", &e).await),
            }
        })
    }

    fn finish<'a>(
        &'a self,
        group_id: &'a str,
        claim: &'a ChordClaim,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let key = |k| self.keys.chord(group_id, k);
            let mut connection = self.store.connection().await?;
            let finished = scripts::FINISH_CHORD
                .key(key(ChordKey::Claim))
                .key(key(ChordKey::Results))
                .key(key(ChordKey::Adjustment))
                .key(key(ChordKey::Size))
                .key(key(ChordKey::Counted))
                .arg(&claim.token)
                .arg((self.claim_lease() * 2).max(300))
                .invoke_async::<i64>(&mut connection)
                .await;
            match finished {
                Ok(_) => Ok(()),
                Err(e) => Err(self.failed("finishing a chord", &e).await),
            }
        })
    }
}
