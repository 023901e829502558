//! The production event log: one Redis Stream per session, through fred.
//!
//! - Entries are added with the event's `seq` as the stream id (`{seq}-0`),
//!   so a replay is one `XRANGE` from `after + 1` to `up_to`, and Redis
//!   itself refuses an id that does not grow.
//! - `XADD ... MAXLEN ~ retention` bounds each stream (Redis trims in whole
//!   blocks, so slightly more than `retention` may be kept).
//! - The epoch is a key beside the stream, created with `SET NX` the first
//!   time a session's log is used; both keys expire together after
//!   [`RedisEventLog::idle_ttl`] without appends. If Redis loses its data,
//!   the epoch key is gone with the stream, so the next use creates a new
//!   epoch and clients reload, as the protocol says.
//! - Keys are hash-tagged by session (`sluice:{<id>}:...`), so a session's
//!   keys live in one slot on Redis Cluster.
//! - The fence (see the log's contract) is a third key beside them. One
//!   batch of events is one script, so one round trip: it compares the
//!   fence, then adds every event and refreshes the keys' expiry.

use std::sync::Arc;
use std::sync::LazyLock;
use std::time::Duration;

use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use futures::future::BoxFuture;
use sluice_protocol::Event;

use super::{EncodedEvent, EventLog};
use crate::redis::{LuaScript, redis_error};
use crate::{Backend, BackendError, ErrorKind};

/// Appends events unless the session's fence is above the writer's.
/// KEYS: log, epoch, fence. ARGV: the writer's fence, retention, expiry in
/// milliseconds, then each event's stream id and JSON. 0 if fenced, else 1.
const APPEND: &str = "local fence = tonumber(redis.call('GET', KEYS[3]) or '0') \
                      if tonumber(ARGV[1]) < fence then return 0 end \
                      for i = 4, #ARGV, 2 do \
                        redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], ARGV[i], 'e', ARGV[i + 1]) \
                      end \
                      for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[3]) end \
                      return 1";
static APPEND_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(APPEND));

/// The fence a deleted session's log keeps: above any claim (and exact in
/// Lua's numbers, which are doubles).
const TOMBSTONE_FENCE: i64 = (1 << 53) - 1;

/// Raises the session's fence (KEYS[1]) to ARGV[1], never lowering it;
/// ARGV[2]: expiry in milliseconds.
const CLAIM: &str = "local fence = tonumber(redis.call('GET', KEYS[1]) or '0') \
                     if tonumber(ARGV[1]) > fence then redis.call('SET', KEYS[1], ARGV[1]) end \
                     redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
                     return 1";
static CLAIM_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(CLAIM));

/// Deletes a session's log and epoch (KEYS[1], KEYS[2]) and sets its fence
/// (KEYS[3]) to ARGV[1] for ARGV[2] milliseconds, in one step: no append
/// can land between the deletion and the fence.
const REMOVE: &str = "redis.call('DEL', KEYS[1], KEYS[2]) \
                      redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2]) \
                      return 1";
static REMOVE_SCRIPT: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(REMOVE));

/// Logs untouched for this long expire (stream and epoch together).
pub const DEFAULT_IDLE_TTL: Duration = Duration::from_secs(24 * 3600);

/// The Redis-backed event log. Cloning shares the client.
#[derive(Clone)]
pub struct RedisEventLog {
    client: Client,
    retention: usize,
    idle_ttl: Duration,
}

fn err(e: fred::error::Error) -> BackendError {
    redis_error(Backend::EventLog, e)
}

fn log_key(session_id: &str) -> String {
    format!("sluice:{{{session_id}}}:log")
}

fn epoch_key(session_id: &str) -> String {
    format!("sluice:{{{session_id}}}:epoch")
}

fn fence_key(session_id: &str) -> String {
    format!("sluice:{{{session_id}}}:fence")
}

impl RedisEventLog {
    /// A log on `client` (already connected) keeping `retention` events per
    /// session.
    pub fn new(client: Client, retention: usize) -> Self {
        Self {
            client,
            retention: retention.max(1),
            idle_ttl: DEFAULT_IDLE_TTL,
        }
    }
}

