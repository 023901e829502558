//! [`Files`]: uploads, their metadata, bytes and chunks, and what a
//! generation draws from them.
//!
//! - [`upload`]: an upload spooled to a temp file as it arrives, hashed,
//!   limited, and typed by its bytes.
//! - [`indexer`]: the background task that extracts, chunks, embeds and
//!   indexes documents, once per file across replicas.
//! - [`extract`]: a document's text and its chunks.
//! - [`images`]: an image checked and, when too large to send, scaled down,
//!   once, at indexing.
//! - [`grounding`]: a generation's prompt with its attachments: images as
//!   `image_url` parts, and the best chunks of the attached documents.
//!
//! Every call names its user, and a file of another user is answered as
//! one that does not exist ([`SessionError::FileNotFound`]).

pub mod extract;
pub mod grounding;
pub mod images;
pub mod indexer;
pub mod upload;

use std::path::PathBuf;
use std::sync::Arc;

use sluice_backends::embed::Embedder;
use sluice_backends::files::{FileRecord, FileStore};
use sluice_backends::ids::{new_id, now_rfc3339};
use sluice_backends::objects::{Object, ObjectStore, file_key};
use sluice_backends::vectors::VectorIndex;
use sluice_protocol::FileStatus;
use tokio::sync::mpsc;

use crate::{Metrics, SessionError};
use upload::{Sealed, Spooled, TextCheck, Upload};

/// The refusal of an upload its user has no room for.
pub(crate) fn over_storage(quota: u64) -> SessionError {
    SessionError::OverStorage(format!(
        "this upload would take the user's files over the {quota} bytes it may keep; delete some"
    ))
}

/// Most files attached to one message.
pub const MAX_ATTACHMENTS: usize = 16;

/// Settings of the files service.
#[derive(Debug, Clone)]
pub struct FilesConfig {
    /// Largest upload, in bytes.
    pub max_upload_bytes: u64,
    /// Most bytes of files one user may keep (0: no limit).
    pub max_user_bytes: u64,
    /// Where uploads are spooled while they arrive.
    pub spool_dir: PathBuf,
    /// This replica's name (it holds indexing claims).
    pub replica_id: String,
    /// Where PDFs are parsed.
    pub extractor: extract::Extractor,
}

/// The backends files live in.
pub struct FileBackends {
    /// Metadata.
    pub store: Arc<dyn FileStore>,
    /// Bytes.
    pub objects: Arc<dyn ObjectStore>,
    /// Chunk vectors.
    pub vectors: Arc<dyn VectorIndex>,
    /// Text to vectors.
    pub embedder: Arc<dyn Embedder>,
}

/// The files service. Cloning shares it.
#[derive(Clone)]
pub struct Files {
    inner: Arc<Inner>,
}

struct Inner {
    backends: FileBackends,
    config: FilesConfig,
    metrics: Metrics,
    /// Wakes the indexer for a new file.
    index: mpsc::Sender<String>,
}

impl Files {
    /// Starts the service and its indexer (which picks up files left
    /// unindexed by a restart). Clears the spool of a previous run.
    pub fn start(
        backends: FileBackends,
        config: FilesConfig,
        metrics: Metrics,
    ) -> std::io::Result<Self> {
        let _ = std::fs::remove_dir_all(&config.spool_dir);
        std::fs::create_dir_all(&config.spool_dir)?;
        let (index, queue) = mpsc::channel(indexer::QUEUE);
        let files = Self {
            inner: Arc::new(Inner {
                backends,
                config,
                metrics,
                index,
            }),
        };
        indexer::spawn(files.clone(), queue);
        Ok(files)
    }

    /// The largest upload, in bytes.
    pub fn max_upload_bytes(&self) -> u64 {
        self.inner.config.max_upload_bytes
    }

