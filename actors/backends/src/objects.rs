//! Uploaded files' bytes.
//!
//! Contract for implementations (the conformance suite below holds every
//! implementation to it):
//! - `put_file` stores a local file under a key, whole or not at all: a
//!   reader never sees part of an object, and a failed put leaves nothing
//!   under the key. It reads the file in pieces, so a large upload never
//!   sits in memory.
//! - `get` streams an object's bytes with its length; `None` if the key
//!   holds nothing.
//! - `delete` is idempotent: deleting a missing key succeeds.
//!
//! Keys are Sluice's own (`files/<uuid>`): letters, digits and `/ - _ .`,
//! with no empty, `.` or `..` segment; anything else is refused as
//! [`ErrorKind::Rejected`](crate::ErrorKind::Rejected).

pub mod fs;
pub mod s3;

use std::path::Path;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::{Backend, BackendError};

/// An object being read.
pub struct Object {
    /// Its length in bytes.
    pub len: u64,
    /// Its bytes, in pieces.
    pub body: BoxStream<'static, Result<Bytes, BackendError>>,
}

/// Storage of uploaded files' bytes.
pub trait ObjectStore: Send + Sync + 'static {
    /// A short name for `/ready` (`directory`, `s3`).
    fn name(&self) -> &'static str;

    /// Stores the `len` bytes of the file at `path` under `key`, replacing
    /// what was there.
    fn put_file(
        &self,
        key: &str,
        path: &Path,
        len: u64,
        content_type: &str,
    ) -> BoxFuture<'static, Result<(), BackendError>>;

    /// The object under `key`; `None` if there is none.
    fn get(&self, key: &str) -> BoxFuture<'static, Result<Option<Object>, BackendError>>;

    /// Removes the object under `key`, if there is one.
    fn delete(&self, key: &str) -> BoxFuture<'static, Result<(), BackendError>>;

    /// Checks that the store answers.
    fn ping(&self) -> BoxFuture<'static, Result<(), BackendError>>;
}

/// The key of an uploaded file's bytes.
pub fn file_key(file_id: &str) -> String {
    format!("files/{file_id}")
}

/// Refuses a key outside the documented alphabet, so no key can name a
/// path outside the store.
pub(crate) fn check_key(key: &str) -> Result<(), BackendError> {
    let fine = !key.is_empty()
        && key.len() <= 512
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        && key
            .split('/')
            .all(|segment| !matches!(segment, "" | "." | ".."));
    if fine {
        Ok(())
    } else {
        Err(BackendError::rejected(
            Backend::Objects,
            format!("invalid object key {key:?}"),
        ))
    }
}

/// Reads a whole object into memory, refusing one over `max` bytes: for
/// the small files (images) that are sent inline.
pub async fn read_all(
    store: &dyn ObjectStore,
    key: &str,
    max: u64,
) -> Result<Option<Vec<u8>>, BackendError> {
    use futures::StreamExt;

    let Some(mut object) = store.get(key).await? else {
        return Ok(None);
    };
    if object.len > max {
        return Err(BackendError::rejected(
            Backend::Objects,
            format!("object {key} has {} bytes, over {max}", object.len),
        ));
    }
    let mut out = Vec::with_capacity(object.len as usize);
    while let Some(piece) = object.body.next().await {
        out.extend_from_slice(&piece?);
        if out.len() as u64 > max {
            return Err(BackendError::rejected(
                Backend::Objects,
                format!("object {key} grew over {max} bytes"),
            ));
        }
    }
    Ok(Some(out))
}

/// The conformance suite every [`ObjectStore`] must pass.
#[cfg(test)]
pub(crate) mod conformance {
    use std::io::Write;

    use super::*;
    use crate::ErrorKind;

    fn local_file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file.flush().unwrap();
        file
    }

    async fn read(store: &dyn ObjectStore, key: &str) -> Option<Vec<u8>> {
        read_all(store, key, u64::MAX).await.unwrap()
    }

    pub async fn run(store: &dyn ObjectStore) {
        store.ping().await.unwrap();

        // Missing keys: nothing to read, and deleting them is fine.
        assert!(store.get("files/missing").await.unwrap().is_none());
        store.delete("files/missing").await.unwrap();

        // Put, read back whole with its length, replace, delete.
        let small = local_file(b"hello objects");
        store
            .put_file("files/a", small.path(), 13, "text/plain")
            .await
            .unwrap();
        let object = store.get("files/a").await.unwrap().unwrap();
        assert_eq!(object.len, 13);
        drop(object);
        assert_eq!(read(store, "files/a").await.unwrap(), b"hello objects");

        // A larger object (several pieces) arrives byte for byte.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let file = local_file(&big);
        store
            .put_file("files/b", file.path(), big.len() as u64, "application/pdf")
            .await
            .unwrap();
        assert_eq!(read(store, "files/b").await.unwrap(), big);
        store
            .put_file("files/b", small.path(), 13, "text/plain")
            .await
            .unwrap();
        assert_eq!(read(store, "files/b").await.unwrap(), b"hello objects");

        // An empty object is an object.
        let empty = local_file(b"");
        store
            .put_file("files/empty", empty.path(), 0, "text/plain")
            .await
            .unwrap();
        assert_eq!(read(store, "files/empty").await.unwrap(), b"");

        // read_all refuses more than it may hold.
        let refused = read_all(store, "files/a", 5).await.unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Rejected);

        // A put from a file that is not there fails and leaves nothing.
        let gone = std::env::temp_dir().join("sluice-no-such-upload");
        assert!(
            store
                .put_file("files/c", &gone, 10, "text/plain")
                .await
                .is_err()
        );
        assert!(store.get("files/c").await.unwrap().is_none());

        // Keys that could escape the store are refused before any I/O.
        for key in [
            "",
            "../x",
            "files/../../x",
            "/abs",
            "files//x",
            "files/a b",
            "files/./x",
        ] {
            let e = store
                .get(key)
                .await
                .err()
                .unwrap_or_else(|| panic!("{key:?}"));
            assert_eq!(e.kind, ErrorKind::Rejected, "{key:?}");
            let e = store
                .put_file(key, small.path(), 13, "text/plain")
                .await
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::Rejected, "{key:?}");
        }

        for key in ["files/a", "files/b", "files/empty"] {
            store.delete(key).await.unwrap();
            assert!(store.get(key).await.unwrap().is_none(), "{key}");
        }
    }
}
