//! Uploaded files' metadata: one row per file, in the session store's
//! database (redb or PostgreSQL), beside the sessions.
//!
//! Contract for implementations (the conformance suite below holds every
//! implementation to it):
//! - `list_files` is the user's files newest first (ids are UUIDv7), paged
//!   by `before` (an id).
//! - **Indexing runs once per file across replicas.** `claim_indexing`
//!   takes a file still `stored` whose claim (if any) has expired, for one
//!   holder (a replica) for `ttl`, and counts the attempt: it answers the
//!   attempt's number, from 1, so an indexer can give up on a file whose
//!   every attempt died with its replica (a parser that crashes it). The
//!   holder renews the claim while it works (`renew_indexing`, false once
//!   the claim is no longer its own or the file is gone); a replica that
//!   dies leaves a claim that expires, and the file is picked up again.
//!   `release_indexing` sets the claim to expire after `retry_after` (a
//!   backend was down: try again later), and `release_claims_of` expires
//!   every claim of a holder at once (a replica restarting gives up what
//!   its previous life held). `unindexed` lists the files that can be
//!   claimed now.
//! - `finish_indexing` records the outcome, and says whether the file still
//!   exists: an indexer that finds it deleted meanwhile removes what it
//!   wrote.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sluice_protocol::{FileObject, FileStatus};

use crate::BackendError;

/// A stored file's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// UUIDv7; the object's key is [`crate::objects::file_key`] of it.
    pub id: String,
    /// The owner; nobody else sees it.
    pub user_id: String,
    /// The name it was uploaded with.
    pub filename: String,
    /// Its size.
    pub bytes: u64,
    /// Its type, decided from its bytes.
    pub content_type: String,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// The uploader's `purpose`.
    pub purpose: String,
    /// Where it is in its life.
    pub status: FileStatus,
    /// Why indexing failed.
    pub error: Option<String>,
    /// Chunks indexed.
    pub chunks: u32,
    /// RFC 3339.
    pub created_at: String,
}

impl FileRecord {
    /// The REST view.
    pub fn to_object(&self) -> FileObject {
        FileObject {
            id: self.id.clone(),
            object: "file".into(),
            filename: self.filename.clone(),
            bytes: self.bytes,
            content_type: self.content_type.clone(),
            status: self.status,
            error: self.error.clone(),
            chunks: self.chunks,
            sha256: self.sha256.clone(),
            purpose: self.purpose.clone(),
            created_at: self.created_at.clone(),
        }
    }

    /// Whether it is an image (sent to the model as itself, not searched).
    pub fn is_image(&self) -> bool {
        self.content_type.starts_with("image/")
    }
}

/// How indexing a file ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexOutcome {
    /// Ready, with this many chunks searchable.
    Indexed {
        /// Chunks written to the vector index.
        chunks: u32,
    },
    /// Unusable, for this reason.
    Failed {
        /// Said to the user.
        reason: String,
    },
}

