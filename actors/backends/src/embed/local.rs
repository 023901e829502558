//! The local embedder: feature hashing, no model.
//!
//! A text becomes a bag of features: its words (lower-cased, common English
//! words dropped) and, at a quarter of the weight, the character trigrams
//! of each word, so `index` also matches `indexing`. Each feature is hashed
//! (FNV-1a) to one of [`DIMS`] dimensions with a sign taken from the hash,
//! weighted by `1 + ln(count)`, and the vector is scaled to unit length.
//! Cosine similarity then measures shared words. It does not know that
//! `car` and `automobile` mean the same; a provider's embedding model does.

use std::collections::HashMap;

use futures::future::BoxFuture;

use super::{Embedder, normalize};
use crate::BackendError;

/// Dimensions of a local vector.
pub const DIMS: usize = 1024;

/// The local embedder's vector space.
pub const SPACE: &str = "local-hash-v1";

/// Weight of a word's trigrams against the word itself.
const TRIGRAM_WEIGHT: f32 = 0.25;

/// Words too common to tell documents apart.
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "an", "and", "any", "are", "as", "at", "be", "been",
    "but", "by", "can", "could", "did", "do", "does", "for", "from", "had", "has", "have", "he",
    "her", "his", "how", "i", "if", "in", "into", "is", "it", "its", "me", "my", "no", "not", "of",
    "on", "or", "our", "she", "so", "than", "that", "the", "their", "them", "then", "there",
    "these", "they", "this", "to", "was", "we", "were", "what", "when", "where", "which", "who",
    "why", "will", "with", "would", "you", "your",
];

/// The hashing embedder.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalEmbedder;

fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

fn add(vector: &mut [f32], kind: &[u8], feature: &[u8], weight: f32) {
    let hash = fnv1a(&[kind, feature]);
    let dim = (hash % DIMS as u64) as usize;
    let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
    vector[dim] += sign * weight;
}

/// The words of `text` that carry meaning, lower-cased.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| w.chars().count() > 1 && !STOPWORDS.contains(&w.as_str()))
}

/// The unit vector of one text.
pub fn embed_text(text: &str) -> Vec<f32> {
    let mut counts: HashMap<String, u32> = HashMap::new();
    for word in words(text) {
        *counts.entry(word).or_default() += 1;
    }
    let mut vector = vec![0.0f32; DIMS];
    for (word, count) in &counts {
        let weight = 1.0 + (*count as f32).ln();
        add(&mut vector, b"w", word.as_bytes(), weight);
        let marked: Vec<char> = format!("^{word}$").chars().collect();
        for trigram in marked.windows(3) {
            let trigram: String = trigram.iter().collect();
            add(
                &mut vector,
                b"t",
                trigram.as_bytes(),
                weight * TRIGRAM_WEIGHT,
            );
        }
    }
    normalize(&mut vector);
    vector
}

/// An OpenAI `/embeddings` answer for `request` made with the local
/// embedder (the demo provider's, with no provider configured).
pub fn embeddings_response(request: &serde_json::Value) -> Result<serde_json::Value, String> {
    let inputs: Vec<String> = match &request["input"] {
        serde_json::Value::String(text) => vec![text.clone()],
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or("input must be a string or an array of strings")?,
        _ => return Err("input must be a string or an array of strings".into()),
    };
    let mut tokens = 0;
    let data: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            tokens += words(text).count();
            serde_json::json!({"object": "embedding", "index": index, "embedding": embed_text(text)})
        })
        .collect();
    Ok(serde_json::json!({
        "object": "list",
        "data": data,
        "model": request["model"].as_str().unwrap_or(SPACE),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }))
}

impl Embedder for LocalEmbedder {
    fn name(&self) -> &'static str {
        "local"
    }

    fn space(&self) -> &str {
        SPACE
    }

    fn embed(&self, texts: Vec<String>) -> BoxFuture<'static, Result<Vec<Vec<f32>>, BackendError>> {
        Box::pin(async move {
            // Hashing is quick, but a large batch is still CPU work: keep it
            // off the async threads.
            tokio::task::spawn_blocking(move || texts.iter().map(|t| embed_text(t)).collect())
                .await
                .map_err(|e| {
                    BackendError::unavailable(
                        crate::Backend::Embedder,
                        format!("embedding task failed: {e}"),
                    )
                })
        })
    }

    fn check(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::dot;

    #[test]
    fn shared_words_score_higher_than_none_and_vectors_are_unit_length() {
        let doc = embed_text("The invoice for the harbour crane repair was paid in March.");
        let close = embed_text("When was the crane repair invoice paid?");
        let far = embed_text("Recipe: whisk two eggs with sugar and flour.");
        assert!((dot(&doc, &doc) - 1.0).abs() < 1e-5);
        assert!(dot(&doc, &close) > 0.3, "{}", dot(&doc, &close));
        assert!(dot(&doc, &close) > dot(&doc, &far) + 0.2);
        // Word forms share trigrams.
        let forms = dot(&embed_text("indexing"), &embed_text("index"));
        assert!(forms > 0.1, "{forms}");
        assert!(dot(&embed_text("indexing"), &embed_text("harbour")).abs() < forms);
        // Nothing to embed is the zero vector, not NaN.
        assert!(embed_text("the of and").iter().all(|x| *x == 0.0));
    }

    #[test]
    fn the_openai_answer_has_one_vector_per_input_in_order() {
        let answer =
            embeddings_response(&serde_json::json!({"model": "m", "input": ["a cat", "a dog"]}))
                .unwrap();
        assert_eq!(answer["data"].as_array().unwrap().len(), 2);
        assert_eq!(answer["data"][1]["index"], 1);
        assert_eq!(
            answer["data"][0]["embedding"].as_array().unwrap().len(),
            DIMS
        );
        assert!(embeddings_response(&serde_json::json!({"input": [1]})).is_err());
    }
}
