//! Wall-clock reads, kept at the edges: domain code takes time as a value.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 in UTC (`2025-07-16T12:34:56Z`, with fractions only when present).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| "0001-01-01T00:00:00Z".to_owned())
}

/// The zero time as Go and the reference API print it, for "never".
pub const NEVER: &str = "0001-01-01T00:00:00Z";

/// A start time given as RFC 3339 (`2026-11-23T10:00:00Z`) or as a duration
/// back from `now_ms` (`90s`, `1h`, `7d`), in ms since the epoch.
pub fn parse_since(raw: &str, now_ms: i64) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Ok(t.timestamp_millis());
    }
    let back = crate::config::parse_duration(raw).map_err(|_| {
        format!(
            "{raw:?} is neither an RFC 3339 time (2026-11-23T10:00:00Z) nor a duration (1h, 7d)"
        )
    })?;
    Ok(now_ms.saturating_sub(i64::try_from(back.as_millis()).unwrap_or(i64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_time_or_a_duration_back() {
        assert_eq!(parse_since("1970-01-01T00:00:01Z", 0).unwrap(), 1_000);
        assert_eq!(parse_since("1h", 7_200_000).unwrap(), 3_600_000);
        assert!(
            parse_since("yesterday", 0)
                .unwrap_err()
                .contains("RFC 3339")
        );
    }
}