/// Storage of files' metadata.
pub trait FileStore: Send + Sync + 'static {
    /// Inserts a new file.
    ///
    /// With `max_user_bytes` above 0, the file is inserted only if the
    /// user's files would then take at most that many bytes, checked and
    /// inserted in one step (uploads finishing at once cannot both pass);
    /// false if refused.
    fn create_file(
        &self,
        file: FileRecord,
        max_user_bytes: u64,
    ) -> BoxFuture<'static, Result<bool, BackendError>>;

    /// The file with this id, whoever owns it.
    fn get_file(&self, id: &str) -> BoxFuture<'static, Result<Option<FileRecord>, BackendError>>;

    /// Up to `limit` of the user's files older than `before`, newest first.
    fn list_files(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> BoxFuture<'static, Result<Vec<FileRecord>, BackendError>>;

    /// Deletes the file's row; false if there was none.
    fn delete_file(&self, id: &str) -> BoxFuture<'static, Result<bool, BackendError>>;

    /// The bytes of all the user's files.
    fn used_bytes(&self, user_id: &str) -> BoxFuture<'static, Result<u64, BackendError>>;

    /// Takes the file for indexing for `ttl`, for `holder`, if it can be
    /// claimed now: the attempt's number (from 1), or `None`.
    fn claim_indexing(
        &self,
        id: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<Option<u32>, BackendError>>;

    /// Extends `holder`'s claim by `ttl` from now; false if the claim is
    /// not its own any more or the file is gone or finished.
    fn renew_indexing(
        &self,
        id: &str,
        holder: &str,
        ttl: Duration,
    ) -> BoxFuture<'static, Result<bool, BackendError>>;

    /// Lets `holder`'s claim on the file expire after `retry_after`.
    fn release_indexing(
        &self,
        id: &str,
        holder: &str,
        retry_after: Duration,
    ) -> BoxFuture<'static, Result<(), BackendError>>;

    /// Lets every claim of `holder` expire now.
    fn release_claims_of(&self, holder: &str) -> BoxFuture<'static, Result<(), BackendError>>;

    /// Records how indexing ended; false if the file no longer exists.
    fn finish_indexing(
        &self,
        id: &str,
        outcome: IndexOutcome,
    ) -> BoxFuture<'static, Result<bool, BackendError>>;

    /// Up to `limit` files still `stored` that can be claimed now (no
    /// claim, or an expired one), oldest first: what a replica picks up at
    /// start and from time to time.
    fn unindexed(&self, limit: usize) -> BoxFuture<'static, Result<Vec<FileRecord>, BackendError>>;
}

/// The conformance suite every [`FileStore`] must pass.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    pub fn file(id: &str, user: &str) -> FileRecord {
        FileRecord {
            id: id.into(),
            user_id: user.into(),
            filename: format!("{id}.txt"),
            bytes: 42,
            content_type: "text/plain".into(),
            sha256: "ab".repeat(32),
            purpose: "assistants".into(),
            status: FileStatus::Stored,
            error: None,
            chunks: 0,
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    pub async fn run<S: FileStore>(store: S) {
        for id in ["f1", "f2", "f3"] {
            assert!(store.create_file(file(id, "alice"), 0).await.unwrap());
        }
        assert!(store.create_file(file("f4", "bob"), 0).await.unwrap());
        let ids = |v: Vec<FileRecord>| v.into_iter().map(|f| f.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.list_files("alice", 10, None).await.unwrap()),
            ["f3", "f2", "f1"]
        );
        assert_eq!(
            ids(store.list_files("alice", 10, Some("f3")).await.unwrap()),
            ["f2", "f1"]
        );
        assert_eq!(
            ids(store.list_files("alice", 1, None).await.unwrap()),
            ["f3"]
        );
        assert_eq!(
            ids(store.list_files("bob", 10, None).await.unwrap()),
            ["f4"]
        );
        assert_eq!(
            store.get_file("f4").await.unwrap().unwrap(),
            file("f4", "bob")
        );
        assert!(store.get_file("nope").await.unwrap().is_none());
        assert_eq!(store.used_bytes("alice").await.unwrap(), 3 * 42);
        assert_eq!(store.used_bytes("carol").await.unwrap(), 0);
        // Within a bound: 42 more fits in 168, not in 167.
        assert!(!store.create_file(file("f5", "alice"), 167).await.unwrap());
        assert!(store.get_file("f5").await.unwrap().is_none());
        assert!(store.create_file(file("f5", "alice"), 168).await.unwrap());
        assert!(store.delete_file("f5").await.unwrap());

        // Everything stored waits for indexing, oldest first.
        assert_eq!(
            ids(store.unindexed(10).await.unwrap()),
            ["f1", "f2", "f3", "f4"]
        );

        // One claim at a time; a claimed file is not listed until its
        // claim expires; an expired claim can be taken again, and each
        // claim is counted.
        let long = Duration::from_secs(600);
        assert_eq!(
            store.claim_indexing("f1", "r1", long).await.unwrap(),
            Some(1)
        );
        assert_eq!(store.claim_indexing("f1", "r2", long).await.unwrap(), None);
        assert_eq!(store.claim_indexing("f1", "r1", long).await.unwrap(), None);
        assert_eq!(
            store.claim_indexing("nope", "r2", long).await.unwrap(),
            None
        );
        assert_eq!(ids(store.unindexed(10).await.unwrap()), ["f2", "f3", "f4"]);
        let short = Duration::from_millis(50);
        assert_eq!(
            store.claim_indexing("f2", "r1", short).await.unwrap(),
            Some(1)
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(ids(store.unindexed(10).await.unwrap()), ["f2", "f3", "f4"]);
        assert_eq!(
            store.claim_indexing("f2", "r2", long).await.unwrap(),
            Some(2)
        );
        assert!(!store.renew_indexing("f2", "r1", long).await.unwrap());
        assert!(store.renew_indexing("f2", "r2", long).await.unwrap());

        // Released: free after the delay; another holder's release does nothing.
        assert_eq!(
            store.claim_indexing("f4", "r1", long).await.unwrap(),
            Some(1)
        );
        store
            .release_indexing("f4", "r2", Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(store.claim_indexing("f4", "r2", long).await.unwrap(), None);
        store.release_indexing("f4", "r1", long).await.unwrap();
        assert_eq!(store.claim_indexing("f4", "r2", long).await.unwrap(), None);
        store
            .release_indexing("f4", "r1", Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            store.claim_indexing("f4", "r2", long).await.unwrap(),
            Some(2)
        );
        // A restarting replica lets all its claims go at once.
        store.release_claims_of("r2").await.unwrap();
        assert_eq!(ids(store.unindexed(10).await.unwrap()), ["f2", "f3", "f4"]);
        assert_eq!(
            store.claim_indexing("f4", "r3", long).await.unwrap(),
            Some(3)
        );
        store.release_claims_of("r3").await.unwrap();

        // Many replicas at once: exactly one gets the claim.
        let claims = futures::future::join_all(
            (0..8).map(|i| store.claim_indexing("f3", &format!("c{i}"), long)),
        )
        .await;
        let won = claims
            .into_iter()
            .filter(|c| c.as_ref().unwrap().is_some())
            .count();
        assert_eq!(won, 1);

        // Outcomes; a finished file is never claimed again.
        assert!(
            store
                .finish_indexing("f1", IndexOutcome::Indexed { chunks: 7 })
                .await
                .unwrap()
        );
        let f1 = store.get_file("f1").await.unwrap().unwrap();
        assert_eq!(
            (f1.status, f1.chunks, f1.error),
            (FileStatus::Indexed, 7, None)
        );
        assert!(
            store
                .finish_indexing(
                    "f2",
                    IndexOutcome::Failed {
                        reason: "no text".into()
                    }
                )
                .await
                .unwrap()
        );
        let f2 = store.get_file("f2").await.unwrap().unwrap();
        assert_eq!(f2.status, FileStatus::Failed);
        assert_eq!(f2.error.as_deref(), Some("no text"));
        assert_eq!(store.claim_indexing("f1", "r3", short).await.unwrap(), None);
        assert!(!store.renew_indexing("f1", "r1", long).await.unwrap());
        assert_eq!(ids(store.unindexed(10).await.unwrap()), ["f4"]);

        // Delete; renewing or finishing a deleted file says so.
        assert!(store.delete_file("f4").await.unwrap());
        assert!(!store.renew_indexing("f3", "nobody", long).await.unwrap());
        assert!(store.delete_file("f3").await.unwrap());
        assert!(!store.delete_file("f3").await.unwrap());
        assert!(store.get_file("f3").await.unwrap().is_none());
        assert!(
            !store
                .finish_indexing("f3", IndexOutcome::Indexed { chunks: 1 })
                .await
                .unwrap()
        );
        assert!(store.get_file("f3").await.unwrap().is_none());
        assert_eq!(
            ids(store.list_files("alice", 10, None).await.unwrap()),
            ["f2", "f1"]
        );
    }
}
