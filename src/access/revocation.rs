//! The revocation cache: session status by session id. A hit costs no I/O; concurrent misses
//! for one session share one query; LISTEN/NOTIFY events invalidate entries; entries expire
//! after `cache_ttl_secs` whatever happens to the notifications.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use uuid::Uuid;

use crate::model::SessionStatus;
use crate::store::{RevocationEvent, Store, StoreError};

#[derive(Debug)]
struct Entry {
    /// `None`: the session does not exist (user deleted) — treated as revoked.
    status: Option<SessionStatus>,
    /// No invalidation happened while this entry was being loaded.
    settled: bool,
}

/// Whether a cache lookup was answered from memory, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Answered from the cache.
    Hit,
    /// Loaded from the database.
    Miss,
}

/// Session status cache shared by all proxy workers.
pub struct RevocationCache {
    cache: moka::future::Cache<Uuid, Arc<Entry>>,
    store: Store,
    /// Bumped on every invalidation, to spot loads that raced one.
    epoch: AtomicU64,
}

impl std::fmt::Debug for RevocationCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl RevocationCache {
    /// An empty cache of `capacity` sessions, each kept at most `ttl`.
    pub fn new(store: Store, capacity: u64, ttl: Duration) -> RevocationCache {
        RevocationCache {
            cache: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .support_invalidation_closures()
                .build(),
            store,
            epoch: AtomicU64::new(0),
        }
    }

    /// The status of session `sid` (`None` when the session does not exist).
    pub async fn status(&self, sid: Uuid) -> Result<(Option<SessionStatus>, Lookup), StoreError> {
        if let Some(entry) = self.cache.get(&sid).await {
            return Ok((entry.status.clone(), Lookup::Hit));
        }
        let entry = self
            .cache
            .try_get_with(sid, async {
                let started = self.epoch.load(Ordering::Acquire);
                let status = self.store.session_status(sid).await?;
                let settled = self.epoch.load(Ordering::Acquire) == started;
                Ok::<_, StoreError>(Arc::new(Entry { status, settled }))
            })
            .await
            .map_err(|e| match &*e {
                StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
                other => StoreError::Db(other.to_string()),
            })?;
        if !entry.settled {
            // A revocation arrived mid-load: use the answer once, don't keep it.
            self.cache.invalidate(&sid).await;
        }
        Ok((entry.status.clone(), Lookup::Miss))
    }

    /// Applies a LISTEN/NOTIFY event.
    pub fn apply(&self, event: RevocationEvent) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match event {
            RevocationEvent::Session(sid) => match tokio::runtime::Handle::try_current() {
                // One key: a direct invalidation, instead of registering a predicate that every
                // later read would have to evaluate until housekeeping runs.
                Ok(runtime) => {
                    let cache = self.cache.clone();
                    runtime.spawn(async move { cache.invalidate(&sid).await });
                }
                Err(_) => {
                    let _ = self.cache.invalidate_entries_if(move |k, _| *k == sid);
                }
            },
            RevocationEvent::User(uid) => {
                let _ = self.cache.invalidate_entries_if(move |_, v| {
                    v.status.as_ref().is_none_or(|s| s.user_id == uid)
                });
            }
            RevocationEvent::All => self.cache.invalidate_all(),
        }
    }

    /// Applies a revocation this instance committed itself, finished when it returns: the
    /// request that revoked is answered only after its own instance stopped trusting the
    /// session (the NOTIFY that follows changes nothing more here).
    pub async fn forget(&self, event: RevocationEvent) {
        match event {
            RevocationEvent::Session(sid) => {
                self.epoch.fetch_add(1, Ordering::AcqRel);
                self.cache.invalidate(&sid).await;
            }
            other => self.apply(other),
        }
    }

    /// Entries currently cached, after the cache's pending housekeeping (expired entries
    /// removed, recent inserts counted): the exact figure for the scrape-time gauge, where
    /// [`len`](Self::len) may lag behind by the writes not yet applied.
    pub async fn entries(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// Entries currently cached (approximate).
    pub fn len(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Whether the cache is empty (approximate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
