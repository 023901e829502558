//! File objects (PROTOCOL.md §8).

use serde::{Deserialize, Serialize};

use crate::limits::MAX_FILENAME_BYTES;

/// Where an uploaded file is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// Its bytes are stored; indexing has not finished.
    Stored,
    /// Ready: a document's text is searchable, an image can be attached.
    Indexed,
    /// It cannot be used (`error` says why); its bytes are still stored.
    Failed,
}

/// A file as `/v1/files` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileObject {
    /// Opaque id (UUIDv7).
    pub id: String,
    /// Always `file` (the OpenAI SDKs read it).
    pub object: String,
    /// The name it was uploaded with.
    pub filename: String,
    /// Its size.
    pub bytes: u64,
    /// Its type, as decided from its bytes.
    pub content_type: String,
    /// Where it is in its life.
    pub status: FileStatus,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Searchable pieces of its text (0 for an image).
    pub chunks: u32,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
    /// The uploader's `purpose` field (OpenAI's), `assistants` by default.
    pub purpose: String,
    /// RFC 3339.
    pub created_at: String,
}

/// Answer of `GET /v1/files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileList {
    /// Always `list`.
    pub object: String,
    /// Newest first.
    pub data: Vec<FileObject>,
    /// Whether older files exist (pass the last id as `before`).
    pub has_more: bool,
}

/// A file name as kept: its last path segment, without control
/// characters, at most [`MAX_FILENAME_BYTES`](crate::limits::MAX_FILENAME_BYTES); `upload` if nothing is left.
pub fn clean_filename(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut out = String::new();
    for c in last.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_FILENAME_BYTES {
            break;
        }
        out.push(c);
    }
    let out = out.trim().to_owned();
    if out.is_empty() || out == "." || out == ".." {
        "upload".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_cleaned() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\x\\report.pdf"), "report.pdf");
        assert_eq!(clean_filename("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(clean_filename(""), "upload");
        assert_eq!(clean_filename(".."), "upload");
        assert!(clean_filename(&"é".repeat(300)).len() <= MAX_FILENAME_BYTES);
    }
}
