//! The production session store: PostgreSQL through a deadpool-postgres pool.
//!
//! The schema is embedded in the binary and migrated at start. Migrations run
//! in one transaction holding an advisory lock, so several replicas starting
//! at once apply each migration exactly once. Messages are keyed by
//! (session, id) and deleted with their session (`ON DELETE CASCADE`); a
//! `client_msg_id` is unique per session.

mod files;
mod responses;

use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::future::BoxFuture;
use sluice_protocol::{MessageStatus, Role, Usage};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::{NoTls, Row};

use super::{MessageRecord, SessionRecord, SessionStore};
use crate::{Backend, BackendError, ErrorKind};

/// Held (as a transaction-scoped advisory lock) while migrating.
const MIGRATION_LOCK: i64 = 0x5106_ce00_0000_0001;

/// Longest wait for a pooled connection, a new one, or a recycle check.
const POOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest a statement may run (the server cancels it past this): a hung
/// statement or a lock held elsewhere fails the call instead of holding
/// up a session for good. Migrations are exempt.
const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The schema, in order. Never edit an applied migration: add a new one.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE sessions (
        id text PRIMARY KEY,
        user_id text NOT NULL,
        title text NOT NULL,
        model text NOT NULL,
        system_prompt text,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        last_seq bigint NOT NULL DEFAULT 0
    );
    CREATE INDEX sessions_by_user ON sessions (user_id, id DESC);
    CREATE TABLE messages (
        session_id text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        id text NOT NULL,
        role text NOT NULL,
        content text NOT NULL,
        attachments text[] NOT NULL DEFAULT '{}',
        status text NOT NULL,
        created_at timestamptz NOT NULL,
        client_msg_id text,
        generation_id text,
        prompt_tokens bigint,
        completion_tokens bigint,
        PRIMARY KEY (session_id, id)
    );
    CREATE UNIQUE INDEX messages_client_msg_id ON messages (session_id, client_msg_id)
        WHERE client_msg_id IS NOT NULL;",
    ),
    // The owner's claim (see the store's fencing rule).
    (
        2,
        "ALTER TABLE sessions ADD COLUMN fence bigint NOT NULL DEFAULT 0;",
    ),
    // Uploaded files' metadata, and their claims for indexing.
    (
        3,
        "CREATE TABLE files (
        id text PRIMARY KEY,
        user_id text NOT NULL,
        filename text NOT NULL,
        bytes bigint NOT NULL,
        content_type text NOT NULL,
        sha256 text NOT NULL,
        purpose text NOT NULL,
        status text NOT NULL,
        error text,
        chunks integer NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL,
        claimed_by text,
        claimed_until timestamptz,
        index_attempts integer NOT NULL DEFAULT 0
    );
    CREATE INDEX files_by_user ON files (user_id, id DESC);
    CREATE INDEX files_unindexed ON files (id) WHERE status = 'stored';",
    ),
    // The agent: the tools a session may use, and the call a tool message
    // answers (a `ToolRecord` as JSON).
    (
        4,
        "ALTER TABLE sessions ADD COLUMN tools text[];
    ALTER TABLE messages ADD COLUMN tool text;",
    ),
    // The Responses API: each stored response holds its own turn and names
    // the one it continues (see `crate::responses`).
    (
        5,
        "CREATE TABLE responses (
        id text PRIMARY KEY,
        user_id text NOT NULL,
        parent text,
        turns integer NOT NULL,
        bytes bigint NOT NULL,
        items text NOT NULL,
        response text NOT NULL,
        created_at timestamptz NOT NULL
    );",
    ),
    // The store's own settings (the encryption key check).
    (
        6,
        "CREATE TABLE settings (name text PRIMARY KEY, value text NOT NULL);",
    ),
];

/// The PostgreSQL store. Cloning shares the pool.
#[derive(Clone)]
pub struct PostgresSessionStore {
    pool: Pool,
}

