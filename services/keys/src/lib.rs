//! # meridian-keys
//!
//! The keys domain both key-issuer (which writes `KEYS`) and the proxy
//! (which enforces it) use, so that neither service depends on the other:
//! the Gateway API objects ([`model`]: Tyk's `SessionState`, `Policy`,
//! OAuth client), how a key and its policies merge into the session the
//! proxy enforces ([`merge`], Tyk's rules, checked against Tyk's own table),
//! the view folded from `KEYS` with each key's effective session kept
//! current ([`state`]), its fold adapter ([`fold`]), key hashing, and the
//! checks and stamps a write gets before it becomes an event (here).
//! Everything but [`fold`] is pure: no I/O, no clock (time comes in).
#![cfg_attr(test, recursion_limit = "1024")] // the json! fixture of Tyk's merge table

pub mod clients;
pub mod fold;
pub mod limits;
pub mod merge;
pub mod model;
pub mod state;

use sha2::{Digest, Sha256};

pub use merge::{MergeError, effective};
pub use model::{AccessRight, Limit, OAuthClient, Partitions, Policy, Session};
pub use state::{Effective, Enforced, Entry, KeysState};

/// Longest id accepted for a policy, organisation, OAuth client or custom key.
pub const MAX_ID_BYTES: usize = 256;

pub use meridian_kit::invalid::Invalid;

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid::new(field, message)
}

/// SHA-256 (hex) of a key, token or secret: how the log and the view name it.
pub fn hash_secret(secret: &str) -> String {
    // The proxy hashes every key it is shown: hex by table, not by format!.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in Sha256::digest(secret.as_bytes()) {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// Whether `secret` hashes to `stored_hex` (a [`hash_secret`]), compared
/// in constant time.
pub fn secret_matches(secret: &str, stored_hex: &str) -> bool {
    same_bytes(hash_secret(secret).as_bytes(), stored_hex.as_bytes())
}

/// Two byte strings compared in constant time (for their length).
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `s` looks like a hash from [`hash_secret`].
pub fn is_hash(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks an id taken from a path or body: 1 to [`MAX_ID_BYTES`] bytes, no
/// control characters (subjects carry it escaped).
pub fn check_id(field: &str, id: &str) -> Result<(), Invalid> {
    if id.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(invalid(
            field,
            format!("must be at most {MAX_ID_BYTES} bytes"),
        ));
    }
    if let Some(c) = id.chars().find(|c| c.is_control()) {
        return Err(invalid(
            field,
            format!("must not contain control characters (found {c:?})"),
        ));
    }
    Ok(())
}

fn check_limit(field: &str, l: &Limit) -> Result<(), Invalid> {
    check_limits(field, l)
}

fn check_limits(prefix: &str, l: &Limit) -> Result<(), Invalid> {
    let Limit {
        rate,
        per,
        quota_max,
        quota_renewal_rate,
        throttle_interval,
        throttle_retry_limit,
        ..
    } = *l;
    let at = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    };
    // -1 is Tyk's "unlimited" or "off" for each of these; Tyk's own
    // fixtures and most exported keys carry it.
    for (name, v) in [
        ("rate", rate),
        ("per", per),
        ("throttle_interval", throttle_interval),
    ] {
        if !(v.is_finite() && (v >= 0.0 || v == -1.0)) {
            return Err(invalid(
                at(name),
                "must be a number of at least 0, or -1 (unlimited)",
            ));
        }
    }
    if quota_max < -1 {
        return Err(invalid(at("quota_max"), "must be -1 (unlimited) or more"));
    }
    if quota_renewal_rate < -1 {
        return Err(invalid(
            at("quota_renewal_rate"),
            "must be -1 (never renews) or more",
        ));
    }
    if throttle_retry_limit < -1 {
        return Err(invalid(
            at("throttle_retry_limit"),
            "must be -1 (no throttling) or more",
        ));
    }
    Ok(())
}

fn check_rights(rights: &mut model::AccessRights) -> Result<(), Invalid> {
    for (api, right) in rights.iter_mut() {
        check_id(&format!("access_rights.{api}"), api)?;
        if right.api_id.is_empty() {
            right.api_id.clone_from(api);
        } else if right.api_id != *api {
            return Err(invalid(
                format!("access_rights.{api}.api_id"),
                format!(
                    "is {:?}, but the right is filed under {api:?}",
                    right.api_id
                ),
            ));
        }
        check_limit(&format!("access_rights.{api}.limit"), &right.limit)?;
        for (i, allowed) in right.allowed_urls.iter().enumerate() {
            if let Err(e) = model::Pattern::compile(&allowed.url) {
                return Err(invalid(
                    format!("access_rights.{api}.allowed_urls[{i}].url"),
                    format!("is not a valid regular expression: {}", first_line(&e)),
                ));
            }
        }
    }
    Ok(())
}

