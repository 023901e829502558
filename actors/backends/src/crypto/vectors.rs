//! [`SealedVectors`]: a vector index whose chunks' text is sealed at rest.
//! The vectors stay readable (a search needs them); the text, which only
//! comes back with a hit, is sealed on the way in and opened on the way out.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::Keyring;
use crate::BackendError;
use crate::vectors::{Chunk, Hit, VectorIndex};

/// `inner`, with chunk text sealed by `keys`.
pub struct SealedVectors {
    inner: Arc<dyn VectorIndex>,
    keys: Arc<Keyring>,
}

impl SealedVectors {
    /// Seals what goes into `inner` and opens what comes out.
    pub fn new(inner: Arc<dyn VectorIndex>, keys: Arc<Keyring>) -> Self {
        Self { inner, keys }
    }
}

/// Which chunk a text belongs to.
fn chunk_field(user_id: &str, file_id: &str, ordinal: u32) -> String {
    format!("chunk\0{user_id}\0{file_id}\0{ordinal}")
}

impl VectorIndex for SealedVectors {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn upsert(
        &self,
        user_id: &str,
        chunks: Vec<Chunk>,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let sealed = chunks
            .into_iter()
            .map(|chunk| {
                let field = chunk_field(user_id, &chunk.file_id, chunk.ordinal);
                Chunk {
                    text: self.keys.seal_text(&chunk.text, &field),
                    ..chunk
                }
            })
            .collect();
        self.inner.upsert(user_id, sealed)
    }

    fn search(
        &self,
        user_id: &str,
        query: Vec<f32>,
        files: Option<Vec<String>>,
        k: usize,
    ) -> BoxFuture<'static, Result<Vec<Hit>, BackendError>> {
        let (found, keys) = (
            self.inner.search(user_id, query, files, k),
            self.keys.clone(),
        );
        let user = user_id.to_owned();
        // A chunk that does not open is left out (and logged) rather than
        // failing the search.
        Box::pin(async move {
            Ok(found
                .await?
                .into_iter()
                .filter_map(|hit| {
                    let field = chunk_field(&user, &hit.file_id, hit.ordinal);
                    match keys.open_text(hit.text.clone(), &field) {
                        Ok(text) => Some(Hit { text, ..hit }),
                        Err(e) => {
                            tracing::error!(file = %hit.file_id, error = %e, "a chunk does not open");
                            None
                        }
                    }
                })
                .collect())
        })
    }

    fn delete_file(
        &self,
        user_id: &str,
        file_id: &str,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        self.inner.delete_file(user_id, file_id)
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        self.inner.ping()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vectors::redb::RedbVectorIndex;

    #[tokio::test]
    async fn a_sealed_redb_index_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn VectorIndex> =
            Arc::new(RedbVectorIndex::open(&dir.path().join("v.redb"), "test").unwrap());
        let sealed = SealedVectors::new(inner, Arc::new(Keyring::new(Some([4; 32]), &[])));
        crate::vectors::conformance::run(&sealed).await;
    }
}