/// Classifies a PostgreSQL failure by its SQLSTATE class: a lost
/// connection (08), a transaction to run again (40), a server out of
/// resources (53), shutting down (57) or failing (58) can pass; anything
/// else the server refused is refused again. No SQLSTATE means the
/// connection itself failed.
fn err(e: tokio_postgres::Error) -> BackendError {
    let retryable = match e.code() {
        None => true,
        Some(state) => matches!(&state.code()[..2], "08" | "40" | "53" | "57" | "58"),
    };
    let kind = if retryable {
        ErrorKind::Unavailable
    } else {
        ErrorKind::Rejected
    };
    BackendError::new(Backend::Store, kind, e)
}

/// A pooled connection could not be had: the database is down or busy.
fn pool_err(e: deadpool_postgres::PoolError) -> BackendError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => err(e),
        other => BackendError::unavailable(Backend::Store, other),
    }
}

fn corrupt(message: String) -> BackendError {
    BackendError::corrupt(Backend::Store, message)
}

fn timestamp(text: &str) -> Result<OffsetDateTime, BackendError> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| BackendError::rejected(Backend::Store, format!("bad timestamp {text:?}: {e}")))
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .expect("RFC 3339 formatting of a stored time cannot fail")
}

/// The wire name of a serde enum (`Role`, `MessageStatus`), stored as text.
fn enum_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .expect("unit enum serialises to a string")
}

fn enum_from<T: serde::de::DeserializeOwned>(text: String) -> Result<T, BackendError> {
    serde_json::from_value(serde_json::Value::String(text.clone()))
        .map_err(|_| corrupt(format!("unknown stored value {text:?}")))
}

fn session_from(row: &Row) -> Result<SessionRecord, BackendError> {
    Ok(SessionRecord {
        id: row.get("id"),
        user_id: row.get("user_id"),
        title: row.get("title"),
        model: row.get("model"),
        system_prompt: row.get("system_prompt"),
        created_at: rfc3339(row.get("created_at")),
        updated_at: rfc3339(row.get("updated_at")),
        last_seq: row.get::<_, i64>("last_seq") as u64,
        fence: row.get::<_, i64>("fence") as u64,
        tools: row.get("tools"),
    })
}

fn message_from(row: &Row) -> Result<MessageRecord, BackendError> {
    let prompt: Option<i64> = row.get("prompt_tokens");
    let completion: Option<i64> = row.get("completion_tokens");
    Ok(MessageRecord {
        id: row.get("id"),
        session_id: row.get("session_id"),
        role: enum_from::<Role>(row.get("role"))?,
        content: row.get("content"),
        attachments: row.get("attachments"),
        status: enum_from::<MessageStatus>(row.get("status"))?,
        created_at: rfc3339(row.get("created_at")),
        client_msg_id: row.get("client_msg_id"),
        generation_id: row.get("generation_id"),
        usage: prompt.zip(completion).map(|(p, c)| Usage {
            prompt_tokens: p as u64,
            completion_tokens: c as u64,
        }),
        tool: row
            .get::<_, Option<&str>>("tool")
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| corrupt(format!("a stored tool call does not parse: {e}")))?,
    })
}

