//! Encryption at rest (`SLUICE_ENCRYPTION_KEY`): XChaCha20-Poly1305 (the
//! RustCrypto `chacha20poly1305` crate), with the id of the key beside each
//! sealed record, so keys can rotate: the current key seals, older keys
//! (`SLUICE_ENCRYPTION_OLD_KEYS`) still open what they sealed.
//!
//! - **Text** (message content, tool arguments, titles, system prompts) is
//!   stored as `sle1:<key id>:<base64 of nonce and ciphertext>`, with a
//!   random 24-byte nonce per value and the prefix and key id as associated
//!   data. Text without the prefix was stored before encryption was on and
//!   is read as it is.
//! - **Objects** (uploaded files) are `SLE1`, the key id, a random 16-byte
//!   nonce prefix, then the file in segments of 64 KiB, each sealed with
//!   the prefix, its number and whether it is the last as its nonce (the
//!   STREAM construction): segments cannot be reordered, dropped or cut
//!   off unnoticed, and a file is sealed and opened a segment at a time,
//!   never whole in memory.
//!
//! - **Chunks** of indexed files keep their vectors (a search needs them)
//!   and have their text sealed like any text.
//!
//! A wrong key never yields garbage: opening fails, as a
//! [`ErrorKind::Corrupt`](crate::ErrorKind::Corrupt) error.

pub mod objects;
pub mod store;
pub mod vectors;

use std::io::{Read, Write};
use std::path::Path;

use base64::Engine;
use bytes::{Bytes, BytesMut};
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures::StreamExt;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};

use crate::objects::Object;
use crate::{Backend, BackendError, ErrorKind};

/// The prefix of sealed text.
const TEXT_PREFIX: &str = "sle1:";
/// The first bytes of a sealed object.
const OBJECT_MAGIC: &[u8; 4] = b"SLE1";
/// A key id's length: hex digits of a digest of the key.
const KEY_ID_LEN: usize = 8;
/// The random part of a sealed object's nonces.
const PREFIX_LEN: usize = 16;
/// A sealed object's header: magic, key id, nonce prefix.
pub const OBJECT_HEADER: usize = OBJECT_MAGIC.len() + KEY_ID_LEN + PREFIX_LEN;
/// Plaintext bytes per sealed segment.
pub const SEGMENT: usize = 64 * 1024;
/// The tag each segment carries.
const TAG: usize = 16;

/// One key: its id and its cipher.
struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl Key {
    fn new(bytes: [u8; 32]) -> Self {
        let digest = Sha256::digest([b"sluice key id:".as_slice(), &bytes].concat());
        let id = digest[..KEY_ID_LEN / 2]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Self {
            id,
            cipher: XChaCha20Poly1305::new(&bytes.into()),
        }
    }
}

/// The keys: the current one seals, each opens what it sealed. Without a
/// current key nothing is sealed (values are written in the clear), but
/// what the older keys sealed still opens: the first step of turning
/// encryption on, or of a rotation, across replicas that restart one at a
/// time.
pub struct Keyring {
    current: Option<Key>,
    older: Vec<Key>,
}

/// Reads a key as configured: 64 hex digits or base64 of 32 bytes; any
/// other text of at least 32 bytes is taken as a passphrase and hashed
/// (SHA-256) into a key.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        return Ok(key);
    }
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    if text.len() >= 32 {
        return Ok(Sha256::digest([b"sluice key:".as_slice(), text.as_bytes()].concat()).into());
    }
    Err("must be 32 bytes: 64 hex digits, base64, or a passphrase of at least 32 characters".into())
}

fn corrupt(message: impl std::fmt::Display) -> BackendError {
    BackendError::new(Backend::Store, ErrorKind::Corrupt, message)
}

impl Keyring {
    /// A keyring sealing with `current` (if any) and also opening with
    /// `older`.
    pub fn new(current: Option<[u8; 32]>, older: &[[u8; 32]]) -> Self {
        Self {
            current: current.map(Key::new),
            older: older.iter().copied().map(Key::new).collect(),
        }
    }

