//! [`Sessions`]: the session layer as the web layer sees it.
//!
//! The web layer never builds actor messages: it calls these async methods.
//! Each finds where the session lives ([`Sessions::routed`]: a local actor,
//! started on demand, or the replica holding its lease), and goes back to
//! the registry when the actor it reached retired or the session moved.

use std::future::Future;
use std::sync::Arc;

use actix::prelude::*;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use sluice_backends::ids::{new_id, now_rfc3339};
use sluice_backends::store::SessionRecord;
use sluice_protocol::Session;
use sluice_protocol::limits::{MAX_MODEL_BYTES, MAX_SEQ, MAX_SYSTEM_PROMPT_BYTES, MAX_TITLE_BYTES};
use sluice_protocol::rest::{
    CreateSession, SendAccepted, SendMessage, SessionList, SessionWithMessages,
};

use crate::cluster::{CallError, DELETED_NOTICE, Executor, JoinInfo, Op, events_channel};
use crate::deps::SessionDeps;
use crate::error::SessionError;
use crate::metrics::Metrics;
use crate::registry::{DrainAll, Lookup, Remove, Route, SessionRegistry};
use crate::session::{self, SessionActor};
use crate::subscriber::{HARD_LIMIT, QueueLimits, SOFT_LIMIT, SubscriberQueue};
use crate::subscription::{QueueGuard, Subscription};
use crate::{SessionConfig, remote_pump};

/// Attempts when an actor retires under a caller, or the session moves
/// between replicas.
const ROUTE_RETRIES: usize = 4;

/// Most sessions one `GET /v1/sessions` page returns.
pub const MAX_PAGE: usize = 100;

/// The session layer, as the web layer sees it. Cloning is cheap.
#[derive(Clone)]
pub struct Sessions {
    registry: Addr<SessionRegistry>,
    deps: Arc<SessionDeps>,
}

/// What one attempt on a session's route came to.
enum Attempt<T> {
    /// The answer.
    Done(T),
    /// Ask where the session lives again; with the actor found retiring,
    /// which the registry then waits out.
    Again(Option<Addr<SessionActor>>),
}

/// Asks a local actor; a retiring one (or one that found the session lost)
/// means asking the registry again. An actor that stopped without an
/// answer may have done what it was asked: the message goes again only if
/// `idempotent`.
async fn ask<M, T>(
    addr: Addr<SessionActor>,
    message: M,
    idempotent: bool,
) -> Result<Attempt<T>, SessionError>
where
    M: Message<Result = Result<T, SessionError>> + Send + 'static,
    T: Send + 'static,
    SessionActor: Handler<M>,
{
    match addr.send(message).await {
        Ok(Err(SessionError::Retired | SessionError::NotOwner)) => Ok(Attempt::Again(Some(addr))),
        Err(MailboxError::Closed) if idempotent => Ok(Attempt::Again(Some(addr))),
        Err(MailboxError::Closed) => Err(SessionError::Overloaded(
            "the session stopped while handling the message, which may have been accepted: \
             retry with a client_msg_id"
                .into(),
        )),
        Ok(result) => result.map(Attempt::Done),
        Err(e) => Err(e.into()),
    }
}

impl Sessions {
    /// Starts the registry (inside a running actix system), with session
    /// actors spread over `arbiters` (the current arbiter if empty), and
    /// answers requests other replicas forward here.
    pub async fn start(
        deps: SessionDeps,
        arbiters: Vec<ArbiterHandle>,
    ) -> Result<Self, SessionError> {
        let deps = Arc::new(deps);
        let registry = SessionRegistry::new(deps.clone(), arbiters).start();
        let sessions = Self { registry, deps };
        let cluster = &sessions.deps.cluster;
        cluster.plant_canary().await?;
        cluster.listen(Arc::new(sessions.clone())).await?;
        Ok(sessions)
    }

    /// Metric handles.
    pub fn metrics(&self) -> &Metrics {
        &self.deps.metrics
    }

