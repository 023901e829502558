//! Durable sessions and messages.
//!
//! Contract for implementations (the conformance suite below holds every
//! implementation to it):
//! - `save` writes the session record and upserts the messages atomically,
//!   and is a no-op for a session that no longer exists (a late checkpoint
//!   never resurrects a deleted session).
//! - **Fencing.** `claim_session` raises the session's `fence` by one and
//!   returns the record with it; the fence never goes down. A `save` whose
//!   record carries a lower fence than the stored one is refused with
//!   [`ErrorKind::Fenced`](crate::ErrorKind::Fenced), in the same
//!   transaction that would have written it. A replica claims a session
//!   when it takes its lease, before reading it; a replica that lost the
//!   lease without noticing (cut off from Redis) writes with the old fence,
//!   so nothing it writes after the next owner's claim can land.
//! - `list_sessions` is newest first (ids are UUIDv7, so by id), paged by
//!   `before` (an id).
//! - `messages` is oldest first.

pub mod postgres;
pub mod redb;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sluice_protocol::{Message, MessageStatus, Role, Session, Usage};

use crate::BackendError;

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// UUIDv7.
    pub id: String,
    /// The owner; nobody else sees it.
    pub user_id: String,
    /// Human title.
    pub title: String,
    /// Model generations ask for.
    pub model: String,
    /// Sent first in every generation.
    pub system_prompt: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Highest `seq` persisted so far.
    pub last_seq: u64,
    /// The claim of the replica that owns the session (see the module's
    /// fencing rule). Records written before fencing existed read as 0.
    #[serde(default)]
    pub fence: u64,
    /// The tools the session's agent may use, by name; every tool when
    /// `None`.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
}

impl SessionRecord {
    /// The REST view.
    pub fn to_session(&self) -> Session {
        Session {
            id: self.id.clone(),
            title: self.title.clone(),
            model: self.model.clone(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            last_seq: self.last_seq,
            tools: self.tools.clone(),
        }
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// UUIDv7.
    pub id: String,
    /// The session it belongs to.
    pub session_id: String,
    /// Who wrote it.
    pub role: Role,
    /// Its text (for a streaming message: as of the last checkpoint).
    pub content: String,
    /// Attached file ids.
    pub attachments: Vec<String>,
    /// Where it is in its life.
    pub status: MessageStatus,
    /// RFC 3339.
    pub created_at: String,
    /// The sender's idempotency key (user messages only).
    pub client_msg_id: Option<String>,
    /// The generation this message started (user) or was written by (assistant).
    pub generation_id: Option<String>,
    /// Token counts (assistant messages, when known).
    pub usage: Option<Usage>,
    /// On a tool message: the call it answers.
    #[serde(default)]
    pub tool: Option<ToolRecord>,
}

/// The call a tool message answers, and where it happened in its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRecord {
    /// The call's id, as the model gave it.
    pub call_id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments' JSON text, as the model wrote it.
    pub arguments: String,
    /// The step of the generation that made the call (from 0): calls of one
    /// step were made together.
    pub step: u32,
    /// How many bytes of the answer's text came before the call: the text
    /// of each step is the answer's slice between two steps' offsets.
    pub offset: usize,
}

impl ToolRecord {
    /// The call as the REST API shows it.
    pub fn to_call(&self) -> sluice_protocol::tools::ToolCall {
        sluice_protocol::tools::ToolCall {
            call_id: self.call_id.clone(),
            name: self.name.clone(),
            arguments: sluice_protocol::tools::parse_arguments(&self.arguments)
                .unwrap_or_else(|_| serde_json::Value::String(self.arguments.clone())),
        }
    }
}

impl MessageRecord {
    /// The REST view.
    pub fn to_message(&self) -> Message {
        Message {
            id: self.id.clone(),
            role: self.role,
            content: self.content.clone(),
            attachments: self.attachments.clone(),
            status: self.status,
            created_at: self.created_at.clone(),
            generation_id: self.generation_id.clone(),
            tool_call: self.tool.as_ref().map(ToolRecord::to_call),
        }
    }
}

/// Durable storage of sessions and their messages.
pub trait SessionStore: Send + Sync + 'static {
    /// A short name for `/ready` (`redb`, `postgres`).
    fn name(&self) -> &'static str;

    /// Inserts a new session.
    fn create_session(
        &self,
        session: SessionRecord,
    ) -> BoxFuture<'static, Result<(), BackendError>>;

    /// Inserts a new session if its user has fewer than `max_per_user`,
    /// checked and inserted in one step (creates at once cannot both take
    /// the last place); false if refused.
    fn create_session_within(
        &self,
        session: SessionRecord,
        max_per_user: u64,
    ) -> BoxFuture<'static, Result<bool, BackendError>>;