    /// The current key's id, if there is a current key.
    pub fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(|key| key.id.as_str())
    }

    fn key(&self, id: &str) -> Option<&Key> {
        self.current
            .iter()
            .chain(&self.older)
            .find(|key| key.id == id)
    }

    /// `plain`, sealed with the current key and bound to `context` (which
    /// record and field it is, so a sealed value moved elsewhere does not
    /// open); as it is without a current key.
    pub fn seal_text(&self, plain: &str, context: &str) -> String {
        let Some(key) = &self.current else {
            return plain.to_owned();
        };
        let nonce = XNonce::generate();
        let prefix = format!("{TEXT_PREFIX}{}", key.id);
        let aad = format!("{prefix}\0{context}");
        let sealed = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plain.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any text that fits in memory");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!(
            "{prefix}:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
        )
    }

    /// The text `stored` holds, sealed for `context`: opened if sealed, as
    /// it is if it was stored in the clear.
    pub fn open_text(&self, stored: String, context: &str) -> Result<String, BackendError> {
        let Some(rest) = stored.strip_prefix(TEXT_PREFIX) else {
            return Ok(stored);
        };
        let Some((id, body)) = rest.split_once(':') else {
            return Err(corrupt("sealed text without a key id"));
        };
        let key = self.key(id).ok_or_else(|| {
            corrupt(format!(
                "text sealed with key {id:.8}, which is not configured"
            ))
        })?;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(body)
            .map_err(|_| corrupt("sealed text that is not base64"))?;
        if bytes.len() < 24 + TAG {
            return Err(corrupt("sealed text too short"));
        }
        let (nonce, sealed) = bytes.split_at(24);
        let nonce = XNonce::try_from(nonce).map_err(|_| corrupt("bad nonce"))?;
        let aad = format!("{TEXT_PREFIX}{id}\0{context}");
        let plain = key
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| corrupt(format!("text does not open with key {id} (or was moved)")))?;
        String::from_utf8(plain).map_err(|_| corrupt("sealed text is not UTF-8"))
    }

    /// Seals the file at `from` into `to`, bound to `context` (the object's
    /// key), with the current key (blocking: run it off the async threads);
    /// the sealed length. `None` without a current key: store the file as
    /// it is.
    pub fn seal_file(&self, from: &Path, to: &Path, context: &str) -> std::io::Result<Option<u64>> {
        let Some(current) = &self.current else {
            return Ok(None);
        };
        let len = std::fs::metadata(from)?.len();
        let mut input = std::io::BufReader::new(std::fs::File::open(from)?);
        let mut output = std::io::BufWriter::new(std::fs::File::create(to)?);
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&XNonce::generate()[..PREFIX_LEN]);
        let header = header(&current.id, &prefix);
        let aad = [header.as_slice(), context.as_bytes()].concat();
        output.write_all(&header)?;
        let segments = segments_of(len);
        let mut buffer = vec![0u8; SEGMENT];
        let mut written = header.len() as u64;
        for index in 0..segments {
            let size = usize::try_from((len - index * SEGMENT as u64).min(SEGMENT as u64))
                .unwrap_or(SEGMENT);
            input.read_exact(&mut buffer[..size])?;
            let last = index + 1 == segments;
            let sealed = current
                .cipher
                .encrypt(
                    &segment_nonce(&prefix, index, last)?,
                    Payload {
                        msg: &buffer[..size],
                        aad: &aad,
                    },
                )
                .map_err(|_| std::io::Error::other("a segment could not be sealed"))?;
            output.write_all(&sealed)?;
            written += sealed.len() as u64;
        }
        output.flush()?;
        output.into_inner()?.sync_all()?;
        Ok(Some(written))
    }

    /// `object` (stored under `context`) opened: its plaintext length, and
    /// its bytes opened a segment at a time as they arrive. An object
    /// stored in the clear (without the header) is passed on as it is.
    pub async fn open_object(&self, object: Object, context: &str) -> Result<Object, BackendError> {
        let Object { len, mut body } = object;
        let mut head = BytesMut::new();
        while head.len() < OBJECT_HEADER {
            match body.next().await {
                Some(piece) => head.extend_from_slice(&piece?),
                None => break,
            }
        }
        if head.len() < OBJECT_HEADER || &head[..OBJECT_MAGIC.len()] != OBJECT_MAGIC {
            let head = head.freeze();
            let body = futures::stream::once(async move { Ok(head) })
                .chain(body)
                .boxed();
            return Ok(Object { len, body });
        }
        let header = head.split_to(OBJECT_HEADER).freeze();
        let aad = Bytes::from([&header[..], context.as_bytes()].concat());
        let id = std::str::from_utf8(&header[4..4 + KEY_ID_LEN])
            .map_err(|_| corrupt("a sealed object's key id is not text"))?
            .to_owned();
        let key = self.key(&id).ok_or_else(|| {
            corrupt(format!(
                "object sealed with key {id}, which is not configured"
            ))
        })?;
        let sealed_len = len
            .checked_sub(OBJECT_HEADER as u64)
            .ok_or_else(|| corrupt("a sealed object shorter than its header"))?;
        let plain_len = plain_len(sealed_len)
            .ok_or_else(|| corrupt("a sealed object of an impossible length"))?;
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&header[4 + KEY_ID_LEN..]);
        let cipher = key.cipher.clone();
        let body = open_segments(cipher, aad, prefix, head, body);
        Ok(Object {
            len: plain_len,
            body,
        })
    }
}

