//! The vector index of files' chunks, for retrieval.
//!
//! Contract for implementations (the conformance suite below holds every
//! implementation to it):
//! - **No user ever retrieves another user's chunks.** Every call names the
//!   user, and an implementation keeps each user's chunks apart by
//!   construction, not by a filter a caller could forget: the embedded
//!   index keys every chunk by its user first and searches only that
//!   user's key range; Chroma keeps one collection per user (and vector
//!   space), named from a hash of both.
//! - `search` ranks the user's chunks of the given files (all the user's
//!   files when `files` is `None`) by cosine similarity, best first, at
//!   most `k`.
//! - `upsert` replaces a chunk with the same (file, ordinal).
//! - `delete_file` removes every chunk of one file; deleting none is fine.
//! - Vectors from different embedders never meet: an index is opened for
//!   one vector space ([`crate::embed::Embedder::space`]).

pub mod chroma;
pub mod redb;

use futures::future::BoxFuture;

use crate::BackendError;

/// A piece of a file's text with its vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The file it comes from.
    pub file_id: String,
    /// Its place in the file, from 0.
    pub ordinal: u32,
    /// Its text.
    pub text: String,
    /// Its unit vector.
    pub embedding: Vec<f32>,
}

/// A chunk found by a search.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The file it comes from.
    pub file_id: String,
    /// Its place in the file.
    pub ordinal: u32,
    /// Its text.
    pub text: String,
    /// Cosine similarity to the query, at most 1.
    pub score: f32,
}

/// Storage and search of chunk vectors, per user.
pub trait VectorIndex: Send + Sync + 'static {
    /// A short name for `/ready` (`redb`, `chroma`).
    fn name(&self) -> &'static str;

    /// Adds or replaces the user's chunks.
    fn upsert(
        &self,
        user_id: &str,
        chunks: Vec<Chunk>,
    ) -> BoxFuture<'static, Result<(), BackendError>>;

    /// The user's `k` chunks nearest to `query`, among `files` if given.
    fn search(
        &self,
        user_id: &str,
        query: Vec<f32>,
        files: Option<Vec<String>>,
        k: usize,
    ) -> BoxFuture<'static, Result<Vec<Hit>, BackendError>>;

    /// Removes every chunk of the user's file.
    fn delete_file(
        &self,
        user_id: &str,
        file_id: &str,
    ) -> BoxFuture<'static, Result<(), BackendError>>;

    /// Checks that the index answers.
    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>>;
}

/// The conformance suite every [`VectorIndex`] must pass.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    /// A unit vector along axis `i` of 8, tilted by `tilt` toward axis 7.
    fn axis(i: usize, tilt: f32) -> Vec<f32> {
        let mut v = vec![0.0; 8];
        v[i] = 1.0;
        v[7] += tilt;
        crate::embed::normalize(&mut v);
        v
    }

    fn chunk(file: &str, ordinal: u32, vector: Vec<f32>) -> Chunk {
        Chunk {
            file_id: file.into(),
            ordinal,
            text: format!("{file} part {ordinal}"),
            embedding: vector,
        }
    }

    fn found(hits: &[Hit]) -> Vec<(String, u32)> {
        hits.iter()
            .map(|h| (h.file_id.clone(), h.ordinal))
            .collect()
    }

    pub async fn run(index: &dyn VectorIndex) {
        index.ping().await.unwrap();
        // Nothing indexed yet: nothing found, and deleting is fine.
        assert!(
            index
                .search("alice", axis(0, 0.0), None, 3)
                .await
                .unwrap()
                .is_empty()
        );
        index.delete_file("alice", "nothing").await.unwrap();

        index
            .upsert(
                "alice",
                vec![
                    chunk("fa", 0, axis(0, 0.0)),
                    chunk("fa", 1, axis(1, 0.0)),
                    chunk("fb", 0, axis(0, 0.5)),
                ],
            )
            .await
            .unwrap();
        // Bob's chunk is the nearest of all to the query, and Alice never sees it.
        index
            .upsert("bob", vec![chunk("fz", 0, axis(0, 0.0))])
            .await
            .unwrap();

        let hits = index.search("alice", axis(0, 0.0), None, 2).await.unwrap();
        assert_eq!(found(&hits), [("fa".into(), 0), ("fb".into(), 0)]);
        assert!((hits[0].score - 1.0).abs() < 1e-3, "{}", hits[0].score);
        assert!(hits[0].score > hits[1].score);
        assert_eq!(hits[0].text, "fa part 0");
        let all = index.search("alice", axis(0, 0.0), None, 10).await.unwrap();
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|h| h.file_id != "fz"));

        // Restricted to some files; a file of Bob's named by Alice finds nothing.
        let only_b = index
            .search("alice", axis(0, 0.0), Some(vec!["fb".into()]), 5)
            .await
            .unwrap();
        assert_eq!(found(&only_b), [("fb".into(), 0)]);
        let foreign = index
            .search("alice", axis(0, 0.0), Some(vec!["fz".into()]), 5)
            .await
            .unwrap();
        assert!(foreign.is_empty());
        assert!(
            index
                .search("alice", axis(0, 0.0), Some(vec![]), 5)
                .await
                .unwrap()
                .is_empty()
        );

        // An upsert replaces a chunk in place.
        let mut moved = chunk("fa", 1, axis(2, 0.0));
        moved.text = "replaced".into();
        index.upsert("alice", vec![moved]).await.unwrap();
        let hits = index.search("alice", axis(2, 0.0), None, 1).await.unwrap();
        assert_eq!((hits[0].ordinal, hits[0].text.as_str()), (1, "replaced"));
        assert_eq!(
            index
                .search("alice", axis(0, 0.0), None, 10)
                .await
                .unwrap()
                .len(),
            3
        );

        // Deleting a file removes its chunks only, and only the owner's.
        index.delete_file("bob", "fa").await.unwrap();
        assert_eq!(
            index
                .search("alice", axis(0, 0.0), None, 10)
                .await
                .unwrap()
                .len(),
            3
        );
        index.delete_file("alice", "fa").await.unwrap();
        let left = index.search("alice", axis(0, 0.0), None, 10).await.unwrap();
        assert_eq!(found(&left), [("fb".into(), 0)]);
        assert_eq!(
            index
                .search("bob", axis(0, 0.0), None, 10)
                .await
                .unwrap()
                .len(),
            1
        );
        index.delete_file("alice", "fb").await.unwrap();
        assert!(
            index
                .search("alice", axis(0, 0.0), None, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