    /// The settings.
    pub fn config(&self) -> &SessionConfig {
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
        if let Some(tools) = &request.tools {
            self.deps
                .tools
                .check_names(tools)
                .map_err(SessionError::BadRequest)?;
        }
        if request.model.as_ref().is_some_and(|m| {
            m.is_empty() || m.len() > MAX_MODEL_BYTES || m.chars().any(char::is_control)
        }) {
            return Err(SessionError::BadRequest(format!(
                "model must be 1 to {MAX_MODEL_BYTES} bytes, without control characters"
            )));
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
            fence: 0,
            tools: request.tools,
        };
        let most = self.deps.limits.settings().sessions;
        if most == 0 {
            self.deps.store.create_session(record.clone()).await?;
        } else if !self
            .deps
            .store
            .create_session_within(record.clone(), most)
            .await?
        {
            // Counted and refused in one step in the store, so creates at
            // once cannot both take the last place.
            self.deps.limits.check_sessions(most)?;
        }
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

    /// Deletes the session, its messages and its events; its subscribers,
    /// here and on other replicas, are told.
    pub async fn delete(&self, user_id: &str, id: &str) -> Result<(), SessionError> {
        match self.deps.store.get_session(id).await? {
            Some(record) if record.user_id == user_id => {}
            _ => return Err(SessionError::NotFound),
        }
        // Gone from the store first, so no lookup loads it again; a running
        // actor's late writes to it are no-ops.
        self.deps.store.delete_session(id).await?;
        self.registry
            .send(Remove {
                session_id: id.to_owned(),
            })
            .await?;
        let cluster = &self.deps.cluster;
        if let Ok(Some(owner)) = cluster.leases().owner(id).await
            && owner != cluster.replica_id()
        {
            // Best effort: a replica that is gone has no actor to stop.
            let _ = cluster.call(&owner, user_id, id, Op::Remove).await;
        }
        if let Err(e) = self.deps.log.remove(id).await {
            tracing::warn!(session_id = id, error = %e, "events of a deleted session not removed");
        }
        if let Err(e) = cluster
            .bus()
            .publish(&events_channel(id), DELETED_NOTICE.to_owned())
            .await
        {
            tracing::warn!(session_id = id, error = %e, "subscribers on other replicas not told of a deletion");
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
        // The generation's slot is taken here, named by the session (one
        // generation at a time runs in it); the replica that runs it holds
        // it from then on. A send that fails gives it back if this send took
        // it, and not if the session's running generation holds it.
        let limits = &self.deps.limits;
        let took_slot = limits.admit_generation(user_id, id).await?;
        let mut message = message;
        let stored = match self.attach(user_id, id, &mut message).await {
            Ok(stored) => stored,
            Err(e) => {
                if took_slot {
                    limits.release_generation(user_id, id);
                }
                return Err(e);
            }
        };
        let sent = self
            .call(
                user_id,
                id,
                || session::Send {
                    message: message.clone(),
                },
                || Op::Send {
                    message: message.clone(),
                },
            )
            .await;
        match &sent {
            // A retry of a send already accepted started nothing: the slot
            // it took (its answer had ended) is not held by anything.
            Ok(accepted) if accepted.replayed && took_slot => {
                limits.release_generation(user_id, id);
            }
            Ok(_) => {}
            Err(_) => {
                if took_slot {
                    limits.release_generation(user_id, id);
                }
                self.forget(user_id, &stored).await;
            }
        }
        sent
    }

    /// Stores a send's inline images as the user's files, attaches them,
    /// and checks every attachment (see [`Files::check_attachments`]); the
    /// ids of the files it stored. Every image is checked before any is
    /// stored, and if anything fails after, they are deleted again.
    ///
    /// [`Files::check_attachments`]: crate::files::Files::check_attachments
    async fn attach(
        &self,
        user_id: &str,
        id: &str,
        message: &mut SendMessage,
    ) -> Result<Vec<String>, SessionError> {
        use crate::files::MAX_ATTACHMENTS;

        if message.attachments.len() + message.images.len() > MAX_ATTACHMENTS {
            return Err(SessionError::BadRequest(format!(
                "at most {MAX_ATTACHMENTS} attachments per message (images included)"
            )));
        }
        let images = self.inline_images(user_id, id, message).await?;
        let files = &self.deps.files;
        let mut stored = Vec::new();
        for image in images {
            match image.store().await {
                Ok(file) => stored.push(file.id),
                Err(e) => {
                    self.forget(user_id, &stored).await;
                    return Err(e);
                }
            }
        }
        message.attachments.extend(stored.iter().cloned());
        if let Err(e) = files.check_attachments(user_id, &message.attachments).await {
            self.forget(user_id, &stored).await;
            return Err(e);
        }
        Ok(stored)
    }

    /// A send's inline images, each decoded and checked to be an image,
    /// none stored yet; none for a session that is not the user's, or for a
    /// retry of a send already saved (answered as the first was).
    async fn inline_images(
        &self,
        user_id: &str,
        id: &str,
        message: &mut SendMessage,
    ) -> Result<Vec<crate::files::upload::Sealed>, SessionError> {
        let urls = std::mem::take(&mut message.images);
        if urls.is_empty() {
            return Ok(Vec::new());
        }
        match self.deps.store.get_session(id).await? {
            Some(session) if session.user_id == user_id => {}
            _ => return Err(SessionError::NotFound),
        }
        if let Some(key) = &message.client_msg_id {
            let saved = self.deps.store.messages(id).await?;
            if saved.iter().any(|m| m.client_msg_id.as_ref() == Some(key)) {
                return Ok(Vec::new());
            }
        }
        let mut images = Vec::with_capacity(urls.len());
        for (i, url) in urls.iter().enumerate() {
            let bytes = crate::files::decode_data_url(url)?;
            let image = self
                .deps
                .files
                .seal_bytes(user_id, &format!("image-{}", i + 1), &bytes)
                .await?;
            if !image.content_type().starts_with("image/") {
                return Err(SessionError::UnsupportedMedia(
                    "an image_url part must hold a PNG, JPEG, GIF or WebP image".into(),
                ));
            }
            images.push(image);
        }
        Ok(images)
    }

    /// Deletes files a failed send stored (best effort: what cannot be
    /// deleted now stays, the user's, listed).
    async fn forget(&self, user_id: &str, ids: &[String]) {
        for file_id in ids {
            if let Err(e) = self.deps.files.delete(user_id, file_id).await {
                tracing::warn!(file = %file_id, error = %e, "an image of a failed send is left stored");
            }
        }
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
        transport: &'static str,
    ) -> Result<Subscription, SessionError> {
        if after.is_some_and(|after| after > MAX_SEQ) {
            return Err(SessionError::BadRequest(format!(
                "a cursor is a seq from 0 to {MAX_SEQ}"
            )));
        }
        let (queue, start) = self
            .routed(user_id, id, false, |route| self.join(route, user_id, id))
            .await?;
        let guard = QueueGuard::new(queue);
        let subscription = Subscription::open(
            id,
            &self.deps.config.replica_id,
            self.deps.log.as_ref(),
            &self.deps.metrics,
            guard.queue(),
            start,
            after,
            transport,
        )
        .await?;
        guard.defuse();
        Ok(subscription)
    }

    /// One attempt to join at `route`: a local actor registers a queue; a
    /// remote owner is asked where to start while this replica reads the
    /// session's bus channel into the queue.
    async fn join(
        &self,
        route: Route,
        user_id: &str,
        id: &str,
    ) -> Result<Attempt<(Arc<SubscriberQueue>, JoinInfo)>, SessionError> {
        let queue = self.new_queue();
        // Closes the queue if anything below fails, so its producer drops it.
        let guard = QueueGuard::new(queue.clone());
        let start = match route {
            Route::Local(addr) => {
                let queue = queue.clone();
                let joined = match ask(addr.clone(), session::Subscribe { queue }, true).await? {
                    Attempt::Done(joined) => joined,
                    Attempt::Again(retired) => return Ok(Attempt::Again(retired)),
                };
                if joined.registered.await.is_err() {
                    // The actor stopped before the queue was registered.
                    return Ok(Attempt::Again(Some(addr)));
                }
                JoinInfo {
                    last_seq: joined.last_seq,
                    generating: joined.generating,
                    epoch: joined.epoch,
                    partial: joined.partial,
                }
            }
            Route::Remote(owner) => {
                // Subscribe first, then ask where to start: every event
                // after the answer's `last_seq` arrives on the bus.
                let rx = self
                    .deps
                    .cluster
                    .bus()
                    .subscribe(&events_channel(id))
                    .await?;
                let Some(value) = self.forward(&owner, user_id, id, Op::Join).await? else {
                    return Ok(Attempt::Again(None));
                };
                let start: JoinInfo = serde_json::from_value(value)
                    .map_err(|e| SessionError::Internal(e.to_string()))?;
                tokio::spawn(remote_pump::run(
                    rx,
                    queue.clone(),
                    start.last_seq,
                    start.generating,
                    remote_pump::Followed {
                        user_id: user_id.to_owned(),
                        session_id: id.to_owned(),
                        cluster: self.deps.cluster.clone(),
                        registry: self.registry.clone(),
                        metrics: self.deps.metrics.clone(),
                    },
                ));
                start
            }
        };
        guard.defuse();
        Ok(Attempt::Done((queue, start)))
    }

    fn new_queue(&self) -> Arc<SubscriberQueue> {
        SubscriberQueue::new(
            QueueLimits {
                soft: SOFT_LIMIT,
                hard: HARD_LIMIT,
                max_bytes: self.deps.config.subscriber_max_bytes,
            },
            self.deps.metrics.clone(),
        )
    }

    /// Graceful shutdown: lets running generations finish within the grace
    /// period, hands over or interrupts the rest, flushes every session.
    pub async fn drain(&self) {
        let _ = self
            .registry
            .send(DrainAll {
                grace: self.deps.config.shutdown_grace,
            })
            .await;
    }

    /// Where the session lives now (starting its actor here if this replica
    /// may own it), given the actor the caller last found `retired`.
    async fn route(
        &self,
        user_id: &str,
        id: &str,
        local_only: bool,
        retired: Option<Addr<SessionActor>>,
    ) -> Result<Route, SessionError> {
        self.registry
            .send(Lookup {
                user_id: user_id.to_owned(),
                session_id: id.to_owned(),
                local_only,
                retired,
            })
            .await?
    }

    /// Runs `attempt` on wherever the session lives, asking the registry
    /// again when the actor it reached retired or the session moved, at
    /// most [`ROUTE_RETRIES`] times. `local_only` (a request forwarded
    /// here) never goes to another replica: it fails with
    /// [`SessionError::NotOwner`] instead, so the asker looks again.
    async fn routed<T, F, Fut>(
        &self,
        user_id: &str,
        id: &str,
        local_only: bool,
        mut attempt: F,
    ) -> Result<T, SessionError>
    where
        F: FnMut(Route) -> Fut,
        Fut: Future<Output = Result<Attempt<T>, SessionError>>,
    {
        let mut retired = None;
        for _ in 0..ROUTE_RETRIES {
            let route = match self.route(user_id, id, local_only, retired.take()).await {
                Err(SessionError::NotOwner) if !local_only => continue,
                route => route?,
            };
            if local_only && matches!(route, Route::Remote(_)) {
                return Err(SessionError::NotOwner);
            }
            match attempt(route).await? {
                Attempt::Done(value) => return Ok(value),
                Attempt::Again(actor) => retired = actor,
            }
        }
        Err(if local_only {
            SessionError::NotOwner
        } else {
            SessionError::Overloaded("the session is restarting, retry".into())
        })
    }

    /// Runs a command on the session's actor, wherever it lives: `make`
    /// builds it for a local actor, `op` for the owning replica.
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
        self.routed(user_id, id, false, |route| {
            let (message, op) = (make(), op());
            let idempotent = op.idempotent();
            async move {
                match route {
                    Route::Local(addr) => ask(addr, message, idempotent).await,
                    Route::Remote(owner) => match self.forward(&owner, user_id, id, op).await? {
                        Some(value) => serde_json::from_value(value)
                            .map(Attempt::Done)
                            .map_err(|e| SessionError::Internal(e.to_string())),
                        None => Ok(Attempt::Again(None)),
                    },
                }
            }
        })
        .await
    }

    /// Runs a command on a session this replica owns or may take (a request
    /// forwarded here); [`SessionError::NotOwner`] if another replica has it.
    async fn call_here<M, T>(
        &self,
        user_id: &str,
        id: &str,
        idempotent: bool,
        make: impl Fn() -> M,
    ) -> Result<T, SessionError>
    where
        M: Message<Result = Result<T, SessionError>> + Send + 'static,
        T: Send + 'static,
        SessionActor: Handler<M>,
    {
        self.routed(user_id, id, true, |route| {
            let message = make();
            async move {
                match route {
                    Route::Local(addr) => ask(addr, message, idempotent).await,
                    Route::Remote(_) => Err(SessionError::NotOwner),
                }
            }
        })
        .await
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
        let cluster = &self.deps.cluster;
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
            let idempotent = op.idempotent();
            let value = match op {
                Op::Send { message } => {
                    message.validate()?;
                    let accepted = this
                        .call_here(user, id, idempotent, || session::Send {
                            message: message.clone(),
                        })
                        .await?;
                    serde_json::to_value(accepted)
                }
                Op::Cancel => {
                    this.call_here(user, id, idempotent, || session::Cancel)
                        .await?;
                    Ok(serde_json::Value::Null)
                }
                Op::Get => serde_json::to_value(
                    this.call_here(user, id, idempotent, || session::GetState)
                        .await?,
                ),
                Op::Join => {
                    let joined = this
                        .call_here(user, id, idempotent, || session::Join)
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
