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
