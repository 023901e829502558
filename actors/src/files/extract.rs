//! A file's text, and its cutting into overlapping chunks for the index.

use std::panic::AssertUnwindSafe;

/// Characters (roughly) in one chunk.
pub const CHUNK_CHARS: usize = 1000;

/// Characters each chunk repeats from the end of the one before, so a
/// sentence cut at a boundary is whole in one of the two.
pub const CHUNK_OVERLAP: usize = 200;

/// Most text indexed from one file (bytes; a text file's size, or a PDF's
/// extracted text): past it, indexing fails with a reason. About 20,000
/// chunks.
pub const MAX_TEXT_BYTES: u64 = 16 * 1024 * 1024;

/// Largest PDF indexed (bytes): the parser holds the whole document.
pub const MAX_PDF_BYTES: u64 = 64 * 1024 * 1024;

/// Address space a PDF's parsing process may use (bytes).
pub const EXTRACT_MEMORY_BYTES: u64 = 1 << 30;

/// CPU time a PDF's parsing process may use (seconds).
pub const EXTRACT_CPU_SECONDS: u64 = 60;

/// Wall-clock time a PDF's parsing process may take.
pub const EXTRACT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The parsing process's exit status for a file it could not read (its
/// reason on stdout).
pub const UNREADABLE: u8 = 3;

/// Where a PDF is parsed.
#[derive(Debug, Clone)]
pub enum Extractor {
    /// In this process, on the blocking pool: for tests, and for text,
    /// which cannot blow up.
    InProcess,
    /// In a child process, `PROGRAM extract-text TYPE` (the `sluice`
    /// binary), which limits its own memory and CPU: a PDF that would
    /// decompress gigabytes or crash the parser kills only the child.
    Process(std::path::PathBuf),
}

/// The text of a document, extracted as `extractor` says for a PDF.
pub async fn document_text(
    extractor: &Extractor,
    content_type: &str,
    bytes: Vec<u8>,
) -> Result<String, Unreadable> {
    if let Extractor::Process(program) = extractor
        && content_type == "application/pdf"
    {
        return in_child(program, content_type, bytes).await;
    }
    let content_type = content_type.to_owned();
    tokio::task::spawn_blocking(move || text_of(&content_type, &bytes))
        .await
        .map_err(|_| Unreadable("the file could not be read".into()))?
}

/// The parsing in a child process (see [`Extractor::Process`]).
async fn in_child(
    program: &std::path::Path,
    content_type: &str,
    bytes: Vec<u8>,
) -> Result<String, Unreadable> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut child = tokio::process::Command::new(program)
        .args(["extract-text", content_type])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Unreadable(format!("the PDF reader could not start: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let feed = async move {
        // A child that died early closes its end; its status says why.
        let _ = stdin.write_all(&bytes).await;
    };
    let read = async move {
        let mut out = Vec::new();
        let _ = (&mut stdout)
            .take(MAX_TEXT_BYTES + 1024)
            .read_to_end(&mut out)
            .await;
        out
    };
    let run = async {
        let ((), out) = tokio::join!(feed, read);
        let status = child.wait().await;
        (out, status)
    };
    let (out, status) = tokio::time::timeout(EXTRACT_TIMEOUT, run)
        .await
        .map_err(|_| {
            Unreadable(format!(
                "reading the PDF took longer than {} s",
                EXTRACT_TIMEOUT.as_secs()
            ))
        })?;
    let text = String::from_utf8_lossy(&out).into_owned();
    match status.ok().and_then(|s| s.code()) {
        Some(0) => Ok(text),
        Some(code) if code == i32::from(UNREADABLE) => Err(Unreadable(text)),
        _ => Err(Unreadable(format!(
            "the PDF could not be read within {} MiB of memory and {} s of CPU",
            EXTRACT_MEMORY_BYTES >> 20,
            EXTRACT_CPU_SECONDS
        ))),
    }
}

/// Why a file's text could not be had: said to the user as the file's
/// `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// The text of a document's bytes.
pub fn text_of(content_type: &str, bytes: &[u8]) -> Result<String, Unreadable> {
    let text = if content_type == "application/pdf" {
        pdf_text(bytes)?
    } else {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| Unreadable("the file is not valid UTF-8 text".into()))?
    };
    if text.len() as u64 > MAX_TEXT_BYTES {
        return Err(Unreadable(format!(
            "the file holds over {} MiB of text, more than is indexed",
            MAX_TEXT_BYTES >> 20
        )));
    }
    if text.trim().is_empty() {
        return Err(Unreadable(if content_type == "application/pdf" {
            "the PDF has no text layer (a scanned document?); nothing to search".into()
        } else {
            "the file has no text".into()
        }));
    }
    Ok(text)
}