    /// Claims the session for a new owner: raises its fence by one and
    /// returns the record with the new fence; `None` if it does not exist.
    fn claim_session(
        &self,
        id: &str,
    ) -> BoxFuture<'static, Result<Option<SessionRecord>, BackendError>>;

    /// The session with this id, whoever owns it.
    fn get_session(
        &self,
        id: &str,
    ) -> BoxFuture<'static, Result<Option<SessionRecord>, BackendError>>;

    /// Up to `limit` of the user's sessions older than `before`, newest first.
    fn list_sessions(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> BoxFuture<'static, Result<Vec<SessionRecord>, BackendError>>;

    /// Deletes the session and its messages; false if it did not exist.
    fn delete_session(&self, id: &str) -> BoxFuture<'static, Result<bool, BackendError>>;

    /// The session's messages, oldest first.
    fn messages(
        &self,
        session_id: &str,
    ) -> BoxFuture<'static, Result<Vec<MessageRecord>, BackendError>>;

    /// Writes `session` and upserts `messages` in one transaction; nothing if
    /// the session was deleted; [`ErrorKind::Fenced`](crate::ErrorKind::Fenced)
    /// if `session.fence` is below the stored fence.
    fn save(
        &self,
        session: SessionRecord,
        messages: Vec<MessageRecord>,
    ) -> BoxFuture<'static, Result<(), BackendError>>;

    /// The store's own setting `name` (such as the encryption key check),
    /// if set.
    fn setting(&self, name: &str) -> BoxFuture<'static, Result<Option<String>, BackendError>>;

    /// Sets `name` to `value` unless it is set; the value it holds after
    /// (the one set first, when replicas race).
    fn init_setting(
        &self,
        name: &str,
        value: &str,
    ) -> BoxFuture<'static, Result<String, BackendError>>;

    /// Sets `name` to `value`, whatever it held.
    fn set_setting(&self, name: &str, value: &str) -> BoxFuture<'static, Result<(), BackendError>>;

    /// Checks that the store answers.
    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>>;

    /// Connections open and in use, for a pooled store.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
}

/// A save from an owner whose claim is older than the stored one.
pub(crate) fn fenced(session: &SessionRecord, stored_fence: u64) -> BackendError {
    BackendError::new(
        crate::Backend::Store,
        crate::ErrorKind::Fenced,
        format!(
            "session {} was claimed by another owner (fence {stored_fence}; this write has {})",
            session.id, session.fence
        ),
    )
}

/// A connection pool's occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    /// Connections open.
    pub open: usize,
    /// Connections lent out now.
    pub in_use: usize,
}

