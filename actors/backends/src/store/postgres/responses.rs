//! Stored responses in the PostgreSQL store (see [`crate::responses`]).

use futures::future::BoxFuture;
use tokio_postgres::Row;

use super::{PostgresSessionStore, err, pool_err, rfc3339, timestamp};
use crate::BackendError;
use crate::responses::{ResponseRecord, ResponseStore};

fn response_from(row: &Row) -> ResponseRecord {
    ResponseRecord {
        id: row.get("id"),
        user_id: row.get("user_id"),
        parent: row.get("parent"),
        turns: row.get::<_, i32>("turns") as u32,
        bytes: row.get::<_, i64>("bytes") as u64,
        items: row.get("items"),
        response: row.get("response"),
        created_at: rfc3339(row.get("created_at")),
    }
}

impl ResponseStore for PostgresSessionStore {
    fn create_response(
        &self,
        response: ResponseRecord,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute(
                    "INSERT INTO responses (id, user_id, parent, turns, bytes, items, response, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &response.id,
                        &response.user_id,
                        &response.parent,
                        &i32::try_from(response.turns).unwrap_or(i32::MAX),
                        &(response.bytes as i64),
                        &response.items,
                        &response.response,
                        &timestamp(&response.created_at)?,
                    ],
                )
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn get_response(
        &self,
        id: &str,
    ) -> BoxFuture<'static, Result<Option<ResponseRecord>, BackendError>> {
        let pool = self.pool.clone();
        let id = id.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt("SELECT * FROM responses WHERE id = $1", &[&id])
                .await
                .map_err(err)?;
            Ok(row.as_ref().map(response_from))
        })
    }

    fn conversation(
        &self,
        id: &str,
        max: u32,
    ) -> BoxFuture<'static, Result<Vec<String>, BackendError>> {
        let pool = self.pool.clone();
        let id = id.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            // One round trip for the whole chain, newest to oldest, then
            // turned around.
            let rows = client
                .query(
                    "WITH RECURSIVE chain (parent, items, depth) AS (
                         SELECT parent, items, 1 FROM responses WHERE id = $1 AND $2 > 0
                         UNION ALL
                         SELECT r.parent, r.items, c.depth + 1
                           FROM responses r JOIN chain c ON r.id = c.parent
                          WHERE c.depth < $2
                     )
                     SELECT items FROM chain ORDER BY depth DESC",
                    &[&id, &i32::try_from(max).unwrap_or(i32::MAX)],
                )
                .await
                .map_err(err)?;
            Ok(rows.iter().map(|row| row.get("items")).collect())
        })
    }

    fn delete_response(&self, id: &str) -> BoxFuture<'static, Result<bool, BackendError>> {
        let pool = self.pool.clone();
        let id = id.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let deleted = client
                .execute("DELETE FROM responses WHERE id = $1", &[&id])
                .await
                .map_err(err)?;
            Ok(deleted > 0)
        })
    }
}
