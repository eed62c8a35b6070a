//! Typed service configuration from environment variables.
//!
//! A service with prefix `MERIDIAN_INVENTORY__` reads `MERIDIAN_INVENTORY__NATS_URL`
//! into the field `nats_url`. Unknown keys under the prefix are rejected, so a
//! typo fails at start instead of being ignored. [`from_vars`] is pure, for
//! tests; [`from_env_or_exit`] is what `main` calls (exit code 64 on bad config).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use std::fmt;

/// Exit code for bad configuration (`EX_USAGE`).
pub const EXIT_BAD_CONFIG: i32 = 64;

/// Configuration that could not be loaded; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("bad configuration: {message}")]
pub struct ConfigError {
    /// What is wrong and with which variable.
    pub message: String,
}

/// Reads the variables under `prefix` into `T`.
pub fn from_vars<T: DeserializeOwned>(
    prefix: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let picked: Vec<(String, String)> = vars
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix(prefix).map(|rest| (rest.to_owned(), v)))
        .collect();
    envy::from_iter(picked).map_err(|e| ConfigError {
        message: name_variables(prefix, &e.to_string()),
    })
}

/// Reads `T` from the process environment, or prints the problem and exits 64.
pub fn from_env_or_exit<T: DeserializeOwned>(prefix: &str) -> T {
    match from_vars(prefix, std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(EXIT_BAD_CONFIG);
        }
    }
}

/// envy speaks of fields (`nats_url`); operators set variables
/// (`MERIDIAN_X__NATS_URL`). Rewrite back-quoted field names.
fn name_variables(prefix: &str, message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 32);
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        if i % 2 == 0 && !part.contains(' ') && !part.is_empty() {
            out.push_str(prefix);
            out.push_str(&part.to_uppercase());
        } else if i % 2 == 0 {
            out.push('`');
            out.push_str(part);
            out.push('`');
        } else {
            out.push_str(part);
        }
    }
    if !message.contains('`') {
        out = format!("{out} (variables under {prefix})");
    }
    out
}

/// The fields of a configuration struct, as [`from_vars`] reads them (the
/// names serde derives, so a list in `--help` or a test cannot drift from
/// the struct). Empty for a type that is not a plain struct.
pub fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    /// Asks the type to deserialize itself and keeps the field list it
    /// announces, then stops.
    struct Probe(&'static [&'static str]);

    impl<'de> Deserializer<'de> for &mut Probe {
        type Error = de::value::Error;

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("fields read"))
        }

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map enum identifier ignored_any
        }
    }

    let mut probe = Probe(&[]);
    let _ = T::deserialize(&mut probe);
    probe.0
}

/// The variables a service reads, one per line under a heading, for the end
/// of its `--help`: `prefix` + each field of `T` in upper case, and the
/// shared admin key when `T` has an `api_key`.
pub fn variables_help<T: DeserializeOwned>(prefix: &str) -> String {
    let mut out = String::from("Configuration (environment variables):\n");
    for field in fields::<T>() {
        out.push_str(&format!("  {prefix}{}\n", field.to_uppercase()));
    }
    if fields::<T>().contains(&"api_key") {
        out.push_str(&format!(
            "  {API_KEY_VAR} (the admin key, when {prefix}API_KEY is not set)\n"
        ));
    }
    out.push_str("  RUST_LOG or MERIDIAN_LOG, OTEL_* (logs and traces)");
    out
}

/// A secret value: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself; keep the result out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// A duration in humantime syntax (`30s`, `5m`, `1h30m`, `7d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub std::time::Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

/// The longest duration accepted anywhere (a hundred years): longer ones
/// are mistakes, and would overflow the times computed from them.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(36_500 * 86_400);

/// Why a duration does not parse; the message quotes the input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was given.
    #[error("empty duration (use for example 30s, 5m, 1h30m, 7d)")]
    Empty,
    /// A minus sign.
    #[error("{0:?} is negative")]
    Negative(String),
    /// Not digits and units.
    #[error("{0:?} is not a duration (use for example 30s, 5m, 1h30m, 7d)")]
    Malformed(String),
    /// A number without its unit.
    #[error("{0:?}: missing unit after {1} (ms, s, m, h, d or w)")]
    MissingUnit(String, u64),
    /// A unit that is not one of ours.
    #[error("{0:?}: unknown unit {1:?} (ms, s, m, h, d or w)")]
    UnknownUnit(String, String),
    /// Longer than [`MAX_DURATION`].
    #[error("{0:?} is longer than 100 years")]
    TooLong(String),
}

