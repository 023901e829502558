//! Stored responses of the OpenAI Responses API (`/v1/responses`).
//!
//! A Responses conversation is a chain: each response names the one it
//! continues (`previous_response_id`, its `parent`) and holds only its own
//! turn (the input items it was asked with and the output items it
//! answered). A record is written once, whole, in one insert, and never
//! changes, so a follow-up turn copies nothing, two follow-ups of one
//! response (a fork) do not meet, and every replica reads the same chain.
//! Each record carries the length of its chain (`turns`) and the bytes of
//! every turn's items up to it (`bytes`), so a follow-up is bounded before
//! the chain is read.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::BackendError;

/// One stored response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseRecord {
    /// UUIDv7 (the API's id is `resp_` and this).
    pub id: String,
    /// The owner; nobody else sees it.
    pub user_id: String,
    /// The response this one continues.
    pub parent: Option<String>,
    /// Responses in the chain up to this one, itself included (1 for a
    /// first turn).
    pub turns: u32,
    /// Bytes of `items` over the chain up to this one, itself included.
    pub bytes: u64,
    /// This turn's items, as a JSON array: its input, then its output.
    pub items: String,
    /// The response object as it was answered (JSON).
    pub response: String,
    /// RFC 3339.
    pub created_at: String,
}

/// Durable storage of responses.
pub trait ResponseStore: Send + Sync + 'static {
    /// Inserts a new response.
    fn create_response(
        &self,
        response: ResponseRecord,
    ) -> BoxFuture<'static, Result<(), BackendError>>;

    /// The response with this id, whoever owns it.
    fn get_response(
        &self,
        id: &str,
    ) -> BoxFuture<'static, Result<Option<ResponseRecord>, BackendError>>;

    /// The `items` of the response `id` and of the responses it continues,
    /// up to `max` of them, oldest first; shorter than the chain when a
    /// response of it was deleted (the items after the gap only).
    fn conversation(
        &self,
        id: &str,
        max: u32,
    ) -> BoxFuture<'static, Result<Vec<String>, BackendError>>;

    /// Deletes the response; false if it did not exist. The responses that
    /// continue it stay, but can no longer be continued.
    fn delete_response(&self, id: &str) -> BoxFuture<'static, Result<bool, BackendError>>;
}

/// The conformance suite every [`ResponseStore`] must pass.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    fn record(id: &str, parent: Option<&str>, turns: u32) -> ResponseRecord {
        ResponseRecord {
            id: id.into(),
            user_id: "alice".into(),
            parent: parent.map(str::to_owned),
            turns,
            bytes: 10 * u64::from(turns),
            items: format!("[\"{id}\"]"),
            response: format!("{{\"id\":\"resp_{id}\"}}"),
            created_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    pub async fn run<S: ResponseStore>(store: S) {
        // A chain of three and a fork from its first response.
        store.create_response(record("r1", None, 1)).await.unwrap();
        store
            .create_response(record("r2", Some("r1"), 2))
            .await
            .unwrap();
        store
            .create_response(record("r3", Some("r2"), 3))
            .await
            .unwrap();
        store
            .create_response(record("r4", Some("r1"), 2))
            .await
            .unwrap();
        assert_eq!(
            store.get_response("r3").await.unwrap(),
            Some(record("r3", Some("r2"), 3))
        );
        assert!(store.get_response("r9").await.unwrap().is_none());
        assert_eq!(
            store.conversation("r3", 10).await.unwrap(),
            ["[\"r1\"]", "[\"r2\"]", "[\"r3\"]"]
        );
        assert_eq!(
            store.conversation("r4", 10).await.unwrap(),
            ["[\"r1\"]", "[\"r4\"]"]
        );
        // At most `max`, the newest.
        assert_eq!(
            store.conversation("r3", 2).await.unwrap(),
            ["[\"r2\"]", "[\"r3\"]"]
        );
        assert!(store.conversation("r9", 10).await.unwrap().is_empty());
        // An id is written once.
        assert!(store.create_response(record("r1", None, 1)).await.is_err());

        // A deleted response leaves a gap the chain stops at.
        assert!(store.delete_response("r2").await.unwrap());
        assert!(!store.delete_response("r2").await.unwrap());
        assert!(store.get_response("r2").await.unwrap().is_none());
        assert_eq!(store.conversation("r3", 10).await.unwrap(), ["[\"r3\"]"]);
        assert_eq!(store.conversation("r4", 10).await.unwrap().len(), 2);
    }
}
