//! The shared cache in Redis, for several API instances.
//!
//! Keys: `reporting:v1:answer:<sha256 of the request>` holds an answer (`SET ... EX ttl`);
//! `reporting:v1:day:<YYYY-MM-DD>` is the set of answers covering that day, so that a
//! recomputed day drops exactly those. The connection manager reconnects by itself; a
//! failed command is a miss (counted), never an error answer.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use jiff::civil::Date;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use super::{each_day, Days};

const PREFIX: &str = "reporting:v1";

#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
}

fn answer_key(key: &str) -> String {
    format!(
        "{PREFIX}:answer:{}",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

fn day_key(day: Date) -> String {
    format!("{PREFIX}:day:{day}")
}

fn failed(what: &str, error: redis::RedisError) {
    metrics::counter!("reporting_cache_errors_total").increment(1);
    tracing::warn!(error = %error, "cache (Redis): {what} failed; answering without the cache");
}

impl RedisCache {
    pub async fn connect(url: &str) -> anyhow::Result<RedisCache> {
        let client =
            redis::Client::open(url).with_context(|| format!("cache.redis_url {url:?}"))?;
        let connection = ConnectionManager::new(client)
            .await
            .with_context(|| format!("connecting to Redis at cache.redis_url {url:?}"))?;
        Ok(RedisCache { connection })
    }

    pub async fn get(&self, key: &str) -> Option<Bytes> {
        let mut connection = self.connection.clone();
        match redis::cmd("GET")
            .arg(answer_key(key))
            .query_async::<Option<Vec<u8>>>(&mut connection)
            .await
        {
            Ok(found) => found.map(Bytes::from),
            Err(e) => {
                failed("GET", e);
                None
            }
        }
    }

    pub async fn put(&self, key: &str, body: Bytes, ttl: Duration, days: Option<Days>) {
        let answer = answer_key(key);
        let ttl_s = ttl.as_secs().max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(&answer)
            .arg(body.as_ref())
            .arg("EX")
            .arg(ttl_s)
            .ignore();
        if let Some(days) = days {
            for day in each_day(days) {
                let tag = day_key(day);
                pipe.cmd("SADD").arg(&tag).arg(&answer).ignore();
                pipe.cmd("EXPIRE").arg(&tag).arg(ttl_s).arg("GT").ignore();
                // A new tag has no TTL for GT to compare with: give it one.
                pipe.cmd("EXPIRE").arg(&tag).arg(ttl_s).arg("NX").ignore();
            }
        }
        let mut connection = self.connection.clone();
        if let Err(e) = pipe.query_async::<()>(&mut connection).await {
            failed("SET", e);
        }
    }

    pub async fn invalidate_day(&self, day: Date) {
        let tag = day_key(day);
        let mut connection = self.connection.clone();
        let members: Vec<String> = match redis::cmd("SMEMBERS")
            .arg(&tag)
            .query_async(&mut connection)
            .await
        {
            Ok(members) => members,
            Err(e) => return failed("SMEMBERS", e),
        };
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&tag).ignore();
        for member in members {
            pipe.cmd("DEL").arg(member).ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut connection).await {
            failed("DEL", e);
        }
    }

    /// Drops every answer and tag of this service (SCAN, not FLUSHDB: the Redis may be
    /// shared with others).
    pub async fn clear(&self) {
        let mut connection = self.connection.clone();
        let mut cursor: u64 = 0;
        loop {
            let scanned: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}:*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await;
            let (next, keys) = match scanned {
                Ok(scanned) => scanned,
                Err(e) => return failed("SCAN", e),
            };
            if !keys.is_empty() {
                if let Err(e) = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut connection)
                    .await
                {
                    return failed("DEL", e);
                }
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}
