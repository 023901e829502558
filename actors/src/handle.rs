//! The async API the web layer uses, and the resume logic of PROTOCOL.md §4.
//!
//! The web layer never builds actor messages: it calls [`Sessions`] and reads
//! a [`Subscription`], which yields exactly what a WebSocket or SSE client
//! must see, in order: `hello`, then a replay from the cursor (or `gap` and
//! `snapshot`, or just `snapshot` without a cursor), then live events with no
//! gap and no duplicate.

use std::collections::VecDeque;
use std::sync::Arc;

use actix::prelude::*;
use sluice_protocol::limits::{MAX_SYSTEM_PROMPT_BYTES, MAX_TITLE_BYTES};
use sluice_protocol::rest::{
    CreateSession, SendAccepted, SendMessage, SessionList, SessionWithMessages,
};
use sluice_protocol::{Control, Session};

use crate::error::SessionError;
use crate::ids::{new_id, now_rfc3339};
use crate::llm::LlmProvider;
use crate::log::EncodedEvent;
use crate::metrics::Metrics;
use crate::registry::{DrainAll, Lookup, Remove, SessionRegistry};
use crate::session::{self, Joined, SessionActor, SessionDeps};
use crate::store::{SessionRecord, SessionStore};
use crate::subscriber::{CloseReason, QueueLimits, SubscriberQueue};

/// Attempts when an actor retires under a caller.
const RETIRED_RETRIES: usize = 3;

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
    /// actors spread over `arbiters` (the current arbiter if empty).
    pub fn start(deps: SessionDeps, arbiters: Vec<ArbiterHandle>) -> Self {
        let deps = Arc::new(deps);
        let registry = SessionRegistry::new(deps.clone(), arbiters).start();
        Self { registry, deps }
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
        self.call(user_id, id, || session::GetState).await
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
        self.call(user_id, id, || session::Send {
            message: message.clone(),
        })
        .await
    }

    /// Stops the running generation, if any.
    pub async fn cancel(&self, user_id: &str, id: &str) -> Result<(), SessionError> {
        self.call(user_id, id, || session::Cancel).await
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
        let config = &self.deps.config;
        let metrics = &self.deps.metrics;
        let queue = SubscriberQueue::new(
            QueueLimits {
                soft: config.subscriber_soft_limit,
                hard: config.subscriber_hard_limit,
                max_bytes: config.subscriber_max_bytes,
            },
            metrics.clone(),
        );
        // Closes the queue if anything below fails, so the outbox drops it.
        let mut subscription = Subscription {
            initial: VecDeque::new(),
            queue: queue.clone(),
            last_sent: 0,
        };
        let joined: Joined = self
            .call(user_id, id, || session::Subscribe {
                queue: queue.clone(),
            })
            .await?;
        joined.registered.await.map_err(|_| SessionError::Retired)?;
        let last_seq = joined.last_seq;
        subscription
            .initial
            .push_back(Outgoing::Control(Control::Hello {
                session_id: id.to_owned(),
                replica: config.replica_id.clone(),
                last_seq,
                generating: joined.generating,
                epoch: joined.epoch,
            }));
        let snapshot = Outgoing::Control(Control::Snapshot {
            last_seq,
            partial: joined.partial,
        });
        subscription.last_sent = last_seq;
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

    /// Sends a message to the session's actor, going back to the registry if
    /// the actor retired in between.
    async fn call<M, T>(
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
        for _ in 0..RETIRED_RETRIES {
            let addr = self
                .registry
                .send(Lookup {
                    user_id: user_id.to_owned(),
                    session_id: id.to_owned(),
                })
                .await??;
            match addr.send(make()).await {
                Ok(Err(SessionError::Retired)) | Err(MailboxError::Closed) => continue,
                Ok(result) => return result,
                Err(e) => return Err(e.into()),
            }
        }
        Err(SessionError::Overloaded(
            "the session is restarting, retry".into(),
        ))
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

impl Subscription {
    /// The next frame, waiting for it; the reason once the stream is over.
    pub async fn next(&mut self) -> Result<Outgoing, CloseReason> {
        if let Some(frame) = self.initial.pop_front() {
            return Ok(frame);
        }
        loop {
            let event = self.queue.pop().await?;
            if event.seq() > self.last_sent {
                self.last_sent = event.seq();
                return Ok(Outgoing::Event(event));
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.queue.close(CloseReason::Gone);
    }
}
