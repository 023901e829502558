//! The async API the web layer uses, and the resume logic of PROTOCOL.md §4.
//!
//! The web layer never builds actor messages: it calls [`Sessions`] and reads
//! a [`Subscription`], which yields exactly what a WebSocket or SSE client
//! must see, in order: `hello`, then a replay from the cursor (or `gap` and
//! `snapshot`, or just `snapshot` without a cursor), then live events with no
//! gap and no duplicate.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use sluice_protocol::limits::{MAX_SYSTEM_PROMPT_BYTES, MAX_TITLE_BYTES};
use sluice_protocol::rest::{
    CreateSession, SendAccepted, SendMessage, SessionList, SessionWithMessages,
};
use sluice_protocol::{Control, Event, EventBody, Session};

use crate::bus::{BusMessage, BusReceiver};
use crate::cluster::{CallError, Cluster, Executor, JoinInfo, Op, events_channel};
use crate::error::SessionError;
use crate::ids::{new_id, now_rfc3339};
use crate::llm::LlmProvider;
use crate::log::EncodedEvent;
use crate::metrics::Metrics;
use crate::registry::{DrainAll, Lookup, Remove, Route, SessionRegistry};
use crate::session::{self, SessionActor, SessionDeps};
use crate::store::{SessionRecord, SessionStore};
use crate::subscriber::{CloseReason, QueueLimits, SubscriberQueue};

/// Attempts when an actor retires under a caller, or the session moves
/// between replicas.
const ROUTE_RETRIES: usize = 4;

/// How often a subscriber of another replica's session checks that someone
/// still runs the generation it watches.
const OWNER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Most sessions one `GET /v1/sessions` page returns.
pub const MAX_PAGE: usize = 100;

/// The session layer, as the web layer sees it. Cloning is cheap.
#[derive(Clone)]
pub struct Sessions {
    registry: Addr<SessionRegistry>,
    deps: Arc<SessionDeps>,
}

impl Sessions {
    /// Starts the registry (inside a running actix system), with session
    /// actors spread over `arbiters` (the current arbiter if empty). With a
    /// cluster, also answers requests other replicas forward here.
    pub async fn start(
        deps: SessionDeps,
        arbiters: Vec<ArbiterHandle>,
    ) -> Result<Self, SessionError> {
        let deps = Arc::new(deps);
        let registry = SessionRegistry::new(deps.clone(), arbiters).start();
        let sessions = Self { registry, deps };
        if let Some(cluster) = &sessions.deps.cluster {
            cluster.plant_canary().await?;
            cluster.listen(Arc::new(sessions.clone())).await?;
        }
        Ok(sessions)
    }

