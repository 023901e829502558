//! Limits in Redis, shared by every replica: each step is one Lua script,
//! atomic, timed by Redis's own clock (`TIME`), so replicas whose clocks
//! differ still agree. A rate is one string key holding the TAT in
//! milliseconds, expiring when the TAT passes; slots are a sorted set of
//! holders scored by when each expires, expiring with the last of them.
//! Callers name keys; this module hash-tags them so each stays on one slot
//! of a Redis Cluster.

use std::sync::LazyLock;
use std::time::Duration;

use fred::prelude::*;
use futures::future::BoxFuture;

use super::{Claim, Limiter, Rate, SlotTaken, Verdict};
use crate::redis::{LuaScript, redis_error};
use crate::{Backend, BackendError};

/// The GCRA step of `super::gcra`, in milliseconds. ARGV: period (ms),
/// limit, cost, 1 to admit or 0 to charge. Returns 0 if allowed, else the
/// milliseconds until there is room (at least 1). Waits and expiries are
/// capped at 10^11 ms (three years), which Lua still writes as an integer.
const RATE: &str = "local t = redis.call('TIME') \
    local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000 \
    local period = tonumber(ARGV[1]) \
    local interval = period / tonumber(ARGV[2]) \
    local cost = tonumber(ARGV[3]) \
    local base = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now) \
    if ARGV[4] == '1' then \
      local over = base + math.max(cost, 1) * interval - now - period \
      if over > 0.000001 then return math.min(math.max(1, math.ceil(over)), 100000000000) end \
    end \
    if cost > 0 then \
      local tat = base + cost * interval \
      local ttl = math.min(math.max(1, math.ceil(tat - now)), 100000000000) \
      redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', ttl) \
    end \
    return 0";
static RATE_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(RATE));

/// Claims ARGV[1]'s slot for ARGV[3] ms. ARGV[2] is the claim: a limit
/// (taken while fewer are held), -1 (taken whatever the limit) or -2
/// (renewed only if held). Returns 2 if it was held (renewed), 1 if taken
/// now, 0 if not.
const SLOT: &str = "local t = redis.call('TIME') \
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) \
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) \
    local claim = tonumber(ARGV[2]) \
    local ttl = tonumber(ARGV[3]) \
    local result = 1 \
    if redis.call('ZSCORE', KEYS[1], ARGV[1]) then result = 2 \
    elseif claim == -2 then return 0 \
    elseif claim >= 0 and redis.call('ZCARD', KEYS[1]) >= claim then return 0 end \
    redis.call('ZADD', KEYS[1], now + ttl, ARGV[1]) \
    if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end \
    return result";
static SLOT_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(SLOT));

/// Gives ARGV[1]'s slot back.
const RELEASE: &str = "return redis.call('ZREM', KEYS[1], ARGV[1])";
static RELEASE_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(RELEASE));

/// Limits in Redis. Cloning shares the client.
#[derive(Clone)]
pub struct RedisLimiter {
    client: Client,
}

fn key(key: &str) -> String {
    format!("sluice:limit:{{{key}}}")
}

fn err(e: fred::error::Error) -> BackendError {
    redis_error(Backend::Limits, e)
}

fn millis(d: Duration) -> String {
    d.as_millis().clamp(1, i64::MAX as u128).to_string()
}

impl RedisLimiter {
    /// Limits on a connected client.
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    fn rate(
        &self,
        key_: &str,
        rate: Rate,
        cost: u64,
        admit: bool,
    ) -> BoxFuture<'static, Result<Verdict, BackendError>> {
        let client = self.client.clone();
        let keys = vec![key(key_)];
        let args = vec![
            millis(rate.period),
            rate.limit.max(1).to_string(),
            cost.to_string(),
            if admit { "1" } else { "0" }.to_owned(),
        ];
        Box::pin(async move {
            let wait: i64 = RATE_SCRIPT.run(&client, keys, args).await.map_err(err)?;
            Ok(if wait <= 0 {
                Verdict::Allowed
            } else {
                Verdict::Refused {
                    retry_after: Duration::from_millis(wait as u64),
                }
            })
        })
    }

    fn slot(
        &self,
        key_: &str,
        holder: &str,
        claim: Claim,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<SlotTaken, BackendError>> {
        let client = self.client.clone();
        let keys = vec![key(key_)];
        let claim = match claim {
            Claim::Within(limit) => limit.min(i64::MAX as u64) as i64,
            Claim::Whatever => -1,
            Claim::RenewOnly => -2,
        };
        let args = vec![holder.to_owned(), claim.to_string(), millis(ttl)];
        Box::pin(async move {
            let taken: i64 = SLOT_SCRIPT.run(&client, keys, args).await.map_err(err)?;
            Ok(match taken {
                2 => SlotTaken::Held,
                1 => SlotTaken::Taken,
                _ => SlotTaken::Full,
            })
        })
    }
}

impl Limiter for RedisLimiter {
    fn admit(
        &self,
        key: &str,
        rate: Rate,
        cost: u64,
    ) -> BoxFuture<'static, Result<Verdict, BackendError>> {
        self.rate(key, rate, cost, true)
    }

    fn charge(
        &self,
        key: &str,
        rate: Rate,
        cost: u64,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let charged = self.rate(key, rate, cost, false);
        Box::pin(async move { charged.await.map(drop) })
    }

    fn take_slot(
        &self,
        key: &str,
        holder: &str,
        limit: u64,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<SlotTaken, BackendError>> {
        self.slot(key, holder, Claim::Within(limit), ttl)
    }

    fn hold_slot(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let held = self.slot(key, holder, Claim::Whatever, ttl);
        Box::pin(async move { held.await.map(drop) })
    }

    fn renew_slot(
        &self,
        key: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        let renewed = self.slot(key, holder, Claim::RenewOnly, ttl);
        Box::pin(async move { Ok(renewed.await? == SlotTaken::Held) })
    }

    fn release_slot(
        &self,
        key_: &str,
        holder: &str,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let client = self.client.clone();
        let key = key(key_);
        let holder = holder.to_owned();
        Box::pin(async move {
            let _: i64 = RELEASE_SCRIPT
                .run(&client, vec![key], vec![holder])
                .await
                .map_err(err)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_test_support::redis::TestRedis;

    #[tokio::test]
    async fn redis_limiter_conforms() {
        conforms(TestRedis::start()).await;
    }

    #[tokio::test]
    async fn redis_limiter_conforms_on_a_cluster() {
        conforms(TestRedis::start_cluster(3)).await;
    }

    async fn conforms(server: TestRedis) {
        let client = crate::redis::RedisConnections::connect(&server.url())
            .await
            .unwrap()
            .client();
        super::super::conformance::run(|| {
            assert!(server.flushall());
            RedisLimiter::new(client.clone())
        })
        .await;
        // Nothing is left behind once every state has nothing to remember.
        let rate = Rate {
            limit: 1000,
            period: Duration::from_millis(50),
        };
        let limiter = RedisLimiter::new(client.clone());
        assert!(server.flushall());
        limiter.admit("gone-rate", rate, 1).await.unwrap();
        limiter
            .take_slot("gone-slot", "h", 1, Duration::from_millis(50))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(server.cli(&["DBSIZE"]).as_deref(), Some("0"));
    }
}