impl PostgresSessionStore {
    /// Builds the pool for `url` and applies the migrations.
    pub async fn connect(url: &str, max_connections: usize) -> Result<Self, BackendError> {
        let config = tokio_postgres::Config::from_str(url).map_err(|e| {
            BackendError::rejected(Backend::Store, format!("bad Postgres URL: {e}"))
        })?;
        // A timeout the URL sets itself (`options=-c statement_timeout=...`)
        // is the operator's; otherwise each new connection gets ours, set
        // with SET rather than a startup option, which PgBouncer refuses.
        let own_timeout = config
            .get_options()
            .is_some_and(|o| o.contains("statement_timeout"));
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // Bounded waits: with the database down, a request fails fast with
        // `overloaded` instead of hanging.
        let set_timeout = format!("SET statement_timeout = {}", STATEMENT_TIMEOUT.as_millis());
        let pool = Pool::builder(manager)
            .post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
                let set_timeout = set_timeout.clone();
                Box::pin(async move {
                    if !own_timeout {
                        client
                            .simple_query(&set_timeout)
                            .await
                            .map_err(deadpool_postgres::HookError::Backend)?;
                    }
                    Ok(())
                })
            }))
            .max_size(max_connections)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| BackendError::rejected(Backend::Store, e))?;
        let store = Self { pool };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations not yet applied, once, whatever the number of
    /// replicas starting together.
    pub async fn migrate(&self) -> Result<(), BackendError> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let tx = client.transaction().await.map_err(err)?;
        tx.batch_execute("SET LOCAL statement_timeout = 0")
            .await
            .map_err(err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(err)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS sluice_migrations (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(err)?;
        let applied: Vec<i32> = tx
            .query("SELECT version FROM sluice_migrations", &[])
            .await
            .map_err(err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(|e| {
                let e = err(e);
                BackendError::new(
                    e.backend,
                    e.kind,
                    format!("migration {version}: {}", e.message),
                )
            })?;
            tx.execute(
                "INSERT INTO sluice_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(err)?;
            tracing::info!(version, "applied a database migration");
        }
        tx.commit().await.map_err(err)
    }
}

/// Inserts `session`'s row, on a connection or in a transaction.
async fn insert_session(
    client: &impl deadpool_postgres::GenericClient,
    session: &SessionRecord,
) -> Result<(), BackendError> {
    client
        .execute(
            "INSERT INTO sessions (id, user_id, title, model, system_prompt, created_at, updated_at, last_seq, fence, tools)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            &[
                &session.id,
                &session.user_id,
                &session.title,
                &session.model,
                &session.system_prompt,
                &timestamp(&session.created_at)?,
                &timestamp(&session.updated_at)?,
                &(session.last_seq as i64),
                &(session.fence as i64),
                &session.tools,
            ],
        )
        .await
        .map_err(err)?;
    Ok(())
}