    /// The cluster, with several replicas.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.deps.cluster.as_ref()
    }

    /// The LLM provider (the OpenAI-compatible routes call it directly).
    pub fn llm(&self) -> &Arc<dyn LlmProvider> {
        &self.deps.llm
    }

    /// The session store (for readiness checks).
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.deps.store
    }

    /// The event log (for readiness checks).
    pub fn log(&self) -> &Arc<dyn crate::log::EventLog> {
        &self.deps.log
    }

    /// Metric handles.
    pub fn metrics(&self) -> &Metrics {
        &self.deps.metrics
    }

    /// The settings.
    pub fn config(&self) -> &crate::SessionConfig {
        &self.deps.config
    }

    /// Creates a session owned by `user_id`.
    pub async fn create(
        &self,
        user_id: &str,
        request: CreateSession,
    ) -> Result<Session, SessionError> {
        if request
            .title
            .as_ref()
            .is_some_and(|t| t.len() > MAX_TITLE_BYTES)
        {
            return Err(SessionError::BadRequest(format!(
                "title is over {MAX_TITLE_BYTES} bytes"
            )));
        }
        if request
            .system_prompt
            .as_ref()
            .is_some_and(|p| p.len() > MAX_SYSTEM_PROMPT_BYTES)
        {
            return Err(SessionError::BadRequest(format!(
                "system_prompt is over {MAX_SYSTEM_PROMPT_BYTES} bytes"
            )));
        }
        if request
            .model
            .as_ref()
            .is_some_and(|m| m.is_empty() || m.len() > 200)
        {
            return Err(SessionError::BadRequest(
                "model must be 1 to 200 bytes".into(),
            ));
        }
        let now = now_rfc3339();
        let record = SessionRecord {
            id: new_id(),
            user_id: user_id.to_owned(),
            title: request.title.unwrap_or_default(),
            model: request
                .model
                .unwrap_or_else(|| self.deps.config.default_model.clone()),
            system_prompt: request.system_prompt.filter(|p| !p.is_empty()),
            created_at: now.clone(),
            updated_at: now,
            last_seq: 0,
        };
        self.deps.store.create_session(record.clone()).await?;
        Ok(record.to_session())
    }

    /// The user's sessions, newest first.
    pub async fn list(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<SessionList, SessionError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let mut records = self
            .deps
            .store
            .list_sessions(user_id, limit + 1, before)
            .await?;
        let has_more = records.len() > limit;
        records.truncate(limit);
        Ok(SessionList {
            data: records.iter().map(SessionRecord::to_session).collect(),
            has_more,
        })
    }

    /// The session with its messages, including the one being generated.
    pub async fn get(&self, user_id: &str, id: &str) -> Result<SessionWithMessages, SessionError> {
        self.call(user_id, id, || session::GetState, || Op::Get)
            .await
    }

    /// Deletes the session, its messages and its events.
    pub async fn delete(&self, user_id: &str, id: &str) -> Result<(), SessionError> {
        match self.deps.store.get_session(id).await? {
            Some(record) if record.user_id == user_id => {}
            _ => return Err(SessionError::NotFound),
        }
        self.registry
            .send(Remove {
                session_id: id.to_owned(),
            })
            .await?;
        if let Some(cluster) = &self.deps.cluster
            && let Ok(Some(owner)) = cluster.leases().owner(id).await
            && owner != cluster.replica_id()
        {
            // Best effort: a replica that is gone has no actor to stop.
            let _ = cluster.call(&owner, user_id, id, Op::Remove).await;
        }
        self.deps.store.delete_session(id).await?;
        if let Err(e) = self.deps.log.remove(id).await {
            tracing::warn!(session_id = id, error = %e, "events of a deleted session not removed");
        }
        Ok(())
    }

    /// Persists a user message and starts its generation.
    pub async fn send(
        &self,
        user_id: &str,
        id: &str,
        message: SendMessage,
    ) -> Result<SendAccepted, SessionError> {
        message.validate()?;
        self.call(
            user_id,
            id,
            || session::Send {
                message: message.clone(),
            },
            || Op::Send {
                message: message.clone(),
            },
        )
        .await
    }

    /// Stops the running generation, if any.
    pub async fn cancel(&self, user_id: &str, id: &str) -> Result<(), SessionError> {
        self.call(user_id, id, || session::Cancel, || Op::Cancel)
            .await
    }

    /// Joins the session's event stream, resuming after `after` if given.
    /// `transport` labels the resume metric.
    pub async fn subscribe(
        &self,
        user_id: &str,
        id: &str,
        after: Option<u64>,
        transport: &str,
    ) -> Result<Subscription, SessionError> {
        for _ in 0..ROUTE_RETRIES {
            let queue = self.new_queue();
            // Closes the queue if anything below fails, so its producer drops it.
            let mut guard = QueueGuard(Some(queue.clone()));
            let start = match self.route(user_id, id, false).await? {
                Route::Local(addr) => {
                    let joined = match addr
                        .send(session::Subscribe {
                            queue: Some(queue.clone()),
                        })
                        .await
                    {
                        Ok(Err(SessionError::Retired)) | Err(MailboxError::Closed) => continue,
                        Ok(joined) => joined?,
                        Err(e) => return Err(e.into()),
                    };
                    joined.registered.await.map_err(|_| SessionError::Retired)?;
                    JoinInfo {
                        last_seq: joined.last_seq,
                        generating: joined.generating,
                        epoch: joined.epoch,
                        partial: joined.partial,
                    }
                }
                Route::Remote(owner) => {
                    let cluster = self.cluster().ok_or(SessionError::NotOwner)?;
                    // Subscribe first, then ask where to start: every event
                    // after the answer's `last_seq` arrives on the bus.
                    let rx = cluster
                        .bus()
                        .subscribe(&events_channel(id))
                        .await
                        .map_err(|e| SessionError::Overloaded(e.to_string()))?;
                    let Some(value) = self.forward(&owner, user_id, id, Op::Join).await? else {
                        continue;
                    };
                    let start: JoinInfo = serde_json::from_value(value)
                        .map_err(|e| SessionError::Internal(e.to_string()))?;
                    tokio::spawn(pump_remote(
                        rx,
                        queue.clone(),
                        start.last_seq,
                        start.generating,
                        self.clone(),
                        user_id.to_owned(),
                        id.to_owned(),
                    ));
                    start
                }
            };
            guard.0 = None;
            return self.open(id, queue, start, after, transport).await;
        }
        Err(SessionError::Overloaded(
            "the session is restarting, retry".into(),
        ))
    }

    fn new_queue(&self) -> Arc<SubscriberQueue> {
        let config = &self.deps.config;
        SubscriberQueue::new(
            QueueLimits {
                soft: config.subscriber_soft_limit,
                hard: config.subscriber_hard_limit,
                max_bytes: config.subscriber_max_bytes,
            },
            self.deps.metrics.clone(),
        )
    }

    /// The subscription of a joined queue: `hello`, then the replay from
    /// `after` (or `gap` and `snapshot`, or `snapshot` without a cursor).
    async fn open(
        &self,
        id: &str,
        queue: Arc<SubscriberQueue>,
        start: JoinInfo,
        after: Option<u64>,
        transport: &str,
    ) -> Result<Subscription, SessionError> {
        let metrics = &self.deps.metrics;
        let last_seq = start.last_seq;
        let mut subscription = Subscription {
            initial: VecDeque::new(),
            queue,
            last_sent: last_seq,
        };
        subscription
            .initial
            .push_back(Outgoing::Control(Control::Hello {
                session_id: id.to_owned(),
                replica: self.deps.config.replica_id.clone(),
                last_seq,
                generating: start.generating,
                epoch: start.epoch,
            }));
        let snapshot = Outgoing::Control(Control::Snapshot {
            last_seq,
            partial: start.partial,
        });
        let Some(after) = after else {
            subscription.initial.push_back(snapshot);
            return Ok(subscription);
        };
        metrics.resumes_total.with_label_values(&[transport]).inc();
        if after == last_seq {
            return Ok(subscription);
        }
        let replay = if after < last_seq {
            self.deps
                .log
                .read_after(id, after, last_seq)
                .await
                .map_err(|e| SessionError::Overloaded(e.to_string()))?
        } else {
            Vec::new()
        };
        let complete = replay.first().is_some_and(|e| e.seq() == after + 1)
            && replay.last().is_some_and(|e| e.seq() == last_seq)
            && replay.len() as u64 == last_seq - after;
        if complete {
            subscription
                .initial
                .extend(replay.into_iter().map(Outgoing::Event));
        } else {
            // The cursor is older than retention, or from a log that was lost.
            metrics.gaps_total.inc();
            subscription
                .initial
                .push_back(Outgoing::Control(Control::Gap {
                    from_seq: after + 1,
                }));
            subscription.initial.push_back(snapshot);
        }
        Ok(subscription)
    }

    /// Graceful shutdown: lets running generations finish within the grace
    /// period, interrupts the rest, flushes every session.
    pub async fn drain(&self) {
        let _ = self
            .registry
            .send(DrainAll {
                grace: self.deps.config.shutdown_grace,
            })
            .await;
    }

    /// Where the session lives now (starting its actor here if this replica
    /// may own it).
    async fn route(
        &self,
        user_id: &str,
        id: &str,
        local_only: bool,
    ) -> Result<Route, SessionError> {
        self.registry
            .send(Lookup {
                user_id: user_id.to_owned(),
                session_id: id.to_owned(),
                local_only,
            })
            .await?
    }

    /// Runs a command on the session's actor, wherever it lives: `make` builds
    /// it for a local actor, `op` for the owning replica. Goes back to the
    /// registry when the actor retired or the session moved in between.
    async fn call<M, T>(
        &self,
        user_id: &str,
        id: &str,
        make: impl Fn() -> M,
        op: impl Fn() -> Op,
    ) -> Result<T, SessionError>
    where
        M: Message<Result = Result<T, SessionError>> + Send + 'static,
        T: Send + DeserializeOwned + 'static,
        SessionActor: Handler<M>,
    {
        for _ in 0..ROUTE_RETRIES {
            match self.route(user_id, id, false).await {
                Err(SessionError::NotOwner) => continue,
                Err(e) => return Err(e),
                Ok(Route::Local(addr)) => match addr.send(make()).await {
                    Ok(Err(SessionError::Retired)) | Err(MailboxError::Closed) => continue,
                    Ok(result) => return result,
                    Err(e) => return Err(e.into()),
                },
                Ok(Route::Remote(owner)) => {
                    if let Some(value) = self.forward(&owner, user_id, id, op()).await? {
                        return serde_json::from_value(value)
                            .map_err(|e| SessionError::Internal(e.to_string()));
                    }
                }
            }
        }
        Err(SessionError::Overloaded(
            "the session is restarting, retry".into(),
        ))
    }

    /// Runs a command on a session this replica owns or may take (a request
    /// forwarded here); [`SessionError::NotOwner`] if another replica has it.
    async fn call_here<M, T>(
        &self,
        user_id: &str,
        id: &str,
        make: impl Fn() -> M,
    ) -> Result<T, SessionError>
    where
        M: Message<Result = Result<T, SessionError>> + Send + 'static,
        T: Send + 'static,
        SessionActor: Handler<M>,
    {
        for _ in 0..ROUTE_RETRIES {
            let Route::Local(addr) = self.route(user_id, id, true).await? else {
                return Err(SessionError::NotOwner);
            };
            match addr.send(make()).await {
                Ok(Err(SessionError::Retired)) | Err(MailboxError::Closed) => continue,
                Ok(result) => return result,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SessionError::NotOwner)
    }

    /// Sends `op` to the replica that owns the session. `Ok(None)`: ask where
    /// the session lives again (it moved, or its owner died and its lease has
    /// expired since).
    async fn forward(
        &self,
        owner: &str,
        user_id: &str,
        id: &str,
        op: Op,
    ) -> Result<Option<serde_json::Value>, SessionError> {
        let cluster = self.cluster().ok_or(SessionError::NotOwner)?;
        let label = op.label();
        let idempotent = op.idempotent();
        let count = |outcome| {
            self.deps
                .metrics
                .forwarded_requests_total
                .with_label_values(&[label, outcome])
                .inc();
        };
        match cluster.call(owner, user_id, id, op).await {
            Ok(value) => {
                count("ok");
                Ok(Some(value))
            }
            Err(CallError::Failed(SessionError::NotOwner)) => {
                count("moved");
                Ok(None)
            }
            Err(CallError::Failed(e)) => {
                count("error");
                Err(e)
            }
            Err(CallError::NotDelivered) => {
                count("owner_gone");
                cluster.await_release(id, owner).await?;
                Ok(None)
            }
            Err(CallError::NoAnswer) if idempotent => {
                count("no_answer");
                cluster.await_release(id, owner).await?;
                Ok(None)
            }
            Err(CallError::NoAnswer) => {
                count("no_answer");
                Err(SessionError::Overloaded(format!(
                    "the replica running this session ({owner}) did not answer; \
                     the message may have been accepted: retry with a client_msg_id"
                )))
            }
        }
    }
}

