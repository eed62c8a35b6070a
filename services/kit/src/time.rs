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

/// Why a start time does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SinceError {
    /// Neither form.
    #[error("{0:?} is neither an RFC 3339 time (2026-11-23T10:00:00Z) nor a duration (1h, 7d)")]
    Malformed(String),
    /// A duration that does not parse (too long, say).
    #[error(transparent)]
    Duration(#[from] crate::config::DurationError),
    /// Before 1970-01-01.
    #[error("{0:?} is before 1970-01-01")]
    BeforeEpoch(String),
}

/// A start time given as RFC 3339 (`2026-11-23T10:00:00Z`) or as a duration
/// back from `now_ms` (`90s`, `1h`, `7d`), in ms since the epoch; never
/// before the epoch.
pub fn parse_since(raw: &str, now_ms: i64) -> Result<i64, SinceError> {
    let at = match chrono::DateTime::parse_from_rfc3339(raw) {
        Ok(t) => t.timestamp_millis(),
        Err(_) => {
            let looks_like_duration = raw.trim().starts_with(|c: char| c.is_ascii_digit())
                && raw.trim().ends_with(|c: char| c.is_ascii_alphabetic());
            let back = crate::config::parse_duration(raw).map_err(|e| match e {
                e @ crate::config::DurationError::TooLong(_) if looks_like_duration => e.into(),
                _ => SinceError::Malformed(raw.to_owned()),
            })?;
            now_ms.saturating_sub(i64::try_from(back.as_millis()).unwrap_or(i64::MAX))
        }
    };
    if at < 0 {
        return Err(SinceError::BeforeEpoch(raw.to_owned()));
    }
    Ok(at)
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
                .to_string()
                .contains("RFC 3339")
        );
        assert!(matches!(
            parse_since("4294967295w", 7_200_000),
            Err(SinceError::Duration(_))
        ));
        assert!(matches!(
            parse_since("2h", 3_600_000),
            Err(SinceError::BeforeEpoch(_))
        ));
        assert!(matches!(
            parse_since("1969-12-31T00:00:00Z", 0),
            Err(SinceError::BeforeEpoch(_))
        ));
    }
}
