//! The response cache: answers to deterministic requests, by key, for a
//! time. A bounded local LRU (moka, weighed in bytes, each entry expiring
//! when its stored deadline passes) in front of Redis when there is one,
//! so replicas share answers and a replica's own hits cost no round trip.
//!
//! The cache never fails its caller: a Redis that is down or slow is a
//! miss (counted, logged once per failure), and the answer is asked of the
//! provider as if nothing were cached.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use serde::{Deserialize, Serialize};
use sluice_protocol::Usage;

use crate::redis::{RedisConnections, redis_error};
use crate::{Backend, BackendError};

/// Largest answer cached, in bytes of text.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Longest a Redis lookup may take before it counts as a miss.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// A cached answer: what a replay needs to stream it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedAnswer {
    /// The answer's text.
    pub content: String,
    /// OpenAI's finish reason (`stop`, `length`).
    pub finish_reason: String,
    /// Token counts of the request that made it.
    pub usage: Option<Usage>,
    /// The model that answered, as the provider named it.
    pub model: String,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

impl CachedAnswer {
    fn bytes(&self) -> usize {
        self.content.len() + self.model.len() + 64
    }

    fn left(&self) -> Duration {
        Duration::from_millis(self.expires_at_ms.saturating_sub(now_ms()))
    }
}

/// Milliseconds since the Unix epoch: cached answers expire by the wall
/// clock, which replicas share (roughly), not by one process's monotonic one.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How a lookup went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// In this replica's memory.
    Local,
    /// In Redis (now also in memory).
    Shared,
    /// Nowhere (or Redis did not answer in time).
    Miss,
}

struct ByDeadline;

impl moka::Expiry<String, Arc<CachedAnswer>> for ByDeadline {
    fn expire_after_create(
        &self,
        _: &String,
        answer: &Arc<CachedAnswer>,
        _: Instant,
    ) -> Option<Duration> {
        Some(answer.left())
    }
}

/// The cache. Cloning shares it.
#[derive(Clone)]
pub struct ResponseCache {
    local: moka::sync::Cache<String, Arc<CachedAnswer>>,
    redis: Option<Client>,
    ttl: Duration,
}

impl ResponseCache {
    /// A cache keeping answers for `ttl`, at most `local_bytes` of them in
    /// memory, shared through `redis` if given.
    pub fn new(local_bytes: u64, ttl: Duration, redis: Option<&RedisConnections>) -> Self {
        let local = moka::sync::Cache::builder()
            .max_capacity(local_bytes)
            .weigher(|key: &String, answer: &Arc<CachedAnswer>| {
                (key.len() + answer.bytes()).try_into().unwrap_or(u32::MAX)
            })
            .expire_after(ByDeadline)
            .build();
        Self {
            local,
            redis: redis.map(RedisConnections::client),
            ttl,
        }
    }

    /// How long answers are kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Bytes of answers held in this replica's memory.
    pub fn local_bytes(&self) -> u64 {
        self.local.run_pending_tasks();
        self.local.weighted_size()
    }

    fn redis_key(key: &str) -> String {
        format!("sluice:cache:{key}")
    }

    /// The answer stored under `key`, and where it was found.
    pub async fn get(&self, key: &str) -> (Option<Arc<CachedAnswer>>, Found) {
        if let Some(answer) = self.local.get(key) {
            return (Some(answer), Found::Local);
        }
        let Some(redis) = &self.redis else {
            return (None, Found::Miss);
        };
        let got = tokio::time::timeout(
            REDIS_TIMEOUT,
            redis.get::<Option<String>, _>(Self::redis_key(key)),
        )
        .await;
        let text = match got {
            Ok(Ok(text)) => text,
            Ok(Err(e)) => {
                let e = redis_error(Backend::Cache, e);
                tracing::warn!(error = %e, "cache lookup failed; asking the provider");
                return (None, Found::Miss);
            }
            Err(_) => {
                tracing::warn!("cache lookup timed out; asking the provider");
                return (None, Found::Miss);
            }
        };
        let Some(answer) = text.and_then(|t| serde_json::from_str::<CachedAnswer>(&t).ok()) else {
            return (None, Found::Miss);
        };
        if answer.left().is_zero() {
            return (None, Found::Miss);
        }
        let answer = Arc::new(answer);
        self.local.insert(key.to_owned(), answer.clone());
        (Some(answer), Found::Shared)
    }