/// The conformance suite every [`SessionStore`] must pass.
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;

    pub fn session(id: &str, user: &str) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            user_id: user.into(),
            title: format!("title {id}"),
            model: "m".into(),
            system_prompt: None,
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            last_seq: 0,
            fence: 0,
            tools: None,
        }
    }

    pub fn message(session_id: &str, id: &str, status: MessageStatus) -> MessageRecord {
        MessageRecord {
            id: id.into(),
            session_id: session_id.into(),
            role: Role::Assistant,
            content: format!("content of {id}"),
            attachments: vec![],
            status,
            created_at: "2026-01-01T00:00:00Z".into(),
            client_msg_id: None,
            generation_id: Some("g".into()),
            usage: None,
            tool: None,
        }
    }

    pub async fn run<S: SessionStore>(store: S) {
        // Sessions are per user, newest first, paged by `before`.
        for id in ["01", "02", "03", "04"] {
            store.create_session(session(id, "alice")).await.unwrap();
        }
        store.create_session(session("05", "bob")).await.unwrap();
        let ids = |v: Vec<SessionRecord>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.list_sessions("alice", 10, None).await.unwrap()),
            ["04", "03", "02", "01"]
        );
        assert_eq!(
            ids(store.list_sessions("alice", 2, None).await.unwrap()),
            ["04", "03"]
        );
        assert_eq!(
            ids(store.list_sessions("alice", 10, Some("03")).await.unwrap()),
            ["02", "01"]
        );
        assert_eq!(
            ids(store.list_sessions("bob", 10, None).await.unwrap()),
            ["05"]
        );
        assert!(
            store
                .list_sessions("carol", 10, None)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            !store
                .create_session_within(session("06", "bob"), 1)
                .await
                .unwrap()
        );
        assert!(store.get_session("06").await.unwrap().is_none());
        assert!(
            store
                .create_session_within(session("06", "bob"), 2)
                .await
                .unwrap()
        );
        assert_eq!(
            store.list_sessions("bob", 100, None).await.unwrap().len(),
            2
        );
        assert!(store.delete_session("06").await.unwrap());
        // Settings: the first value set stays, unless set again on purpose.
        assert_eq!(store.setting("check").await.unwrap(), None);
        assert_eq!(store.init_setting("check", "one").await.unwrap(), "one");
        assert_eq!(store.init_setting("check", "two").await.unwrap(), "one");
        store.set_setting("check", "three").await.unwrap();
        assert_eq!(
            store.setting("check").await.unwrap().as_deref(),
            Some("three")
        );
        assert_eq!(
            store.get_session("05").await.unwrap().unwrap().user_id,
            "bob"
        );
        assert!(store.get_session("99").await.unwrap().is_none());

        // `save` upserts messages and the session record together.
        let mut s = session("01", "alice");
        s.last_seq = 7;
        let mut m = message("01", "m1", MessageStatus::Streaming);
        store
            .save(
                s.clone(),
                vec![m.clone(), message("01", "m2", MessageStatus::Complete)],
            )
            .await
            .unwrap();
        m.status = MessageStatus::Complete;
        m.content = "final".into();
        s.last_seq = 9;
        store.save(s.clone(), vec![m.clone()]).await.unwrap();
        let messages = store.messages("01").await.unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0], m);
        assert_eq!(messages[1].id, "m2");
        assert_eq!(store.get_session("01").await.unwrap().unwrap().last_seq, 9);
        assert!(store.messages("02").await.unwrap().is_empty());

        // A session's tools, and a tool message's call, round-trip (an
        // empty list of tools is not "every tool").
        let mut with_tools = session("06", "dave");
        with_tools.tools = Some(vec![]);
        store.create_session(with_tools.clone()).await.unwrap();
        assert_eq!(store.get_session("06").await.unwrap().unwrap(), with_tools);
        let mut tooled = session("07", "dave");
        tooled.tools = Some(vec!["calculator".into(), "mcp.x.y".into()]);
        store.create_session(tooled.clone()).await.unwrap();
        let mut call = message("07", "t1", MessageStatus::Streaming);
        call.role = Role::Tool;
        call.tool = Some(ToolRecord {
            call_id: "call_1".into(),
            name: "calculator".into(),
            arguments: "{\"expression\": \"1+1\"}".into(),
            step: 2,
            offset: 17,
        });
        store
            .save(tooled.clone(), vec![call.clone()])
            .await
            .unwrap();
        call.status = MessageStatus::Complete;
        call.content = "2".into();
        store
            .save(tooled.clone(), vec![call.clone()])
            .await
            .unwrap();
        assert_eq!(store.messages("07").await.unwrap(), vec![call]);
        assert_eq!(store.get_session("07").await.unwrap().unwrap(), tooled);

        // Fencing: a claim raises the fence; a save with an older fence is
        // refused whole (neither the record nor a message lands), a save with
        // the current one goes through.
        let first = store.claim_session("02").await.unwrap().unwrap();
        let second = store.claim_session("02").await.unwrap().unwrap();
        assert_eq!(second.fence, first.fence + 1);
        assert_eq!(second.user_id, "alice");
        assert!(store.claim_session("99").await.unwrap().is_none());
        let mut stale = first.clone();
        stale.last_seq = 50;
        let refused = store
            .save(stale, vec![message("02", "m9", MessageStatus::Complete)])
            .await
            .unwrap_err();
        assert_eq!(refused.kind, crate::ErrorKind::Fenced);
        assert!(store.messages("02").await.unwrap().is_empty());
        assert_eq!(store.get_session("02").await.unwrap().unwrap().last_seq, 0);
        let mut current = second.clone();
        current.last_seq = 51;
        store
            .save(current, vec![message("02", "m9", MessageStatus::Complete)])
            .await
            .unwrap();
        let stored = store.get_session("02").await.unwrap().unwrap();
        assert_eq!((stored.last_seq, stored.fence), (51, second.fence));
        assert_eq!(store.messages("02").await.unwrap().len(), 1);

        // Delete removes the session and its messages; a late save does not
        // bring it back.
        assert!(store.delete_session("01").await.unwrap());
        assert!(!store.delete_session("01").await.unwrap());
        store.save(s, vec![m]).await.unwrap();
        assert!(store.get_session("01").await.unwrap().is_none());
        assert!(store.messages("01").await.unwrap().is_empty());
        assert_eq!(
            ids(store.list_sessions("alice", 10, None).await.unwrap()),
            ["04", "03", "02"]
        );
        store.ping().await.unwrap();
    }
}
