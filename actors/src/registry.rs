//! The session registry: session id → live [`SessionActor`].
//!
//! It starts an actor on demand from the store (checking the caller owns the
//! session, then taking its lease and claiming it), spreads actors over a
//! pool of arbiters (threads), forgets actors that retire, and drains them
//! all at shutdown.
//!
//! Each session has at most one [`Slot`], and a slot goes one way:
//! loading, then live, then stopping, then gone. A lookup that finds a
//! session loading or stopping waits for that to end and looks again, so
//! two lookups never load one session side by side, and a session's lease
//! is only ever taken, or let go after a failed load, by the one lookup
//! that loads it while no actor of it lives here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use sluice_backends::BackendError;
use sluice_protocol::{MessageStatus, Role};
use tokio::sync::oneshot;

use crate::deps::SessionDeps;
use crate::error::SessionError;
use crate::session::{Drain, Loaded, Retired, SessionActor, TAKEOVER_LOOKBACK, Terminate};

/// The registry actor.
pub struct SessionRegistry {
    /// Every session with an actor here, or on its way to one.
    slots: HashMap<String, Slot>,
    /// Threads the session actors run on, used in turn.
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    /// Graceful shutdown began: no session is loaded any more, so none
    /// starts a generation that the shutdown would cut off.
    draining: bool,
    deps: Arc<SessionDeps>,
}

/// Where a session is in its life on this replica.
enum Slot {
    /// A lookup is loading it; others wait.
    Loading {
        /// Told when the load ends.
        waiters: Vec<oneshot::Sender<()>>,
    },
    /// Its actor runs. The owner is kept so a lookup by another user is
    /// refused without touching the store.
    Live {
        /// The user who owns the session.
        user_id: String,
        /// The actor.
        addr: Addr<SessionActor>,
    },
    /// Its actor said it is retiring; lookups wait until it has stopped
    /// and let its lease go.
    Stopping {
        /// The stopping actor.
        addr: Addr<SessionActor>,
        /// Told once it has.
        waiters: Vec<oneshot::Sender<()>>,
    },
}

impl SessionRegistry {
    /// A registry starting actors on `arbiters` (the current one if empty).
    pub fn new(deps: Arc<SessionDeps>, arbiters: Vec<ArbiterHandle>) -> Self {
        Self {
            slots: HashMap::new(),
            arbiters,
            next_arbiter: 0,
            draining: false,
            deps,
        }
    }

    /// Forgets the session's slot and tells whoever waited on it.
    fn vacate(&mut self, session_id: &str) {
        match self.slots.remove(session_id) {
            Some(Slot::Loading { waiters } | Slot::Stopping { waiters, .. }) => {
                for waiter in waiters {
                    let _ = waiter.send(());
                }
            }
            Some(Slot::Live { .. }) | None => {}
        }
    }

