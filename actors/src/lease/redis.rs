//! Leases in Redis: one key per session (`sluice:{<id>}:owner`, hash-tagged
//! like the session's log), set with `SET NX PX`. Renew and release compare
//! the owner and act in one Lua script, so a replica that lost its lease
//! cannot touch the next owner's.

use std::time::Duration;

use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use futures::future::BoxFuture;

use super::{LeaseError, Leases};

/// Extends the lease if ARGV[1] owns it (ARGV[2]: milliseconds); 1 or 0.
const RENEW: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                     return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/// Deletes the lease if ARGV[1] owns it.
const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
                       return redis.call('DEL', KEYS[1]) else return 0 end";

/// Leases in Redis. Cloning shares the client.
#[derive(Clone)]
pub struct RedisLeases {
    client: Client,
}

fn key(session_id: &str) -> String {
    format!("sluice:{{{session_id}}}:owner")
}

fn err(e: impl std::fmt::Display) -> LeaseError {
    LeaseError(e.to_string())
}

impl RedisLeases {
    /// Leases on a connected client.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl Leases for RedisLeases {
    fn acquire(
        &self,
        session_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, LeaseError>> {
        let client = self.client.clone();
        let key = key(session_id);
        let owner_value = owner.to_owned();
        let ttl_ms = ttl.as_millis() as i64;
        // Held already: by us (then `renew` extends it), or by someone else.
        let renew = self.renew(session_id, owner, ttl);
        Box::pin(async move {
            let set: Option<String> = client
                .set(
                    &key,
                    owner_value.as_str(),
                    Some(Expiration::PX(ttl_ms)),
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(err)?;
            if set.is_some() {
                return Ok(true);
            }
            renew.await
        })
    }

    fn renew(
        &self,
        session_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, LeaseError>> {
        let client = self.client.clone();
        let key = key(session_id);
        let args = vec![owner.to_owned(), (ttl.as_millis() as i64).to_string()];
        Box::pin(async move {
            let renewed: i64 = client.eval(RENEW, vec![key], args).await.map_err(err)?;
            Ok(renewed == 1)
        })
    }

    fn release(&self, session_id: &str, owner: &str) -> BoxFuture<'static, Result<(), LeaseError>> {
        let client = self.client.clone();
        let key = key(session_id);
        let owner = owner.to_owned();
        Box::pin(async move {
            let _: i64 = client
                .eval(RELEASE, vec![key], vec![owner])
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn owner(&self, session_id: &str) -> BoxFuture<'static, Result<Option<String>, LeaseError>> {
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
        let server = TestRedis::start();
        let config = Config::from_url(&server.url()).unwrap();
        let client = Builder::from_config(config).build().unwrap();
        client.init().await.unwrap();
        crate::lease::conformance::run(|| {
            assert_eq!(server.cli(&["FLUSHALL"]).as_deref(), Some("OK"));
            RedisLeases::new(client.clone())
        })
        .await;
    }
}
