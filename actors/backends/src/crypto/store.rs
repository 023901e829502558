//! [`SealedStore`]: a session store whose user text is sealed at rest:
//! messages' content and tool arguments, sessions' titles and system
//! prompts. Everything else (ids, times, statuses, counts) stays readable,
//! so the store can still index, order and fence by it. Each value is
//! sealed for its record and field: moved to another, it does not open.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::Keyring;
use crate::BackendError;
use crate::store::{MessageRecord, PoolStatus, SessionRecord, SessionStore};

/// `inner`, with user text sealed by `keys`.
pub struct SealedStore {
    inner: Arc<dyn SessionStore>,
    keys: Arc<Keyring>,
}

impl SealedStore {
    /// Seals what goes into `inner` and opens what comes out.
    pub fn new(inner: Arc<dyn SessionStore>, keys: Arc<Keyring>) -> Self {
        Self { inner, keys }
    }
}

/// Which record and field a value belongs to.
fn session_field(session: &SessionRecord, field: &str) -> String {
    format!("session\0{}\0{field}", session.id)
}

fn message_field(message: &MessageRecord, field: &str) -> String {
    format!("message\0{}\0{}\0{field}", message.session_id, message.id)
}

fn seal_session(keys: &Keyring, mut session: SessionRecord) -> SessionRecord {
    if !session.title.is_empty() {
        session.title = keys.seal_text(&session.title, &session_field(&session, "title"));
    }
    let prompt = session_field(&session, "system_prompt");
    session.system_prompt = session.system_prompt.map(|p| keys.seal_text(&p, &prompt));
    session
}

fn open_session(keys: &Keyring, mut session: SessionRecord) -> Result<SessionRecord, BackendError> {
    let title = session_field(&session, "title");
    let prompt = session_field(&session, "system_prompt");
    session.title = keys.open_text(std::mem::take(&mut session.title), &title)?;
    session.system_prompt = session
        .system_prompt
        .map(|p| keys.open_text(p, &prompt))
        .transpose()?;
    Ok(session)
}

fn seal_message(keys: &Keyring, mut message: MessageRecord) -> MessageRecord {
    message.content = keys.seal_text(&message.content, &message_field(&message, "content"));
    let arguments = message_field(&message, "arguments");
    if let Some(tool) = &mut message.tool {
        tool.arguments = keys.seal_text(&tool.arguments, &arguments);
    }
    message
}

fn open_message(keys: &Keyring, mut message: MessageRecord) -> Result<MessageRecord, BackendError> {
    let content = message_field(&message, "content");
    let arguments = message_field(&message, "arguments");
    message.content = keys.open_text(std::mem::take(&mut message.content), &content)?;
    if let Some(tool) = &mut message.tool {
        tool.arguments = keys.open_text(std::mem::take(&mut tool.arguments), &arguments)?;
    }
    Ok(message)
}

impl SessionStore for SealedStore {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn create_session(
        &self,
        session: SessionRecord,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        self.inner.create_session(seal_session(&self.keys, session))
    }