    /// Starts the actor of a loaded session.
    fn start_actor(&mut self, loaded: Loaded, ctx: &mut Context<Self>) -> Addr<SessionActor> {
        let on_retired = ctx.address().recipient();
        let deps = self.deps.clone();
        let build =
            move |_: &mut Context<SessionActor>| SessionActor::new(loaded, on_retired, deps);
        if self.arbiters.is_empty() {
            return SessionActor::create(build);
        }
        self.next_arbiter = (self.next_arbiter + 1) % self.arbiters.len();
        SessionActor::start_in_arbiter(&self.arbiters[self.next_arbiter], build)
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
    /// An actor this caller found retiring: not to be given again, and
    /// waited for until it has stopped.
    pub retired: Option<Addr<SessionActor>>,
}

/// Where a session lives.
pub enum Route {
    /// On this replica.
    Local(Addr<SessionActor>),
    /// On the replica of that name, which holds its lease.
    Remote(String),
}

/// Stop a session's actor, if live, and tell its subscribers it was deleted.
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

/// What a load found.
enum Found {
    Load(Box<Loaded>),
    Remote(String),
}

/// Checks the session is `user_id`'s, takes its lease (or names the replica
/// that holds it), claims it in the store, and reads its state. If anything
/// fails after the lease was taken, the lease is let go.
async fn load(
    deps: Arc<SessionDeps>,
    user_id: String,
    session_id: String,
    local_only: bool,
) -> Result<Found, SessionError> {
    // Another user's session is "not found", and costs no lease.
    match deps.store.get_session(&session_id).await? {
        Some(record) if record.user_id == user_id => {}
        _ => return Err(SessionError::NotFound),
    }
    let cluster = &deps.cluster;
    let leases = cluster.leases();
    cluster.wait_before_taking(&session_id).await;
    let taken = leases
        .acquire(&session_id, cluster.replica_id(), cluster.lease_ttl())
        .await?;
    if !taken {
        if local_only {
            return Err(SessionError::NotOwner);
        }
        return match leases.owner(&session_id).await? {
            Some(owner) => Ok(Found::Remote(owner)),
            // Released in between: ask again.
            None => Err(SessionError::NotOwner),
        };
    }
    match read(&deps, &session_id).await {
        Ok(loaded) => Ok(Found::Load(Box::new(loaded))),
        Err(e) => {
            // Not loaded here: let another replica have it.
            if let Err(release) = leases.release(&session_id, cluster.replica_id()).await {
                tracing::warn!(session_id, error = %release, "lease not released; it expires by itself");
            }
            Err(e)
        }
    }
}

/// Claims the session in the store and then in the log (raising its fence,
/// so a previous owner's late writes and events are refused from now on),
/// and reads what its actor starts from.
async fn read(deps: &SessionDeps, session_id: &str) -> Result<Loaded, SessionError> {
    let Some(record) = deps.store.claim_session(session_id).await? else {
        return Err(SessionError::NotFound);
    };
    let log = &deps.log;
    log.claim(session_id, record.fence).await?;
    let messages = deps.store.messages(session_id).await?;
    let epoch = log.epoch(session_id).await?;
    let log_last_seq = log.last_seq(session_id).await?;
    // The last answer (the last message but its tool calls) was running, or
    // one of its calls was.
    let left_running = messages
        .iter()
        .rev()
        .take_while(|m| m.role == Role::Tool)
        .chain(messages.iter().rev().find(|m| m.role != Role::Tool))
        .any(|m| m.status == MessageStatus::Streaming);
    // A takeover reads the log a little before the checkpoint, to see
    // whether the answer was announced (see `TAKEOVER_LOOKBACK`).
    let from = record.last_seq.saturating_sub(TAKEOVER_LOOKBACK);
    let tail = if left_running && log_last_seq > from {
        log.read_after(session_id, from, log_last_seq)
            .await
            .map_err(|e: BackendError| tracing::warn!(session_id, error = %e, "the log's tail could not be read"))
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
}

/// Longest a lookup waits for a session's load or retirement to end; the
/// store's and Redis's own timeouts end both well before.
const SLOT_WAIT: Duration = Duration::from_secs(30);

/// Waits for `rx`, then asks the registry again.
fn look_again(
    rx: oneshot::Receiver<()>,
    registry: Addr<SessionRegistry>,
    lookup: Lookup,
) -> ResponseActFuture<SessionRegistry, Result<Route, SessionError>> {
    Box::pin(fut::wrap_future(async move {
        if tokio::time::timeout(SLOT_WAIT, rx).await.is_err() {
            return Err(SessionError::Overloaded(
                "the session is still loading or stopping; retry".into(),
            ));
        }
        registry.send(lookup).await?
    }))
}

impl Handler<Lookup> for SessionRegistry {
    type Result = ResponseActFuture<Self, Result<Route, SessionError>>;

    fn handle(&mut self, msg: Lookup, ctx: &mut Self::Context) -> Self::Result {
        let Lookup {
            user_id,
            session_id,
            local_only,
            retired,
        } = msg;
        let again = Lookup {
            user_id: user_id.clone(),
            session_id: session_id.clone(),
            local_only,
            retired: None,
        };
        match self.slots.get_mut(&session_id) {
            Some(Slot::Live {
                user_id: owner,
                addr,
            }) if addr.connected() && retired.as_ref() != Some(addr) => {
                let route = if *owner == user_id {
                    Ok(Route::Local(addr.clone()))
                } else {
                    Err(SessionError::NotFound)
                };
                return Box::pin(fut::ready(route));
            }
            Some(Slot::Live { addr, .. }) => {
                // Retiring, or gone without a word (its arbiter stopped).
                if !addr.connected() {
                    self.vacate(&session_id);
                    return self.handle(again, ctx);
                }
                let (tx, rx) = oneshot::channel();
                let addr = addr.clone();
                self.slots.insert(
                    session_id,
                    Slot::Stopping {
                        addr,
                        waiters: vec![tx],
                    },
                );
                return look_again(rx, ctx.address(), again);
            }
            Some(Slot::Stopping { addr, .. }) if !addr.connected() => {
                self.vacate(&session_id);
                return self.handle(again, ctx);
            }
            Some(Slot::Loading { waiters } | Slot::Stopping { waiters, .. }) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                return look_again(rx, ctx.address(), again);
            }
            None => {}
        }
        if self.draining {
            let refusal = if local_only {
                SessionError::NotOwner
            } else {
                SessionError::Overloaded("the server is shutting down".into())
            };
            return Box::pin(fut::ready(Err(refusal)));
        }
        self.slots.insert(
            session_id.clone(),
            Slot::Loading {
                waiters: Vec::new(),
            },
        );
        let load = load(
            self.deps.clone(),
            user_id.clone(),
            session_id.clone(),
            local_only,
        );
        Box::pin(load.into_actor(self).map(move |found, act, ctx| {
            let found = found.inspect_err(|_| act.vacate(&session_id))?;
            let loaded = match found {
                Found::Remote(owner) => {
                    act.vacate(&session_id);
                    return Ok(Route::Remote(owner));
                }
                Found::Load(loaded) => loaded,
            };
            let addr = act.start_actor(*loaded, ctx);
            let waiting = act.slots.insert(
                session_id,
                Slot::Live {
                    user_id,
                    addr: addr.clone(),
                },
            );
            if let Some(Slot::Loading { waiters }) = waiting {
                for waiter in waiters {
                    let _ = waiter.send(());
                }
            }
            Ok(Route::Local(addr))
        }))
    }
}

impl Handler<Retired> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Retired, _: &mut Self::Context) {
        let is_it = match self.slots.get(&msg.session_id) {
            Some(Slot::Live { addr, .. } | Slot::Stopping { addr, .. }) => *addr == msg.addr,
            Some(Slot::Loading { .. }) | None => false,
        };
        if is_it {
            self.vacate(&msg.session_id);
        }
    }
}

