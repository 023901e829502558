//! Files' metadata in the redb store (see [`crate::files`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use sluice_protocol::FileStatus;

use super::{RedbSessionStore, decode, encode, err};
use crate::BackendError;
use crate::files::{FileRecord, FileStore, IndexOutcome};
use crate::ids::ID_MAX;

/// file id → JSON [`FileRecord`].
pub(super) const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
/// (user id, file id) → (): the per-user index, ordered by file id.
pub(super) const USER_FILES: TableDefinition<(&str, &str), ()> = TableDefinition::new("user_files");
/// file id → its claim for indexing: (until when, in Unix ms, 0 if never
/// claimed; by whom, empty if never; attempts so far). The files still
/// `stored`, oldest first.
pub(super) const UNINDEXED: TableDefinition<&str, (u64, &str, u32)> =
    TableDefinition::new("indexing_claims");

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

impl FileStore for RedbSessionStore {
    fn create_file(
        &self,
        file: FileRecord,
        max_user_bytes: u64,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut files = txn.open_table(FILES).map_err(err)?;
                if max_user_bytes > 0 {
                    let index = txn.open_table(USER_FILES).map_err(err)?;
                    let range = index
                        .range((file.user_id.as_str(), "")..=(file.user_id.as_str(), ID_MAX))
                        .map_err(err)?;
                    let mut used = file.bytes;
                    for entry in range {
                        let (key, _) = entry.map_err(err)?;
                        if let Some(bytes) = files.get(key.value().1).map_err(err)? {
                            let record: FileRecord = decode(bytes.value())?;
                            used = used.saturating_add(record.bytes);
                        }
                    }
                    if used > max_user_bytes {
                        return Ok(false);
                    }
                }
                files
                    .insert(file.id.as_str(), encode(&file).as_slice())
                    .map_err(err)?;
                let mut index = txn.open_table(USER_FILES).map_err(err)?;
                index
                    .insert((file.user_id.as_str(), file.id.as_str()), ())
                    .map_err(err)?;
                if file.status == FileStatus::Stored {
                    let mut unindexed = txn.open_table(UNINDEXED).map_err(err)?;
                    unindexed
                        .insert(file.id.as_str(), (0, "", 0))
                        .map_err(err)?;
                }
            }
            txn.commit().map_err(err)?;
            Ok(true)
        })
    }

    fn get_file(&self, id: &str) -> BoxFuture<'static, Result<Option<FileRecord>, BackendError>> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let files = txn.open_table(FILES).map_err(err)?;
            match files.get(id.as_str()).map_err(err)? {
                Some(bytes) => decode(bytes.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    fn list_files(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> BoxFuture<'static, Result<Vec<FileRecord>, BackendError>> {
        let user_id = user_id.to_owned();
        let before = before.unwrap_or(ID_MAX).to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let index = txn.open_table(USER_FILES).map_err(err)?;
            let files = txn.open_table(FILES).map_err(err)?;
            let range = index
                .range((user_id.as_str(), "")..(user_id.as_str(), before.as_str()))
                .map_err(err)?;
            let mut out = Vec::new();
            for entry in range.rev().take(limit) {
                let (key, _) = entry.map_err(err)?;
                if let Some(bytes) = files.get(key.value().1).map_err(err)? {
                    out.push(decode(bytes.value())?);
                }
            }
            Ok(out)
        })
    }

    fn used_bytes(&self, user_id: &str) -> BoxFuture<'static, Result<u64, BackendError>> {
        let user_id = user_id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let index = txn.open_table(USER_FILES).map_err(err)?;
            let files = txn.open_table(FILES).map_err(err)?;
            let range = index
                .range((user_id.as_str(), "")..=(user_id.as_str(), ID_MAX))
                .map_err(err)?;
            let mut used = 0u64;
            for entry in range {
                let (key, _) = entry.map_err(err)?;
                if let Some(bytes) = files.get(key.value().1).map_err(err)? {
                    let record: FileRecord = decode(bytes.value())?;
                    used = used.saturating_add(record.bytes);
                }
            }
            Ok(used)
        })
    }

    fn delete_file(&self, id: &str) -> BoxFuture<'static, Result<bool, BackendError>> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let existed = {
                let mut files = txn.open_table(FILES).map_err(err)?;
                let removed = files.remove(id.as_str()).map_err(err)?;
                match removed {
                    Some(bytes) => {
                        let record: FileRecord = decode(bytes.value())?;
                        drop(bytes);
                        let mut index = txn.open_table(USER_FILES).map_err(err)?;
                        index
                            .remove((record.user_id.as_str(), id.as_str()))
                            .map_err(err)?;
                        let mut unindexed = txn.open_table(UNINDEXED).map_err(err)?;
                        unindexed.remove(id.as_str()).map_err(err)?;
                        true
                    }
                    None => false,
                }
            };
            txn.commit().map_err(err)?;
            Ok(existed)
        })
    }

    fn claim_indexing(
        &self,
        id: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<Option<u32>, BackendError>> {
        let id = id.to_owned();
        let holder = holder.to_owned();
        self.update_claim(id, move |now, (until, _, attempts)| {
            (until <= now).then(|| {
                (
                    (now + ttl.as_millis() as u64, holder.clone(), attempts + 1),
                    attempts + 1,
                )
            })
        })
    }

    fn renew_indexing(
        &self,
        id: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        let id = id.to_owned();
        let holder = holder.to_owned();
        let renewed = self.update_claim(id, move |now, (_, by, attempts)| {
            (by == holder).then(|| ((now + ttl.as_millis() as u64, by, attempts), ()))
        });
        Box::pin(async move { Ok(renewed.await?.is_some()) })
    }

    fn release_indexing(
        &self,
        id: &str,
        holder: &str,
        retry_after: Duration,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let id = id.to_owned();
        let holder = holder.to_owned();
        let released = self.update_claim(id, move |now, (_, by, attempts)| {
            (by == holder).then(|| ((now + retry_after.as_millis() as u64, by, attempts), ()))
        });
        Box::pin(async move { released.await.map(drop) })
    }

    fn release_claims_of(&self, holder: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let holder = holder.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut unindexed = txn.open_table(UNINDEXED).map_err(err)?;
                let mut mine = Vec::new();
                for entry in unindexed.iter().map_err(err)? {
                    let (id, claim) = entry.map_err(err)?;
                    let (_, by, attempts) = claim.value();
                    if by == holder {
                        mine.push((id.value().to_owned(), attempts));
                    }
                }
                for (id, attempts) in mine {
                    unindexed
                        .insert(id.as_str(), (0, holder.as_str(), attempts))
                        .map_err(err)?;
                }
            }
            txn.commit().map_err(err)
        })
    }

    fn finish_indexing(
        &self,
        id: &str,
        outcome: IndexOutcome,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        let id = id.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let exists = {
                let mut files = txn.open_table(FILES).map_err(err)?;
                let record = match files.get(id.as_str()).map_err(err)? {
                    Some(bytes) => Some(decode::<FileRecord>(bytes.value())?),
                    None => None,
                };
                match record {
                    Some(mut record) => {
                        match outcome {
                            IndexOutcome::Indexed { chunks } => {
                                record.status = FileStatus::Indexed;
                                record.chunks = chunks;
                                record.error = None;
                            }
                            IndexOutcome::Failed { reason } => {
                                record.status = FileStatus::Failed;
                                record.error = Some(reason);
                            }
                        }
                        files
                            .insert(id.as_str(), encode(&record).as_slice())
                            .map_err(err)?;
                        let mut unindexed = txn.open_table(UNINDEXED).map_err(err)?;
                        unindexed.remove(id.as_str()).map_err(err)?;
                        true
                    }
                    None => false,
                }
            };
            txn.commit().map_err(err)?;
            Ok(exists)
        })
    }

    fn unindexed(&self, limit: usize) -> BoxFuture<'static, Result<Vec<FileRecord>, BackendError>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(err)?;
            let unindexed = txn.open_table(UNINDEXED).map_err(err)?;
            let files = txn.open_table(FILES).map_err(err)?;
            let now = now_ms();
            let mut out = Vec::new();
            for entry in unindexed.iter().map_err(err)? {
                if out.len() == limit {
                    break;
                }
                let (id, claim) = entry.map_err(err)?;
                if claim.value().0 > now {
                    continue;
                }
                if let Some(bytes) = files.get(id.value()).map_err(err)? {
                    out.push(decode(bytes.value())?);
                }
            }
            Ok(out)
        })
    }
}

