//! Embeddings: text to vectors, for the vector index.
//!
//! - [`provider::ProviderEmbedder`]: the provider's OpenAI-compatible
//!   `/embeddings` (`SLUICE_EMBEDDING_MODEL`), in batches, retried like
//!   chat requests.
//! - [`local::LocalEmbedder`]: with no provider, a hashing embedder in
//!   process that needs no model download. It matches words, not meaning:
//!   labelled `local` in the logs and `/ready`.
//!
//! Vectors from two embedders are not comparable, so each embedder names
//! its vector [`space`](Embedder::space), and the vector index keeps each
//! space apart.

pub mod local;
pub mod provider;

use futures::future::BoxFuture;

use crate::BackendError;

/// Turns texts into vectors.
pub trait Embedder: Send + Sync + 'static {
    /// A short name for logs and `/ready` (`local`, `provider`).
    fn name(&self) -> &'static str;

    /// The vector space: the same for two embedders only if their vectors
    /// can be compared (`local-hash-v1`, `provider:<model>`).
    fn space(&self) -> &str;

    /// One unit-length vector per text, in order.
    fn embed(&self, texts: Vec<String>) -> BoxFuture<'static, Result<Vec<Vec<f32>>, BackendError>>;

    /// Checks that it can embed now, without spending tokens.
    fn check(&self) -> BoxFuture<'static, Result<(), BackendError>>;
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

/// The dot product: the cosine similarity of unit vectors.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