    fn create_session_within(
        &self,
        session: SessionRecord,
        max_per_user: u64,
    ) -> BoxFuture<'static, Result<bool, BackendError>> {
        self.inner
            .create_session_within(seal_session(&self.keys, session), max_per_user)
    }

    fn claim_session(
        &self,
        id: &str,
    ) -> BoxFuture<'static, Result<Option<SessionRecord>, BackendError>> {
        let (claimed, keys) = (self.inner.claim_session(id), self.keys.clone());
        Box::pin(async move { claimed.await?.map(|s| open_session(&keys, s)).transpose() })
    }

    fn get_session(
        &self,
        id: &str,
    ) -> BoxFuture<'static, Result<Option<SessionRecord>, BackendError>> {
        let (got, keys) = (self.inner.get_session(id), self.keys.clone());
        Box::pin(async move { got.await?.map(|s| open_session(&keys, s)).transpose() })
    }

    fn list_sessions(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> BoxFuture<'static, Result<Vec<SessionRecord>, BackendError>> {
        let (listed, keys) = (
            self.inner.list_sessions(user_id, limit, before),
            self.keys.clone(),
        );
        // One session that does not open is listed without its title and
        // prompt, rather than failing the user's whole list.
        Box::pin(async move {
            Ok(listed
                .await?
                .into_iter()
                .map(|s| {
                    let mut bare = s.clone();
                    open_session(&keys, s).unwrap_or_else(|e| {
                        tracing::error!(session = %bare.id, error = %e, "a session's title does not open");
                        bare.title.clear();
                        bare.system_prompt = None;
                        bare
                    })
                })
                .collect())
        })
    }

    fn setting(&self, name: &str) -> BoxFuture<'static, Result<Option<String>, BackendError>> {
        self.inner.setting(name)
    }

    fn init_setting(
        &self,
        name: &str,
        value: &str,
    ) -> BoxFuture<'static, Result<String, BackendError>> {
        self.inner.init_setting(name, value)
    }

    fn set_setting(&self, name: &str, value: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        self.inner.set_setting(name, value)
    }

    fn delete_session(&self, id: &str) -> BoxFuture<'static, Result<bool, BackendError>> {
        self.inner.delete_session(id)
    }

    fn messages(
        &self,
        session_id: &str,
    ) -> BoxFuture<'static, Result<Vec<MessageRecord>, BackendError>> {
        let (read, keys) = (self.inner.messages(session_id), self.keys.clone());
        Box::pin(async move {
            read.await?
                .into_iter()
                .map(|m| open_message(&keys, m))
                .collect()
        })
    }

    fn save(
        &self,
        session: SessionRecord,
        messages: Vec<MessageRecord>,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let keys = &self.keys;
        self.inner.save(
            seal_session(keys, session),
            messages
                .into_iter()
                .map(|m| seal_message(keys, m))
                .collect(),
        )
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        self.inner.ping()
    }

    fn pool_status(&self) -> Option<PoolStatus> {
        self.inner.pool_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redb::RedbSessionStore;

    #[tokio::test]
    async fn a_sealed_redb_store_conforms_and_keeps_no_text_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn SessionStore> =
            Arc::new(RedbSessionStore::open(&dir.path().join("s.redb")).unwrap());
        let keys = Arc::new(Keyring::new(Some([8; 32]), &[]));
        crate::store::conformance::run(SealedStore::new(inner.clone(), keys.clone())).await;
        // What the inner store holds is sealed.
        let sealed = SealedStore::new(inner.clone(), keys);
        let mut session = crate::store::conformance::session("enc", "alice");
        session.title = "my secret title".into();
        sealed.create_session(session.clone()).await.unwrap();
        let mut message = crate::store::conformance::message(
            "enc",
            "m1",
            sluice_protocol::MessageStatus::Complete,
        );
        message.content = "the launch code is 0000".into();
        sealed.save(session, vec![message]).await.unwrap();
        let raw = inner.messages("enc").await.unwrap();
        assert!(raw[0].content.starts_with("sle1:"), "{}", raw[0].content);
        let raw_session = inner.get_session("enc").await.unwrap().unwrap();
        assert!(!raw_session.title.contains("secret"));
        let opened = sealed.messages("enc").await.unwrap();
        assert_eq!(opened[0].content, "the launch code is 0000");
        assert_eq!(
            sealed.get_session("enc").await.unwrap().unwrap().title,
            "my secret title"
        );
        // Another key fails loudly rather than returning sealed text.
        let other = SealedStore::new(inner.clone(), Arc::new(Keyring::new(Some([9; 32]), &[])));
        assert!(other.messages("enc").await.is_err());
        // A sealed message moved into another session does not open there.
        let target = crate::store::conformance::session("enc2", "mallory");
        inner.create_session(target.clone()).await.unwrap();
        let mut moved = raw[0].clone();
        moved.session_id = "enc2".into();
        inner.save(target, vec![moved]).await.unwrap();
        assert!(sealed.messages("enc2").await.is_err());
    }
}