/// Parses `90s`, `1h30m`, `500ms`, `7d`, `1w`. Negative, empty and absurdly
/// long values (over [`MAX_DURATION`]) are refused, saying why.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, DurationError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with('-') {
        return Err(DurationError::Negative(s.to_owned()));
    }
    let too_long = || DurationError::TooLong(s.to_owned());
    let mut total = std::time::Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::Malformed(s.to_owned()));
        }
        let n: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let one = match unit {
            "ms" => std::time::Duration::from_millis(1),
            "s" => std::time::Duration::from_secs(1),
            "m" => std::time::Duration::from_secs(60),
            "h" => std::time::Duration::from_secs(3600),
            "d" => std::time::Duration::from_secs(86_400),
            "w" => std::time::Duration::from_secs(7 * 86_400),
            "" => return Err(DurationError::MissingUnit(s.to_owned(), n)),
            other => return Err(DurationError::UnknownUnit(s.to_owned(), other.to_owned())),
        };
        total = u32::try_from(n)
            .ok()
            .and_then(|n| one.checked_mul(n))
            .and_then(|d| total.checked_add(d))
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(too_long)?;
    }
    Ok(total)
}

/// Writes a duration the way [`parse_duration`] reads it, largest units first
/// and without weeks (`7d`, `1h30m`, `1m30s`, `250ms`; `0s` for zero).
pub fn format_duration(d: std::time::Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// The environment variable every service falls back to for the admin key.
pub const API_KEY_VAR: &str = "MERIDIAN_API_KEY";

/// The admin key: the service's own setting, else `MERIDIAN_API_KEY`.
pub fn admin_key(own: Option<Secret>, own_var: &str) -> Result<Secret, ConfigError> {
    own.or_else(|| std::env::var(API_KEY_VAR).ok().map(Secret::new))
        .filter(|k| !k.expose().is_empty())
        .ok_or_else(|| ConfigError {
            message: format!("set {API_KEY_VAR} (or {own_var}) to the admin API key"),
        })
}

/// This replica's name, as leases and logs show it: `configured` when set,
/// else `HOSTNAME` (a pod's name on Kubernetes), else `{service}-` and
/// eight random hex digits.
pub fn replica_name(configured: Option<&str>, service: &str) -> String {
    configured
        .map(str::to_owned)
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| {
            format!(
                "{service}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )
        })
}

/// Where services look for NATS unless told otherwise.
pub fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formatted_durations_parse_back() {
        for (text, canonical) in [
            ("90s", "1m30s"),
            ("1h30m", "1h30m"),
            ("12h", "12h"),
            ("7d", "7d"),
            ("1w", "7d"),
            ("1500ms", "1s500ms"),
            ("0s", "0s"),
        ] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(format_duration(parsed), canonical, "{text}");
            assert_eq!(parse_duration(canonical).unwrap(), parsed, "{canonical}");
        }
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Conf {
        nats_url: String,
        #[serde(default)]
        port: Option<u16>,
        secret: Option<Secret>,
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn reads_prefixed_variables_and_ignores_others() {
        let c: Conf = from_vars(
            "MERIDIAN_X__",
            vars(&[
                ("MERIDIAN_X__NATS_URL", "nats://a:1"),
                ("PATH", "/bin"),
                ("MERIDIAN_X__PORT", "80"),
            ]),
        )
        .unwrap();
        assert_eq!(c.nats_url, "nats://a:1");
        assert_eq!(c.port, Some(80));
    }

    #[test]
    fn unknown_and_bad_keys_are_named() {
        let e = from_vars::<Conf>(
            "MERIDIAN_X__",
            vars(&[("MERIDIAN_X__NATS_URL", "n"), ("MERIDIAN_X__NATS_ULR", "n")]),
        )
        .unwrap_err();
        assert!(e.message.contains("MERIDIAN_X__NATS_ULR"), "{}", e.message);
        let e =
            from_vars::<Conf>("MERIDIAN_X__", vars(&[("MERIDIAN_X__PORT", "eighty")])).unwrap_err();
        assert!(
            e.message.contains("PORT") || e.message.contains("NATS_URL"),
            "{}",
            e.message
        );
    }

    #[test]
    fn fields_are_read_from_the_struct() {
        assert_eq!(fields::<Conf>(), ["nats_url", "port", "secret"]);
        let help = variables_help::<Conf>("MERIDIAN_X__");
        for var in [
            "MERIDIAN_X__NATS_URL",
            "MERIDIAN_X__PORT",
            "MERIDIAN_X__SECRET",
        ] {
            assert!(help.contains(var), "{help}");
        }
        assert!(fields::<u32>().is_empty());
    }

    #[test]
    fn secrets_do_not_print() {
        let c: Conf =
            from_vars("P_", vars(&[("P_NATS_URL", "n"), ("P_SECRET", "hunter2")])).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.secret.unwrap().expose(), "hunter2");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        for bad in [
            "",
            "-1s",
            "h",
            "10",
            "5y",
            "1.5h",
            "4294967295w",
            "36501d",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
        assert_eq!(
            parse_duration("4294967295w"),
            Err(DurationError::TooLong("4294967295w".into()))
        );
    }
}
