//! A session's store writes, in order, from one task: the final write of a
//! message can never be overtaken by an older checkpoint of it.
//!
//! Every write carries the session record, whose `fence` is the actor's
//! claim. Once the store refuses one as fenced (another replica claimed the
//! session), the writer tells its actor and refuses every later write
//! itself, without asking the store; so it does once the actor abandons it.
//!
//! The messages of a checkpoint, a final answer or a repair whose write
//! failed because the store was unavailable go again with the next write,
//! so a final answer lands once the store is back (the idle retirement's
//! flush is one such write). A send's write is not retried: its caller is
//! told it failed, and its messages are dropped. Neither is a write the
//! store refuses for good (`Rejected`, `Corrupt`), but the older messages it
//! carried along are still owed and go again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// Set when the actor lost its session: nothing more is written.
    abandoned: Arc<AtomicBool>,
}

/// One write for the task.
struct Write {
    session: SessionRecord,
    messages: Vec<MessageRecord>,
    /// Whether its messages go again with the next write if the store was
    /// unavailable.
    retried: bool,
    done: Option<oneshot::Sender<Result<(), BackendError>>>,
}

impl Writer {
    /// A writer to `store`; writes queue until [`Writer::start`].
    pub(super) fn new(store: Arc<dyn SessionStore>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            tx,
            pending: Some((rx, store)),
            abandoned: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Spawns the task (once, on the actor's arbiter); `on_fenced` hears of
    /// a fenced write.
    pub(super) fn start(&mut self, on_fenced: Recipient<Fenced>) {
        if let Some((rx, store)) = self.pending.take() {
            actix_rt::spawn(run(store, rx, on_fenced, self.abandoned.clone()));
        }
    }

    /// Writes nothing more, queued or not: the session is another replica's.
    pub(super) fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }

    /// Queues a write of `session` and `messages`; a failure is logged.
    pub(super) fn save(&self, session: SessionRecord, messages: Vec<MessageRecord>) {
        self.queue(session, messages, true, None);
    }

    /// Queues a write and resolves with its outcome once it has landed.
    pub(super) fn save_acked(
        &self,
        session: SessionRecord,
        messages: Vec<MessageRecord>,
    ) -> futures::future::BoxFuture<'static, Result<(), BackendError>> {
        self.acked(session, messages, true)
    }

    /// Like [`Self::save_acked`], but not written again if it fails: for a
    /// send, whose caller is told and whose messages are dropped.
    pub(super) fn save_once(
        &self,
        session: SessionRecord,
        messages: Vec<MessageRecord>,
    ) -> futures::future::BoxFuture<'static, Result<(), BackendError>> {
        self.acked(session, messages, false)
    }

    fn acked(
        &self,
        session: SessionRecord,
        messages: Vec<MessageRecord>,
        retried: bool,
    ) -> futures::future::BoxFuture<'static, Result<(), BackendError>> {
        let (done, rx) = oneshot::channel();
        self.queue(session, messages, retried, Some(done));
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
        retried: bool,
        done: Option<oneshot::Sender<Result<(), BackendError>>>,
    ) {
        // The task lives as long as the actor; if it is gone, so is every
        // waiter, which hears of it through `done`.
        let _ = self.tx.send(Write {
            session,
            messages,
            retried,
            done,
        });
    }
}

