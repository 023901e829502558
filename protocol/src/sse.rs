//! Server-Sent Events framing (PROTOCOL.md §6).

/// Encodes one SSE message: `id:` (events only), `event:`, and `data:` with the
/// JSON object. JSON from serde has no raw newlines, so one `data:` line holds it.
pub fn encode(id: Option<u64>, event: &str, json: &str) -> String {
    let mut out = String::with_capacity(json.len() + event.len() + 32);
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(&id.to_string());
        out.push('\n');
    }
    out.push_str("event: ");
    out.push_str(event);
    out.push('\n');
    for line in json.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

/// A `retry:` field alone: how many milliseconds a client waits before it
/// reconnects once the stream ends.
pub fn retry(milliseconds: u64) -> String {
    format!("retry: {milliseconds}\n\n")
}

/// The keep-alive comment sent at least every 15 seconds.
pub const PING_COMMENT: &str = ": ping\n\n";

/// Reads a resume cursor from a `Last-Event-ID` header value or an `after`
/// parameter: decimal digits only, surrounding spaces allowed.
pub fn parse_cursor(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Every seq reads back as itself, with or without spaces around
        /// it; anything with another character in it is no cursor.
        #[test]
        fn cursors_read_back_as_the_seq_they_print(seq: u64, pad in 0usize..3, junk in "[^0-9\\s]") {
            let spaces = " ".repeat(pad);
            proptest::prop_assert_eq!(parse_cursor(&format!("{spaces}{seq}{spaces}")), Some(seq));
            proptest::prop_assert_eq!(parse_cursor(&format!("{seq}{junk}")), None);
            proptest::prop_assert_eq!(parse_cursor(&format!("-{seq}")), None);
        }
    }

    #[test]
    fn events_carry_id_and_control_frames_do_not() {
        assert_eq!(
            encode(Some(5), "token", r#"{"a":1}"#),
            "id: 5\nevent: token\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(encode(None, "hello", "{}"), "event: hello\ndata: {}\n\n");
    }

    #[test]
    fn multi_line_data_is_split() {
        assert_eq!(encode(None, "x", "a\nb"), "event: x\ndata: a\ndata: b\n\n");
    }

    #[test]
    fn retry_is_a_field_of_its_own() {
        assert_eq!(retry(1000), "retry: 1000\n\n");
    }

    #[test]
    fn cursors_parse() {
        assert_eq!(parse_cursor(" 42 "), Some(42));
        assert_eq!(parse_cursor("-1"), None);
        assert_eq!(parse_cursor("+1"), None);
        assert_eq!(parse_cursor(""), None);
        assert_eq!(parse_cursor("abc"), None);
    }
}
