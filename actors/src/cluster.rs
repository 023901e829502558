//! Several replicas as one: who owns a session, and how the others reach it.
//!
//! Every replica is a member of a cluster, so one code path serves one
//! replica and many: a lone replica's cluster runs on the in-process bus
//! and leases ([`Cluster::local`]), where it always holds every lease and
//! nothing is ever forwarded.
//!
//! - **Ownership** is a lease per session ([`Leases`]). The replica that
//!   holds it runs the session's actor; the actor renews it and gives it up
//!   when it stops. A replica that dies stops renewing, the lease expires,
//!   and the next replica that needs the session takes it over.
//! - **Events** of a session are published on its channel
//!   ([`events_channel`]) once they are in the event log, so subscribers on
//!   other replicas see them live and resume from the log.
//! - **Requests** (send, cancel, get, join, remove) from a replica that does
//!   not own the session go to the owner's channel ([`replica_channel`]) and
//!   the answer comes back on the asker's. A request that nobody received
//!   (the owner is gone) is safe to retry once the lease moves; one that got
//!   no answer in time may have been executed, so only idempotent requests
//!   are retried.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_protocol::rest::SendMessage;
use sluice_protocol::{ErrorCode, Partial};
use tokio::sync::oneshot;

use sluice_backends::bus::memory::MemoryBus;
use sluice_backends::bus::{Bus, BusMessage};
use sluice_backends::lease::Leases;
use sluice_backends::lease::memory::MemoryLeases;

use crate::error::SessionError;

/// How long the canary lease (see [`Cluster::lease_store_reconnected`])
/// lives unrenewed; it is taken again at every start.
const CANARY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Longest wait for the owner's answer to a forwarded request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The channel a session's events are published on.
pub fn events_channel(session_id: &str) -> String {
    format!("sluice:{{{session_id}}}:events")
}

/// Published on a session's events channel when the session is deleted,
/// so subscribers on other replicas are told and let go (an event line is
/// always an object with a `seq`; this one has none).
pub const DELETED_NOTICE: &str = r#"{"type":"session_deleted"}"#;

/// The channel a replica receives requests and answers on.
pub fn replica_channel(replica_id: &str) -> String {
    format!("sluice:replica:{replica_id}")
}

/// A request to a session's owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Start a generation.
    Send {
        /// The message.
        message: SendMessage,
    },
    /// Stop the running generation.
    Cancel,
    /// The session with its messages.
    Get,
    /// The state a subscriber starts from, answered once every event up to
    /// its `last_seq` is in the log and published.
    Join,
    /// Stop the session's actor (the session is being deleted).
    Remove,
}

impl Op {
    /// Whether executing it twice is harmless (so it may be retried after a
    /// lost answer).
    pub fn idempotent(&self) -> bool {
        match self {
            Op::Send { message } => message.client_msg_id.is_some(),
            Op::Cancel | Op::Get | Op::Join | Op::Remove => true,
        }
    }

    /// A label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Op::Send { .. } => "send",
            Op::Cancel => "cancel",
            Op::Get => "get",
            Op::Join => "join",
            Op::Remove => "remove",
        }
    }
}