impl RedbSessionStore {
    /// Changes a stored file's claim in one write transaction: `change`
    /// gets the time (Unix ms) and the claim (until, holder, attempts), and
    /// answers the new claim with a result, or `None` to leave it.
    fn update_claim<T: Send + 'static>(
        &self,
        id: String,
        change: impl FnOnce(u64, (u64, String, u32)) -> Option<((u64, String, u32), T)> + Send + 'static,
    ) -> BoxFuture<'static, Result<Option<T>, BackendError>> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(err)?;
            let answer = {
                let mut unindexed = txn.open_table(UNINDEXED).map_err(err)?;
                let claim = unindexed.get(id.as_str()).map_err(err)?.map(|c| {
                    let (until, by, attempts) = c.value();
                    (until, by.to_owned(), attempts)
                });
                match claim.and_then(|claim| change(now_ms(), claim)) {
                    Some(((until, by, attempts), answer)) => {
                        unindexed
                            .insert(id.as_str(), (until, by.as_str(), attempts))
                            .map_err(err)?;
                        Some(answer)
                    }
                    None => None,
                }
            };
            txn.commit().map_err(err)?;
            Ok(answer)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn redb_file_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbSessionStore::open(&dir.path().join("sluice.redb")).unwrap();
        crate::files::conformance::run(store).await;
    }
}