impl Handler<Remove> for SessionRegistry {
    type Result = ResponseActFuture<Self, ()>;

    /// Terminates the session's actor; a load under way is waited for, and
    /// the actor it starts terminated.
    fn handle(&mut self, msg: Remove, ctx: &mut Self::Context) -> Self::Result {
        let addr = match self.slots.get_mut(&msg.session_id) {
            Some(Slot::Live { addr, .. } | Slot::Stopping { addr, .. }) => addr.clone(),
            Some(Slot::Loading { waiters }) => {
                let (tx, rx) = oneshot::channel();
                waiters.push(tx);
                let registry = ctx.address();
                return Box::pin(fut::wrap_future(async move {
                    if tokio::time::timeout(SLOT_WAIT, rx).await.is_ok() {
                        let _ = registry.send(msg).await;
                    } else {
                        // If the load ends, its actor's writes to the deleted
                        // session change nothing, and it idles out.
                        tracing::warn!(session_id = %msg.session_id, "a deleted session's load did not end in time; its actor is not stopped");
                    }
                }));
            }
            None => return Box::pin(fut::ready(())),
        };
        Box::pin(fut::wrap_future(async move {
            let _ = addr.send(Terminate).await;
        }))
    }
}

impl Handler<DrainAll> for SessionRegistry {
    type Result = ResponseActFuture<Self, ()>;

