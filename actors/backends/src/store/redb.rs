//! The embedded session store: redb, a pure-Rust ACID key-value database,
//! in one file under `SLUICE_DATA_DIR`.
//!
//! Limits: one process at a time may open the file (redb takes a lock), so it
//! serves one replica; several replicas need the Postgres store. Every write
//! is durable (fsynced) before it is acknowledged. Saves, the hot path (each
//! send and each checkpoint of every streaming answer), go to one writer
//! thread that commits whatever has queued up as one transaction (group
//! commit): a thousand concurrent streams cost a few fsyncs a second, not a
//! thousand. Other calls run on the blocking thread pool.

mod files;
mod responses;

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{MessageRecord, SessionRecord, SessionStore};
use crate::ids::ID_MAX;
use crate::{Backend, BackendError, ErrorKind};

/// session id → JSON [`SessionRecord`].
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// (user id, session id) → (): the per-user index, ordered by session id.
const USER_SESSIONS: TableDefinition<(&str, &str), ()> = TableDefinition::new("user_sessions");
/// (session id, message id) → JSON [`MessageRecord`].
const MESSAGES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("messages");
/// The store's own settings: name → value.
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");

/// Most saves committed in one transaction.
const MAX_GROUP: usize = 1024;

/// The redb-backed store. Cloning shares the database.
#[derive(Clone)]
pub struct RedbSessionStore {
    db: Arc<Database>,
    writer: Arc<Writer>,
}

/// The writer thread's queue; dropping the last handle stops the thread and
/// waits for it, so the database is closed when the store is.
struct Writer {
    saves: Option<std::sync::mpsc::Sender<Save>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.saves.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One save waiting for the writer thread.
struct Save {
    session: SessionRecord,
    messages: Vec<MessageRecord>,
    done: tokio::sync::oneshot::Sender<Result<(), BackendError>>,
}

/// The writer thread: commits every queued save in one transaction and
/// answers each once the commit is durable. Ends when the store is dropped.
fn run_writer(db: Arc<Database>, saves: std::sync::mpsc::Receiver<Save>) {
    while let Ok(first) = saves.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match saves.try_recv() {
                Ok(save) => group.push(save),
                Err(_) => break,
            }
        }
        let results = commit_group(&db, &group);
        for (save, result) in group.into_iter().zip(results) {
            let _ = save.done.send(result);
        }
    }
}

/// Writes each save's session record and messages, in order, in one
/// transaction, and returns each save's outcome: a session deleted meanwhile
/// is skipped (`Ok`), a save fenced off is skipped with its error, and a
/// failed commit fails them all.
fn commit_group(db: &Database, group: &[Save]) -> Vec<Result<(), BackendError>> {
    let mut outcomes = Vec::with_capacity(group.len());
    let committed = (|| {
        let txn = db.begin_write().map_err(err)?;
        {
            let mut sessions = txn.open_table(SESSIONS).map_err(err)?;
            let mut table = txn.open_table(MESSAGES).map_err(err)?;
            for save in group {
                let session = &save.session;
                let stored = match sessions.get(session.id.as_str()).map_err(err)? {
                    Some(bytes) => decode::<SessionRecord>(bytes.value()),
                    None => {
                        outcomes.push(Ok(()));
                        continue;
                    }
                };
                // A record that cannot be read fails its own save only.
                let stored_fence = match stored {
                    Ok(record) => record.fence,
                    Err(e) => {
                        outcomes.push(Err(e));
                        continue;
                    }
                };
                if session.fence < stored_fence {
                    outcomes.push(Err(super::fenced(session, stored_fence)));
                    continue;
                }
                sessions
                    .insert(session.id.as_str(), encode(session).as_slice())
                    .map_err(err)?;
                for m in &save.messages {
                    table
                        .insert((m.session_id.as_str(), m.id.as_str()), encode(m).as_slice())
                        .map_err(err)?;
                }
                outcomes.push(Ok(()));
            }
        }
        txn.commit().map_err(err)
    })();
    match committed {
        Ok(()) => outcomes,
        Err(e) => group.iter().map(|_| Err(e.clone())).collect(),
    }
}

