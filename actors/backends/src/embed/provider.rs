//! The provider's embeddings: `POST {base}/embeddings` with
//! `SLUICE_EMBEDDING_MODEL`, through the LLM provider (so the same key,
//! timeouts and retries), in batches of [`BATCH`] texts.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{Embedder, normalize};
use crate::llm::{LlmError, LlmProvider};
use crate::{Backend, BackendError};

/// Most texts in one request.
pub const BATCH: usize = 64;

/// Embeddings from the provider.
#[derive(Clone)]
pub struct ProviderEmbedder {
    llm: Arc<dyn LlmProvider>,
    model: String,
    space: String,
}

impl ProviderEmbedder {
    /// Embeds with `model` through `llm`.
    pub fn new(llm: Arc<dyn LlmProvider>, model: String) -> Self {
        let space = format!("provider:{model}");
        Self { llm, model, space }
    }
}

fn error(e: LlmError) -> BackendError {
    match e {
        LlmError::Refused(refusal) => BackendError::rejected(
            Backend::Embedder,
            format!(
                "the provider refused ({}): {}",
                refusal.status, refusal.message
            ),
        ),
        other => BackendError::unavailable(Backend::Embedder, other),
    }
}

/// The vectors of an `/embeddings` answer, in input order.
fn vectors(answer: &serde_json::Value, expected: usize) -> Result<Vec<Vec<f32>>, BackendError> {
    let bad = |why: &str| {
        BackendError::unavailable(Backend::Embedder, format!("the provider's answer {why}"))
    };
    let data = answer["data"]
        .as_array()
        .ok_or_else(|| bad("has no data"))?;
    if data.len() != expected {
        return Err(bad(&format!(
            "has {} vectors for {expected} texts",
            data.len()
        )));
    }
    let mut out = vec![Vec::new(); expected];
    for item in data {
        let index = item["index"]
            .as_u64()
            .ok_or_else(|| bad("lacks an index"))? as usize;
        let slot = out
            .get_mut(index)
            .ok_or_else(|| bad("has an index out of range"))?;
        let mut vector = item["embedding"]
            .as_array()
            .ok_or_else(|| bad("lacks an embedding"))?
            .iter()
            .map(|x| x.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| bad("has a non-number in an embedding"))?;
        normalize(&mut vector);
        *slot = vector;
    }
    if out.iter().any(Vec::is_empty) {
        return Err(bad("repeats an index"));
    }
    Ok(out)
}

impl Embedder for ProviderEmbedder {
    fn name(&self) -> &'static str {
        "provider"
    }

    fn space(&self) -> &str {
        &self.space
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'static, Result<Vec<Vec<f32>>, BackendError>> {
        let llm = self.llm.clone();
        let model = self.model.clone();
        Box::pin(async move {
            let mut out = Vec::with_capacity(texts.len());
            for batch in texts.chunks(BATCH) {
                let request = serde_json::json!({"model": model, "input": batch});
                let answer = llm.embeddings(request).await.map_err(error)?;
                out.extend(vectors(&answer, batch.len())?);
            }
            Ok(out)
        })
    }

    fn check(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        let check = self.llm.check();
        Box::pin(async move { check.await.map_err(error) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_in_index_order_and_checked() {
        let answer = serde_json::json!({"data": [
            {"index": 1, "embedding": [0.0, 2.0]},
            {"index": 0, "embedding": [3.0, 0.0]},
        ]});
        assert_eq!(
            vectors(&answer, 2).unwrap(),
            vec![vec![1.0, 0.0], vec![0.0, 1.0]]
        );
        assert!(vectors(&answer, 3).is_err());
        let repeated = serde_json::json!({"data": [
            {"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]},
        ]});
        assert!(vectors(&repeated, 2).is_err());
    }
}