impl Executor for Sessions {
    fn execute(
        &self,
        user_id: String,
        session_id: String,
        op: Op,
    ) -> BoxFuture<'static, Result<serde_json::Value, SessionError>> {
        let this = self.clone();
        Box::pin(async move {
            let (user, id) = (user_id.as_str(), session_id.as_str());
            let value = match op {
                Op::Send { message } => {
                    message.validate()?;
                    let accepted = this
                        .call_here(user, id, || session::Send {
                            message: message.clone(),
                        })
                        .await?;
                    serde_json::to_value(accepted)
                }
                Op::Cancel => {
                    this.call_here(user, id, || session::Cancel).await?;
                    Ok(serde_json::Value::Null)
                }
                Op::Get => {
                    serde_json::to_value(this.call_here(user, id, || session::GetState).await?)
                }
                Op::Join => {
                    let joined = this
                        .call_here(user, id, || session::Subscribe { queue: None })
                        .await?;
                    joined
                        .registered
                        .await
                        .map_err(|_| SessionError::NotOwner)?;
                    serde_json::to_value(JoinInfo {
                        last_seq: joined.last_seq,
                        generating: joined.generating,
                        epoch: joined.epoch,
                        partial: joined.partial,
                    })
                }
                Op::Remove => {
                    this.registry
                        .send(Remove {
                            session_id: session_id.clone(),
                        })
                        .await?;
                    Ok(serde_json::Value::Null)
                }
            };
            value.map_err(|e| SessionError::Internal(e.to_string()))
        })
    }
}