/// Classifies a redb failure: a corrupt file stays corrupt, an I/O failure
/// may pass, anything else is a refused request.
fn err(e: impl Into<redb::Error>) -> BackendError {
    let e: redb::Error = e.into();
    let kind = match &e {
        redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_) => ErrorKind::Corrupt,
        redb::Error::Io(_)
        | redb::Error::PreviousIo
        | redb::Error::Backend(_)
        | redb::Error::DatabaseClosed
        | redb::Error::DatabaseAlreadyOpen
        | redb::Error::WouldBlock => ErrorKind::Unavailable,
        _ => ErrorKind::Rejected,
    };
    BackendError::new(Backend::Store, kind, e)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, BackendError> {
    serde_json::from_slice(bytes).map_err(|e| BackendError::corrupt(Backend::Store, e))
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

impl RedbSessionStore {
    /// Writes a setting (unless it is set and `replace` is false), in one
    /// transaction; the value it holds after.
    fn write_setting(
        &self,
        name: &str,
        value: &str,
        replace: bool,
    ) -> BoxFuture<'static, Result<String, BackendError>> {
        let (name, value) = (name.to_owned(), value.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let held = {
                let mut settings = txn.open_table(SETTINGS).map_err(err)?;
                let existing = settings
                    .get(name.as_str())
                    .map_err(err)?
                    .map(|v| v.value().to_owned());
                match existing {
                    Some(existing) if !replace => existing,
                    _ => {
                        settings
                            .insert(name.as_str(), value.as_str())
                            .map_err(err)?;
                        value
                    }
                }
            };
            txn.commit().map_err(err)?;
            Ok(held)
        })
    }

    /// Opens (or creates) the database file at `path` and its tables.
    pub fn open(path: &Path) -> Result<Self, BackendError> {
        let db = redb::Builder::new()
            .set_cache_size(crate::REDB_CACHE_BYTES)
            .create(path)
            .map_err(|e| {
                let e = err(e);
                BackendError::new(
                    e.backend,
                    e.kind,
                    format!("cannot open {}: {}", path.display(), e.message),
                )
            })?;
        let txn = db.begin_write().map_err(err)?;
        txn.open_table(SESSIONS).map_err(err)?;
        txn.open_table(USER_SESSIONS).map_err(err)?;
        txn.open_table(MESSAGES).map_err(err)?;
        txn.open_table(SETTINGS).map_err(err)?;
        txn.open_table(files::FILES).map_err(err)?;
        txn.open_table(files::USER_FILES).map_err(err)?;
        txn.open_table(files::UNINDEXED).map_err(err)?;
        txn.open_table(responses::RESPONSES).map_err(err)?;
        txn.open_table(responses::LINKS).map_err(err)?;
        txn.commit().map_err(err)?;
        let db = Arc::new(db);
        let (saves, queue) = std::sync::mpsc::channel();
        let for_writer = db.clone();
        let thread = std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || run_writer(for_writer, queue))
            .map_err(|e| {
                BackendError::unavailable(
                    Backend::Store,
                    format!("cannot start the store writer: {e}"),
                )
            })?;
        let writer = Arc::new(Writer {
            saves: Some(saves),
            thread: Some(thread),
        });
        Ok(Self { db, writer })
    }

    /// Runs `f` on the blocking pool with the database.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, BackendError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, BackendError>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(|e| {
                    BackendError::unavailable(Backend::Store, format!("store task failed: {e}"))
                })?
        })
    }
}

