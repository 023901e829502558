//! The Redis connections of a replica: one command client (event log,
//! leases, publishing) and one subscriber connection (the bus). Both
//! reconnect by themselves with exponential backoff; reconnections are
//! counted for the backend supervisor, and every command has a timeout so a
//! Redis outage turns into errors rather than waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fred::prelude::*;

use crate::bus::redis::RedisBus;
use crate::{Backend, BackendError, ErrorKind};

/// Longest a Redis command may take before it fails.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A replica's Redis connections. Cloning shares them.
#[derive(Clone)]
pub struct RedisConnections {
    client: Client,
    bus: RedisBus,
    reconnects: Arc<AtomicU64>,
}

/// Classifies a Redis failure for `backend`: a request Redis or fred
/// refuses as malformed stays refused; everything else (a broken or slow
/// connection, a server loading or failing over) can pass.
pub(crate) fn redis_error(backend: Backend, e: fred::error::Error) -> BackendError {
    use fred::error::ErrorKind as K;
    let kind = match e.kind() {
        K::Config
        | K::Auth
        | K::Url
        | K::InvalidCommand
        | K::InvalidArgument
        | K::Parse
        | K::NotFound => ErrorKind::Rejected,
        _ => ErrorKind::Unavailable,
    };
    BackendError::new(backend, kind, e)
}

/// A Lua script run by its SHA-1 (`EVALSHA`): a server is sent the body
/// only when it does not know the script yet (after a restart, or a new
/// cluster node), not with every call, as `EVAL` would. The body of the
/// event log's append is most of what a token costs Redis in bytes.
pub(crate) struct LuaScript {
    body: &'static str,
    sha1: String,
}

impl LuaScript {
    /// The script `body`.
    pub(crate) fn new(body: &'static str) -> Self {
        use sha1::Digest;
        let digest = sha1::Sha1::digest(body.as_bytes());
        let sha1 = digest.iter().map(|b| format!("{b:02x}")).collect();
        Self { body, sha1 }
    }

    /// Runs it with `keys` and `args`: `EVALSHA`, or `EVAL` (which also
    /// caches it) when the server answers `NOSCRIPT`. The strings move into
    /// shared buffers once, so keeping them for the retry copies no text
    /// (the append's arguments are the events' JSON).
    pub(crate) async fn run<R: FromValue>(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<R, fred::error::Error> {
        let keys: Vec<Key> = keys.into_iter().map(Key::from).collect();
        let args: Vec<Value> = args.into_iter().map(Value::from).collect();
        match client
            .evalsha(self.sha1.as_str(), keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.eval(self.body, keys, args).await
            }
            result => result,
        }
    }
}

fn builder(url: &str) -> Result<Builder, String> {
    let config = Config::from_url(url).map_err(|e| format!("bad Redis URL: {e}"))?;
    let mut builder = Builder::from_config(config);
    builder
        .with_connection_config(|c| {
            c.connection_timeout = Duration::from_secs(5);
            c.max_command_attempts = 2;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
            // Pub/sub messages wait here for the bus task; a burst larger
            // than this is reported to subscribers as a reconnect.
            p.broadcast_channel_capacity = 16 * 1024;
        })
        .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2));
    Ok(builder)
}

impl RedisConnections {
    /// Connects both clients to `url` and waits until they are up.
    pub async fn connect(url: &str) -> Result<Self, String> {
        let builder = builder(url)?;
        let client = builder.build().map_err(|e| e.to_string())?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(|e| e.to_string())?;
        client.init().await.map_err(|e| e.to_string())?;
        subscriber.init().await.map_err(|e| e.to_string())?;
        let reconnects = Arc::new(AtomicU64::new(0));
        for rx in [client.reconnect_rx(), subscriber.reconnect_rx()] {
            let reconnects = reconnects.clone();
            let mut rx = rx;
            tokio::spawn(async move {
                while rx.recv().await.is_ok() {
                    reconnects.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let bus = RedisBus::new(client.clone(), subscriber);
        Ok(Self {
            client,
            bus,
            reconnects,
        })
    }

    /// The command client.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The bus on these connections.
    pub fn bus(&self) -> RedisBus {
        self.bus.clone()
    }

    /// Tells of every reconnection of the command client (leases, log).
    pub fn reconnected(&self) -> tokio::sync::broadcast::Receiver<fred::types::config::Server> {
        self.client.reconnect_rx()
    }

    /// Reconnections so far (both connections).
    pub fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Whether Redis answers now.
    pub async fn ping(&self) -> Result<(), String> {
        let _: String = self.client.ping(None).await.map_err(|e| e.to_string())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_test_support::redis::TestRedis;

    #[tokio::test]
    async fn a_script_runs_by_its_hash_and_is_sent_again_to_a_server_that_lost_it() {
        let server = TestRedis::start();
        let client = RedisConnections::connect(&server.url())
            .await
            .unwrap()
            .client();
        let script = LuaScript::new("return ARGV[1] .. KEYS[1]");
        let run = || script.run::<String>(&client, vec!["k".into()], vec!["v".into()]);
        // Unknown to the server: NOSCRIPT, then EVAL.
        assert_eq!(run().await.unwrap(), "vk");
        let exists = server.cli(&["SCRIPT", "EXISTS", &script.sha1]).unwrap();
        assert_eq!(exists, "1", "EVAL cached it under the hash Sluice computed");
        assert_eq!(run().await.unwrap(), "vk");
        assert_eq!(server.cli(&["SCRIPT", "FLUSH"]).as_deref(), Some("OK"));
        assert_eq!(run().await.unwrap(), "vk");
        let stats = server.cli(&["INFO", "commandstats"]).unwrap();
        let calls = |name: &str| {
            stats
                .lines()
                .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
                .and_then(|rest| rest.split(',').next()?.parse::<u32>().ok())
                .unwrap_or(0)
        };
        assert_eq!((calls("evalsha"), calls("eval")), (3, 2));
    }
}
