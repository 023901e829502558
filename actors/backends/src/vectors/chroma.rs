//! The production vector index: Chroma, over its HTTP API v2.
//!
//! Each user's chunks are in a collection of their own, named
//! `sluice-<hash>` from a SHA-256 of the vector space and the user id, so
//! a search can only ever reach the caller's chunks, and vectors of two
//! embedders never share a collection. Every chunk also carries its user
//! in its metadata, and a hit whose user is not the caller is dropped (a
//! second lock on the same door). Chunk ids are `<file id>:<ordinal>`.
//! Collections use cosine distance; a hit's score is `1 - distance`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Chunk, Hit, VectorIndex};
use crate::ids::hex;
use crate::{Backend, BackendError};

/// Longest wait for a connection to Chroma.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a request to Chroma may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Chunks sent in one upsert.
const UPSERT_BATCH: usize = 256;

/// Collection ids remembered; past this, the memory is cleared (ids are
/// looked up again as needed), so it cannot grow with the number of users.
const MAX_CACHED_COLLECTIONS: usize = 10_000;

/// Chroma's tenant and database Sluice uses.
const TENANT_PATH: &str = "api/v2/tenants/default_tenant/databases/default_database";

/// A Chroma server.
#[derive(Clone)]
pub struct ChromaIndex {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// `http://host:port` with no trailing slash.
    base: String,
    space: String,
    /// Collection name → id.
    ids: Mutex<HashMap<String, String>>,
}

/// A failed request: whether Chroma said the collection does not exist.
enum Failure {
    NotFound,
    Error(BackendError),
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        Self::Error(e)
    }
}

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::unavailable(Backend::Vectors, e)
}

impl ChromaIndex {
    /// A client of the Chroma server at `url` (`http://host:port`) for
    /// vectors of `space`. Fails only if the HTTP client cannot be built;
    /// the server is checked by [`VectorIndex::ping`].
    pub fn new(url: &str, space: &str) -> Result<Self, BackendError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(unavailable)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base: url.trim_end_matches('/').to_owned(),
                space: space.to_owned(),
                ids: Mutex::new(HashMap::new()),
            }),
        })
    }
}

impl Inner {
    /// The user's collection name in this space.
    fn collection(&self, user_id: &str) -> String {
        let digest = Sha256::new()
            .chain_update(self.space.as_bytes())
            .chain_update([0u8])
            .chain_update(user_id.as_bytes())
            .finalize();
        format!("sluice-{}", &hex(&digest)[..40])
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, Failure> {
        // The error without its URL: it names internal hosts and collections.
        let response = request
            .send()
            .await
            .map_err(|e| unavailable(e.without_url()))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = format!(
            "Chroma answered {status}: {}",
            body["message"].as_str().unwrap_or("no message")
        );
        if status == StatusCode::NOT_FOUND || body["error"] == "NotFoundError" {
            return Err(Failure::NotFound);
        }
        Err(Failure::Error(if status.is_server_error() {
            unavailable(message)
        } else {
            BackendError::rejected(Backend::Vectors, message)
        }))
    }

    /// The id of the user's collection: remembered, looked up, or (with
    /// `create`) made. `None` if it does not exist and `create` is false.
    async fn collection_id(
        &self,
        user_id: &str,
        create: bool,
    ) -> Result<Option<String>, BackendError> {
        let name = self.collection(user_id);
        if let Some(id) = self.ids.lock().expect("not poisoned").get(&name) {
            return Ok(Some(id.clone()));
        }
        let url = format!("{}/{TENANT_PATH}/collections", self.base);
        let found = if create {
            let body = json!({
                "name": name,
                "get_or_create": true,
                "configuration": {"hnsw": {"space": "cosine"}},
                "metadata": {"sluice_space": self.space},
            });
            self.send(self.http.post(&url).json(&body)).await
        } else {
            self.send(self.http.get(format!("{url}/{name}"))).await
        };
        let collection = match found {
            Ok(collection) => collection,
            Err(Failure::NotFound) if !create => return Ok(None),
            Err(Failure::NotFound) => return Err(unavailable("Chroma lost a collection it made")),
            Err(Failure::Error(e)) => return Err(e),
        };
        let id = collection["id"]
            .as_str()
            .ok_or_else(|| unavailable("Chroma's collection has no id"))?
            .to_owned();
        let mut ids = self.ids.lock().expect("not poisoned");
        if ids.len() >= MAX_CACHED_COLLECTIONS {
            ids.clear();
        }
        ids.insert(name, id.clone());
        Ok(Some(id))
    }

    /// Runs `op` on the user's collection; if Chroma says it is gone (it was
    /// deleted behind Sluice's back), forgets its id and tries once more.
    /// `None` when there is no collection and `create` is false.
    async fn on_collection(
        &self,
        user_id: &str,
        create: bool,
        action: &str,
        body: &Value,
    ) -> Result<Option<Value>, BackendError> {
        for _ in 0..2 {
            let Some(id) = self.collection_id(user_id, create).await? else {
                return Ok(None);
            };
            let url = format!("{}/{TENANT_PATH}/collections/{id}/{action}", self.base);
            match self.send(self.http.post(url).json(body)).await {
                Ok(answer) => return Ok(Some(answer)),
                Err(Failure::NotFound) => {
                    self.ids
                        .lock()
                        .expect("not poisoned")
                        .remove(&self.collection(user_id));
                }
                Err(Failure::Error(e)) => return Err(e),
            }
        }
        Err(unavailable("Chroma keeps losing the collection"))
    }
}

/// The hits of a `/query` answer for one query embedding, keeping only the
/// caller's chunks.
fn hits(answer: &Value, user_id: &str) -> Result<Vec<Hit>, BackendError> {
    let bad = || unavailable("Chroma's query answer is malformed");
    let documents = answer["documents"][0].as_array().ok_or_else(bad)?;
    let metadatas = answer["metadatas"][0].as_array().ok_or_else(bad)?;
    let distances = answer["distances"][0].as_array().ok_or_else(bad)?;
    let mut out = Vec::with_capacity(documents.len());
    for ((text, meta), distance) in documents.iter().zip(metadatas).zip(distances) {
        if meta["user_id"].as_str() != Some(user_id) {
            tracing::error!("Chroma returned a chunk of another user; dropped");
            continue;
        }
        out.push(Hit {
            file_id: meta["file_id"].as_str().ok_or_else(bad)?.to_owned(),
            ordinal: meta["ordinal"].as_u64().ok_or_else(bad)? as u32,
            text: text.as_str().unwrap_or_default().to_owned(),
            score: 1.0 - distance.as_f64().ok_or_else(bad)? as f32,
        });
    }
    Ok(out)
}

impl VectorIndex for ChromaIndex {
    fn name(&self) -> &'static str {
        "chroma"
    }

