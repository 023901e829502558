//! The embedded vector index: every chunk in a redb file
//! (`SLUICE_DATA_DIR/vectors.redb`), keyed by (vector space, user, file,
//! ordinal), searched by cosine similarity in process.
//!
//! A search reads only the user's key range in the index's space and
//! scores each chunk there (an exact search, no approximation): a user's
//! search costs time in proportion to that user's own chunks (about 10 ms
//! for 10,000 chunks of 1,024 dimensions). Serves one replica; several
//! replicas need Chroma.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};
use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;
use redb::{Database, ReadableDatabase, TableDefinition};

use super::{Chunk, Hit, VectorIndex};
use crate::ids::ID_MAX;
use crate::{Backend, BackendError, ErrorKind};

/// (space, user, file, ordinal) → text length (u32 LE), text, vector (f32 LE).
const CHUNKS: TableDefinition<(&str, &str, &str, u32), &[u8]> = TableDefinition::new("chunks");

/// The redb vector index. Cloning shares the database.
#[derive(Clone)]
pub struct RedbVectorIndex {
    db: Arc<Database>,
    space: Arc<str>,
}

fn err(e: impl Into<redb::Error>) -> BackendError {
    let e: redb::Error = e.into();
    let kind = match &e {
        redb::Error::Corrupted(_) | redb::Error::UpgradeRequired(_) => ErrorKind::Corrupt,
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseAlreadyOpen => {
            ErrorKind::Unavailable
        }
        _ => ErrorKind::Rejected,
    };
    BackendError::new(Backend::Vectors, kind, e)
}

fn encode(chunk: &Chunk) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + chunk.text.len() + 4 * chunk.embedding.len());
    out.extend_from_slice(&(chunk.text.len() as u32).to_le_bytes());
    out.extend_from_slice(chunk.text.as_bytes());
    for x in &chunk.embedding {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// The text and the vector of a stored chunk.
fn decode(bytes: &[u8]) -> Result<(&str, impl Iterator<Item = f32> + '_), BackendError> {
    let corrupt = || BackendError::corrupt(Backend::Vectors, "a stored chunk is malformed");
    let len = u32::from_le_bytes(
        bytes
            .get(..4)
            .ok_or_else(corrupt)?
            .try_into()
            .expect("4 bytes"),
    ) as usize;
    let text = bytes.get(4..4 + len).ok_or_else(corrupt)?;
    let text = std::str::from_utf8(text).map_err(|_| corrupt())?;
    let vector = &bytes[4 + len..];
    if !vector.len().is_multiple_of(4) {
        return Err(corrupt());
    }
    Ok((
        text,
        vector
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
    ))
}

/// A hit ordered by score, lowest first, for a min-heap of the best k.
struct Ranked(Hit);

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the heap's top is the worst hit kept.
        other.0.score.total_cmp(&self.0.score)
    }
}

impl RedbVectorIndex {
    /// Opens (or creates) the index file at `path`, for vectors of `space`.
    pub fn open(path: &Path, space: &str) -> Result<Self, BackendError> {
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
        txn.open_table(CHUNKS).map_err(err)?;
        txn.commit().map_err(err)?;
        Ok(Self {
            db: Arc::new(db),
            space: space.into(),
        })
    }

    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database, &str) -> Result<T, BackendError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, BackendError>> {
        let db = self.db.clone();
        let space = self.space.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db, &space))
                .await
                .map_err(|e| {
                    BackendError::unavailable(Backend::Vectors, format!("index task failed: {e}"))
                })?
        })
    }
}

impl VectorIndex for RedbVectorIndex {
    fn name(&self) -> &'static str {
        "redb"
    }

    fn upsert(
        &self,
        user_id: &str,
        chunks: Vec<Chunk>,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let user_id = user_id.to_owned();
        self.blocking(move |db, space| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut table = txn.open_table(CHUNKS).map_err(err)?;
                for chunk in &chunks {
                    table
                        .insert(
                            (
                                space,
                                user_id.as_str(),
                                chunk.file_id.as_str(),
                                chunk.ordinal,
                            ),
                            encode(chunk).as_slice(),
                        )
                        .map_err(err)?;
                }
            }
            txn.commit().map_err(err)
        })
    }

    fn search(
        &self,
        user_id: &str,
        query: Vec<f32>,
        files: Option<Vec<String>>,
        k: usize,
    ) -> BoxFuture<'static, Result<Vec<Hit>, BackendError>> {
        let user_id = user_id.to_owned();
        self.blocking(move |db, space| {
            let txn = db.begin_read().map_err(err)?;
            let table = txn.open_table(CHUNKS).map_err(err)?;
            let files: Option<HashSet<String>> = files.map(|f| f.into_iter().collect());
            let user = user_id.as_str();
            let mut best: BinaryHeap<Ranked> = BinaryHeap::with_capacity(k + 1);
            if k == 0 {
                return Ok(Vec::new());
            }
            let range = table
                .range((space, user, "", 0)..=(space, user, ID_MAX, u32::MAX))
                .map_err(err)?;
            for entry in range {
                let (key, value) = entry.map_err(err)?;
                let (_, _, file_id, ordinal) = key.value();
                if files.as_ref().is_some_and(|files| !files.contains(file_id)) {
                    continue;
                }
                let bytes = value.value();
                let (text, vector) = decode(bytes)?;
                let score: f32 = vector.zip(&query).map(|(x, y)| x * y).sum();
                let worst = best.peek().map(|r| r.0.score);
                if best.len() < k || worst.is_some_and(|w| score > w) {
                    best.push(Ranked(Hit {
                        file_id: file_id.to_owned(),
                        ordinal,
                        text: text.to_owned(),
                        score,
                    }));
                    if best.len() > k {
                        best.pop();
                    }
                }
            }
            // Ascending by `Ranked` order is best first.
            Ok(best.into_sorted_vec().into_iter().map(|r| r.0).collect())
        })
    }

    fn delete_file(
        &self,
        user_id: &str,
        file_id: &str,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let user_id = user_id.to_owned();
        let file_id = file_id.to_owned();
        self.blocking(move |db, space| {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut table = txn.open_table(CHUNKS).map_err(err)?;
                let (user, file) = (user_id.as_str(), file_id.as_str());
                table
                    .retain_in(
                        (space, user, file, 0)..=(space, user, file, u32::MAX),
                        |_, _| false,
                    )
                    .map_err(err)?;
            }
            txn.commit().map_err(err)
        })
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        self.blocking(|db, _| {
            let txn = db.begin_read().map_err(err)?;
            txn.open_table(CHUNKS).map_err(err)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn redb_index_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let index = RedbVectorIndex::open(&dir.path().join("vectors.redb"), "test-space").unwrap();
        super::super::conformance::run(&index).await;
    }

    #[tokio::test]
    async fn spaces_are_kept_apart_and_chunks_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vectors.redb");
        let chunk = Chunk {
            file_id: "f".into(),
            ordinal: 0,
            text: "t".into(),
            embedding: vec![1.0, 0.0],
        };
        {
            let index = RedbVectorIndex::open(&path, "one").unwrap();
            index.upsert("u", vec![chunk]).await.unwrap();
        }
        let other = RedbVectorIndex::open(&path, "two").unwrap();
        assert!(
            other
                .search("u", vec![1.0, 0.0], None, 5)
                .await
                .unwrap()
                .is_empty()
        );
        drop(other);
        let same = RedbVectorIndex::open(&path, "one").unwrap();
        assert_eq!(
            same.search("u", vec![1.0, 0.0], None, 5)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}
