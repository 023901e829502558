//! The indexer: a background task per replica that makes uploaded files
//! usable, off the request path.
//!
//! A document's text is extracted, cut into overlapping chunks, embedded in
//! batches and written to the vector index; an image is decoded whole to
//! check it. Its `status` then moves from `stored` to `indexed`, or to
//! `failed` with a reason (no text layer, a corrupt file): never a crash
//! from a parser's panic, which is caught.
//!
//! A file is indexed once across replicas: the replica that claims it (see
//! [`FileStore::claim_indexing`]) indexes it, renewing its claim after
//! every batch; a claim it can no longer renew (the file was deleted, or
//! another replica took it after this one stalled) stops it. The task is
//! woken for each new upload, and every [`SWEEP_EVERY`] it looks for files
//! still `stored` whose claim has expired: files a dead replica left, and
//! files whose indexing met a backend that was down, which are tried again
//! after a backoff ([`RETRY_AFTER`], doubling). A restarting replica lets
//! go of the claims its previous life held. A file whose every one of
//! [`MAX_ATTEMPTS`] attempts ended without an outcome (its replica died
//! each time, say on a PDF that crashes the parser, or a backend stayed
//! down) fails, so no file can take replicas down one after another.
//!
//! [`FileStore::claim_indexing`]: sluice_backends::files::FileStore::claim_indexing

use std::time::Duration;

use sluice_backends::files::{FileRecord, IndexOutcome};
use sluice_backends::objects::{file_key, read_all};
use sluice_backends::vectors::Chunk;
use sluice_backends::{BackendError, ErrorKind};
use tokio::sync::mpsc;

use super::Files;
use super::extract::{self, CHUNK_CHARS, CHUNK_OVERLAP, MAX_PDF_BYTES, MAX_TEXT_BYTES};

/// New files waiting for the indexer; past this the sweep finds them.
pub const QUEUE: usize = 1024;

/// How long a claim on a file lasts unrenewed: a replica that dies while
/// indexing leaves the file to another after this.
pub const CLAIM_TTL: Duration = Duration::from_secs(120);

/// How often the indexer looks for files left unindexed.
pub const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// The first wait before a file whose indexing met a backend that was
/// down is tried again; each later one waits twice as long.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Attempts at a file before it fails.
pub const MAX_ATTEMPTS: u32 = 5;

/// Files taken per sweep.
const SWEEP_BATCH: usize = 32;

/// Chunks embedded and written together.
const EMBED_BATCH: usize = 64;

/// Largest image accepted as one (bytes).
pub const MAX_IMAGE_BYTES: u64 = 32 * 1024 * 1024;

/// Why a file was not indexed.
enum Failure {
    /// The file itself is unusable: it fails, with this reason.
    Unusable(String),
    /// A backend failed.
    Backend(BackendError),
    /// The claim is not this replica's any more.
    Lost,
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        Self::Backend(e)
    }
}

/// Starts the indexer of `files`, fed new file ids by `queue`.
pub fn spawn(files: Files, mut queue: mpsc::Receiver<String>) {
    tokio::spawn(async move {
        let holder = &files.inner.config.replica_id;
        if let Err(e) = files.inner.backends.store.release_claims_of(holder).await {
            tracing::warn!(error = %e, "cannot let go of this replica's earlier claims; they expire");
        }
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            let ids = tokio::select! {
                id = queue.recv() => match id {
                    Some(id) => vec![id],
                    None => return,
                },
                _ = sweep.tick() => match files.inner.backends.store.unindexed(SWEEP_BATCH).await {
                    Ok(found) => found.into_iter().map(|f| f.id).collect(),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot look for files to index");
                        Vec::new()
                    }
                },
            };
            for id in ids {
                files.index(&id).await;
            }
        }
    });
}