/// A sealed object's header.
fn header(id: &str, prefix: &[u8; PREFIX_LEN]) -> Vec<u8> {
    let mut header = OBJECT_MAGIC.to_vec();
    header.extend_from_slice(id.as_bytes());
    header.extend_from_slice(prefix);
    header
}

/// Segments of a plaintext of `len` bytes: at least one (the last, maybe
/// empty).
fn segments_of(len: u64) -> u64 {
    len.div_ceil(SEGMENT as u64).max(1)
}

/// The plaintext length of `sealed` bytes of segments, if possible.
fn plain_len(sealed: u64) -> Option<u64> {
    let full = (SEGMENT + TAG) as u64;
    let segments = sealed.div_ceil(full).max(1);
    let plain = sealed.checked_sub(segments * TAG as u64)?;
    // The last segment holds at least its tag; only it may be short.
    (segments_of(plain) == segments).then_some(plain)
}

fn segment_nonce(prefix: &[u8; PREFIX_LEN], index: u64, last: bool) -> std::io::Result<XNonce> {
    let index =
        u32::try_from(index).map_err(|_| std::io::Error::other("file too large to seal"))?;
    let mut nonce = [0u8; 24];
    nonce[..PREFIX_LEN].copy_from_slice(prefix);
    nonce[PREFIX_LEN..PREFIX_LEN + 4].copy_from_slice(&index.to_be_bytes());
    nonce[PREFIX_LEN + 4] = u8::from(last);
    Ok(nonce.into())
}