/// The first line of a regex error (the rest draws a caret under the pattern).
fn first_line(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find(|l| l.starts_with("error:"))
        .map_or_else(
            || text.clone(),
            |l| l.trim_start_matches("error:").trim().to_owned(),
        )
}

/// Checks a key's or an organisation's session and fills what the API
/// derives (each right's `api_id` from its map key).
pub fn check_session(s: &mut Session) -> Result<(), Invalid> {
    check_limits("", &s.limit())?;
    if s.expires < 0 {
        return Err(invalid("expires", "must be 0 (never) or a Unix time"));
    }
    check_rights(&mut s.access_rights)?;
    for (i, id) in s.apply_policies.iter().enumerate() {
        check_id(&format!("apply_policies[{i}]"), id)?;
    }
    Ok(())
}

/// Checks a policy, as [`check_session`] does a session.
pub fn check_policy(p: &mut Policy) -> Result<(), Invalid> {
    check_limits("", &p.limit())?;
    if p.key_expires_in < 0 {
        return Err(invalid("key_expires_in", "must be at least 0"));
    }
    if p.partitions.per_api && p.partitions.any() {
        return Err(invalid(
            "partitions",
            "per_api cannot be combined with quota, rate_limit, acl or complexity",
        ));
    }
    check_rights(&mut p.access_rights)
}

/// How a write treats the quota counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Quota {
    /// Start a fresh period: `quota_remaining = quota_max`, renewing one
    /// period from now (a create, and an update without `suppress_reset=1`).
    Reset,
    /// Keep the counters the stored session has (`suppress_reset=1`).
    Keep,
}

/// The session to store: `new` stamped with the time (`now_s`, Unix
/// seconds; `date_rfc3339` the same instant), keeping what the stored one
/// (`old`) had where the write does not own it.
pub fn stamp(
    mut new: Session,
    old: Option<&Session>,
    quota: Quota,
    now_s: i64,
    date_rfc3339: &str,
) -> Session {
    new.last_updated = now_s.to_string();
    match old {
        Some(old) => new.date_created.clone_from(&old.date_created),
        None if new.date_created.is_empty() => new.date_created = date_rfc3339.to_owned(),
        None => {}
    }
    match (quota, old) {
        (Quota::Keep, Some(old)) => {
            // As Tyk's `suppress_reset=1`: the counters and the rate
            // window's start (`last_updated`) stay, per API too.
            new.quota_remaining = old.quota_remaining;
            new.quota_renews = old.quota_renews;
            new.last_updated.clone_from(&old.last_updated);
            for (api, right) in &mut new.access_rights {
                if let Some(was) = old.access_rights.get(api)
                    && !was.limit.is_empty()
                    && !right.limit.is_empty()
                {
                    right.limit.quota_renews = was.limit.quota_renews;
                    right.limit.quota_remaining = was.limit.quota_remaining;
                }
            }
        }
        _ => {
            new.quota_remaining = new.quota_max;
            new.quota_renews = if new.quota_renewal_rate > 0 {
                now_s.saturating_add(new.quota_renewal_rate)
            } else {
                0
            };
        }
    }
    new
}