    /// Starts receiving an upload for `user_id`: refused if the user's
    /// files already take all the storage it may keep; otherwise the upload
    /// may take what is left of it, up to the upload limit. (Uploads of one
    /// user running at once may together go over it by what they take.)
    pub async fn begin_upload(
        &self,
        user_id: &str,
        filename: &str,
        purpose: &str,
    ) -> Result<Upload, SessionError> {
        let config = &self.inner.config;
        let (mut limit, mut by_quota) = (config.max_upload_bytes, false);
        if config.max_user_bytes > 0 {
            let used = self.inner.backends.store.used_bytes(user_id).await?;
            let left = config.max_user_bytes.saturating_sub(used);
            if left == 0 {
                self.inner
                    .metrics
                    .limited_total
                    .with_label_values(&["file_bytes"])
                    .inc();
                return Err(SessionError::RateLimited {
                    message: format!(
                        "this user's files take {used} bytes, the most it may keep is {}; delete some",
                        config.max_user_bytes
                    ),
                    retry_after: std::time::Duration::from_secs(60),
                });
            }
            if left < limit {
                (limit, by_quota) = (left, true);
            }
        }
        let (file, temp) = tempfile::Builder::new()
            .prefix("upload-")
            .tempfile_in(&self.inner.config.spool_dir)
            .map_err(|e| SessionError::Internal(format!("cannot spool an upload: {e}")))?
            .into_parts();
        Ok(Upload {
            files: self.clone(),
            user_id: user_id.to_owned(),
            filename: upload::clean_filename(filename),
            purpose: purpose.to_owned(),
            temp,
            out: tokio::io::BufWriter::with_capacity(64 * 1024, tokio::fs::File::from_std(file)),
            hasher: Default::default(),
            len: 0,
            limit,
            by_quota,
            head: Vec::new(),
            text: TextCheck::default(),
        })
    }

    /// Takes bytes already in memory (an image sent inline as a data URL)
    /// like an upload: checked and typed, not stored yet.
    pub async fn seal_bytes(
        &self,
        user_id: &str,
        filename: &str,
        bytes: &[u8],
    ) -> Result<Sealed, SessionError> {
        let mut upload = self.begin_upload(user_id, filename, "vision").await?;
        upload.write(bytes).await?;
        upload.finish().await
    }

    /// Stores a finished upload: its bytes in the object store, then its
    /// row. This runs to its end even if the client goes away meanwhile,
    /// and a failure of either step leaves neither behind.
    async fn store_spooled(
        &self,
        user_id: String,
        filename: String,
        purpose: String,
        spooled: Spooled,
    ) -> Result<FileRecord, SessionError> {
        let files = self.clone();
        let task = tokio::spawn(async move {
            let inner = &files.inner;
            let record = FileRecord {
                id: new_id(),
                user_id,
                filename,
                bytes: spooled.len,
                content_type: spooled.content_type,
                sha256: spooled.sha256,
                purpose,
                status: FileStatus::Stored,
                error: None,
                chunks: 0,
                created_at: now_rfc3339(),
            };
            let key = file_key(&record.id);
            let objects = &inner.backends.objects;
            objects
                .put_file(&key, &spooled.temp, spooled.len, &record.content_type)
                .await?;
            let quota = inner.config.max_user_bytes;
            let created = inner
                .backends
                .store
                .create_file(record.clone(), quota)
                .await;
            if !matches!(created, Ok(true)) {
                if let Err(cleanup) = objects.delete(&key).await {
                    tracing::warn!(file = %record.id, error = %cleanup, "an upload's object outlived its failed row");
                }
                return Err(match created {
                    Err(e) => e.into(),
                    // Other uploads of the user's finished first.
                    _ => over_storage(quota),
                });
            }
            drop(spooled.temp);
            inner
                .metrics
                .uploads_total
                .with_label_values(&["stored"])
                .inc();
            inner.metrics.upload_bytes_total.inc_by(record.bytes);
            // A full queue is fine: the indexer's sweep finds the file.
            let _ = inner.index.try_send(record.id.clone());
            Ok::<_, SessionError>(record)
        });
        let stored = task
            .await
            .map_err(|e| SessionError::Internal(format!("the upload task failed: {e}")))?;
        if stored.is_err() {
            self.inner
                .metrics
                .uploads_total
                .with_label_values(&["failed"])
                .inc();
        }
        stored
    }

    /// The user's file.
    pub async fn get(&self, user_id: &str, id: &str) -> Result<FileRecord, SessionError> {
        match self.inner.backends.store.get_file(id).await? {
            Some(file) if file.user_id == user_id => Ok(file),
            _ => Err(SessionError::FileNotFound(id.to_owned())),
        }
    }