    /// Lets the loads under way finish (no new one starts), then drains
    /// every live actor, those loads' included.
    fn handle(&mut self, msg: DrainAll, _: &mut Self::Context) -> Self::Result {
        self.draining = true;
        let loads: Vec<_> = self
            .slots
            .values_mut()
            .filter_map(|slot| match slot {
                Slot::Loading { waiters } => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
                Slot::Live { .. } | Slot::Stopping { .. } => None,
            })
            .collect();
        let grace = msg.grace;
        Box::pin(
            async move {
                futures::future::join_all(loads).await;
            }
            .into_actor(self)
            .then(move |_, act, _| {
                let drains: Vec<_> = act
                    .slots
                    .values()
                    .filter_map(|slot| match slot {
                        Slot::Live { addr, .. } => Some(addr.send(Drain { grace })),
                        Slot::Loading { .. } | Slot::Stopping { .. } => None,
                    })
                    .collect();
                async move {
                    futures::future::join_all(drains).await;
                }
                .into_actor(act)
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use futures::future::BoxFuture;
    use sluice_backends::llm::demo::DemoProvider;
    use sluice_backends::log::memory::MemoryEventLog;
    use sluice_backends::store::redb::RedbSessionStore;
    use sluice_backends::store::{MessageRecord, SessionRecord, SessionStore};
    use sluice_backends::{Backend, BackendError};
    use tokio::sync::Semaphore;

    use super::*;
    use crate::cluster::Cluster;
    use crate::metrics::Metrics;
    use crate::{Continuation, SessionConfig};

    const REPLICA: &str = "r0";

    /// A store whose session reads wait for permits, so lookups overlap,
    /// and whose next message read fails when told to.
    struct GatedStore {
        inner: RedbSessionStore,
        reads: Arc<Semaphore>,
        fail_next_messages: Arc<AtomicBool>,
    }

    impl SessionStore for GatedStore {
        fn name(&self) -> &'static str {
            "gated"
        }
        fn create_session(&self, s: SessionRecord) -> BoxFuture<'static, Result<(), BackendError>> {
            self.inner.create_session(s)
        }
        fn create_session_within(
            &self,
            session: SessionRecord,
            max_per_user: u64,
        ) -> BoxFuture<'static, Result<bool, BackendError>> {
            self.inner.create_session_within(session, max_per_user)
        }
        fn claim_session(
            &self,
            id: &str,
        ) -> BoxFuture<'static, Result<Option<SessionRecord>, BackendError>> {
            self.inner.claim_session(id)
        }
        fn get_session(
            &self,
            id: &str,
        ) -> BoxFuture<'static, Result<Option<SessionRecord>, BackendError>> {
            let (reads, read) = (self.reads.clone(), self.inner.get_session(id));
            Box::pin(async move {
                reads.acquire().await.expect("open").forget();
                read.await
            })
        }
        fn list_sessions(
            &self,
            user_id: &str,
            limit: usize,
            before: Option<&str>,
        ) -> BoxFuture<'static, Result<Vec<SessionRecord>, BackendError>> {
            self.inner.list_sessions(user_id, limit, before)
        }
        fn setting(&self, name: &str) -> BoxFuture<'static, Result<Option<String>, BackendError>> {
            self.inner.setting(name)
        }
        fn init_setting(
            &self,
            name: &str,
            value: &str,
        ) -> BoxFuture<'static, Result<String, BackendError>> {
            self.inner.init_setting(name, value)
        }
        fn set_setting(
            &self,
            name: &str,
            value: &str,
        ) -> BoxFuture<'static, Result<(), BackendError>> {
            self.inner.set_setting(name, value)
        }
        fn delete_session(&self, id: &str) -> BoxFuture<'static, Result<bool, BackendError>> {
            self.inner.delete_session(id)
        }
        fn messages(
            &self,
            session_id: &str,
        ) -> BoxFuture<'static, Result<Vec<MessageRecord>, BackendError>> {
            if self.fail_next_messages.swap(false, Ordering::SeqCst) {
                let e = BackendError::unavailable(Backend::Store, "injected");
                return Box::pin(async move { Err(e) });
            }
            self.inner.messages(session_id)
        }
        fn save(
            &self,
            session: SessionRecord,
            messages: Vec<MessageRecord>,
        ) -> BoxFuture<'static, Result<(), BackendError>> {
            self.inner.save(session, messages)
        }
        fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>> {
            self.inner.ping()
        }
    }

    struct Fixture {
        registry: Addr<SessionRegistry>,
        deps: Arc<SessionDeps>,
        reads: Arc<Semaphore>,
        fail_next_messages: Arc<AtomicBool>,
        _dir: tempfile::TempDir,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let inner = RedbSessionStore::open(&dir.path().join("s.redb")).unwrap();
        let reads = Arc::new(Semaphore::new(0));
        let fail_next_messages = Arc::new(AtomicBool::new(false));
        let store = GatedStore {
            inner,
            reads: reads.clone(),
            fail_next_messages: fail_next_messages.clone(),
        };
        store
            .create_session(SessionRecord {
                id: "s".into(),
                user_id: "alice".into(),
                title: String::new(),
                model: "m".into(),
                system_prompt: None,
                created_at: "2026-01-01T00:00:00Z".into(),
                updated_at: "2026-01-01T00:00:00Z".into(),
                last_seq: 0,
                fence: 0,
                tools: None,
            })
            .await
            .unwrap();
        let deps = Arc::new(SessionDeps {
            store: Arc::new(store),
            log: Arc::new(MemoryEventLog::new(100, 1 << 20)),
            llm: Arc::new(DemoProvider::new(Duration::ZERO)),
            metrics: Metrics::unregistered(),
            config: SessionConfig {
                replica_id: REPLICA.into(),
                default_model: "m".into(),
                idle_timeout: Duration::from_secs(300),
                subscriber_max_bytes: 1 << 20,
                shutdown_grace: Duration::from_secs(1),
                temperature: None,
                continuation: Continuation::Off,
                agent_max_steps: 4,
            },
            cluster: Arc::new(Cluster::local(REPLICA.into(), Duration::from_secs(30))),
            files: crate::files::for_tests(dir.path()),
            tools: crate::tools::for_tests(),
            cache: crate::cache::Cache::new(
                None,
                crate::cache::Scope::User,
                Metrics::unregistered(),
            ),
            limits: crate::limits::Limits::unlimited(Metrics::unregistered()),
        });
        let registry = SessionRegistry::new(deps.clone(), Vec::new()).start();
        Fixture {
            registry,
            deps,
            reads,
            fail_next_messages,
            _dir: dir,
        }
    }

    fn lookup(user: &str) -> Lookup {
        Lookup {
            user_id: user.into(),
            session_id: "s".into(),
            local_only: false,
            retired: None,
        }
    }

    async fn lease_owner(deps: &SessionDeps) -> Option<String> {
        deps.cluster.leases().owner("s").await.unwrap()
    }

    /// The owner and a stranger look the session up at once. The stranger
    /// is refused, and the lease stays with the actor the owner's lookup
    /// started (a stranger's lookup used to load too, and let the lease go
    /// under the running actor).
    #[actix_rt::test]
    async fn a_strangers_lookup_leaves_the_owners_lease_alone() {
        let f = fixture().await;
        let owners = f.registry.send(lookup("alice"));
        let strangers = f.registry.send(lookup("mallory"));
        f.reads.add_permits(10);
        let (owners, strangers) = futures::join!(owners, strangers);
        let Ok(Route::Local(addr)) = owners.unwrap() else {
            panic!("the owner's lookup found no actor");
        };
        assert!(matches!(strangers.unwrap(), Err(SessionError::NotFound)));
        assert!(addr.connected());
        assert_eq!(lease_owner(&f.deps).await.as_deref(), Some(REPLICA));
    }

    /// Two lookups at once, the first of whose loads fails: the second
    /// waits for it, then loads the session itself, and holds the lease.
    #[actix_rt::test]
    async fn a_failed_load_does_not_take_the_lease_from_the_next() {
        let f = fixture().await;
        f.fail_next_messages.store(true, Ordering::SeqCst);
        let first = f.registry.send(lookup("alice"));
        let second = f.registry.send(lookup("alice"));
        f.reads.add_permits(10);
        let (first, second) = futures::join!(first, second);
        assert!(matches!(first.unwrap(), Err(SessionError::Overloaded(_))));
        let Ok(Route::Local(addr)) = second.unwrap() else {
            panic!("the second lookup found no actor");
        };
        assert!(addr.connected());
        assert_eq!(lease_owner(&f.deps).await.as_deref(), Some(REPLICA));
    }
}