impl Files {
    /// Indexes one file if this replica can claim it.
    async fn index(&self, id: &str) {
        let inner = &self.inner;
        let store = &inner.backends.store;
        let holder = inner.config.replica_id.as_str();
        let attempt = match store.claim_indexing(id, holder, CLAIM_TTL).await {
            Ok(Some(attempt)) => attempt,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(file = %id, error = %e, "cannot claim a file for indexing");
                return;
            }
        };
        let file = match store.get_file(id).await {
            Ok(Some(file)) => file,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(file = %id, error = %e, "cannot read a file to index");
                return;
            }
        };
        let indexed = if attempt > MAX_ATTEMPTS {
            Err(Failure::Unusable(format!(
                "indexing was tried {MAX_ATTEMPTS} times without finishing; upload the file again"
            )))
        } else {
            self.index_file(&file).await
        };
        let outcome = match indexed {
            Ok(chunks) => IndexOutcome::Indexed { chunks },
            Err(Failure::Unusable(reason)) => IndexOutcome::Failed { reason },
            Err(Failure::Backend(e)) if e.kind == ErrorKind::Unavailable => {
                let wait = RETRY_AFTER * 2u32.pow(attempt.saturating_sub(1).min(5));
                inner
                    .metrics
                    .indexing_total
                    .with_label_values(&["retry"])
                    .inc();
                tracing::warn!(file = %id, error = %e, attempt, retry_in = ?wait, "indexing met a backend that is down");
                if let Err(e) = store.release_indexing(id, holder, wait).await {
                    tracing::warn!(file = %id, error = %e, "cannot put off a claim; it expires");
                }
                return;
            }
            Err(Failure::Backend(e)) => {
                tracing::error!(file = %id, error = %e, "indexing failed");
                IndexOutcome::Failed {
                    reason: "the vector index refused the file's text".into(),
                }
            }
            Err(Failure::Lost) => {
                // Deleted meanwhile (take back what was written), or taken
                // by another replica after this one stalled (it finishes).
                if matches!(store.get_file(id).await, Ok(None)) {
                    self.forget_chunks(&file).await;
                }
                return;
            }
        };
        let label = match &outcome {
            IndexOutcome::Indexed { .. } => "indexed",
            IndexOutcome::Failed { .. } => "failed",
        };
        match store.finish_indexing(id, outcome.clone()).await {
            Ok(true) => {
                inner
                    .metrics
                    .indexing_total
                    .with_label_values(&[label])
                    .inc();
                tracing::info!(file = %id, ?outcome, "file indexed");
            }
            Ok(false) => self.forget_chunks(&file).await,
            Err(e) => tracing::warn!(file = %id, error = %e, "cannot record a file's indexing"),
        }
    }

    /// Removes the chunks of a file deleted while it was being indexed.
    async fn forget_chunks(&self, file: &FileRecord) {
        if let Err(e) = self
            .inner
            .backends
            .vectors
            .delete_file(&file.user_id, &file.id)
            .await
        {
            tracing::warn!(file = %file.id, error = %e, "chunks of a deleted file are left in the index");
        }
    }

    /// Checks an image and stores its version for sending if it needs one
    /// (see [`super::images`]).
    async fn prepare_image(&self, file: &FileRecord) -> Result<(), Failure> {
        use std::io::Write;

        let objects = &self.inner.backends.objects;
        if file.bytes > MAX_IMAGE_BYTES {
            return Err(Failure::Unusable(format!(
                "images over {} MiB cannot be used",
                MAX_IMAGE_BYTES >> 20
            )));
        }
        let bytes = read_all(&**objects, &file_key(&file.id), MAX_IMAGE_BYTES)
            .await?
            .ok_or_else(|| Failure::Unusable("the file's bytes are missing".into()))?;
        let prepared = tokio::task::spawn_blocking(move || super::images::prepare(&bytes))
            .await
            .map_err(|_| Failure::Unusable("the image is malformed".into()))?
            .map_err(Failure::Unusable)?;
        let Some((scaled, content_type)) = prepared else {
            return Ok(());
        };
        let spool = &self.inner.config.spool_dir;
        let staged = tempfile::NamedTempFile::new_in(spool)
            .and_then(|mut f| f.write_all(&scaled).map(|()| f))
            .map_err(|e| {
                Failure::Backend(BackendError::unavailable(
                    sluice_backends::Backend::Objects,
                    e,
                ))
            })?;
        objects
            .put_file(
                &super::images::sent_key(&file.id),
                staged.path(),
                scaled.len() as u64,
                content_type,
            )
            .await?;
        Ok(())
    }

    /// Indexes `file`; the number of chunks written.
    async fn index_file(&self, file: &FileRecord) -> Result<u32, Failure> {
        let backends = &self.inner.backends;
        if file.is_image() {
            return self.prepare_image(file).await.map(|()| 0);
        }
        let max = if file.content_type == "application/pdf" {
            MAX_PDF_BYTES
        } else {
            MAX_TEXT_BYTES
        };
        if file.bytes > max {
            return Err(Failure::Unusable(format!(
                "the file is too large to index (over {} MiB)",
                max >> 20
            )));
        }
        let bytes = read_all(&*backends.objects, &file_key(&file.id), max)
            .await?
            .ok_or_else(|| Failure::Unusable("the file's bytes are missing".into()))?;
        let text = extract::document_text(&self.inner.config.extractor, &file.content_type, bytes)
            .await
            .map_err(|e| Failure::Unusable(e.0))?;
        let pieces =
            tokio::task::spawn_blocking(move || extract::chunks(&text, CHUNK_CHARS, CHUNK_OVERLAP))
                .await
                .map_err(|_| Failure::Unusable("the file could not be read".into()))?;
        let holder = self.inner.config.replica_id.as_str();
        let mut ordinal = 0u32;
        for batch in pieces.chunks(EMBED_BATCH) {
            let vectors = backends.embedder.embed(batch.to_vec()).await?;
            if !backends
                .store
                .renew_indexing(&file.id, holder, CLAIM_TTL)
                .await?
            {
                return Err(Failure::Lost);
            }
            let chunks = batch
                .iter()
                .zip(vectors)
                .map(|(text, embedding)| {
                    ordinal += 1;
                    Chunk {
                        file_id: file.id.clone(),
                        ordinal: ordinal - 1,
                        text: text.clone(),
                        embedding,
                    }
                })
                .collect();
            backends.vectors.upsert(&file.user_id, chunks).await?;
            self.inner
                .metrics
                .chunks_indexed_total
                .inc_by(batch.len() as u64);
        }
        Ok(ordinal)
    }
}