/// Closes its queue on drop unless emptied first (a subscription that failed
/// to open leaves nothing behind).
struct QueueGuard(Option<Arc<SubscriberQueue>>);

impl Drop for QueueGuard {
    fn drop(&mut self) {
        if let Some(queue) = &self.0 {
            queue.close(CloseReason::Gone);
        }
    }
}

/// Feeds a subscriber of a session owned by another replica from the bus.
/// Events at or below `last` are in the subscriber's replay. A broken bus or
/// a skipped `seq` closes the queue as [`CloseReason::Resume`], so the client
/// resumes from its cursor. If the owner dies mid-generation, this replica
/// takes the session over (the next replica that needs it does).
async fn pump_remote(
    mut rx: BusReceiver,
    queue: Arc<SubscriberQueue>,
    mut last: u64,
    mut generating: bool,
    sessions: Sessions,
    user_id: String,
    session_id: String,
) {
    let resync = |queue: &SubscriberQueue| {
        sessions.deps.metrics.remote_resyncs_total.inc();
        queue.close(CloseReason::Resume);
    };
    let mut check = tokio::time::interval(OWNER_CHECK_INTERVAL);
    loop {
        tokio::select! {
            message = rx.recv() => {
                let payload = match message {
                    Some(BusMessage::Payload(payload)) => payload,
                    Some(BusMessage::Reconnected) | None => return resync(&queue),
                };
                for line in payload.lines() {
                    let event: Event = match serde_json::from_str(line) {
                        Ok(event) => event,
                        Err(e) => {
                            tracing::warn!(session_id, error = %e, "malformed event on the bus");
                            return resync(&queue);
                        }
                    };
                    if event.seq <= last {
                        continue;
                    }
                    if event.seq > last + 1 {
                        return resync(&queue);
                    }
                    last = event.seq;
                    match event.body {
                        EventBody::GenerationStart { .. } => generating = true,
                        EventBody::GenerationEnd { .. } => generating = false,
                        _ => {}
                    }
                    let event = Arc::new(EncodedEvent { event, json: line.into() });
                    if !queue.push(&event) {
                        return;
                    }
                }
            }
            _ = check.tick() => {
                if queue.is_closed() {
                    return;
                }
                if !generating {
                    continue;
                }
                let Some(cluster) = sessions.cluster() else { return };
                if let Ok(None) = cluster.leases().owner(&session_id).await {
                    // Nobody runs the generation any more: take it over here;
                    // its events arrive on the bus like any owner's.
                    if let Err(e) = sessions.route(&user_id, &session_id, false).await {
                        tracing::debug!(session_id, error = %e, "takeover attempt failed");
                    }
                }
            }
        }
    }
}