    /// Up to `limit` of the user's files older than `before`, newest first.
    pub async fn list(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<FileRecord>, SessionError> {
        Ok(self
            .inner
            .backends
            .store
            .list_files(user_id, limit, before)
            .await?)
    }

    /// The user's file and its bytes.
    pub async fn content(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<(FileRecord, Object), SessionError> {
        let file = self.get(user_id, id).await?;
        match self.inner.backends.objects.get(&file_key(id)).await? {
            Some(object) => Ok((file, object)),
            None => Err(SessionError::Internal(format!(
                "the bytes of file {id} are missing"
            ))),
        }
    }

    /// Deletes the user's file: its chunks, its bytes, then its row, so a
    /// failure part way leaves the row, and the delete can be retried. An
    /// indexer working on the file meanwhile may write chunks after the
    /// first removal; they go with a second one once the row is gone (and
    /// an indexer that finds the row gone removes its own).
    pub async fn delete(&self, user_id: &str, id: &str) -> Result<(), SessionError> {
        let file = self.get(user_id, id).await?;
        let backends = &self.inner.backends;
        if !file.is_image() {
            backends.vectors.delete_file(&file.user_id, id).await?;
        }
        if file.is_image() {
            backends.objects.delete(&images::sent_key(id)).await?;
        }
        backends.objects.delete(&file_key(id)).await?;
        backends.store.delete_file(id).await?;
        if file.status == FileStatus::Stored
            && !file.is_image()
            && let Err(e) = backends.vectors.delete_file(&file.user_id, id).await
        {
            tracing::warn!(file = %id, error = %e, "chunks of a deleted file may be left in the index");
        }
        Ok(())
    }

    /// The user's files named as a message's attachments, checked: each
    /// must be the user's (else [`SessionError::FileNotFound`] naming every
    /// one that is not), at most [`MAX_ATTACHMENTS`], and the backends a
    /// generation will read them from must answer (else `overloaded`). The
    /// embedder is not asked here: the provider's is checked every 30 s,
    /// not at every send.
    pub async fn check_attachments(
        &self,
        user_id: &str,
        ids: &[String],
    ) -> Result<Vec<FileRecord>, SessionError> {
        if ids.len() > MAX_ATTACHMENTS {
            return Err(SessionError::BadRequest(format!(
                "at most {MAX_ATTACHMENTS} attachments per message"
            )));
        }
        let mut files: Vec<FileRecord> = Vec::with_capacity(ids.len());
        let mut missing: Vec<&str> = Vec::new();
        for id in ids {
            if files.iter().any(|f| &f.id == id) || missing.contains(&id.as_str()) {
                continue;
            }
            match self.get(user_id, id).await {
                Ok(file) => files.push(file),
                Err(SessionError::FileNotFound(_)) => missing.push(id),
                Err(e) => return Err(e),
            }
        }
        if !missing.is_empty() {
            // Named, each clipped: the ids are the client's own strings.
            let named: Vec<String> = missing
                .iter()
                .map(|id| match id.char_indices().nth(64) {
                    Some((cut, _)) => format!("{}…", &id[..cut]),
                    None => (*id).to_owned(),
                })
                .collect();
            return Err(SessionError::FileNotFound(named.join(", ")));
        }
        let backends = &self.inner.backends;
        if files.iter().any(FileRecord::is_image) {
            backends.objects.ping().await?;
        }
        if files.iter().any(|f| !f.is_image()) {
            backends.vectors.ping().await?;
        }
        Ok(files)
    }
}

/// The bytes of a `data:` URL (`data:<type>;base64,<data>`).
pub fn decode_data_url(url: &str) -> Result<Vec<u8>, SessionError> {
    use base64::Engine;

    let bad = |why: &str| SessionError::BadRequest(format!("an image_url data URL {why}"));
    let rest = url
        .strip_prefix("data:")
        .ok_or_else(|| bad("must start with data:"))?;
    let (head, data) = rest.split_once(',').ok_or_else(|| bad("has no comma"))?;
    if !head.ends_with(";base64") {
        return Err(bad("must be base64 (data:<type>;base64,...)"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|_| bad("is not valid base64"))
}

/// A files service on embedded backends under `dir`, for tests.
#[cfg(test)]
pub(crate) fn for_tests(dir: &std::path::Path) -> Files {
    use sluice_backends::embed::local::{LocalEmbedder, SPACE};
    use sluice_backends::objects::fs::FsObjectStore;
    use sluice_backends::store::redb::RedbSessionStore;
    use sluice_backends::vectors::redb::RedbVectorIndex;

    let backends = FileBackends {
        store: Arc::new(RedbSessionStore::open(&dir.join("files.redb")).unwrap()),
        objects: Arc::new(FsObjectStore::open(dir).unwrap()),
        vectors: Arc::new(RedbVectorIndex::open(&dir.join("vectors.redb"), SPACE).unwrap()),
        embedder: Arc::new(LocalEmbedder),
    };
    let config = FilesConfig {
        max_upload_bytes: 1 << 20,
        max_user_bytes: 0,
        spool_dir: dir.join("spool"),
        replica_id: "test".into(),
        extractor: extract::Extractor::InProcess,
    };
    Files::start(backends, config, Metrics::unregistered()).unwrap()
}
