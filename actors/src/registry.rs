//! The session registry: session id → live [`SessionActor`].
//!
//! It starts an actor on demand from the store (checking the caller owns the
//! session), spreads actors over a pool of arbiters (threads), forgets actors
//! that retire, and drains them all at shutdown.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use crate::error::SessionError;
use crate::session::{Drain, SessionActor, SessionDeps, Terminate};

/// The registry actor.
pub struct SessionRegistry {
    /// Live actors with their owner, so a lookup by another user is refused
    /// without touching the store.
    sessions: HashMap<String, (String, Addr<SessionActor>)>,
    /// Threads the session actors run on, used in turn.
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    deps: Arc<SessionDeps>,
}

impl SessionRegistry {
    /// A registry starting actors on `arbiters` (the current one if empty).
    pub fn new(deps: Arc<SessionDeps>, arbiters: Vec<ArbiterHandle>) -> Self {
        Self {
            sessions: HashMap::new(),
            arbiters,
            next_arbiter: 0,
            deps,
        }
    }
}

impl Actor for SessionRegistry {
    type Context = Context<Self>;
}

/// Find (or start) the actor of a session owned by `user_id`.
#[derive(Message)]
#[rtype(result = "Result<Addr<SessionActor>, SessionError>")]
pub struct Lookup {
    /// The caller.
    pub user_id: String,
    /// The session.
    pub session_id: String,
}

/// An actor is stopping; forget it (if it is still the one registered).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire {
    /// The session.
    pub session_id: String,
    /// The stopping actor.
    pub addr: Addr<SessionActor>,
}

/// Stop a session's actor, if live, without events (before deleting it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Remove {
    /// The session.
    pub session_id: String,
}

/// Drain every live actor (graceful shutdown).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainAll {
    /// How long running generations may take to finish.
    pub grace: std::time::Duration,
}

impl Handler<Lookup> for SessionRegistry {
    type Result = ResponseActFuture<Self, Result<Addr<SessionActor>, SessionError>>;

    fn handle(&mut self, msg: Lookup, _: &mut Self::Context) -> Self::Result {
        if let Some((owner, addr)) = self.sessions.get(&msg.session_id)
            && addr.connected()
        {
            let result = if *owner == msg.user_id {
                Ok(addr.clone())
            } else {
                Err(SessionError::NotFound)
            };
            return Box::pin(fut::ready(result));
        }
        let deps = self.deps.clone();
        let session_id = msg.session_id.clone();
        let load = async move {
            let Some(record) = deps.store.get_session(&session_id).await? else {
                return Err(SessionError::NotFound);
            };
            let messages = deps.store.messages(&session_id).await?;
            let epoch = deps
                .log
                .epoch(&session_id)
                .await
                .map_err(|e| SessionError::Overloaded(e.to_string()))?;
            Ok((record, messages, epoch))
        };
        Box::pin(load.into_actor(self).map(move |loaded, act, ctx| {
            let (record, messages, epoch) = loaded?;
            if record.user_id != msg.user_id {
                return Err(SessionError::NotFound);
            }
            // Another lookup may have started the actor while this one loaded.
            if let Some((_, addr)) = act.sessions.get(&msg.session_id)
                && addr.connected()
            {
                return Ok(addr.clone());
            }
            let registry = ctx.address().recipient();
            let deps = act.deps.clone();
            let build = move |_: &mut Context<SessionActor>| {
                SessionActor::new(record, messages, epoch, registry, deps)
            };
            let addr = if act.arbiters.is_empty() {
                SessionActor::create(build)
            } else {
                act.next_arbiter = (act.next_arbiter + 1) % act.arbiters.len();
                SessionActor::start_in_arbiter(&act.arbiters[act.next_arbiter], build)
            };
            act.sessions
                .insert(msg.session_id, (msg.user_id, addr.clone()));
            Ok(addr)
        }))
    }
}

impl Handler<Retire> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Retire, _: &mut Self::Context) {
        if self
            .sessions
            .get(&msg.session_id)
            .is_some_and(|(_, addr)| *addr == msg.addr)
        {
            self.sessions.remove(&msg.session_id);
        }
    }
}

impl Handler<Remove> for SessionRegistry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Remove, _: &mut Self::Context) -> Self::Result {
        let addr = self.sessions.remove(&msg.session_id).map(|(_, addr)| addr);
        Box::pin(
            async move {
                if let Some(addr) = addr {
                    let _ = addr.send(Terminate).await;
                }
            }
            .into_actor(self),
        )
    }
}

impl Handler<DrainAll> for SessionRegistry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: DrainAll, _: &mut Self::Context) -> Self::Result {
        let drains: Vec<_> = self
            .sessions
            .values()
            .map(|(_, addr)| addr.send(Drain { grace: msg.grace }))
            .collect();
        Box::pin(
            async move {
                futures::future::join_all(drains).await;
            }
            .into_actor(self),
        )
    }
}