/// One frame for a client.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A control frame (no `seq`).
    Control(Control),
    /// An event, already encoded.
    Event(Arc<EncodedEvent>),
}

/// A client's view of a session's event stream.
pub struct Subscription {
    /// Frames to send before live events.
    initial: VecDeque<Outgoing>,
    queue: Arc<SubscriberQueue>,
    /// Highest `seq` handed out; live events at or below it are skipped.
    last_sent: u64,
}

/// Most frames one [`Subscription::next_batch`] returns.
pub const MAX_BATCH: usize = 256;

impl Subscription {
    /// The next frames, waiting for at least one: whatever is ready, up to
    /// [`MAX_BATCH`], so a transport writes them in one go. The reason once
    /// the stream is over.
    pub async fn next_batch(&mut self) -> Result<Vec<Outgoing>, CloseReason> {
        if !self.initial.is_empty() {
            let n = self.initial.len().min(MAX_BATCH);
            return Ok(self.initial.drain(..n).collect());
        }
        let mut events = Vec::new();
        loop {
            self.queue.pop_many(&mut events, MAX_BATCH).await?;
            let frames: Vec<Outgoing> = events
                .drain(..)
                .filter(|event| {
                    let new = event.seq() > self.last_sent;
                    if new {
                        self.last_sent = event.seq();
                    }
                    new
                })
                .map(Outgoing::Event)
                .collect();
            if !frames.is_empty() {
                return Ok(frames);
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.queue.close(CloseReason::Gone);
    }
}