/// Whether a key may be created without access rights: only when a policy
/// gives it some.
pub fn check_has_access(s: &Session) -> Result<(), Invalid> {
    if s.access_rights.is_empty() && s.policy_ids().is_empty() {
        return Err(invalid(
            "access_rights",
            "Failed to create key, keys must have at least one Access Rights record set.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(json: &str) -> Session {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn sessions_keep_every_field_they_were_given() {
        let sent = serde_json::json!({
            "rate": 10, "per": 60, "quota_max": -1,
            "access_rights": {"api1": {"api_id": "api1", "versions": ["Default"],
                "allowed_urls": [{"url": "/pets", "methods": ["GET"]}],
                "endpoints": [{"path": "/x"}], "limit": null}},
            "hmac_enabled": true, "jwt_data": {"secret": "x"}, "monitor": {"trigger_limits": [80]},
            "tags": null, "meta_data": {"team": "a", "n": 3}
        });
        let s: Session = serde_json::from_value(sent.clone()).unwrap();
        let back = serde_json::to_value(&s).unwrap();
        for field in ["hmac_enabled", "jwt_data", "monitor"] {
            assert_eq!(back[field], sent[field], "{field}");
        }
        assert_eq!(
            back["access_rights"]["api1"]["endpoints"],
            sent["access_rights"]["api1"]["endpoints"]
        );
        assert_eq!(back["meta_data"], sent["meta_data"]);
        assert_eq!(back["tags"], serde_json::json!([]));
        assert_eq!(back["rate"], 10.0);
    }

    #[test]
    fn bad_limits_name_their_field() {
        let mut s = session(r#"{"access_rights": {"a": {"limit": {"rate": -2}}}}"#);
        assert_eq!(
            check_session(&mut s).unwrap_err().field,
            "access_rights.a.limit.rate"
        );
        // -1 is Tyk's unlimited / off, wherever Tyk reads it so.
        let mut s = session(
            r#"{"rate": -1, "per": -1, "throttle_interval": -1, "throttle_retry_limit": -1,
                "quota_max": -1, "quota_renewal_rate": -1,
                "access_rights": {"a": {"limit": {"rate": -1, "per": -1, "quota_renewal_rate": -1}}}}"#,
        );
        check_session(&mut s).unwrap();
        for bad in [
            "per",
            "throttle_interval",
            "throttle_retry_limit",
            "quota_renewal_rate",
        ] {
            let mut s = session(&format!(r#"{{"{bad}": -2}}"#));
            assert_eq!(check_session(&mut s).unwrap_err().field, bad);
        }
        let mut s = session(r#"{"quota_max": -2}"#);
        assert_eq!(check_session(&mut s).unwrap_err().field, "quota_max");
        let mut s = session(r#"{"access_rights": {"a": {"api_id": "b"}}}"#);
        assert_eq!(
            check_session(&mut s).unwrap_err().field,
            "access_rights.a.api_id"
        );
        let mut s = session(r#"{"access_rights": {"a": {}}}"#);
        check_session(&mut s).unwrap();
        assert_eq!(
            s.access_rights["a"].api_id, "a",
            "api_id filled from the map key"
        );
        let mut p: Policy =
            serde_json::from_str(r#"{"partitions": {"per_api": true, "quota": true}}"#).unwrap();
        assert_eq!(check_policy(&mut p).unwrap_err().field, "partitions");
        assert!(check_id("keyID", &"k".repeat(257)).is_err());
        assert!(check_id("keyID", "a\nb").is_err());
    }

    #[test]
    fn a_key_needs_access_rights_or_a_policy() {
        assert!(check_has_access(&session("{}")).is_err());
        assert!(check_has_access(&session(r#"{"apply_policies": ["p"]}"#)).is_ok());
        assert!(check_has_access(&session(r#"{"apply_policy_id": "p"}"#)).is_ok());
        assert!(check_has_access(&session(r#"{"access_rights": {"a": {}}}"#)).is_ok());
    }

    #[test]
    fn stamping_resets_or_keeps_the_quota() {
        let stored = stamp(
            session(r#"{"quota_max": 100, "quota_renewal_rate": 3600}"#),
            None,
            Quota::Reset,
            1_000,
            "2026-01-01T00:00:00Z",
        );
        assert_eq!((stored.quota_remaining, stored.quota_renews), (100, 4_600));
        assert_eq!(stored.date_created, "2026-01-01T00:00:00Z");
        assert_eq!(stored.last_updated, "1000");
        let mut used = stored.clone();
        used.quota_remaining = 40;
        let kept = stamp(
            session(r#"{"quota_max": 200, "quota_renewal_rate": 3600}"#),
            Some(&used),
            Quota::Keep,
            2_000,
            "2026-01-02T00:00:00Z",
        );
        assert_eq!((kept.quota_remaining, kept.quota_renews), (40, 4_600));
        assert_eq!(
            kept.date_created, "2026-01-01T00:00:00Z",
            "creation date kept"
        );
        assert_eq!(
            kept.last_updated, "1000",
            "suppress_reset keeps last_updated, as Tyk"
        );
        let reset = stamp(
            session(r#"{"quota_max": 200, "quota_renewal_rate": 60}"#),
            Some(&used),
            Quota::Reset,
            2_000,
            "2026-01-02T00:00:00Z",
        );
        assert_eq!((reset.quota_remaining, reset.quota_renews), (200, 2_060));
    }

    #[test]
    fn hashes_are_sha256_hex() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_hash(&hash_secret("x")));
        assert!(!is_hash("abc"));
    }
}
