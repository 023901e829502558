//! Leases in Redis: one key per session (`sluice:{<id>}:owner`, hash-tagged
//! like the session's log), taken and renewed by one Lua script (take if free,
//! extend if ours) and released by another; both compare the owner and act atomically, so a replica that lost its lease
//! cannot touch the next owner's.

use std::sync::LazyLock;
use std::time::Duration;

use fred::prelude::*;
use futures::future::BoxFuture;

use super::Leases;
use crate::redis::{LuaScript, redis_error};
use crate::{Backend, BackendError};

/// Takes or extends the lease for ARGV[1] (ARGV[2]: milliseconds) unless
/// someone else holds it; 1 or 0.
const TAKE: &str = "local v = redis.call('GET', KEYS[1]) \
                    if v == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end \
                    if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
                    return 0";
static TAKE_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(TAKE));

/// Deletes the lease if ARGV[1] owns it.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                       return redis.call('DEL', KEYS[1]) else return 0 end";
static RELEASE_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(RELEASE));

/// Leases in Redis. Cloning shares the client.
#[derive(Clone)]
pub struct RedisLeases {
    client: Client,
}

fn key(session_id: &str) -> String {
    format!("sluice:{{{session_id}}}:owner")
}

fn err(e: fred::error::Error) -> BackendError {
    redis_error(Backend::Leases, e)
}

impl RedisLeases {
    /// Leases on a connected client.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl Leases for RedisLeases {
    fn renew(
        &self,
        session_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        let client = self.client.clone();
        let key = key(session_id);
        let args = vec![owner.to_owned(), (ttl.as_millis() as i64).to_string()];
        Box::pin(async move {
            let taken: i64 = TAKE_SCRIPT
                .run(&client, vec![key], args)
                .await
                .map_err(err)?;
            Ok(taken == 1)
        })
    }

    fn release(
        &self,
        session_id: &str,
        owner: &str,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let client = self.client.clone();
        let key = key(session_id);
        let owner = owner.to_owned();
        Box::pin(async move {
            let _: i64 = RELEASE_SCRIPT
                .run(&client, vec![key], vec![owner])
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn owner(&self, session_id: &str) -> BoxFuture<'static, Result<Option<String>, BackendError>> {
        let client = self.client.clone();
        let key = key(session_id);
        Box::pin(async move { client.get(&key).await.map_err(err) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_test_support::redis::TestRedis;

    #[tokio::test]
    async fn redis_leases_conform() {
        conform(TestRedis::start()).await;
    }

    #[tokio::test]
    async fn redis_leases_conform_on_a_cluster() {
        conform(TestRedis::start_cluster(3)).await;
    }

    async fn conform(server: TestRedis) {
        let client = crate::redis::RedisConnections::connect(&server.url())
            .await
            .unwrap()
            .client();
        crate::lease::conformance::run(|| {
            assert!(server.flushall());
            RedisLeases::new(client.clone())
        })
        .await;
    }
}