/// Opens the segments of `body` (after its header; `pending` arrived
/// already) as they arrive. A segment is the last when the stream ends
/// after it, whatever length the store reported: bytes after the last
/// segment, or a stream cut at a segment's end, do not open.
fn open_segments(
    cipher: XChaCha20Poly1305,
    aad: Bytes,
    prefix: [u8; PREFIX_LEN],
    mut pending: BytesMut,
    mut body: BoxStream<'static, Result<Bytes, BackendError>>,
) -> BoxStream<'static, Result<Bytes, BackendError>> {
    const FULL: usize = SEGMENT + TAG;
    async_stream::try_stream! {
        let mut index = 0u64;
        let mut ended = false;
        loop {
            // A full segment is known not to be the last once a byte after
            // it has arrived.
            while !ended && pending.len() <= FULL {
                match body.next().await {
                    Some(piece) => pending.extend_from_slice(&piece?),
                    None => ended = true,
                }
            }
            let last = ended && pending.len() <= FULL;
            let size = if last { pending.len() } else { FULL };
            let segment = pending.split_to(size);
            let nonce = segment_nonce(&prefix, index, last)
                .map_err(|e| corrupt(e.to_string()))?;
            let plain = cipher
                .decrypt(&nonce, Payload { msg: &segment, aad: &aad })
                .map_err(|_| corrupt("a sealed object does not open: wrong key, moved, or altered"))?;
            index += 1;
            yield Bytes::from(plain);
            if last {
                break;
            }
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(seed: u8) -> Keyring {
        Keyring::new(Some([seed; 32]), &[])
    }

    #[test]
    fn keys_are_read_as_hex_base64_or_a_passphrase() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(parse_key(&hex).unwrap()[31], 0xff);
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(parse_key(&b64).unwrap(), [7u8; 32]);
        let phrase = parse_key("correct horse battery staple, and a little more").unwrap();
        assert_ne!(phrase, [0u8; 32]);
        assert!(parse_key("short").is_err());
        assert!(parse_key("").is_err());
    }

    #[test]
    fn text_round_trips_and_fails_loudly_with_another_key_or_record() {
        let keys = ring(1);
        let sealed = keys.seal_text("hello, world", "m1");
        assert!(sealed.starts_with("sle1:"));
        assert!(!sealed.contains("hello"));
        assert_ne!(
            sealed,
            keys.seal_text("hello, world", "m1"),
            "a fresh nonce each time"
        );
        assert_eq!(
            keys.open_text(sealed.clone(), "m1").unwrap(),
            "hello, world"
        );
        let err = ring(2).open_text(sealed.clone(), "m1").unwrap_err();
        assert_eq!(err.kind, ErrorKind::Corrupt);
        // Moved to another record, it does not open.
        assert!(keys.open_text(sealed.clone(), "m2").is_err());
        // An older key still opens it after a rotation.
        let rotated = Keyring::new(Some([2; 32]), &[[1; 32]]);
        assert_eq!(
            rotated.open_text(sealed.clone(), "m1").unwrap(),
            "hello, world"
        );
        assert!(
            rotated
                .seal_text("x", "m")
                .contains(rotated.current_id().unwrap())
        );
        // Without a current key nothing is sealed, and the old key opens.
        let reader = Keyring::new(None, &[[1; 32]]);
        assert_eq!(reader.seal_text("x", "m"), "x");
        assert_eq!(
            reader.open_text(sealed.clone(), "m1").unwrap(),
            "hello, world"
        );
        // Altered text is refused; plain text passes as it is.
        let mut altered = sealed.into_bytes();
        let last = altered.len() - 2;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        assert!(
            keys.open_text(String::from_utf8(altered).unwrap(), "m1")
                .is_err()
        );
        assert_eq!(keys.open_text("plain".into(), "m1").unwrap(), "plain");
        assert_eq!(keys.open_text(keys.seal_text("", "e"), "e").unwrap(), "");
    }

    fn object_of(bytes: &[u8], piece: usize) -> Object {
        let pieces: Vec<Result<Bytes, BackendError>> = bytes
            .chunks(piece.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Object {
            len: bytes.len() as u64,
            body: futures::stream::iter(pieces).boxed(),
        }
    }

    async fn opened(keys: &Keyring, object: Object, key: &str) -> Result<Vec<u8>, BackendError> {
        let mut opened = keys.open_object(object, key).await?;
        let len = opened.len;
        let mut out = Vec::new();
        while let Some(piece) = opened.body.next().await {
            out.extend_from_slice(&piece?);
        }
        assert_eq!(out.len() as u64, len, "the announced length");
        Ok(out)
    }

    fn sealed_file(keys: &Keyring, plain: &[u8], key: &str) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("plain"), dir.path().join("sealed"));
        std::fs::write(&from, plain).unwrap();
        let len = keys.seal_file(&from, &to, key).unwrap().unwrap();
        let sealed = std::fs::read(&to).unwrap();
        assert_eq!(sealed.len() as u64, len);
        sealed
    }

    #[tokio::test]
    async fn objects_round_trip_at_every_segment_boundary() {
        let keys = ring(3);
        for len in [
            0,
            1,
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            3 * SEGMENT,
            3 * SEGMENT + 5,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = sealed_file(&keys, &plain, "files/a");
            if len >= 16 {
                assert!(
                    !sealed.windows(16).any(|w| w == &plain[..16]),
                    "plaintext in the file"
                );
            }
            // Delivered in awkward pieces, as a network would.
            let out = opened(&keys, object_of(&sealed, 7_777), "files/a")
                .await
                .unwrap();
            assert_eq!(out, plain, "{len} bytes");
        }
        let sealed = sealed_file(&keys, b"secret bytes here", "files/a");
        let err = opened(&ring(4), object_of(&sealed, 100), "files/a")
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Corrupt);
        // Without a current key, a file is not sealed.
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("p"), dir.path().join("s"));
        std::fs::write(&from, b"x").unwrap();
        assert_eq!(
            Keyring::new(None, &[]).seal_file(&from, &to, "k").unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn cut_extended_moved_or_altered_objects_do_not_open() {
        let keys = ring(5);
        let plain = vec![9u8; 2 * SEGMENT + 10];
        let sealed = sealed_file(&keys, &plain, "files/b");
        let open = |bytes: Vec<u8>, key: &'static str| {
            let keys = &keys;
            async move { opened(keys, object_of(&bytes, 5_000), key).await }
        };
        assert_eq!(open(sealed.clone(), "files/b").await.unwrap(), plain);
        // Cut at a segment's end: the one before is not marked last.
        let cut = sealed[..OBJECT_HEADER + 2 * (SEGMENT + TAG)].to_vec();
        assert!(open(cut, "files/b").await.is_err());
        let mut altered = sealed.clone();
        altered[OBJECT_HEADER + 100] ^= 1;
        assert!(open(altered, "files/b").await.is_err());
        let mut extended = sealed.clone();
        extended.extend_from_slice(b"more");
        assert!(open(extended, "files/b").await.is_err());
        // Under another key (moved), it does not open.
        assert!(open(sealed, "files/c").await.is_err());
        // An object stored in the clear is passed on as it is.
        assert_eq!(
            open(b"plain old file".to_vec(), "files/b").await.unwrap(),
            b"plain old file"
        );
    }
}
