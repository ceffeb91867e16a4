//! The result cache: JSON answers kept by request, in process ([`memory`], moka) or in a
//! Redis shared by several instances ([`redis`]).
//!
//! An answer over a closed period (its last day ended, its windows closed and settled) is
//! kept `closed_ttl_s` (a day); one that includes the present, `live_ttl_s` (seconds). An
//! answer is tagged with the days it covers: when the analytics layer recomputes a day it
//! says so on PostgreSQL's `daily_recomputed` channel ([`invalidate`]), and every answer
//! covering that day is dropped, in every instance. Answers are per request, not per
//! caller: permissions are checked before the cache is asked.
//!
//! A cache that fails (Redis down) is a miss, counted in `reporting_cache_errors_total`,
//! never an error answer. Hits and misses: `reporting_cache_requests_total{result}`.

pub mod invalidate;
pub mod memory;
pub mod redis;

use std::time::Duration;

use bytes::Bytes;
use jiff::civil::Date;

use crate::config::CacheConfig;

/// Days an entry covers, first and last (inclusive).
pub type Days = (Date, Date);

/// An entry is tagged with at most this many days; a longer range is kept for the live TTL
/// only (it is not invalidated day by day).
pub const MAX_TAGGED_DAYS: i32 = 400;

/// The cache of the service.
#[derive(Clone)]
pub enum Cache {
    Off,
    Memory(memory::MemoryCache),
    Redis(redis::RedisCache),
}

impl Cache {
    pub async fn new(config: &CacheConfig) -> anyhow::Result<Cache> {
        if !config.enabled {
            return Ok(Cache::Off);
        }
        Ok(match &config.redis_url {
            Some(url) => Cache::Redis(redis::RedisCache::connect(url).await?),
            None => Cache::Memory(memory::MemoryCache::new(config.max_bytes)),
        })
    }

    fn backend(&self) -> &'static str {
        match self {
            Cache::Off => "off",
            Cache::Memory(_) => "memory",
            Cache::Redis(_) => "redis",
        }
    }

    pub async fn get(&self, key: &str) -> Option<Bytes> {
        let found = match self {
            Cache::Off => return None,
            Cache::Memory(cache) => cache.get(key).await,
            Cache::Redis(cache) => cache.get(key).await,
        };
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!("reporting_cache_requests_total", "result" => result, "backend" => self.backend())
            .increment(1);
        found
    }

    /// Keeps `body` for `ttl`, tagged with `days` (if any).
    pub async fn put(&self, key: &str, body: Bytes, ttl: Duration, days: Option<Days>) {
        let days = days.filter(|(first, last)| {
            first
                .until(*last)
                .map(|span| span.get_days() < MAX_TAGGED_DAYS)
                .unwrap_or(false)
        });
        match self {
            Cache::Off => {}
            Cache::Memory(cache) => cache.put(key, body, ttl, days).await,
            Cache::Redis(cache) => cache.put(key, body, ttl, days).await,
        }
    }

    /// Drops every entry covering `day`.
    pub async fn invalidate_day(&self, day: Date) {
        metrics::counter!("reporting_cache_invalidations_total").increment(1);
        match self {
            Cache::Off => {}
            Cache::Memory(cache) => cache.invalidate_day(day),
            Cache::Redis(cache) => cache.invalidate_day(day).await,
        }
    }

    /// Drops everything (notifications may have been missed).
    pub async fn clear(&self) {
        match self {
            Cache::Off => {}
            Cache::Memory(cache) => cache.clear(),
            Cache::Redis(cache) => cache.clear().await,
        }
    }
}

/// Every day of `days`.
pub fn each_day((first, last): Days) -> impl Iterator<Item = Date> {
    first
        .series(jiff::Span::new().days(1))
        .take_while(move |d| *d <= last)
}