/// Writes in order until the actor drops its side.
async fn run(
    store: Arc<dyn SessionStore>,
    mut rx: mpsc::UnboundedReceiver<Write>,
    on_fenced: Recipient<Fenced>,
    abandoned: Arc<AtomicBool>,
) {
    let mut fenced: Option<BackendError> = None;
    // Messages whose write failed, newest version of each, to write again.
    let mut unsaved: Vec<MessageRecord> = Vec::new();
    while let Some(write) = rx.recv().await {
        let session_id = write.session.id.clone();
        let owned = write.messages.len();
        let mut messages = write.messages;
        // Messages from earlier failed writes, unless this one has a newer
        // version of them.
        for old in std::mem::take(&mut unsaved) {
            if !messages.iter().any(|m| m.id == old.id) {
                messages.push(old);
            }
        }
        let result = if abandoned.load(Ordering::SeqCst) {
            Err(BackendError::new(
                Backend::Store,
                ErrorKind::Fenced,
                "the session is another replica's now",
            ))
        } else if let Some(e) = &fenced {
            Err(e.clone())
        } else {
            store.save(write.session, messages.clone()).await
        };
        match &result {
            Err(e) if e.kind == ErrorKind::Fenced => {
                if fenced.is_none() && !abandoned.load(Ordering::SeqCst) {
                    tracing::error!(session_id, error = %e, "another replica claimed this session; stopping its writes");
                    on_fenced.do_send(Fenced);
                }
                fenced = Some(e.clone());
            }
            Err(e) if e.is_retryable() => {
                tracing::warn!(session_id, error = %e, "session write failed; its messages go again with the next");
                // This write's own messages only if it is retried; earlier
                // ones (after them in the list) in any case.
                let keep_from = if write.retried { 0 } else { owned };
                unsaved = messages.split_off(keep_from);
            }
            Err(e) => {
                // Not this write's messages (retrying cannot help them), but
                // the earlier ones it carried are still owed.
                tracing::error!(session_id, error = %e, "session write refused");
                unsaved = messages.split_off(owned);
            }
            Ok(()) => {}
        }
        if let Some(done) = write.done {
            let _ = done.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use actix::prelude::*;
    use futures::future::BoxFuture;
    use sluice_backends::store::{MessageRecord, SessionRecord, SessionStore};
    use sluice_backends::{Backend, BackendError, ErrorKind};
    use sluice_protocol::{MessageStatus, Role};

    use super::*;

    /// A store whose saves answer from a script (then `Ok`), recording the
    /// message ids each save carried.
    #[derive(Default)]
    struct ScriptedStore {
        answers: Mutex<VecDeque<Option<ErrorKind>>>,
        saves: Mutex<Vec<Vec<String>>>,
    }

    fn unused<T: Send + 'static>() -> BoxFuture<'static, Result<T, BackendError>> {
        Box::pin(async {
            Err(BackendError::new(
                Backend::Store,
                ErrorKind::Rejected,
                "unused",
            ))
        })
    }

    impl SessionStore for ScriptedStore {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn create_session(&self, _: SessionRecord) -> BoxFuture<'static, Result<(), BackendError>> {
            unused()
        }
        fn create_session_within(
            &self,
            _: SessionRecord,
            _: u64,
        ) -> BoxFuture<'static, Result<bool, BackendError>> {
            unused()
        }
        fn claim_session(
            &self,
            _: &str,
        ) -> BoxFuture<'static, Result<Option<SessionRecord>, BackendError>> {
            unused()
        }
        fn get_session(
            &self,
            _: &str,
        ) -> BoxFuture<'static, Result<Option<SessionRecord>, BackendError>> {
            unused()
        }
        fn list_sessions(
            &self,
            _: &str,
            _: usize,
            _: Option<&str>,
        ) -> BoxFuture<'static, Result<Vec<SessionRecord>, BackendError>> {
            unused()
        }
        fn delete_session(&self, _: &str) -> BoxFuture<'static, Result<bool, BackendError>> {
            unused()
        }
        fn setting(&self, _: &str) -> BoxFuture<'static, Result<Option<String>, BackendError>> {
            unused()
        }
        fn init_setting(
            &self,
            _: &str,
            _: &str,
        ) -> BoxFuture<'static, Result<String, BackendError>> {
            unused()
        }
        fn set_setting(&self, _: &str, _: &str) -> BoxFuture<'static, Result<(), BackendError>> {
            unused()
        }
        fn messages(
            &self,
            _: &str,
        ) -> BoxFuture<'static, Result<Vec<MessageRecord>, BackendError>> {
            unused()
        }
        fn save(
            &self,
            _: SessionRecord,
            messages: Vec<MessageRecord>,
        ) -> BoxFuture<'static, Result<(), BackendError>> {
            let mut ids: Vec<String> = messages.into_iter().map(|m| m.id).collect();
            ids.sort();
            self.saves.lock().unwrap().push(ids);
            let answer = self.answers.lock().unwrap().pop_front().flatten();
            Box::pin(async move {
                match answer {
                    Some(kind) => Err(BackendError::new(Backend::Store, kind, "scripted")),
                    None => Ok(()),
                }
            })
        }
        fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>> {
            unused()
        }
    }

    struct Ignore;
    impl Actor for Ignore {
        type Context = Context<Self>;
    }
    impl Handler<Fenced> for Ignore {
        type Result = ();
        fn handle(&mut self, _: Fenced, _: &mut Self::Context) {}
    }

    fn session() -> SessionRecord {
        SessionRecord {
            id: "s".into(),
            user_id: "u".into(),
            title: String::new(),
            model: "m".into(),
            system_prompt: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            last_seq: 0,
            fence: 1,
            tools: None,
        }
    }

    fn message(id: &str) -> MessageRecord {
        MessageRecord {
            id: id.into(),
            session_id: "s".into(),
            role: Role::Assistant,
            content: String::new(),
            attachments: vec![],
            status: MessageStatus::Complete,
            created_at: "2026-01-01T00:00:00Z".into(),
            client_msg_id: None,
            generation_id: None,
            usage: None,
            tool: None,
        }
    }

    fn writer(answers: &[Option<ErrorKind>]) -> (Writer, Arc<ScriptedStore>) {
        let store = Arc::new(ScriptedStore::default());
        store
            .answers
            .lock()
            .unwrap()
            .extend(answers.iter().copied());
        let mut writer = Writer::new(store.clone());
        writer.start(Ignore.start().recipient());
        (writer, store)
    }

    #[actix_rt::test]
    async fn an_unavailable_final_write_goes_again_and_a_send_does_not() {
        let (writer, store) = writer(&[Some(ErrorKind::Unavailable), Some(ErrorKind::Unavailable)]);
        // A final answer fails, then a send that carries it fails too.
        assert!(
            writer
                .save_acked(session(), vec![message("final")])
                .await
                .is_err()
        );
        assert!(
            writer
                .save_once(session(), vec![message("send")])
                .await
                .is_err()
        );
        // The final answer is still owed; the send's message is not.
        writer.flush(session()).await;
        let saves = store.saves.lock().unwrap().clone();
        assert_eq!(saves, [vec!["final"], vec!["final", "send"], vec!["final"]]);
    }

    #[actix_rt::test]
    async fn a_refused_write_keeps_the_earlier_messages_it_carried() {
        let (writer, store) = writer(&[Some(ErrorKind::Unavailable), Some(ErrorKind::Rejected)]);
        assert!(
            writer
                .save_acked(session(), vec![message("final")])
                .await
                .is_err()
        );
        // The store refuses this send for its own content.
        assert!(
            writer
                .save_once(session(), vec![message("send")])
                .await
                .is_err()
        );
        writer.flush(session()).await;
        let saves = store.saves.lock().unwrap().clone();
        assert_eq!(saves, [vec!["final"], vec!["final", "send"], vec!["final"]]);
    }

    #[actix_rt::test]
    async fn after_a_fenced_write_nothing_more_reaches_the_store() {
        let (writer, store) = writer(&[Some(ErrorKind::Fenced)]);
        let first = writer.save_acked(session(), vec![message("a")]).await;
        assert_eq!(first.unwrap_err().kind, ErrorKind::Fenced);
        let second = writer.save_acked(session(), vec![message("b")]).await;
        assert_eq!(second.unwrap_err().kind, ErrorKind::Fenced);
        assert_eq!(store.saves.lock().unwrap().len(), 1);
    }
}