impl EventLog for RedisEventLog {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn epoch(&self, session_id: &str) -> BoxFuture<'static, Result<String, BackendError>> {
        let client = self.client.clone();
        let key = epoch_key(session_id);
        let ttl = self.idle_ttl.as_secs() as i64;
        Box::pin(async move {
            let fresh = crate::ids::new_id();
            // SET NX GET: the existing epoch, or nil when ours was set.
            let existing: Option<String> = client
                .set(
                    &key,
                    fresh.as_str(),
                    Some(Expiration::EX(ttl)),
                    Some(SetOptions::NX),
                    true,
                )
                .await
                .map_err(err)?;
            Ok(existing.unwrap_or(fresh))
        })
    }

    fn claim(&self, session_id: &str, fence: u64) -> BoxFuture<'static, Result<(), BackendError>> {
        let client = self.client.clone();
        let key = fence_key(session_id);
        let args = vec![fence.to_string(), self.idle_ttl.as_millis().to_string()];
        Box::pin(async move {
            let _: i64 = CLAIM_SCRIPT
                .run(&client, vec![key], args)
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn append(
        &self,
        session_id: &str,
        fence: u64,
        events: Vec<Arc<EncodedEvent>>,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let client = self.client.clone();
        let keys = vec![
            log_key(session_id),
            epoch_key(session_id),
            fence_key(session_id),
        ];
        let mut args = Vec::with_capacity(3 + 2 * events.len());
        args.push(fence.to_string());
        args.push(self.retention.to_string());
        args.push(self.idle_ttl.as_millis().to_string());
        for event in &events {
            args.push(format!("{}-0", event.seq()));
            args.push(event.json.to_string());
        }
        let session_id = session_id.to_owned();
        Box::pin(async move {
            let appended: i64 = APPEND_SCRIPT.run(&client, keys, args).await.map_err(err)?;
            if appended == 0 {
                return Err(BackendError::new(
                    Backend::EventLog,
                    ErrorKind::Fenced,
                    format!("session {session_id} was claimed by another owner"),
                ));
            }
            Ok(())
        })
    }

    fn read_after(
        &self,
        session_id: &str,
        after: u64,
        up_to: u64,
    ) -> BoxFuture<'static, Result<Vec<Arc<EncodedEvent>>, BackendError>> {
        let client = self.client.clone();
        let log = log_key(session_id);
        Box::pin(async move {
            if up_to <= after {
                return Ok(Vec::new());
            }
            let entries: Vec<(String, Vec<(String, String)>)> = client
                .xrange(&log, format!("{}-0", after + 1), format!("{up_to}-0"), None)
                .await
                .map_err(err)?;
            entries
                .into_iter()
                .map(|(id, fields)| {
                    let json = fields
                        .into_iter()
                        .find_map(|(name, value)| (name == "e").then_some(value))
                        .ok_or_else(|| {
                            BackendError::corrupt(
                                Backend::EventLog,
                                format!("log entry {id} has no event"),
                            )
                        })?;
                    let event: Event = serde_json::from_str(&json).map_err(|e| {
                        BackendError::corrupt(Backend::EventLog, format!("log entry {id}: {e}"))
                    })?;
                    Ok(Arc::new(EncodedEvent {
                        event,
                        json: json.into(),
                    }))
                })
                .collect()
        })
    }

    fn last_seq(&self, session_id: &str) -> BoxFuture<'static, Result<u64, BackendError>> {
        let client = self.client.clone();
        let log = log_key(session_id);
        Box::pin(async move {
            let entries: Vec<(String, Vec<(String, String)>)> = client
                .xrevrange(&log, "+", "-", Some(1))
                .await
                .map_err(err)?;
            let Some((id, _)) = entries.first() else {
                return Ok(0);
            };
            id.split('-')
                .next()
                .and_then(|seq| seq.parse().ok())
                .ok_or_else(|| {
                    BackendError::corrupt(
                        Backend::EventLog,
                        format!("log entry id {id} is not a seq"),
                    )
                })
        })
    }

    fn remove(&self, session_id: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let client = self.client.clone();
        // The fence stays, at its highest, for as long as a log would: an
        // owner that never heard of the deletion cannot append to a new log
        // of a deleted session.
        let keys = vec![
            log_key(session_id),
            epoch_key(session_id),
            fence_key(session_id),
        ];
        let args = vec![
            TOMBSTONE_FENCE.to_string(),
            self.idle_ttl.as_millis().to_string(),
        ];
        Box::pin(async move {
            let _: i64 = REMOVE_SCRIPT.run(&client, keys, args).await.map_err(err)?;
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        let client = self.client.clone();
        Box::pin(async move {
            let _: String = client.ping(None).await.map_err(err)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::RedisConnections;
    use sluice_test_support::redis::TestRedis;

    #[tokio::test]
    async fn redis_log_conforms() {
        conforms(TestRedis::start()).await;
    }

    #[tokio::test]
    async fn redis_log_conforms_on_a_cluster() {
        conforms(TestRedis::start_cluster(3)).await;
    }

    async fn conforms(server: TestRedis) {
        let client = RedisConnections::connect(&server.url())
            .await
            .unwrap()
            .client();
        // Each log the suite asks for starts from an empty server.
        crate::log::conformance::run(|retention| {
            assert!(server.flushall());
            RedisEventLog::new(client.clone(), retention)
        })
        .await;
    }

    #[tokio::test]
    async fn a_lost_log_gets_a_new_epoch_and_keys_share_a_slot() {
        let server = TestRedis::start();
        let conns = RedisConnections::connect(&server.url()).await.unwrap();
        let log = RedisEventLog::new(conns.client(), 100);
        let first = log.epoch("s").await.unwrap();
        assert_eq!(log.epoch("s").await.unwrap(), first);
        assert!(server.flushall());
        assert_ne!(log.epoch("s").await.unwrap(), first);
        assert_eq!(log_key("s"), "sluice:{s}:log");
        assert_eq!(epoch_key("s"), "sluice:{s}:epoch");
    }
}
