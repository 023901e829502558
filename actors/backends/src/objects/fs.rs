//! The embedded object store: each object a file under
//! `SLUICE_DATA_DIR/objects`, named by its key.
//!
//! A put copies the upload into `objects-staging/` beside it, syncs it, and renames
//! it into place, so an object is whole or absent, even after a crash;
//! whatever a crash leaves in `objects-staging/` is removed at the next open.
//! Serves one replica: several replicas need S3.

use std::io::ErrorKind as IoKind;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::io::AsyncReadExt;

use super::{Object, ObjectStore, check_key};
use crate::{Backend, BackendError};

/// Bytes read at a time when streaming an object out.
const READ_PIECE: usize = 64 * 1024;

/// Objects as files in a directory.
#[derive(Clone)]
pub struct FsObjectStore {
    objects: PathBuf,
    staging: PathBuf,
}

impl FsObjectStore {
    /// Opens (creating) the store under `dir`, and clears its staging area.
    pub fn open(dir: &Path) -> Result<Self, BackendError> {
        let objects = dir.join("objects");
        let staging = dir.join("objects-staging");
        let _ = std::fs::remove_dir_all(&staging);
        for path in [&objects, &staging] {
            std::fs::create_dir_all(path).map_err(|e| {
                BackendError::unavailable(
                    Backend::Objects,
                    format!("cannot create {}: {e}", path.display()),
                )
            })?;
        }
        Ok(Self { objects, staging })
    }

    fn path(&self, key: &str) -> Result<PathBuf, BackendError> {
        check_key(key)?;
        Ok(self.objects.join(key))
    }
}

fn io(e: std::io::Error) -> BackendError {
    BackendError::unavailable(Backend::Objects, e)
}

/// Copies `from` into staging, checks its length, syncs it and renames it
/// to `to`; removes the staged copy if anything fails.
async fn install(from: &Path, staged: &Path, to: &Path, len: u64) -> Result<(), BackendError> {
    let copied = tokio::fs::copy(from, staged).await.map_err(io)?;
    if copied != len {
        return Err(BackendError::rejected(
            Backend::Objects,
            format!("the file has {copied} bytes, not the {len} announced"),
        ));
    }
    tokio::fs::File::open(staged)
        .await
        .map_err(io)?
        .sync_all()
        .await
        .map_err(io)?;
    let parent = to.parent().expect("an object path has a parent");
    tokio::fs::create_dir_all(parent).await.map_err(io)?;
    tokio::fs::rename(staged, to).await.map_err(io)?;
    // The rename is durable once the directory is synced.
    tokio::fs::File::open(parent)
        .await
        .map_err(io)?
        .sync_all()
        .await
        .map_err(io)
}

impl ObjectStore for FsObjectStore {
    fn name(&self) -> &'static str {
        "directory"
    }

    fn put_file(
        &self,
        key: &str,
        path: &Path,
        len: u64,
        _content_type: &str,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        let target = self.path(key);
        let staged = self.staging.join(uuid::Uuid::now_v7().to_string());
        let from = path.to_owned();
        Box::pin(async move {
            let target = target?;
            let result = install(&from, &staged, &target, len).await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&staged).await;
            }
            result
        })
    }

    fn get(&self, key: &str) -> BoxFuture<'static, Result<Option<Object>, BackendError>> {
        let path = self.path(key);
        Box::pin(async move {
            let file = match tokio::fs::File::open(path?).await {
                Ok(file) => file,
                Err(e) if e.kind() == IoKind::NotFound => return Ok(None),
                Err(e) => return Err(io(e)),
            };
            let len = file.metadata().await.map_err(io)?.len();
            let body = futures::stream::try_unfold(file, |mut file| async move {
                let mut piece = BytesMut::with_capacity(READ_PIECE);
                let read = file.read_buf(&mut piece).await.map_err(io)?;
                Ok::<Option<(Bytes, _)>, BackendError>((read > 0).then(|| (piece.freeze(), file)))
            });
            Ok(Some(Object {
                len,
                body: Box::pin(body),
            }))
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'static, Result<(), BackendError>> {
        let path = self.path(key);
        Box::pin(async move {
            match tokio::fs::remove_file(path?).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == IoKind::NotFound => Ok(()),
                Err(e) => Err(io(e)),
            }
        })
    }

    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>> {
        let objects = self.objects.clone();
        Box::pin(async move {
            let meta = tokio::fs::metadata(&objects).await.map_err(io)?;
            if meta.is_dir() {
                Ok(())
            } else {
                Err(BackendError::unavailable(
                    Backend::Objects,
                    format!("{} is not a directory", objects.display()),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conforms() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsObjectStore::open(dir.path()).unwrap();
        super::super::conformance::run(&store).await;
        // Nothing is left staged.
        assert_eq!(std::fs::read_dir(&store.staging).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_crash_mid_put_leaves_nothing_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsObjectStore::open(dir.path()).unwrap();
        std::fs::write(store.staging.join("half-copied"), b"half").unwrap();
        let store = FsObjectStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(&store.staging).unwrap().count(), 0);
    }
}
