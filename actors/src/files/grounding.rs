//! A generation's prompt with its attachments.
//!
//! - **Images** become OpenAI `image_url` content parts of the message they
//!   were attached to, as data URLs, so the provider needs no access to the
//!   bucket: the version made at indexing ([`super::images`]), scaled down
//!   if the original was too large. The newest [`MAX_IMAGES`] images of the
//!   conversation are sent.
//! - **Documents** attached anywhere in the conversation are searched with
//!   the user's last message, and the best [`TOP_K`] chunks go into a
//!   system message just before it, each under its file's name, so the
//!   answer can cite them. Documents attached to that message and still
//!   being indexed are waited for, up to [`INDEX_WAIT`].
//!
//! The files used come back as [`Source`]s, for `generation_end.sources`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use sluice_backends::files::FileRecord;
use sluice_backends::objects::{file_key, read_all};
use sluice_protocol::FileStatus;
use sluice_protocol::event::Source;
use sluice_protocol::openai::ChatRequest;

use super::Files;
use super::images::{MAX_INLINE_BYTES, sent_key};
use crate::SessionError;

/// Images sent with one request, newest first.
pub const MAX_IMAGES: usize = 8;

/// Chunks of the attached documents put into the prompt.
pub const TOP_K: usize = 5;

/// Least similarity for a chunk of an earlier message's document to count
/// as relevant (the message being answered gets its documents' best
/// chunks whatever their score: "summarize this" shares no words with it).
const MIN_SCORE: f32 = 0.05;

/// Longest wait for files attached to the last message to be indexed.
pub const INDEX_WAIT: Duration = Duration::from_secs(60);

/// Longest question embedded, in characters.
const MAX_QUERY_CHARS: usize = 2000;

/// The text of a request message's content (a string, or text parts).
fn message_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