impl SessionStore for RedbSessionStore {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn create_session(
        &self,
        session: SessionRecord,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut sessions = txn.open_table(SESSIONS).map_err(err)?;
                sessions
                    .insert(session.id.as_str(), encode(&session).as_slice())
                    .map_err(err)?;
                let mut index = txn.open_table(USER_SESSIONS).map_err(err)?;
                index
                    .insert((session.user_id.as_str(), session.id.as_str()), ())
                    .map_err(err)?;
            }
            txn.commit().map_err(err)
        })
    }

    fn create_session_within(
        &self,
        session: SessionRecord,
        max_per_user: u64,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut index = txn.open_table(USER_SESSIONS).map_err(err)?;
                let user = session.user_id.as_str();
                let held = index
                    .range((user, "")..=(user, ID_MAX))
                    .map_err(err)?
                    .take(usize::try_from(max_per_user).unwrap_or(usize::MAX))
                    .count() as u64;
                if held >= max_per_user {
                    return Ok(false);
                }
                index.insert((user, session.id.as_str()), ()).map_err(err)?;
                let mut sessions = txn.open_table(SESSIONS).map_err(err)?;
                sessions
                    .insert(session.id.as_str(), encode(&session).as_slice())
                    .map_err(err)?;
            }
            txn.commit().map_err(err)?;
            Ok(true)
        })
    }

    fn claim_session(
        &self,
        id: &str,
    ) -> BoxFuture<'static, Result<Option<SessionRecord>, BackendError>> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let claimed = {
                let mut sessions = txn.open_table(SESSIONS).map_err(err)?;
                let record = match sessions.get(id.as_str()).map_err(err)? {
                    Some(bytes) => Some(decode::<SessionRecord>(bytes.value())?),
                    None => None,
                };
                match record {
                    Some(mut record) => {
                        record.fence += 1;
                        sessions
                            .insert(id.as_str(), encode(&record).as_slice())
                            .map_err(err)?;
                        Some(record)
                    }
                    None => None,
                }
            };
            txn.commit().map_err(err)?;
            Ok(claimed)
        })
    }

    fn get_session(
        &self,
        id: &str,
    ) -> BoxFuture<'static, Result<Option<SessionRecord>, BackendError>> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let sessions = txn.open_table(SESSIONS).map_err(err)?;
            match sessions.get(id.as_str()).map_err(err)? {
                Some(bytes) => decode(bytes.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    fn list_sessions(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> BoxFuture<'static, Result<Vec<SessionRecord>, BackendError>> {
        let user_id = user_id.to_owned();
        let before = before.unwrap_or(ID_MAX).to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let index = txn.open_table(USER_SESSIONS).map_err(err)?;
            let sessions = txn.open_table(SESSIONS).map_err(err)?;
            let mut out = Vec::new();
            let range = index
                .range((user_id.as_str(), "")..(user_id.as_str(), before.as_str()))
                .map_err(err)?;
            for entry in range.rev().take(limit) {
                let (key, _) = entry.map_err(err)?;
                let (_, session_id) = key.value();
                if let Some(bytes) = sessions.get(session_id).map_err(err)? {
                    out.push(decode(bytes.value())?);
                }
            }
            Ok(out)
        })
    }

    fn setting(&self, name: &str) -> BoxFuture<'static, Result<Option<String>, BackendError>> {
        let name = name.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let settings = txn.open_table(SETTINGS).map_err(err)?;
            let value = settings.get(name.as_str()).map_err(err)?;
            Ok(value.map(|v| v.value().to_owned()))
        })
    }

    fn init_setting(
        &self,
        name: &str,
        value: &str,
    ) -> BoxFuture<'static, Result<String, BackendError>> {
        self.write_setting(name, value, false)
    }

    fn set_setting(&self, name: &str, value: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let written = self.write_setting(name, value, true);
        Box::pin(async move { written.await.map(drop) })
    }

    fn delete_session(&self, id: &str) -> BoxFuture<'static, Result<bool, BackendError>> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let existed = {
                let mut sessions = txn.open_table(SESSIONS).map_err(err)?;
                let removed = sessions.remove(id.as_str()).map_err(err)?;
                match removed {
                    Some(bytes) => {
                        let record: SessionRecord = decode(bytes.value())?;
                        drop(bytes);
                        let mut index = txn.open_table(USER_SESSIONS).map_err(err)?;
                        index
                            .remove((record.user_id.as_str(), id.as_str()))
                            .map_err(err)?;
                        let mut messages = txn.open_table(MESSAGES).map_err(err)?;
                        messages
                            .retain_in((id.as_str(), "")..=(id.as_str(), ID_MAX), |_, _| false)
                            .map_err(err)?;
                        true
                    }
                    None => false,
                }
            };
            txn.commit().map_err(err)?;
            Ok(existed)
        })
    }

    fn messages(
        &self,
        session_id: &str,
    ) -> BoxFuture<'static, Result<Vec<MessageRecord>, BackendError>> {
        let session_id = session_id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let messages = txn.open_table(MESSAGES).map_err(err)?;
            let range = messages
                .range((session_id.as_str(), "")..=(session_id.as_str(), ID_MAX))
                .map_err(err)?;
            range
                .map(|entry| {
                    let (_, bytes) = entry.map_err(err)?;
                    decode(bytes.value())
                })
                .collect()
        })
    }

    fn save(
        &self,
        session: SessionRecord,
        messages: Vec<MessageRecord>,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let queued = self.writer.saves.as_ref().ok_or(()).and_then(|saves| {
            saves
                .send(Save {
                    session,
                    messages,
                    done,
                })
                .map_err(|_| ())
        });
        let stopped = || BackendError::unavailable(Backend::Store, "the store writer stopped");
        Box::pin(async move {
            queued.map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        })
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        self.blocking(|db| {
            let txn = db.begin_read().map_err(err)?;
            txn.open_table(SESSIONS).map_err(err)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn redb_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbSessionStore::open(&dir.path().join("sluice.redb")).unwrap();
        crate::store::conformance::run(store.clone()).await;
        crate::responses::conformance::run(store).await;
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.redb");
        {
            let store = RedbSessionStore::open(&path).unwrap();
            store
                .create_session(crate::store::conformance::session("01", "u"))
                .await
                .unwrap();
        }
        let store = RedbSessionStore::open(&path).unwrap();
        assert!(store.get_session("01").await.unwrap().is_some());
    }
}
