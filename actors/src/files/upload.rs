//! One upload on its way in: its bytes spooled to a temp file as they
//! arrive (never held in memory), hashed, measured against the limit, and
//! checked for what they are; then stored by [`Files::store_spooled`].

use std::path::Path;

use sha2::{Digest, Sha256};
use sluice_backends::ids::hex;
use tokio::io::AsyncWriteExt;

use super::Files;
use crate::SessionError;
pub use sluice_protocol::files::clean_filename;

/// Bytes kept from the start of an upload to tell its type.
const SNIFF_BYTES: usize = 8192;

/// Types accepted by their magic numbers; anything else must be text.
const BINARY_TYPES: &[&str] = &[
    "application/pdf",
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
];

/// An upload being received. Dropping it (a failed or aborted upload)
/// deletes its temp file; nothing was stored yet.
pub struct Upload {
    pub(super) files: Files,
    pub(super) user_id: String,
    pub(super) filename: String,
    pub(super) purpose: String,
    pub(super) temp: tempfile::TempPath,
    pub(super) out: tokio::io::BufWriter<tokio::fs::File>,
    pub(super) hasher: Sha256,
    pub(super) len: u64,
    /// The most it may take: the upload limit, or what is left of the
    /// user's storage if that is less.
    pub(super) limit: u64,
    /// Whether `limit` is what is left of the user's storage.
    pub(super) by_quota: bool,
    pub(super) head: Vec<u8>,
    pub(super) text: TextCheck,
}

/// An upload received whole and accepted, not stored yet: the caller
/// stores it once the rest of its request is read and fine. Dropping it
/// deletes its temp file.
pub struct Sealed {
    files: Files,
    user_id: String,
    filename: String,
    purpose: String,
    spooled: Spooled,
}

impl Sealed {
    /// Its type, as decided from its bytes.
    pub fn content_type(&self) -> &str {
        &self.spooled.content_type
    }

    /// Stores it: its bytes, then its row.
    pub async fn store(self) -> Result<sluice_backends::files::FileRecord, SessionError> {
        self.files
            .store_spooled(self.user_id, self.filename, self.purpose, self.spooled)
            .await
    }
}

/// A finished upload's spooled bytes and what is known of them.
pub(super) struct Spooled {
    pub temp: tempfile::TempPath,
    pub len: u64,
    pub sha256: String,
    pub content_type: String,
}

impl Upload {
    /// Appends a piece of the file; refuses it past the upload limit.
    pub async fn write(&mut self, piece: &[u8]) -> Result<(), SessionError> {
        self.len += piece.len() as u64;
        let limit = self.limit;
        if self.len > limit {
            self.files
                .inner
                .metrics
                .uploads_total
                .with_label_values(&["too_large"])
                .inc();
            if self.by_quota {
                return Err(super::over_storage(self.files.inner.config.max_user_bytes));
            }
            return Err(sluice_protocol::ProtocolError::TooLarge {
                what: "upload",
                size: self.len as usize,
                limit: limit as usize,
            }
            .into());
        }
        self.hasher.update(piece);
        if self.head.len() < SNIFF_BYTES {
            let take = (SNIFF_BYTES - self.head.len()).min(piece.len());
            self.head.extend_from_slice(&piece[..take]);
        }
        self.text.feed(piece);
        self.out
            .write_all(piece)
            .await
            .map_err(|e| SessionError::Internal(format!("cannot spool the upload: {e}")))
    }

    /// The whole file has arrived: decides its type; nothing is stored
    /// until [`Sealed::store`].
    pub async fn finish(mut self) -> Result<Sealed, SessionError> {
        self.out
            .flush()
            .await
            .map_err(|e| SessionError::Internal(format!("cannot spool the upload: {e}")))?;
        if self.len == 0 {
            return Err(SessionError::BadRequest("the file is empty".into()));
        }
        let content_type = match content_type(&self.head, self.text.is_text(), &self.filename) {
            Ok(content_type) => content_type,
            Err(reason) => {
                self.files
                    .inner
                    .metrics
                    .uploads_total
                    .with_label_values(&["unsupported"])
                    .inc();
                return Err(SessionError::UnsupportedMedia(reason));
            }
        };
        Ok(Sealed {
            spooled: Spooled {
                temp: self.temp,
                len: self.len,
                sha256: hex(&self.hasher.finalize()),
                content_type,
            },
            files: self.files,
            user_id: self.user_id,
            filename: self.filename,
            purpose: self.purpose,
        })
    }
}

