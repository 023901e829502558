//! Retrieval quality, measured: the fixture corpus (`tests/fixtures/
//! retrieval.json`: 20 documents, 40 questions each answered in exactly
//! one) goes through the same chunking, local embedder and embedded
//! vector index that uploads go through, and each question is searched as
//! a generation searches the user's files. The share of questions whose
//! document is among the first three found is printed (docs/benchmarks.md
//! quotes it) and held to a floor well below it, so a broken retriever
//! fails while a small change of ranking does not.

use std::collections::HashMap;

use serde_json::Value;
use sluice_actors::files::extract::{CHUNK_CHARS, CHUNK_OVERLAP, chunks};
use sluice_backends::embed::Embedder;
use sluice_backends::embed::local::{LocalEmbedder, SPACE};
use sluice_backends::vectors::redb::RedbVectorIndex;
use sluice_backends::vectors::{Chunk, VectorIndex};

/// The least share of questions whose document must be in the top 3.
const TOP3_FLOOR: f64 = 0.75;

/// The documents ranked for `question`, best first, without repeats.
async fn ranked(index: &RedbVectorIndex, question: &str) -> Vec<String> {
    let query = LocalEmbedder
        .embed(vec![question.to_owned()])
        .await
        .unwrap()
        .remove(0);
    let hits = index.search("reader", query, None, 20).await.unwrap();
    let mut docs: Vec<String> = Vec::new();
    for hit in hits {
        if !docs.contains(&hit.file_id) {
            docs.push(hit.file_id);
        }
    }
    docs
}

#[tokio::test]
async fn the_right_document_is_usually_in_the_top_three() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/retrieval.json"
    );
    let corpus: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let index = RedbVectorIndex::open(&dir.path().join("vectors.redb"), SPACE).unwrap();
    let documents = corpus["documents"].as_array().unwrap();
    assert!(documents.len() >= 20);
    for document in documents {
        let name = document["name"].as_str().unwrap();
        let pieces = chunks(
            document["text"].as_str().unwrap(),
            CHUNK_CHARS,
            CHUNK_OVERLAP,
        );
        let vectors = LocalEmbedder.embed(pieces.clone()).await.unwrap();
        let batch = pieces
            .into_iter()
            .zip(vectors)
            .enumerate()
            .map(|(i, (text, embedding))| Chunk {
                file_id: name.to_owned(),
                ordinal: i as u32,
                text,
                embedding,
            })
            .collect();
        index.upsert("reader", batch).await.unwrap();
    }
    let questions = corpus["questions"].as_array().unwrap();
    assert!(questions.len() >= 40);
    let (mut top1, mut top3) = (0, 0);
    let mut misses: HashMap<String, Vec<String>> = HashMap::new();
    for question in questions {
        let (q, doc) = (
            question["q"].as_str().unwrap(),
            question["doc"].as_str().unwrap(),
        );
        let found = ranked(&index, q).await;
        if found.first().map(String::as_str) == Some(doc) {
            top1 += 1;
        }
        if found.iter().take(3).any(|d| d == doc) {
            top3 += 1;
        } else {
            misses.insert(q.to_owned(), found.into_iter().take(3).collect());
        }
    }
    let n = questions.len();
    eprintln!(
        "retrieval (local embedder, {} documents, {n} questions): top-1 {top1}/{n} ({:.0} %), top-3 {top3}/{n} ({:.0} %)",
        documents.len(),
        100.0 * top1 as f64 / n as f64,
        100.0 * top3 as f64 / n as f64
    );
    for (q, found) in &misses {
        eprintln!("  missed: {q:?} -> {found:?}");
    }
    assert!(
        top3 as f64 / n as f64 >= TOP3_FLOOR,
        "only {top3} of {n} questions found their document in the top 3"
    );
}
