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
