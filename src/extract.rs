//! `sluice extract-text TYPE`: the text of one document, in a process of
//! its own. The indexer runs it for every PDF, because a PDF parser can be
//! made to decompress gigabytes from a small file, or to crash, and a
//! server must survive both. This process limits its own address space
//! and CPU time before it reads anything; past them it dies, and the
//! indexer marks the file failed.
//!
//! Protocol: the document on stdin; on stdout its text (exit 0), or why it
//! cannot be read (exit [`UNREADABLE`]). Anything else is a crash.

use std::io::{Read, Write};
use std::process::ExitCode;

use rlimit::Resource;
use sluice_actors::files::extract::{self, EXTRACT_CPU_SECONDS, EXTRACT_MEMORY_BYTES, UNREADABLE};

/// Reads, extracts, writes; see the module.
pub fn run(content_type: &str) -> ExitCode {
    if rlimit::setrlimit(Resource::AS, EXTRACT_MEMORY_BYTES, EXTRACT_MEMORY_BYTES).is_err()
        || rlimit::setrlimit(Resource::CPU, EXTRACT_CPU_SECONDS, EXTRACT_CPU_SECONDS).is_err()
    {
        return ExitCode::FAILURE;
    }
    // A parser's panic is an unreadable file, not a backtrace in the log.
    std::panic::set_hook(Box::new(|_| {}));
    let mut bytes = Vec::new();
    if std::io::stdin()
        .take(extract::MAX_PDF_BYTES + 1)
        .read_to_end(&mut bytes)
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    let (out, code) = match extract::text_of(content_type, &bytes) {
        Ok(text) => (text, ExitCode::SUCCESS),
        Err(e) => (e.0, ExitCode::from(UNREADABLE)),
    };
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    code
}