    /// Keeps an answer under `key` in this replica's memory for the
    /// cache's time to live, at once; too large an answer is not kept.
    /// Returns it, for [`Self::share`].
    pub fn remember(
        &self,
        key: &str,
        content: String,
        finish_reason: &str,
        usage: Option<Usage>,
        model: &str,
    ) -> Option<Arc<CachedAnswer>> {
        if content.len() > MAX_ANSWER_BYTES {
            return None;
        }
        let expires_at_ms = now_ms() + self.ttl.as_millis() as u64;
        let answer = Arc::new(CachedAnswer {
            content,
            finish_reason: finish_reason.to_owned(),
            usage,
            model: model.to_owned(),
            expires_at_ms,
        });
        self.local.insert(key.to_owned(), answer.clone());
        Some(answer)
    }

    /// Stores a remembered answer in Redis too, if there is one, so other
    /// replicas find it. Returns the bytes stored.
    pub async fn share(&self, key: &str, answer: &CachedAnswer) -> Result<usize, BackendError> {
        let Some(redis) = &self.redis else {
            return Ok(answer.bytes());
        };
        let text = serde_json::to_string(answer).expect("answers serialise");
        let expiry = Expiration::PX(self.ttl.as_millis().max(1) as i64);
        let set = redis.set::<(), _, _>(Self::redis_key(key), text, Some(expiry), None, false);
        match tokio::time::timeout(REDIS_TIMEOUT, set).await {
            Ok(result) => result.map_err(|e| redis_error(Backend::Cache, e))?,
            Err(_) => {
                return Err(BackendError::unavailable(
                    Backend::Cache,
                    "Redis did not store the answer in time",
                ));
            }
        }
        Ok(answer.bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_test_support::redis::TestRedis;

    async fn round_trip(cache: &ResponseCache, other: &ResponseCache) {
        assert_eq!(cache.get("k").await.1, Found::Miss);
        let answer = cache
            .remember("k", "answer".into(), "stop", None, "m")
            .unwrap();
        cache.share("k", &answer).await.unwrap();
        let (answer, found) = cache.get("k").await;
        assert_eq!(found, Found::Local);
        assert_eq!(answer.unwrap().content, "answer");
        // Too large an answer is not kept.
        let big = "x".repeat(MAX_ANSWER_BYTES + 1);
        assert!(cache.remember("big", big, "stop", None, "m").is_none());
        assert_eq!(cache.get("big").await.1, Found::Miss);
        // Another replica's cache finds it only through Redis.
        let (_, found) = other.get("k").await;
        assert_eq!(
            found,
            if other.redis.is_some() {
                Found::Shared
            } else {
                Found::Miss
            }
        );
    }

    #[tokio::test]
    async fn answers_are_kept_locally_and_expire() {
        let cache = ResponseCache::new(1 << 20, Duration::from_millis(300), None);
        let other = ResponseCache::new(1 << 20, Duration::from_millis(300), None);
        round_trip(&cache, &other).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(cache.get("k").await.1, Found::Miss);
    }

    #[tokio::test]
    async fn the_local_cache_is_bounded_in_bytes() {
        let cache = ResponseCache::new(10_000, Duration::from_secs(60), None);
        for i in 0..100 {
            cache.remember(&format!("k{i}"), "y".repeat(1000), "stop", None, "m");
        }
        assert!(cache.local_bytes() <= 10_000, "{}", cache.local_bytes());
    }

    #[tokio::test]
    async fn replicas_share_answers_through_redis_until_they_expire() {
        let server = TestRedis::start();
        let connect = || async { RedisConnections::connect(&server.url()).await.unwrap() };
        let (a, b, c) = (connect().await, connect().await, connect().await);
        let cache = ResponseCache::new(1 << 20, Duration::from_millis(500), Some(&a));
        let other = ResponseCache::new(1 << 20, Duration::from_millis(500), Some(&b));
        round_trip(&cache, &other).await;
        let ttl: i64 = server
            .cli(&["PTTL", "sluice:cache:k"])
            .unwrap()
            .parse()
            .unwrap();
        assert!(ttl > 0 && ttl <= 500, "{ttl}");
        tokio::time::sleep(Duration::from_millis(600)).await;
        let third = ResponseCache::new(1 << 20, Duration::from_millis(500), Some(&c));
        assert_eq!(third.get("k").await.1, Found::Miss);
        assert_eq!(other.get("k").await.1, Found::Miss);
    }
}
