//! Files' metadata in the PostgreSQL store (see [`crate::files`]). Claims
//! for indexing are timed by the database's clock, so replicas whose
//! clocks differ still agree on when a claim expires.

use std::time::Duration;

use futures::future::BoxFuture;
use sluice_protocol::FileStatus;
use tokio_postgres::Row;

use super::{PostgresSessionStore, enum_from, enum_text, err, pool_err, rfc3339, timestamp};
use crate::BackendError;
use crate::files::{FileRecord, FileStore, IndexOutcome};

fn file_from(row: &Row) -> Result<FileRecord, BackendError> {
    Ok(FileRecord {
        id: row.get("id"),
        user_id: row.get("user_id"),
        filename: row.get("filename"),
        bytes: row.get::<_, i64>("bytes") as u64,
        content_type: row.get("content_type"),
        sha256: row.get("sha256"),
        purpose: row.get("purpose"),
        status: enum_from::<FileStatus>(row.get("status"))?,
        error: row.get("error"),
        chunks: row.get::<_, i32>("chunks") as u32,
        created_at: rfc3339(row.get("created_at")),
    })
}

impl FileStore for PostgresSessionStore {
    fn create_file(
        &self,
        file: FileRecord,
        max_user_bytes: u64,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let txn = client.transaction().await.map_err(err)?;
            if max_user_bytes > 0 {
                // One user's files are inserted one at a time, so two
                // uploads finishing at once cannot both fit in what is left.
                txn.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended('sluice-files:' || $1, 0))",
                    &[&file.user_id],
                )
                .await
                .map_err(err)?;
                let row = txn
                    .query_one(
                        "SELECT COALESCE(sum(bytes), 0)::bigint FROM files WHERE user_id = $1",
                        &[&file.user_id],
                    )
                    .await
                    .map_err(err)?;
                let used: i64 = row.get(0);
                if (used.max(0) as u64).saturating_add(file.bytes) > max_user_bytes {
                    return Ok(false);
                }
            }
            txn.execute(
                "INSERT INTO files (id, user_id, filename, bytes, content_type, sha256, purpose,
                                        status, error, chunks, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &file.id,
                    &file.user_id,
                    &file.filename,
                    &(file.bytes as i64),
                    &file.content_type,
                    &file.sha256,
                    &file.purpose,
                    &enum_text(&file.status),
                    &file.error,
                    &(file.chunks as i32),
                    &timestamp(&file.created_at)?,
                ],
            )
            .await
            .map_err(err)?;
            txn.commit().await.map_err(err)?;
            Ok(true)
        })
    }

    fn get_file(&self, id: &str) -> BoxFuture<'static, Result<Option<FileRecord>, BackendError>> {
        let pool = self.pool.clone();
        let id = id.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt("SELECT * FROM files WHERE id = $1", &[&id])
                .await
                .map_err(err)?;
            row.as_ref().map(file_from).transpose()
        })
    }

    fn list_files(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> BoxFuture<'static, Result<Vec<FileRecord>, BackendError>> {
        let pool = self.pool.clone();
        let user_id = user_id.to_owned();
        let before = before.map(str::to_owned);
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT * FROM files WHERE user_id = $1 AND ($2::text IS NULL OR id < $2)
                     ORDER BY id DESC LIMIT $3",
                    &[&user_id, &before, &(limit as i64)],
                )
                .await
                .map_err(err)?;
            rows.iter().map(file_from).collect()
        })
    }

    fn used_bytes(&self, user_id: &str) -> BoxFuture<'static, Result<u64, BackendError>> {
        let pool = self.pool.clone();
        let user_id = user_id.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_one(
                    "SELECT COALESCE(sum(bytes), 0)::bigint FROM files WHERE user_id = $1",
                    &[&user_id],
                )
                .await
                .map_err(err)?;
            let used: i64 = row.get(0);
            Ok(used.max(0) as u64)
        })
    }

    fn delete_file(&self, id: &str) -> BoxFuture<'static, Result<bool, BackendError>> {
        let pool = self.pool.clone();
        let id = id.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let deleted = client
                .execute("DELETE FROM files WHERE id = $1", &[&id])
                .await
                .map_err(err)?;
            Ok(deleted > 0)
        })
    }

    fn claim_indexing(
        &self,
        id: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<Option<u32>, BackendError>> {
        let pool = self.pool.clone();
        let id = id.to_owned();
        let holder = holder.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            // One UPDATE: its row lock makes the check and the claim one step.
            let row = client
                .query_opt(
                    "UPDATE files SET claimed_by = $2,
                         claimed_until = now() + $3 * interval '1 millisecond',
                         index_attempts = index_attempts + 1
                     WHERE id = $1 AND status = 'stored'
                       AND (claimed_until IS NULL OR claimed_until <= now())
                     RETURNING index_attempts",
                    &[&id, &holder, &(ttl.as_millis() as f64)],
                )
                .await
                .map_err(err)?;
            Ok(row.map(|r| r.get::<_, i32>(0) as u32))
        })
    }

    fn renew_indexing(
        &self,
        id: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        let pool = self.pool.clone();
        let id = id.to_owned();
        let holder = holder.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let renewed = client
                .execute(
                    "UPDATE files SET claimed_until = now() + $3 * interval '1 millisecond'
                     WHERE id = $1 AND status = 'stored' AND claimed_by = $2",
                    &[&id, &holder, &(ttl.as_millis() as f64)],
                )
                .await
                .map_err(err)?;
            Ok(renewed > 0)
        })
    }

    fn release_indexing(
        &self,
        id: &str,
        holder: &str,
        retry_after: Duration,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let pool = self.pool.clone();
        let id = id.to_owned();
        let holder = holder.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute(
                    "UPDATE files SET claimed_until = now() + $3 * interval '1 millisecond'
                     WHERE id = $1 AND claimed_by = $2",
                    &[&id, &holder, &(retry_after.as_millis() as f64)],
                )
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn release_claims_of(&self, holder: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let pool = self.pool.clone();
        let holder = holder.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute(
                    "UPDATE files SET claimed_until = now()
                     WHERE status = 'stored' AND claimed_by = $1",
                    &[&holder],
                )
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn finish_indexing(
        &self,
        id: &str,
        outcome: IndexOutcome,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        let pool = self.pool.clone();
        let id = id.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let (status, chunks, error) = match outcome {
                IndexOutcome::Indexed { chunks } => {
                    (FileStatus::Indexed, Some(chunks as i32), None)
                }
                IndexOutcome::Failed { reason } => (FileStatus::Failed, None, Some(reason)),
            };
            let updated = client
                .execute(
                    "UPDATE files SET status = $2, chunks = COALESCE($3, chunks), error = $4,
                         claimed_by = NULL, claimed_until = NULL
                     WHERE id = $1",
                    &[&id, &enum_text(&status), &chunks, &error],
                )
                .await
                .map_err(err)?;
            Ok(updated > 0)
        })
    }

    fn unindexed(&self, limit: usize) -> BoxFuture<'static, Result<Vec<FileRecord>, BackendError>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT * FROM files WHERE status = 'stored'
                       AND (claimed_until IS NULL OR claimed_until <= now())
                     ORDER BY id LIMIT $1",
                    &[&(limit as i64)],
                )
                .await
                .map_err(err)?;
            rows.iter().map(file_from).collect()
        })
    }
}
