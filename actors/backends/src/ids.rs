//! Ids and timestamps.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A new UUIDv7 as a string: unique and sortable by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Now, as an RFC 3339 string in UTC.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("RFC 3339 formatting of the current time cannot fail")
}

/// Now, as Unix seconds (the `created` field of OpenAI objects).
pub fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Sorts after every id Sluice generates (UUIDs are hex digits and
/// dashes): the open end of a range of ids in an embedded table.
pub const ID_MAX: &str = "~";

/// Bytes as lower-case hex (a digest, for names and records).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