/// What a joining subscriber needs from the owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinInfo {
    /// Highest `seq` logged and published when it joined.
    pub last_seq: u64,
    /// Whether a generation was running.
    pub generating: bool,
    /// The log's epoch.
    pub epoch: String,
    /// The running generation's text up to `last_seq`.
    pub partial: Option<Partial>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Wire {
    Request {
        id: u64,
        from: String,
        user_id: String,
        session_id: String,
        op: Op,
    },
    Reply {
        id: u64,
        #[serde(default)]
        ok: Option<serde_json::Value>,
        #[serde(default)]
        error: Option<WireError>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct WireError {
    code: ErrorCode,
    message: String,
    /// The replica asked does not own the session (any more): ask again.
    #[serde(default)]
    not_owner: bool,
}

impl From<&SessionError> for WireError {
    fn from(e: &SessionError) -> Self {
        Self {
            code: e.code(),
            message: e.to_string(),
            not_owner: matches!(e, SessionError::NotOwner | SessionError::Retired),
        }
    }
}

impl From<WireError> for SessionError {
    fn from(e: WireError) -> Self {
        if e.not_owner {
            return SessionError::NotOwner;
        }
        match e.code {
            ErrorCode::NotFound => SessionError::NotFound,
            ErrorCode::Conflict => SessionError::Conflict,
            ErrorCode::BadRequest => SessionError::BadRequest(e.message),
            ErrorCode::Overloaded => SessionError::Overloaded(e.message),
            _ => SessionError::Internal(e.message),
        }
    }
}

/// Why a forwarded request has no answer.
#[derive(Debug)]
pub enum CallError {
    /// Nobody received it: the owner is gone. Safe to retry.
    NotDelivered,
    /// Received, but no answer in time: it may have run.
    NoAnswer,
    /// The owner answered with an error.
    Failed(SessionError),
}

/// Executes requests addressed to this replica.
pub trait Executor: Send + Sync + 'static {
    /// Runs `op` on a session this replica owns (or can take).
    fn execute(
        &self,
        user_id: String,
        session_id: String,
        op: Op,
    ) -> futures::future::BoxFuture<'static, Result<serde_json::Value, SessionError>>;
}

/// This replica's view of the cluster.
pub struct Cluster {
    replica_id: String,
    bus: Arc<dyn Bus>,
    leases: Arc<dyn Leases>,
    lease_ttl: Duration,
    /// Whether other replicas share the bus and leases (Redis): a draining
    /// replica hands its running generations over only if so.
    shared: bool,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<serde_json::Value, SessionError>>>>,
    next_id: AtomicU64,
    /// Until then, take no lease nobody holds (see [`Cluster::lease_store_reconnected`]).
    hold_until: Mutex<Option<tokio::time::Instant>>,
}

impl Cluster {
    /// A member named `replica_id` of a cluster whose replicas share `bus`
    /// and `leases`, holding leases for `lease_ttl`.
    pub fn shared(
        replica_id: String,
        bus: Arc<dyn Bus>,
        leases: Arc<dyn Leases>,
        lease_ttl: Duration,
    ) -> Self {
        Self::new(replica_id, bus, leases, lease_ttl, true)
    }

    /// A cluster of one: this process's bus and leases.
    pub fn local(replica_id: String, lease_ttl: Duration) -> Self {
        Self::new(
            replica_id,
            Arc::new(MemoryBus::new()),
            Arc::new(MemoryLeases::new()),
            lease_ttl,
            false,
        )
    }

    fn new(
        replica_id: String,
        bus: Arc<dyn Bus>,
        leases: Arc<dyn Leases>,
        lease_ttl: Duration,
        shared: bool,
    ) -> Self {
        Self {
            replica_id,
            bus,
            leases,
            lease_ttl,
            shared,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            hold_until: Mutex::new(None),
        }
    }

    /// The lease this replica holds on its own name while it runs: if it is
    /// gone after a reconnection, the lease store lost its data.
    fn canary(&self) -> String {
        format!("replica:{}", self.replica_id)
    }

    /// Takes the canary lease (at start, and again after the store lost it).
    pub async fn plant_canary(&self) -> Result<(), SessionError> {
        self.leases
            .acquire(&self.canary(), &self.replica_id, CANARY_TTL)
            .await?;
        Ok(())
    }

    /// The connection to the lease store came back. If the store lost its
    /// leases meanwhile (a Redis restart: this replica's canary is gone),
    /// their owners are alive and take them back at their next renewal,
    /// within a third of a lease; until a whole lease has passed, this
    /// replica takes no lease that nobody holds, so it never takes a live
    /// owner's session. After a mere network blip nothing is held.
    pub async fn lease_store_reconnected(&self) {
        let canary = self.leases.owner(&self.canary()).await;
        if matches!(&canary, Ok(Some(owner)) if *owner == self.replica_id) {
            return;
        }
        tracing::warn!(
            "the lease store lost its leases; taking no free lease for one lease period"
        );
        let until = tokio::time::Instant::now() + self.lease_ttl;
        *self.hold_until.lock().unwrap_or_else(|e| e.into_inner()) = Some(until);
        if let Err(e) = self.plant_canary().await {
            tracing::warn!(error = %e, "canary lease not taken");
        }
    }

    /// While a hold after a reconnection is on, waits it out before taking
    /// the session's lease if nobody holds it. Without a hold: no wait, and
    /// no round trip.
    pub async fn wait_before_taking(&self, session_id: &str) {
        let until = *self.hold_until.lock().unwrap_or_else(|e| e.into_inner());
        let Some(until) = until.filter(|u| *u > tokio::time::Instant::now()) else {
            return;
        };
        // A held lease is its owner's whatever happens; only a free one waits.
        if let Ok(None) = self.leases.owner(session_id).await {
            tokio::time::sleep_until(until).await;
        }
    }

    /// This replica's name (its lease value).
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// The bus.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// The leases.
    pub fn leases(&self) -> &Arc<dyn Leases> {
        &self.leases
    }

    /// How long a lease lasts unrenewed.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_ttl
    }

    /// Whether other replicas may serve this replica's sessions.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    fn pending(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        HashMap<u64, oneshot::Sender<Result<serde_json::Value, SessionError>>>,
    > {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Listens on this replica's channel (until the process ends): runs
    /// requests with `executor` and routes answers to their callers.
    /// Returns once the subscription is active.
    pub async fn listen(self: &Arc<Self>, executor: Arc<dyn Executor>) -> Result<(), SessionError> {
        let mut rx = self
            .bus
            .subscribe(&replica_channel(&self.replica_id))
            .await?;
        let this = self.clone();
        tokio::spawn(async move {
            while let Some(message) = rx.recv().await {
                let BusMessage::Payload(payload) = message else {
                    continue;
                };
                match serde_json::from_str::<Wire>(&payload) {
                    Ok(Wire::Request {
                        id,
                        from,
                        user_id,
                        session_id,
                        op,
                    }) => {
                        let run = executor.execute(user_id, session_id, op);
                        let bus = this.bus.clone();
                        tokio::spawn(async move {
                            let result = run.await;
                            let reply = match &result {
                                Ok(value) => Wire::Reply {
                                    id,
                                    ok: Some(value.clone()),
                                    error: None,
                                },
                                Err(e) => Wire::Reply {
                                    id,
                                    ok: None,
                                    error: Some(e.into()),
                                },
                            };
                            let json = serde_json::to_string(&reply).unwrap_or_default();
                            if let Err(e) = bus.publish(&replica_channel(&from), json).await {
                                tracing::warn!(error = %e, to = from, "answer to a forwarded request lost");
                            }
                        });
                    }
                    Ok(Wire::Reply { id, ok, error }) => {
                        let result = match (ok, error) {
                            (_, Some(e)) => Err(e.into()),
                            (Some(v), None) => Ok(v),
                            (None, None) => Ok(serde_json::Value::Null),
                        };
                        if let Some(waiter) = this.pending().remove(&id) {
                            let _ = waiter.send(result);
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "malformed cluster message ignored"),
                }
            }
        });
        Ok(())
    }

    /// Asks `owner` to run `op` on a session for `user_id`.
    pub async fn call(
        &self,
        owner: &str,
        user_id: &str,
        session_id: &str,
        op: Op,
    ) -> Result<serde_json::Value, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending().insert(id, tx);
        let request = Wire::Request {
            id,
            from: self.replica_id.clone(),
            user_id: user_id.to_owned(),
            session_id: session_id.to_owned(),
            op,
        };
        let json = serde_json::to_string(&request).unwrap_or_default();
        let delivered = self.bus.publish(&replica_channel(owner), json).await;
        let result = match delivered {
            Ok(0) => Err(CallError::NotDelivered),
            Err(e) => Err(CallError::Failed(e.into())),
            Ok(_) => match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
                Ok(Ok(result)) => result.map_err(CallError::Failed),
                Ok(Err(_)) | Err(_) => Err(CallError::NoAnswer),
            },
        };
        self.pending().remove(&id);
        result
    }

    /// Waits until `owner` no longer holds the session's lease (it expired
    /// or moved), for at most a lease's time-to-live and a margin.
    pub async fn await_release(&self, session_id: &str, owner: &str) -> Result<(), SessionError> {
        let deadline = tokio::time::Instant::now() + self.lease_ttl + Duration::from_secs(2);
        loop {
            let current = self.leases.owner(session_id).await?;
            if current.as_deref() != Some(owner) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SessionError::Overloaded(format!(
                    "the replica running this session ({owner}) does not answer; retry"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
