//! A session's store writes, in order, from one task: the final write of a
//! message can never be overtaken by an older checkpoint of it.
//!
//! Every write carries the session record, whose `fence` is the actor's
//! claim. Once the store refuses one as fenced (another replica claimed the
//! session), the writer tells its actor and refuses every later write
//! itself, without asking the store.

use std::sync::Arc;

use actix::Recipient;
use futures::FutureExt;
use sluice_backends::store::{MessageRecord, SessionRecord, SessionStore};
use sluice_backends::{Backend, BackendError, ErrorKind};
use tokio::sync::{mpsc, oneshot};

use super::Fenced;

/// The actor's side of its writer task.
pub(super) struct Writer {
    tx: mpsc::UnboundedSender<Write>,
    /// The task's side until [`Writer::start`] spawns it.
    pending: Option<(mpsc::UnboundedReceiver<Write>, Arc<dyn SessionStore>)>,
}

/// One write for the task.
struct Write {
    session: SessionRecord,
    messages: Vec<MessageRecord>,
    done: Option<oneshot::Sender<Result<(), BackendError>>>,
}

impl Writer {
    /// A writer to `store`; writes queue until [`Writer::start`].
    pub(super) fn new(store: Arc<dyn SessionStore>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            pending: Some((rx, store)),
        }
    }

    /// Spawns the task (once, on the actor's arbiter); `on_fenced` hears of
    /// a fenced write.
    pub(super) fn start(&mut self, on_fenced: Recipient<Fenced>) {
        if let Some((rx, store)) = self.pending.take() {
            actix_rt::spawn(run(store, rx, on_fenced));
        }
    }

    /// Queues a write of `session` and `messages`; a failure is logged.
    pub(super) fn save(&self, session: SessionRecord, messages: Vec<MessageRecord>) {
        self.queue(session, messages, None);
    }

    /// Queues a write and resolves with its outcome once it has landed.
    pub(super) fn save_acked(
        &self,
        session: SessionRecord,
        messages: Vec<MessageRecord>,
    ) -> futures::future::BoxFuture<'static, Result<(), BackendError>> {
        let (done, rx) = oneshot::channel();
        self.queue(session, messages, Some(done));
        rx.map(|answer| {
            answer.unwrap_or_else(|_| {
                Err(BackendError::unavailable(
                    Backend::Store,
                    "the session's writer stopped",
                ))
            })
        })
        .boxed()
    }

    /// Resolves once every write queued before it has landed (or failed).
    pub(super) fn flush(&self, session: SessionRecord) -> futures::future::BoxFuture<'static, ()> {
        self.save_acked(session, Vec::new()).map(drop).boxed()
    }

    fn queue(
        &self,
        session: SessionRecord,
        messages: Vec<MessageRecord>,
        done: Option<oneshot::Sender<Result<(), BackendError>>>,
    ) {
        // The task lives as long as the actor; if it is gone, so is every
        // waiter, which hears of it through `done`.
        let _ = self.tx.send(Write {
            session,
            messages,
            done,
        });
    }
}

/// Writes in order until the actor drops its side.
async fn run(
    store: Arc<dyn SessionStore>,
    mut rx: mpsc::UnboundedReceiver<Write>,
    on_fenced: Recipient<Fenced>,
) {
    let mut fenced: Option<BackendError> = None;
    while let Some(write) = rx.recv().await {
        let session_id = write.session.id.clone();
        let result = match &fenced {
            Some(e) => Err(e.clone()),
            None => store.save(write.session, write.messages).await,
        };
        match &result {
            Err(e) if e.kind == ErrorKind::Fenced => {
                if fenced.is_none() {
                    tracing::error!(session_id, error = %e, "another replica claimed this session; stopping its writes");
                    fenced = Some(e.clone());
                    on_fenced.do_send(Fenced);
                }
            }
            Err(e) => tracing::warn!(session_id, error = %e, "session write failed"),
            Ok(()) => {}
        }
        if let Some(done) = write.done {
            let _ = done.send(result);
        }
    }
}