impl SessionStore for PostgresSessionStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn create_session(
        &self,
        session: SessionRecord,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            insert_session(&client, &session).await?;
            Ok(())
        })
    }

    fn create_session_within(
        &self,
        session: SessionRecord,
        max_per_user: u64,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        let pool = self.pool.clone();
        let max = i64::try_from(max_per_user).unwrap_or(i64::MAX);
        Box::pin(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let txn = client.transaction().await.map_err(err)?;
            // One user's sessions are created one at a time, so two creates
            // at once cannot both take the last place.
            txn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('sluice-sessions:' || $1, 0))",
                &[&session.user_id],
            )
            .await
            .map_err(err)?;
            let row = txn
                .query_one(
                    "SELECT count(*) FROM (SELECT 1 FROM sessions WHERE user_id = $1 LIMIT $2) s",
                    &[&session.user_id, &max],
                )
                .await
                .map_err(err)?;
            let held: i64 = row.get(0);
            if held >= max {
                return Ok(false);
            }
            insert_session(&txn, &session).await?;
            txn.commit().await.map_err(err)?;
            Ok(true)
        })
    }

    fn claim_session(
        &self,
        id: &str,
    ) -> BoxFuture<'static, Result<Option<SessionRecord>, BackendError>> {
        let pool = self.pool.clone();
        let id = id.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt(
                    "UPDATE sessions SET fence = fence + 1 WHERE id = $1 RETURNING *",
                    &[&id],
                )
                .await
                .map_err(err)?;
            row.as_ref().map(session_from).transpose()
        })
    }

    fn get_session(
        &self,
        id: &str,
    ) -> BoxFuture<'static, Result<Option<SessionRecord>, BackendError>> {
        let pool = self.pool.clone();
        let id = id.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt("SELECT * FROM sessions WHERE id = $1", &[&id])
                .await
                .map_err(err)?;
            row.as_ref().map(session_from).transpose()
        })
    }

    fn list_sessions(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> BoxFuture<'static, Result<Vec<SessionRecord>, BackendError>> {
        let pool = self.pool.clone();
        let user_id = user_id.to_owned();
        let before = before.map(str::to_owned);
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT * FROM sessions WHERE user_id = $1 AND ($2::text IS NULL OR id < $2)
                     ORDER BY id DESC LIMIT $3",
                    &[&user_id, &before, &(limit as i64)],
                )
                .await
                .map_err(err)?;
            rows.iter().map(session_from).collect()
        })
    }

    fn setting(&self, name: &str) -> BoxFuture<'static, Result<Option<String>, BackendError>> {
        let pool = self.pool.clone();
        let name = name.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let row = client
                .query_opt("SELECT value FROM settings WHERE name = $1", &[&name])
                .await
                .map_err(err)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn init_setting(
        &self,
        name: &str,
        value: &str,
    ) -> BoxFuture<'static, Result<String, BackendError>> {
        let pool = self.pool.clone();
        let (name, value) = (name.to_owned(), value.to_owned());
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute(
                    "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
                    &[&name, &value],
                )
                .await
                .map_err(err)?;
            let row = client
                .query_one("SELECT value FROM settings WHERE name = $1", &[&name])
                .await
                .map_err(err)?;
            Ok(row.get(0))
        })
    }

    fn set_setting(&self, name: &str, value: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let pool = self.pool.clone();
        let (name, value) = (name.to_owned(), value.to_owned());
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            client
                .execute(
                    "INSERT INTO settings (name, value) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                    &[&name, &value],
                )
                .await
                .map_err(err)?;
            Ok(())
        })
    }

    fn delete_session(&self, id: &str) -> BoxFuture<'static, Result<bool, BackendError>> {
        let pool = self.pool.clone();
        let id = id.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let deleted = client
                .execute("DELETE FROM sessions WHERE id = $1", &[&id])
                .await
                .map_err(err)?;
            Ok(deleted > 0)
        })
    }

    fn messages(
        &self,
        session_id: &str,
    ) -> BoxFuture<'static, Result<Vec<MessageRecord>, BackendError>> {
        let pool = self.pool.clone();
        let session_id = session_id.to_owned();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            let rows = client
                .query(
                    "SELECT * FROM messages WHERE session_id = $1 ORDER BY id",
                    &[&session_id],
                )
                .await
                .map_err(err)?;
            rows.iter().map(message_from).collect()
        })
    }

    fn save(
        &self,
        session: SessionRecord,
        messages: Vec<MessageRecord>,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let mut client = pool.get().await.map_err(pool_err)?;
            let tx = client.transaction().await.map_err(err)?;
            // The row lock this takes orders the write against a claim: a
            // claim that committed first makes `fence <= $7` false.
            let updated = tx
                .execute(
                    "UPDATE sessions SET title = $2, model = $3, system_prompt = $4, updated_at = $5, last_seq = $6
                     WHERE id = $1 AND fence <= $7",
                    &[
                        &session.id,
                        &session.title,
                        &session.model,
                        &session.system_prompt,
                        &timestamp(&session.updated_at)?,
                        &(session.last_seq as i64),
                        &(session.fence as i64),
                    ],
                )
                .await
                .map_err(err)?;
            if updated == 0 {
                let stored = tx
                    .query_opt("SELECT fence FROM sessions WHERE id = $1", &[&session.id])
                    .await
                    .map_err(err)?;
                return match stored {
                    // Deleted meanwhile: a late checkpoint must not bring it back.
                    None => Ok(()),
                    Some(row) => Err(super::fenced(&session, row.get::<_, i64>(0) as u64)),
                };
            }
            let upsert = tx
                .prepare(
                    "INSERT INTO messages (session_id, id, role, content, attachments, status, created_at,
                                           client_msg_id, generation_id, prompt_tokens, completion_tokens, tool)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                     ON CONFLICT (session_id, id) DO UPDATE SET
                        content = EXCLUDED.content, status = EXCLUDED.status, tool = EXCLUDED.tool,
                        attachments = EXCLUDED.attachments,
                        prompt_tokens = EXCLUDED.prompt_tokens, completion_tokens = EXCLUDED.completion_tokens",
                )
                .await
                .map_err(err)?;
            for m in &messages {
                tx.execute(
                    &upsert,
                    &[
                        &m.session_id,
                        &m.id,
                        &enum_text(&m.role),
                        &m.content,
                        &m.attachments,
                        &enum_text(&m.status),
                        &timestamp(&m.created_at)?,
                        &m.client_msg_id,
                        &m.generation_id,
                        &m.usage.map(|u| u.prompt_tokens as i64),
                        &m.usage.map(|u| u.completion_tokens as i64),
                        &m.tool
                            .as_ref()
                            .map(|t| serde_json::to_string(t).expect("tool records serialise")),
                    ],
                )
                .await
                .map_err(err)?;
            }
            tx.commit().await.map_err(err)
        })
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        let pool = self.pool.clone();
        Box::pin(async move {
            let client = pool.get().await.map_err(pool_err)?;
            client.simple_query("SELECT 1").await.map_err(err)?;
            Ok(())
        })
    }

    fn pool_status(&self) -> Option<crate::store::PoolStatus> {
        let status = self.pool.status();
        Some(crate::store::PoolStatus {
            open: status.size,
            in_use: status.size.saturating_sub(status.available),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_test_support::postgres::TestPostgres;

    #[tokio::test]
    async fn postgres_store_conforms_and_migrations_are_idempotent() {
        let server = TestPostgres::start();
        // Several replicas starting at once: every one migrates, once.
        let url = server.url();
        let starts = (0..4).map(|_| PostgresSessionStore::connect(&url, 4));
        let stores: Vec<_> = futures::future::join_all(starts)
            .await
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        let client = stores[0].pool.get().await.unwrap();
        let versions: i64 = client
            .query_one("SELECT count(*) FROM sluice_migrations", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(versions, MIGRATIONS.len() as i64);
        drop(client);
        crate::store::conformance::run(stores[0].clone()).await;
        crate::files::conformance::run(stores[1].clone()).await;
        crate::responses::conformance::run(stores[2].clone()).await;
    }

    /// scripts/backup dumps, and scripts/restore drops and makes again,
    /// only the tables named by `SLUICE_TABLES` in scripts/backup-lib.sh:
    /// a migration's new table missing there would be left out of every
    /// backup. The list must be exactly the tables the migrations create,
    /// and `sluice_migrations`.
    #[test]
    fn backup_tables_are_the_migrations_tables() {
        use std::collections::BTreeSet;

        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/backup-lib.sh");
        let lib = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let listed: Vec<&str> = lib
            .lines()
            .find_map(|line| line.strip_prefix("SLUICE_TABLES=\""))
            .and_then(|rest| rest.split_once('"'))
            .map(|(list, _)| list.split_whitespace().collect())
            .unwrap_or_else(|| panic!("{path} has no line SLUICE_TABLES=\"...\""));
        let listed_set: BTreeSet<&str> = listed.iter().copied().collect();
        assert_eq!(
            listed.len(),
            listed_set.len(),
            "SLUICE_TABLES names a table twice: {listed:?}"
        );

        // `CREATE [UNLOGGED] TABLE [IF NOT EXISTS] name (` in each migration.
        let mut created = BTreeSet::from(["sluice_migrations".to_string()]);
        for (version, sql) in MIGRATIONS {
            let upper = sql.to_ascii_uppercase();
            assert!(
                !upper.contains("DROP TABLE") && !upper.contains("RENAME TO"),
                "migration {version} drops or renames a table: teach this test (and SLUICE_TABLES) about it"
            );
            let words: Vec<&str> = sql.split_whitespace().collect();
            for (i, word) in words.iter().enumerate() {
                if !word.eq_ignore_ascii_case("CREATE") {
                    continue;
                }
                let mut rest = words[i + 1..]
                    .iter()
                    .copied()
                    .skip_while(|w| w.eq_ignore_ascii_case("UNLOGGED"));
                if !rest.next().is_some_and(|w| w.eq_ignore_ascii_case("TABLE")) {
                    continue;
                }
                let mut name = rest.next().expect("CREATE TABLE without a name");
                if name.eq_ignore_ascii_case("IF") {
                    name = rest
                        .nth(2)
                        .expect("CREATE TABLE IF NOT EXISTS without a name");
                }
                let name = name.split('(').next().unwrap_or(name).trim_matches('"');
                let name = name.strip_prefix("public.").unwrap_or(name);
                assert!(
                    !name.is_empty(),
                    "migration {version}: a table without a name"
                );
                created.insert(name.to_string());
            }
        }
        let created: BTreeSet<&str> = created.iter().map(String::as_str).collect();
        assert_eq!(
            listed_set, created,
            "SLUICE_TABLES in scripts/backup-lib.sh (left) must name every table the migrations create (right)"
        );
    }
}