impl Files {
    /// `request` with the attachments of its messages (message index →
    /// file ids) worked in, and the files it drew on.
    pub async fn ground(
        &self,
        user_id: &str,
        mut request: ChatRequest,
        attachments: &[(usize, Vec<String>)],
    ) -> Result<(ChatRequest, Vec<Source>), SessionError> {
        if attachments.is_empty() {
            return Ok((request, Vec::new()));
        }
        let mut files: HashMap<String, FileRecord> = HashMap::new();
        for (_, ids) in attachments {
            for id in ids {
                if files.contains_key(id) {
                    continue;
                }
                // A file deleted since it was attached is left out.
                match self.get(user_id, id).await {
                    Ok(file) => {
                        files.insert(id.clone(), file);
                    }
                    Err(SessionError::FileNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        // Attachments of the message being answered must work; older ones
        // are left out while their backend is down, so a conversation that
        // once had a file does not stop when S3 or Chroma does.
        let current = request.messages.iter().rposition(|m| m["role"] == "user");
        // Files attached to this very message may still be indexing.
        let fresh: Vec<String> = attachments
            .iter()
            .filter(|(index, _)| Some(*index) == current)
            .flat_map(|(_, ids)| ids.iter())
            .filter(|id| {
                files
                    .get(*id)
                    .is_some_and(|f| f.status == FileStatus::Stored)
            })
            .cloned()
            .collect();
        self.wait_indexed(user_id, &fresh, &mut files).await?;
        self.add_images(&mut request, attachments, &files, current)
            .await?;
        let sources = self
            .add_excerpts(user_id, &mut request, attachments, &mut files, current)
            .await?;
        Ok((request, sources))
    }

    /// Turns the messages with image attachments into content parts. An
    /// image that cannot be read fails the prompt only if it is attached to
    /// the message at `current`.
    async fn add_images(
        &self,
        request: &mut ChatRequest,
        attachments: &[(usize, Vec<String>)],
        files: &HashMap<String, FileRecord>,
        current: Option<usize>,
    ) -> Result<(), SessionError> {
        let mut budget = MAX_IMAGES;
        for (index, ids) in attachments.iter().rev() {
            let images: Vec<&FileRecord> = ids
                .iter()
                .filter_map(|id| files.get(id))
                .filter(|f| f.is_image() && f.status != FileStatus::Failed)
                .take(budget)
                .collect();
            if images.is_empty() {
                continue;
            }
            budget -= images.len();
            let text = message_text(&request.messages[*index]);
            let mut parts = Vec::new();
            if !text.is_empty() {
                parts.push(json!({"type": "text", "text": text}));
            }
            for image in images {
                match self.image_url(image).await {
                    Ok(url) => parts.push(json!({"type": "image_url", "image_url": {"url": url}})),
                    Err(e) if Some(*index) == current => return Err(e),
                    Err(e) => {
                        tracing::warn!(file = %image.id, error = %e, "an earlier message's image is left out");
                    }
                }
            }
            if parts.iter().any(|p| p["type"] == "image_url") {
                request.messages[*index]["content"] = Value::Array(parts);
            }
            if budget == 0 {
                break;
            }
        }
        Ok(())
    }

    /// An indexed image as a data URL: its version for sending if it has
    /// one, else the original, which was small enough.
    async fn image_url(&self, image: &FileRecord) -> Result<String, SessionError> {
        if image.status != FileStatus::Indexed {
            return Err(SessionError::Overloaded(format!(
                "the image {} is still being processed; send again in a moment",
                image.filename
            )));
        }
        let objects = &*self.inner.backends.objects;
        let missing =
            || SessionError::Internal(format!("the bytes of file {} are missing", image.id));
        let bytes = match read_all(objects, &sent_key(&image.id), MAX_INLINE_BYTES as u64).await? {
            Some(scaled) => scaled,
            None => read_all(objects, &file_key(&image.id), MAX_INLINE_BYTES as u64)
                .await?
                .ok_or_else(missing)?,
        };
        let content_type =
            infer::get(&bytes).map_or(image.content_type.as_str(), |t| t.mime_type());
        let encoded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        Ok(format!("data:{content_type};base64,{encoded}"))
    }

    /// Searches the attached documents with the last user message (at
    /// `current`) and puts the best chunks before it. A failed search fails
    /// the prompt only if that message attaches a document itself.
    async fn add_excerpts(
        &self,
        user_id: &str,
        request: &mut ChatRequest,
        attachments: &[(usize, Vec<String>)],
        files: &mut HashMap<String, FileRecord>,
        current: Option<usize>,
    ) -> Result<Vec<Source>, SessionError> {
        let Some(last_user) = current else {
            return Ok(Vec::new());
        };
        let documents: Vec<String> = files
            .values()
            .filter(|f| !f.is_image() && f.status != FileStatus::Failed)
            .map(|f| f.id.clone())
            .collect();
        if documents.is_empty() {
            return Ok(Vec::new());
        }
        // The documents of the message being answered.
        let own: Vec<&String> = attachments
            .iter()
            .filter(|(index, _)| *index == last_user)
            .flat_map(|(_, ids)| ids.iter())
            .filter(|id| files.get(*id).is_some_and(|f| !f.is_image()))
            .collect();
        let attaches_documents = !own.is_empty();
        let question: String = message_text(&request.messages[last_user])
            .chars()
            .take(MAX_QUERY_CHARS)
            .collect();
        if question.trim().is_empty() {
            // Nothing to search with (a message of attachments only).
            return Ok(Vec::new());
        }
        let metrics = &self.inner.metrics;
        let backends = &self.inner.backends;
        let searched = async {
            let query = backends
                .embedder
                .embed(vec![question])
                .await?
                .pop()
                .unwrap_or_default();
            backends
                .vectors
                .search(user_id, query, Some(documents), TOP_K)
                .await
        }
        .await;
        let hits = match searched {
            Ok(hits) => hits,
            Err(e) => {
                metrics.retrievals_total.with_label_values(&["error"]).inc();
                if attaches_documents {
                    return Err(e.into());
                }
                tracing::warn!(error = %e, "earlier messages' documents are left out");
                return Ok(Vec::new());
            }
        };
        let hits: Vec<_> = hits
            .into_iter()
            .filter(|h| h.score >= MIN_SCORE || own.contains(&&h.file_id))
            .collect();
        if hits.is_empty() {
            metrics.retrievals_total.with_label_values(&["empty"]).inc();
            return Ok(Vec::new());
        }
        metrics.retrievals_total.with_label_values(&["hits"]).inc();
        let mut excerpts = String::from(
            "The user attached files. Below are the passages from them most relevant to the \
             user's last message, each under the name of its file. Answer from them where they \
             apply, and cite the file name in brackets, like [name.pdf].\n",
        );
        let mut sources: Vec<Source> = Vec::new();
        for hit in &hits {
            let filename = files
                .get(&hit.file_id)
                .map_or("file", |f| f.filename.as_str());
            excerpts.push_str(&format!(
                "\n[{filename}, part {}]\n{}\n",
                hit.ordinal + 1,
                hit.text
            ));
            match sources.iter_mut().find(|s| s.file_id == hit.file_id) {
                Some(source) => source.chunks.push(hit.ordinal),
                None => sources.push(Source {
                    file_id: hit.file_id.clone(),
                    filename: filename.to_owned(),
                    chunks: vec![hit.ordinal],
                }),
            }
        }
        request
            .messages
            .insert(last_user, ChatRequest::text_message("system", &excerpts));
        Ok(sources)
    }

    /// The `k` passages of all the user's indexed documents nearest to
    /// `query`, best first, each with its file's name (for `search_files`).
    pub async fn search(
        &self,
        user_id: &str,
        query: &str,
        k: usize,
    ) -> Result<Vec<(String, sluice_backends::vectors::Hit)>, SessionError> {
        let query: String = query.chars().take(MAX_QUERY_CHARS).collect();
        let backends = &self.inner.backends;
        let vector = backends
            .embedder
            .embed(vec![query])
            .await?
            .pop()
            .unwrap_or_default();
        let hits = backends.vectors.search(user_id, vector, None, k).await?;
        let mut names: HashMap<String, Option<String>> = HashMap::new();
        let mut passages = Vec::with_capacity(hits.len());
        for hit in hits {
            if !names.contains_key(&hit.file_id) {
                // A file deleted since it was indexed is left out.
                let name = match self.get(user_id, &hit.file_id).await {
                    Ok(file) => Some(file.filename),
                    Err(SessionError::FileNotFound(_)) => None,
                    Err(e) => return Err(e),
                };
                names.insert(hit.file_id.clone(), name);
            }
            if let Some(Some(name)) = names.get(&hit.file_id) {
                passages.push((name.clone(), hit));
            }
        }
        self.inner
            .metrics
            .retrievals_total
            .with_label_values(&[if passages.is_empty() { "empty" } else { "hits" }])
            .inc();
        Ok(passages)
    }

    /// Waits until none of `ids` is still `stored` (each indexed or failed),
    /// up to [`INDEX_WAIT`], updating `files`.
    async fn wait_indexed(
        &self,
        user_id: &str,
        ids: &[String],
        files: &mut HashMap<String, FileRecord>,
    ) -> Result<(), SessionError> {
        let deadline = Instant::now() + INDEX_WAIT;
        let mut waiting: Vec<String> = ids.to_vec();
        while !waiting.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut still = Vec::new();
            for id in waiting {
                match self.get(user_id, &id).await {
                    Ok(file) => {
                        if file.status == FileStatus::Stored {
                            still.push(id.clone());
                        }
                        files.insert(id, file);
                    }
                    // Deleted meanwhile: left out.
                    Err(SessionError::FileNotFound(_)) => {
                        files.remove(&id);
                    }
                    Err(e) => return Err(e),
                }
            }
            waiting = still;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_reads_strings_and_text_parts() {
        assert_eq!(message_text(&json!({"content": "hi"})), "hi");
        let parts = json!({"content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]});
        assert_eq!(message_text(&parts), "a\nb");
    }
}
