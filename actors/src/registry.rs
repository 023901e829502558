//! The session registry: session id → live [`SessionActor`].
//!
//! It starts an actor on demand from the store (checking the caller owns the
//! session), spreads actors over a pool of arbiters (threads), forgets actors
//! that retire, and drains them all at shutdown.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;

use crate::error::SessionError;
use sluice_protocol::MessageStatus;

use crate::session::{Drain, Loaded, SessionActor, SessionDeps, Terminate};

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

/// Find (or start) the actor of a session owned by `user_id`: here, or the
/// replica that holds its lease.
#[derive(Message)]
#[rtype(result = "Result<Route, SessionError>")]
pub struct Lookup {
    /// The caller.
    pub user_id: String,
    /// The session.
    pub session_id: String,
    /// Never answer [`Route::Remote`] (the request was forwarded here):
    /// [`SessionError::NotOwner`] instead.
    pub local_only: bool,
}

/// Where a session lives.
pub enum Route {
    /// On this replica.
    Local(Addr<SessionActor>),
    /// On the replica of that name, which holds its lease.
    Remote(String),
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

/// What a lookup found while loading.
enum Found {
    Load(Box<Loaded>),
    Remote(String),
}

/// Takes the session's lease (with several replicas) and reads its state,
/// or names the replica that holds the lease.
async fn load(
    deps: Arc<SessionDeps>,
    session_id: String,
    local_only: bool,
) -> Result<Found, SessionError> {
    let unavailable = |e: &dyn std::fmt::Display| SessionError::Overloaded(e.to_string());
    if let Some(cluster) = &deps.cluster {
        let leases = cluster.leases();
        cluster.wait_before_taking(&session_id).await;
        let taken = leases
            .acquire(&session_id, cluster.replica_id(), cluster.lease_ttl())
            .await
            .map_err(|e| unavailable(&e))?;
        if !taken {
            if local_only {
                return Err(SessionError::NotOwner);
            }
            return match leases
                .owner(&session_id)
                .await
                .map_err(|e| unavailable(&e))?
            {
                Some(owner) => Ok(Found::Remote(owner)),
                // Released in between: ask again.
                None => Err(SessionError::NotOwner),
            };
        }
    }
    let read = async {
        let Some(record) = deps.store.get_session(&session_id).await? else {
            return Err(SessionError::NotFound);
        };
        let messages = deps.store.messages(&session_id).await?;
        let log = &deps.log;
        let epoch = log.epoch(&session_id).await.map_err(|e| unavailable(&e))?;
        let log_last_seq = log
            .last_seq(&session_id)
            .await
            .map_err(|e| unavailable(&e))?;
        let left_running = messages
            .iter()
            .any(|m| m.status == MessageStatus::Streaming);
        let tail = if left_running && log_last_seq > record.last_seq {
            log.read_after(&session_id, record.last_seq, log_last_seq)
                .await
                .ok()
        } else {
            Some(Vec::new())
        };
        Ok(Loaded {
            record,
            messages,
            epoch,
            log_last_seq,
            tail,
        })
    };
    match read.await {
        Ok(loaded) => Ok(Found::Load(Box::new(loaded))),
        Err(e) => {
            // Not loaded here: let another replica have it.
            if let Some(cluster) = &deps.cluster {
                let _ = cluster
                    .leases()
                    .release(&session_id, cluster.replica_id())
                    .await;
            }
            Err(e)
        }
    }
}

impl Handler<Lookup> for SessionRegistry {
    type Result = ResponseActFuture<Self, Result<Route, SessionError>>;

    fn handle(&mut self, msg: Lookup, _: &mut Self::Context) -> Self::Result {
        if let Some((owner, addr)) = self.sessions.get(&msg.session_id)
            && addr.connected()
        {
            let result = if *owner == msg.user_id {
                Ok(Route::Local(addr.clone()))
            } else {
                Err(SessionError::NotFound)
            };
            return Box::pin(fut::ready(result));
        }
        let load = load(self.deps.clone(), msg.session_id.clone(), msg.local_only);
        Box::pin(load.into_actor(self).map(move |found, act, ctx| {
            let loaded = match found? {
                Found::Remote(owner) => return Ok(Route::Remote(owner)),
                Found::Load(loaded) => loaded,
            };
            if loaded.record.user_id != msg.user_id {
                if let Some(cluster) = &act.deps.cluster {
                    let release = cluster
                        .leases()
                        .release(&msg.session_id, cluster.replica_id());
                    actix_rt::spawn(async move {
                        let _ = release.await;
                    });
                }
                return Err(SessionError::NotFound);
            }
            // Another lookup may have started the actor while this one loaded.
            if let Some((_, addr)) = act.sessions.get(&msg.session_id)
                && addr.connected()
            {
                return Ok(Route::Local(addr.clone()));
            }
            let registry = ctx.address().recipient();
            let deps = act.deps.clone();
            let build =
                move |_: &mut Context<SessionActor>| SessionActor::new(*loaded, registry, deps);
            let addr = if act.arbiters.is_empty() {
                SessionActor::create(build)
            } else {
                act.next_arbiter = (act.next_arbiter + 1) % act.arbiters.len();
                SessionActor::start_in_arbiter(&act.arbiters[act.next_arbiter], build)
            };
            act.sessions
                .insert(msg.session_id, (msg.user_id, addr.clone()));
            Ok(Route::Local(addr))
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
