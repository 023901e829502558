//! A generation's prompt with its attachments.
//!
//! - **Images** become OpenAI `image_url` content parts of the message they
//!   were attached to, as data URLs, so the provider needs no access to the
//!   bucket. An image over [`MAX_INLINE_BYTES`] or [`MAX_SIDE`] pixels a
//!   side is scaled down first. The newest [`MAX_IMAGES`] images of the
//!   conversation are sent.
//! - **Documents** attached anywhere in the conversation are searched with
//!   the user's last message, and the best [`TOP_K`] chunks go into a
//!   system message just before it, each under its file's name, so the
//!   answer can cite them. Documents attached to that message and still
//!   being indexed are waited for, up to [`INDEX_WAIT`].
//!
//! The files used come back as [`Source`]s, for `generation_end.sources`.

use std::collections::HashMap;
use std::io::Cursor;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use sluice_backends::files::FileRecord;
use sluice_backends::objects::{file_key, read_all};
use sluice_protocol::FileStatus;
use sluice_protocol::event::Source;
use sluice_protocol::openai::ChatRequest;

use super::Files;
use super::indexer::MAX_IMAGE_BYTES;
use crate::SessionError;

/// Images sent with one request, newest first.
pub const MAX_IMAGES: usize = 8;

/// Longest side of an image as sent, in pixels.
pub const MAX_SIDE: u32 = 2048;

/// Largest image sent as it is; a larger one is scaled down and re-encoded.
pub const MAX_INLINE_BYTES: usize = 4 * 1024 * 1024;

/// Chunks of the attached documents put into the prompt.
pub const TOP_K: usize = 5;

/// Least similarity for a chunk to count as relevant.
const MIN_SCORE: f32 = 0.05;

/// Longest wait for documents attached to the last message to be indexed.
pub const INDEX_WAIT: Duration = Duration::from_secs(60);

/// Longest question embedded, in characters.
const MAX_QUERY_CHARS: usize = 2000;

/// The width and height of an image, or why it cannot be read.
pub fn image_size(bytes: &[u8]) -> Result<(u32, u32), String> {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("the image cannot be read: {e}"))?
        .into_dimensions()
        .map_err(|e| format!("the image cannot be read: {e}"))
}

/// Most pixels a side of an image decoded to check it.
const MAX_DECODED_SIDE: u32 = 16_384;

/// Most memory one image's decoding may take.
const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

/// Decodes an image whole, within bounds, to prove it is not corrupt or
/// truncated; its width and height, or why it cannot be used.
pub fn check_image(bytes: &[u8]) -> Result<(u32, u32), String> {
    let image = decode(bytes)?;
    Ok((image.width(), image.height()))
}

/// Decodes an image, refusing one whose size or memory is over the bounds
/// (a decompression bomb).
fn decode(bytes: &[u8]) -> Result<image::DynamicImage, String> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("the image cannot be read: {e}"))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODED_SIDE);
    limits.max_image_height = Some(MAX_DECODED_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    reader
        .decode()
        .map_err(|e| format!("the image cannot be decoded: {e}"))
}

/// An image as a data URL, scaled down if it is too large to send as it is.
fn data_url(content_type: &str, bytes: Vec<u8>) -> Result<String, String> {
    let (width, height) = image_size(&bytes)?;
    let (content_type, bytes) = if bytes.len() > MAX_INLINE_BYTES || width.max(height) > MAX_SIDE {
        let decoded = decode(&bytes)?;
        let scaled = decoded.resize(MAX_SIDE, MAX_SIDE, image::imageops::FilterType::Triangle);
        let mut out = Cursor::new(Vec::new());
        let (format, mime) = if scaled.color().has_alpha() {
            (image::ImageFormat::Png, "image/png")
        } else {
            (image::ImageFormat::Jpeg, "image/jpeg")
        };
        let scaled = if format == image::ImageFormat::Jpeg {
            image::DynamicImage::ImageRgb8(scaled.to_rgb8())
        } else {
            scaled
        };
        scaled
            .write_to(&mut out, format)
            .map_err(|e| format!("the image cannot be re-encoded: {e}"))?;
        (mime, out.into_inner())
    } else {
        (content_type, bytes)
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(format!("data:{content_type};base64,{encoded}"))
}

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

    /// An image as a data URL, scaled down if need be.
    async fn image_url(&self, image: &FileRecord) -> Result<String, SessionError> {
        let bytes = read_all(
            &*self.inner.backends.objects,
            &file_key(&image.id),
            MAX_IMAGE_BYTES,
        )
        .await?
        .ok_or_else(|| {
            SessionError::Internal(format!("the bytes of file {} are missing", image.id))
        })?;
        let content_type = image.content_type.clone();
        tokio::task::spawn_blocking(move || data_url(&content_type, bytes))
            .await
            .map_err(|e| SessionError::Internal(format!("image task failed: {e}")))?
            .map_err(SessionError::BadRequest)
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
        // Documents attached to this very message may still be indexing.
        let fresh: Vec<String> = attachments
            .iter()
            .filter(|(index, _)| *index == last_user)
            .flat_map(|(_, ids)| ids.iter())
            .filter(|id| {
                files
                    .get(*id)
                    .is_some_and(|f| f.status == FileStatus::Stored && !f.is_image())
            })
            .cloned()
            .collect();
        let attaches_documents = attachments.iter().any(|(index, ids)| {
            *index == last_user
                && ids
                    .iter()
                    .any(|id| files.get(id).is_some_and(|f| !f.is_image()))
        });
        self.wait_indexed(user_id, &fresh, files).await?;
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
        let hits: Vec<_> = hits.into_iter().filter(|h| h.score >= MIN_SCORE).collect();
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

    fn png(width: u32, height: u32) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, 7])
        });
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn decoded(url: &str) -> (String, Vec<u8>) {
        let (head, data) = url.split_once(";base64,").unwrap();
        let mime = head.strip_prefix("data:").unwrap().to_owned();
        (
            mime,
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap(),
        )
    }

    #[test]
    fn small_images_go_as_they_are_and_large_ones_are_scaled_down() {
        let small = png(40, 30);
        let (mime, bytes) = decoded(&data_url("image/png", small.clone()).unwrap());
        assert_eq!((mime.as_str(), bytes), ("image/png", small));

        let (mime, bytes) = decoded(&data_url("image/png", png(4000, 1000)).unwrap());
        assert_eq!(mime, "image/jpeg");
        assert_eq!(image_size(&bytes).unwrap(), (MAX_SIDE, MAX_SIDE / 4));

        assert!(data_url("image/png", b"\x89PNG\r\n\x1a\nbroken".to_vec()).is_err());
        let whole = png(20, 20);
        assert_eq!(check_image(&whole).unwrap(), (20, 20));
        assert!(check_image(&whole[..whole.len() - 20]).is_err());
    }

    #[test]
    fn message_text_reads_strings_and_text_parts() {
        assert_eq!(message_text(&json!({"content": "hi"})), "hi");
        let parts = json!({"content": [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]});
        assert_eq!(message_text(&parts), "a\nb");
    }
}