    fn upsert(
        &self,
        user_id: &str,
        chunks: Vec<Chunk>,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let inner = self.inner.clone();
        let user_id = user_id.to_owned();
        Box::pin(async move {
            for batch in chunks.chunks(UPSERT_BATCH) {
                let body = json!({
                    "ids": batch.iter().map(|c| format!("{}:{}", c.file_id, c.ordinal)).collect::<Vec<_>>(),
                    "embeddings": batch.iter().map(|c| &c.embedding).collect::<Vec<_>>(),
                    "documents": batch.iter().map(|c| &c.text).collect::<Vec<_>>(),
                    "metadatas": batch.iter().map(|c| json!({
                        "user_id": user_id, "file_id": c.file_id, "ordinal": c.ordinal,
                    })).collect::<Vec<_>>(),
                });
                inner.on_collection(&user_id, true, "upsert", &body).await?;
            }
            Ok(())
        })
    }

    fn search(
        &self,
        user_id: &str,
        query: Vec<f32>,
        files: Option<Vec<String>>,
        k: usize,
    ) -> BoxFuture<'static, Result<Vec<Hit>, BackendError>> {
        let inner = self.inner.clone();
        let user_id = user_id.to_owned();
        Box::pin(async move {
            if k == 0 || files.as_ref().is_some_and(Vec::is_empty) {
                return Ok(Vec::new());
            }
            let mut body = json!({
                "query_embeddings": [query],
                "n_results": k,
                "include": ["documents", "metadatas", "distances"],
            });
            if let Some(files) = files {
                body["where"] = json!({"file_id": {"$in": files}});
            }
            match inner.on_collection(&user_id, false, "query", &body).await? {
                Some(answer) => hits(&answer, &user_id),
                None => Ok(Vec::new()),
            }
        })
    }

    fn delete_file(
        &self,
        user_id: &str,
        file_id: &str,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let inner = self.inner.clone();
        let user_id = user_id.to_owned();
        let body = json!({"where": {"file_id": file_id}});
        Box::pin(async move {
            inner
                .on_collection(&user_id, false, "delete", &body)
                .await?;
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let url = format!("{}/api/v2/heartbeat", inner.base);
            match inner.send(inner.http.get(url)).await {
                Ok(_) => Ok(()),
                Err(Failure::NotFound) => Err(unavailable("no Chroma API v2 at this URL")),
                Err(Failure::Error(e)) => Err(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use sluice_test_support::chroma::TestChroma;

    use super::*;

    #[tokio::test]
    async fn chroma_index_conforms_and_keeps_users_in_collections_of_their_own() {
        let server = TestChroma::start();
        let index = ChromaIndex::new(&server.url(), "test-space").unwrap();
        super::super::conformance::run(&index).await;
        let (alice, bob) = (
            index.inner.collection("alice"),
            index.inner.collection("bob"),
        );
        assert_ne!(alice, bob);
        assert_ne!(
            alice,
            ChromaIndex::new(&server.url(), "other")
                .unwrap()
                .inner
                .collection("alice")
        );
        // A collection deleted behind Sluice's back is made again.
        let url = format!("{}/{TENANT_PATH}/collections/{alice}", server.url());
        reqwest::Client::new().delete(url).send().await.unwrap();
        let chunk = Chunk {
            file_id: "f".into(),
            ordinal: 0,
            text: "t".into(),
            embedding: vec![1.0; 8],
        };
        index.upsert("alice", vec![chunk]).await.unwrap();
        assert_eq!(
            index
                .search("alice", vec![1.0; 8], None, 3)
                .await
                .unwrap()
                .len(),
            1
        );
    }

    #[tokio::test]
    async fn a_stopped_chroma_is_unavailable() {
        let mut server = TestChroma::start();
        let index = ChromaIndex::new(&server.url(), "s").unwrap();
        index.ping().await.unwrap();
        server.stop();
        let e = index.ping().await.unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::Unavailable);
        let e = index.search("u", vec![1.0], None, 3).await.unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::Unavailable);
    }
}
