//! The in-process cache (moka): each entry with its own time to live and its days, the
//! whole bounded in bytes (an answer can be a page of thousands of rows).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::civil::Date;
use moka::future::Cache;
use moka::Expiry;

use super::Days;

#[derive(Clone)]
struct Entry {
    body: Bytes,
    ttl: Duration,
    days: Option<Days>,
}

/// Each entry expires after its own TTL.
struct PerEntry;

impl Expiry<Arc<str>, Entry> for PerEntry {
    fn expire_after_create(&self, _: &Arc<str>, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
}

#[derive(Clone)]
pub struct MemoryCache(Cache<Arc<str>, Entry>);

impl MemoryCache {
    /// A cache of at most `max_bytes` of answers (bodies and keys); the least used go first.
    pub fn new(max_bytes: u64) -> MemoryCache {
        MemoryCache(
            Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &Arc<str>, entry: &Entry| {
                    u32::try_from(key.len() + entry.body.len()).unwrap_or(u32::MAX)
                })
                .expire_after(PerEntry)
                .support_invalidation_closures()
                .build(),
        )
    }

    pub async fn get(&self, key: &str) -> Option<Bytes> {
        self.0.get(key).await.map(|entry| entry.body)
    }

    pub async fn put(&self, key: &str, body: Bytes, ttl: Duration, days: Option<Days>) {
        self.0
            .insert(Arc::from(key), Entry { body, ttl, days })
            .await;
    }

    pub fn invalidate_day(&self, day: Date) {
        let covers = move |_: &Arc<str>, entry: &Entry| {
            entry
                .days
                .is_some_and(|(first, last)| first <= day && day <= last)
        };
        if let Err(e) = self.0.invalidate_entries_if(covers) {
            // Only without support_invalidation_closures, which is set above.
            tracing::error!(error = %e, "cache invalidation refused; clearing the cache");
            self.0.invalidate_all();
        }
    }

    pub fn clear(&self) {
        self.0.invalidate_all();
    }
}