/// The text layer of a PDF. The parser may panic on a malformed document;
/// that is caught and reported like any other unreadable file.
fn pdf_text(bytes: &[u8]) -> Result<String, Unreadable> {
    let parsed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        pdf_extract::extract_text_from_mem(bytes)
    }));
    match parsed {
        Ok(Ok(text)) => Ok(text),
        Ok(Err(e)) => Err(Unreadable(format!("the PDF cannot be read: {e}"))),
        Err(_) => Err(Unreadable("the PDF is malformed".into())),
    }
}

/// The largest index at most `i` that is a character boundary of `text`.
fn floor_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Where to end a chunk that may end at `limit` at the latest: the last
/// paragraph break, else sentence end, else space, in its final third.
fn break_before(text: &str, start: usize, limit: usize) -> usize {
    let window_start = floor_boundary(text, start + (limit - start) * 2 / 3);
    let window = &text[window_start..limit];
    for pattern in ["\n\n", ". ", "\n", " "] {
        if let Some(at) = window.rfind(pattern) {
            return window_start + at + pattern.len();
        }
    }
    limit
}

/// Cuts `text` into chunks of about `size` bytes, each repeating about
/// `overlap` bytes of the one before, broken at paragraph, sentence or word
/// boundaries where there are any. Whitespace runs are collapsed.
pub fn chunks(text: &str, size: usize, overlap: usize) -> Vec<String> {
    let text = normalize_space(text);
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let limit = floor_boundary(&text, start + size);
        let end = if limit == text.len() {
            limit
        } else {
            break_before(&text, start, limit)
        };
        let piece = text[start..end].trim();
        if !piece.is_empty() {
            out.push(piece.to_owned());
        }
        if end == text.len() {
            break;
        }
        // Step back by the overlap, then on to the start of a word.
        let mut next = floor_boundary(&text, end.saturating_sub(overlap)).max(start + 1);
        next = floor_boundary(&text, next).max(start + 1);
        while !text.is_char_boundary(next) {
            next += 1;
        }
        if let Some(space) = text[next..end].find(' ') {
            next += space + 1;
        }
        start = next.max(start + 1);
        while !text.is_char_boundary(start) {
            start += 1;
        }
    }
    out
}

/// Runs of spaces and tabs become one space; three or more line breaks two.
fn normalize_space(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut spaces, mut breaks) = (0, 0);
    for c in text.chars() {
        match c {
            '\n' => breaks += 1,
            c if c.is_whitespace() => spaces += 1,
            c => {
                if breaks > 0 {
                    out.push_str(if breaks > 1 { "\n\n" } else { "\n" });
                } else if spaces > 0 && !out.is_empty() {
                    out.push(' ');
                }
                (spaces, breaks) = (0, 0);
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_text_overlap_and_break_at_words() {
        let sentences: Vec<String> = (0..200)
            .map(|i| format!("Sentence number {i} talks about topic {}.", i * 7))
            .collect();
        let text = sentences.join(" ");
        let pieces = chunks(&text, 300, 60);
        assert!(pieces.len() > 20);
        for piece in &pieces {
            assert!(piece.len() <= 300, "{}", piece.len());
        }
        // Every sentence is whole in some chunk.
        for sentence in &sentences {
            assert!(
                pieces.iter().any(|p| p.contains(sentence.as_str())),
                "{sentence}"
            );
        }
        // Neighbours share text, and chunks start at a word.
        for pair in pieces.windows(2) {
            let tail = &pair[0][pair[0].len() - 20..];
            assert!(pair[1].contains(tail.split(' ').next_back().unwrap()));
            assert!(!pair[1].starts_with(' '));
        }
    }

    #[test]
    fn multibyte_text_and_text_without_spaces_are_cut_safely() {
        let text = "日本語のテキスト".repeat(200);
        let pieces = chunks(&text, 100, 20);
        assert!(pieces.len() > 10);
        let glued = "ü".repeat(1000);
        assert!(!chunks(&glued, 99, 10).is_empty());
        assert!(chunks("   \n\n  ", 100, 10).is_empty());
        assert_eq!(chunks("short", 100, 10), ["short"]);
    }

    #[test]
    fn unreadable_documents_say_why() {
        assert!(text_of("application/pdf", b"%PDF-1.4 garbage").is_err());
        assert!(
            text_of("text/plain", b"   ")
                .unwrap_err()
                .0
                .contains("no text")
        );
        assert!(text_of("text/plain", &[0xff, 0xfe]).is_err());
        assert_eq!(text_of("text/markdown", b"# hi").unwrap(), "# hi");
    }
}