/// Whether a stream of bytes is UTF-8 text without NULs, checked piece by
/// piece (a character may be split between pieces).
#[derive(Debug, Default)]
pub(super) struct TextCheck {
    /// The start of a character cut off at the end of the last piece.
    carry: Vec<u8>,
    broken: bool,
}

impl TextCheck {
    pub fn feed(&mut self, mut piece: &[u8]) {
        if self.broken {
            return;
        }
        if piece.contains(&0) {
            self.broken = true;
            return;
        }
        while !self.carry.is_empty() && !piece.is_empty() {
            self.carry.push(piece[0]);
            piece = &piece[1..];
            match std::str::from_utf8(&self.carry) {
                Ok(_) => self.carry.clear(),
                Err(e) if e.error_len().is_none() && self.carry.len() < 4 => {}
                Err(_) => {
                    self.broken = true;
                    return;
                }
            }
        }
        if let Err(e) = std::str::from_utf8(piece) {
            match e.error_len() {
                None => self.carry = piece[e.valid_up_to()..].to_vec(),
                Some(_) => self.broken = true,
            }
        }
    }

    pub fn is_text(&self) -> bool {
        !self.broken && self.carry.is_empty()
    }
}

/// The type of a file, from its first bytes (magic numbers), whether it
/// is all text, and for text its name's extension; or why it is refused.
pub fn content_type(head: &[u8], is_text: bool, filename: &str) -> Result<String, String> {
    if let Some(kind) = infer::get(head) {
        let mime = kind.mime_type();
        if BINARY_TYPES.contains(&mime) {
            return Ok(mime.to_owned());
        }
        // Some signatures are a few letters ("BM", "ID3"): a file that is
        // all UTF-8 text is text, whatever it starts with.
        if !is_text {
            return Err(format!(
                "files of type {mime} are not accepted (text, Markdown, source code, PDF, PNG, JPEG, GIF and WebP are)"
            ));
        }
    }
    if !is_text {
        return Err(
            "the file is neither UTF-8 text nor a PDF, PNG, JPEG, GIF or WebP image".into(),
        );
    }
    let extension = Path::new(filename)
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    Ok(match extension.as_str() {
        "md" | "markdown" => "text/markdown",
        "csv" => "text/csv",
        "html" | "htm" => "text/html",
        "json" => "application/json",
        "rs" | "py" | "js" | "ts" | "tsx" | "jsx" | "go" | "java" | "c" | "h" | "cpp" | "hpp"
        | "cc" | "cs" | "rb" | "php" | "swift" | "kt" | "scala" | "sh" | "sql" | "toml"
        | "yaml" | "yml" | "css" | "lua" | "r" | "pl" | "hs" | "ex" | "exs" | "zig" => {
            "text/x-source"
        }
        _ => "text/plain",
    }
    .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_the_bytes_not_the_name() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(content_type(png, false, "notes.txt").unwrap(), "image/png");
        assert_eq!(
            content_type(b"%PDF-1.7\n", true, "x.png").unwrap(),
            "application/pdf"
        );
        assert_eq!(
            content_type(b"# Title\n", true, "a.MD").unwrap(),
            "text/markdown"
        );
        assert_eq!(
            content_type(b"fn main() {}", true, "main.rs").unwrap(),
            "text/x-source"
        );
        assert_eq!(content_type(b"hello", true, "noext").unwrap(), "text/plain");
        // A zip (or an .exe) named .txt is refused.
        assert!(content_type(b"PK\x03\x04\x14\0\0\0", false, "a.txt").is_err());
        assert!(content_type(b"MZ\x90\0\x03\0\0\0", false, "a.txt").is_err());
        // Text that starts like a signature is still text.
        assert_eq!(
            content_type(b"BMW service log", true, "cars.txt").unwrap(),
            "text/plain"
        );
        // Binary bytes with no known magic are refused.
        assert!(content_type(&[1, 2, 3, 0, 5], false, "a.txt").is_err());
    }

    #[test]
    fn text_is_checked_across_pieces() {
        let text = "naïve café — 日本".as_bytes();
        for cut in 0..text.len() {
            let mut check = TextCheck::default();
            check.feed(&text[..cut]);
            check.feed(&text[cut..]);
            assert!(check.is_text(), "cut at {cut}");
        }
        let mut truncated = TextCheck::default();
        truncated.feed(&text[..text.len() - 1]);
        assert!(!truncated.is_text());
        let mut nul = TextCheck::default();
        nul.feed(b"a\0b");
        assert!(!nul.is_text());
        let mut latin1 = TextCheck::default();
        latin1.feed(b"caf\xe9 ok");
        assert!(!latin1.is_text());
    }
}
