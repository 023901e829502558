//! `current_time`: the date and time now in a time zone, by `jiff` with
//! the IANA time zone database bundled and nothing else (every host answers
//! the same, a minimal container without `/usr/share/zoneinfo` too, and no
//! zone name reaches the file system).

use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::{Tool, ToolContext};

/// Longest time zone name accepted.
const MAX_ZONE_BYTES: usize = 64;

/// The current-time tool.
pub struct CurrentTime;

/// The time `now` in the zone named `zone` (an IANA name such as
/// `Europe/Paris`, or `UTC`), as the JSON the model reads.
pub fn at(now: jiff::Timestamp, zone: &str) -> Result<Value, String> {
    if zone.len() > MAX_ZONE_BYTES {
        return Err("The time zone name is too long.".into());
    }
    let tz = jiff::tz::db().get(zone).map_err(|_| {
        format!("Unknown time zone {zone:?}; use an IANA name such as Europe/Paris.")
    })?;
    let local = now.to_zoned_datetime(tz);
    Ok(json!({
        "timezone": zone,
        "datetime": local.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        "weekday": local.strftime("%A").to_string(),
        "utc_offset": local.strftime("%:z").to_string(),
        "abbreviation": local.strftime("%Z").to_string(),
    }))
}

impl Tool for CurrentTime {
    fn name(&self) -> &str {
        "current_time"
    }

    fn description(&self) -> &str {
        "Returns the current date, time, weekday and UTC offset in a time zone."
    }

    fn parameters(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "timezone": {"type": "string", "description": "An IANA time zone such as Europe/Paris or America/New_York; UTC when absent."}
            },
            "additionalProperties": false,
        })
    }

    fn call(&self, _: ToolContext, arguments: Value) -> BoxFuture<'static, Result<String, String>> {
        let zone = match arguments.get("timezone") {
            None | Some(Value::Null) => Ok("UTC"),
            Some(Value::String(zone)) => Ok(zone.as_str()),
            Some(_) => Err("The argument \"timezone\" must be a string.".to_owned()),
        };
        let result = zone
            .and_then(|zone| at(jiff::Timestamp::now(), zone))
            .map(|v| v.to_string());
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_is_given_in_the_zone_asked_for() {
        let now: jiff::Timestamp = "2026-07-01T12:00:00Z".parse().unwrap();
        let paris = at(now, "Europe/Paris").unwrap();
        assert_eq!(paris["datetime"], "2026-07-01T14:00:00+02:00");
        assert_eq!(paris["weekday"], "Wednesday");
        let tokyo = at(now, "Asia/Tokyo").unwrap();
        assert_eq!(tokyo["utc_offset"], "+09:00");
        assert_eq!(
            at(now, "UTC").unwrap()["datetime"],
            "2026-07-01T12:00:00+00:00"
        );
        assert!(
            at(now, "Mars/Olympus")
                .unwrap_err()
                .contains("Unknown time zone")
        );
        assert!(at(now, "../../etc/passwd").is_err());
        // The bundled database alone: no host file is read.
        assert!(at(now, "localtime").is_err());
    }
}
