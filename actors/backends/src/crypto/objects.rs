//! [`SealedObjects`]: an object store whose objects are sealed at rest,
//! each for its key (moved under another, it does not open). A file is
//! sealed into a temporary file beside it (a segment at a time, off
//! the async threads), and that is what the inner store keeps; reading
//! opens it a segment at a time.

use std::path::Path;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::Keyring;
use crate::objects::{Object, ObjectStore};
use crate::{Backend, BackendError, ErrorKind};

/// `inner`, with objects sealed by `keys`.
pub struct SealedObjects {
    inner: Arc<dyn ObjectStore>,
    keys: Arc<Keyring>,
}

impl SealedObjects {
    /// Seals what goes into `inner` and opens what comes out.
    pub fn new(inner: Arc<dyn ObjectStore>, keys: Arc<Keyring>) -> Self {
        Self { inner, keys }
    }
}

impl ObjectStore for SealedObjects {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn put_file(
        &self,
        key: &str,
        path: &Path,
        len: u64,
        content_type: &str,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let (inner, keys) = (self.inner.clone(), self.keys.clone());
        let (key, path, content_type) = (key.to_owned(), path.to_owned(), content_type.to_owned());
        Box::pin(async move {
            let unavailable = |e: String| {
                BackendError::new(
                    Backend::Objects,
                    ErrorKind::Unavailable,
                    format!("cannot seal an upload: {e}"),
                )
            };
            // Beside the upload, under a name of its own; removed when dropped.
            let dir = path.parent().map(Path::to_owned).unwrap_or_default();
            let sealed_file = tempfile::Builder::new()
                .prefix("sealed-")
                .tempfile_in(&dir)
                .map_err(|e| unavailable(e.to_string()))?
                .into_temp_path();
            let (from, to, context) = (path.clone(), sealed_file.to_path_buf(), key.clone());
            let sealed = tokio::task::spawn_blocking(move || keys.seal_file(&from, &to, &context))
                .await
                .map_err(|e| unavailable(e.to_string()))?
                .map_err(|e| unavailable(e.to_string()))?;
            match sealed {
                Some(sealed_len) => {
                    inner
                        .put_file(&key, &sealed_file, sealed_len, &content_type)
                        .await
                }
                // No current key: stored as it is.
                None => inner.put_file(&key, &path, len, &content_type).await,
            }
        })
    }

    fn get(&self, key: &str) -> BoxFuture<'static, Result<Option<Object>, BackendError>> {
        let (got, keys, context) = (self.inner.get(key), self.keys.clone(), key.to_owned());
        Box::pin(async move {
            match got.await? {
                Some(object) => keys
                    .open_object(object, &context)
                    .await
                    .map(Some)
                    .map_err(|e| BackendError::new(Backend::Objects, e.kind, e.message)),
                None => Ok(None),
            }
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        self.inner.delete(key)
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        self.inner.ping()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::fs::FsObjectStore;

    #[tokio::test]
    async fn a_sealed_directory_store_conforms_and_keeps_no_bytes_in_the_clear() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn ObjectStore> = Arc::new(FsObjectStore::open(dir.path()).unwrap());
        let keys = Arc::new(Keyring::new(Some([6; 32]), &[]));
        let sealed = SealedObjects::new(inner.clone(), keys);
        crate::objects::conformance::run(&sealed).await;
        let upload = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(upload.path(), b"a very private document").unwrap();
        sealed
            .put_file("files/x", upload.path(), 23, "text/plain")
            .await
            .unwrap();
        let raw = crate::objects::read_all(inner.as_ref(), "files/x", 1 << 20)
            .await
            .unwrap()
            .unwrap();
        assert!(raw.starts_with(b"SLE1"));
        assert!(!raw.windows(7).any(|w| w == b"private"));
        let opened = crate::objects::read_all(&sealed, "files/x", 1 << 20)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(opened, b"a very private document");
        let left: Vec<_> = std::fs::read_dir(upload.path().parent().unwrap())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("sealed-"))
            .collect();
        assert!(left.is_empty(), "the sealed copy is removed");
    }
}
