//! What a request may do, decided from the request and this replica's views
//! alone (no I/O): which version it asks for, and whether its key lets it
//! in, with Tyk's refusals (status and message) so clients written for Tyk
//! read them unchanged.

use meridian_keys::{Enforced, KeysState, Session};
use meridian_kit::error::ErrorCode;

use super::routes::{Route, VersionLocation, Versioning};

/// Why a request is refused before it reaches the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No key in the API's auth header.
    KeyMissing,
    /// A key that is not stored, or whose policies cannot be applied, or
    /// without access to this API or version.
    Disallowed,
    /// The key, or one of its policies, is inactive.
    KeyInactive,
    /// The key's `expires` has passed.
    KeyExpired,
    /// The key's organisation is inactive.
    OrgInactive,
    /// The key's `allowed_urls` do not include this path and method.
    ResourceDisallowed,
    /// The request names no version and the API has no default.
    VersionMissing,
    /// The version named is not one of the API's.
    VersionUnknown,
    /// The version has expired.
    VersionExpired,
    /// The key's rate limit is reached in this window (after any throttling).
    RateLimited,
    /// The key's quota for this period is spent.
    QuotaExceeded,
    /// The API's organisation's rate limit is reached.
    OrgRateLimited,
    /// The API's organisation's quota is spent.
    OrgQuotaExceeded,
    /// The shared quota counters cannot be reached and this replica has
    /// spent what it had leased: refused rather than risk going over.
    QuotaUnavailable,
    /// An OAuth API's request has no `Bearer <token>` in its auth header
    /// (no scheme and value).
    BearerMissing,
    /// An OAuth API's auth header names a scheme other than `Bearer`.
    BearerMalformed,
    /// An OAuth API's bearer token is not a live token or key.
    TokenUnknown,
    /// A Tyk OAS API's operation is blocked, or not on its allow list.
    EndpointForbidden,
}

impl Refusal {
    /// Its kind, as Tyk answers it (the edge makes it the status: 401,
    /// 429, 503, and 403 for the rest).
    pub fn code(self) -> ErrorCode {
        match self {
            Self::KeyMissing => ErrorCode::Unauthenticated,
            Self::BearerMissing | Self::BearerMalformed => ErrorCode::InvalidArgument,
            Self::RateLimited => ErrorCode::RateLimited,
            Self::QuotaUnavailable => ErrorCode::Unavailable,
            _ => ErrorCode::PermissionDenied,
        }
    }

    /// Tyk's message for it.
    pub fn message(self) -> &'static str {
        match self {
            Self::KeyMissing => "Authorization field missing",
            Self::Disallowed => "Access to this API has been disallowed",
            Self::KeyInactive => "Key is inactive, please renew",
            Self::KeyExpired => "Key has expired, please renew",
            // Tyk's words, lower case included.
            Self::OrgInactive => {
                "this organisation access has been disabled, please contact your API administrator"
            }
            Self::ResourceDisallowed => "Access to this resource has been disallowed",
            Self::VersionMissing => "Version information not found",
            Self::VersionUnknown => "This API version does not seem to exist",
            Self::VersionExpired => {
                "Api Version has expired, please check documentation or contact administrator"
            }
            Self::RateLimited => "Rate Limit Exceeded",
            Self::QuotaExceeded => "Quota exceeded",
            Self::OrgRateLimited => {
                "This organisation rate limit has been exceeded, please contact your API administrator"
            }
            Self::OrgQuotaExceeded => {
                "This organisation quota has been exceeded, please contact your API administrator"
            }
            Self::QuotaUnavailable => "The quota cannot be checked now, please try again shortly",
            // Tyk's OAuth middleware's words.
            Self::BearerMissing => "Authorization field missing",
            Self::BearerMalformed => "Bearer token malformed",
            Self::TokenUnknown => "Key not authorised",
            Self::EndpointForbidden => "Requested endpoint is forbidden",
        }
    }

    /// Every refusal, in the order of [`Refusal::index`].
    pub const ALL: [Self; 18] = [
        Self::KeyMissing,
        Self::Disallowed,
        Self::KeyInactive,
        Self::KeyExpired,
        Self::OrgInactive,
        Self::ResourceDisallowed,
        Self::VersionMissing,
        Self::VersionUnknown,
        Self::VersionExpired,
        Self::RateLimited,
        Self::QuotaExceeded,
        Self::OrgRateLimited,
        Self::OrgQuotaExceeded,
        Self::QuotaUnavailable,
        Self::BearerMissing,
        Self::BearerMalformed,
        Self::TokenUnknown,
        Self::EndpointForbidden,
    ];

    /// A small number per refusal (its counter's slot).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The `reason` label of `meridian_gateway_refused`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::KeyMissing => "key_missing",
            Self::Disallowed => "key_disallowed",
            Self::KeyInactive => "key_inactive",
            Self::KeyExpired => "key_expired",
            Self::OrgInactive => "org_inactive",
            Self::ResourceDisallowed => "resource_disallowed",
            Self::VersionMissing => "version_missing",
            Self::VersionUnknown => "version_unknown",
            Self::VersionExpired => "version_expired",
            Self::RateLimited => "rate",
            Self::QuotaExceeded => "quota",
            Self::OrgRateLimited => "org_rate",
            Self::OrgQuotaExceeded => "org_quota",
            Self::QuotaUnavailable => "quota_unavailable",
            Self::BearerMissing => "bearer_missing",
            Self::BearerMalformed => "bearer_malformed",
            Self::TokenUnknown => "token_unknown",
            Self::EndpointForbidden => "endpoint_forbidden",
        }
    }
}

/// What the version check reads from a request.
pub struct VersionInput<'a> {
    /// The version header's value, if the API reads a header.
    pub header: Option<&'a str>,
    /// The query string.
    pub query: Option<&'a str>,
    /// The path after the listen path (`/v1/pets`).
    pub rest: &'a str,
}

/// The version a request is for (`None`: the API is not versioned), and
/// whether the version's path segment is to be removed.
pub fn resolve_version(
    route: &Route,
    input: &VersionInput<'_>,
    now_s: i64,
) -> Result<Option<String>, Refusal> {
    let Versioning::By {
        location,
        default,
        versions,
        ..
    } = &route.versioning
    else {
        return Ok(None);
    };
    let named = match location {
        VersionLocation::Header(_) => input.header.map(str::to_owned),
        VersionLocation::UrlParam(key) => input.query.and_then(|q| query_param(q, key)),
        VersionLocation::Url => first_segment(input.rest)
            .filter(|s| versions.contains_key(*s))
            .map(str::to_owned),
    }
    .filter(|v| !v.is_empty());
    let version = match named {
        Some(v) => v,
        None if !default.is_empty() => default.clone(),
        None => return Err(Refusal::VersionMissing),
    };
    match versions.get(&version) {
        None => Err(Refusal::VersionUnknown),
        Some(Some(expires)) if *expires <= now_s => Err(Refusal::VersionExpired),
        Some(_) => Ok(Some(version)),
    }
}

/// The first segment of a path (`/v1/pets` → `v1`).
pub fn first_segment(path: &str) -> Option<&str> {
    let path = path.strip_prefix('/')?;
    let segment = path.split('/').next().unwrap_or(path);
    (!segment.is_empty()).then_some(segment)
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| v.to_owned())
    })
}

/// The key from an auth header's value: as sent, or after `Bearer `.
pub fn key_from_header(value: &str) -> Option<&str> {
    let value = value.trim();
    let bearer = value
        .get(..6)
        .is_some_and(|p| p.eq_ignore_ascii_case("bearer"))
        && value[6..].chars().next().is_none_or(char::is_whitespace);
    let key = if bearer {
        value[6..].trim_start()
    } else {
        value
    };
    (!key.is_empty()).then_some(key)
}

/// The token of an OAuth API's auth header, read as Tyk reads it: a
/// scheme and a value separated by a space, the scheme `Bearer` in any
/// case.
pub fn bearer_token(value: Option<&str>) -> Result<&str, Refusal> {
    let mut parts = value.unwrap_or_default().split(' ');
    let (Some(scheme), Some(token)) = (parts.next(), parts.next()) else {
        return Err(Refusal::BearerMissing);
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Refusal::BearerMalformed);
    }
    Ok(token)
}

/// What the key check reads from a request.
pub struct KeyInput<'a> {
    /// SHA-256 (hex) of the key sent.
    pub key_hash: &'a str,
    /// The version resolved (`None`: not versioned).
    pub version: Option<&'a str>,
    /// The request path as the client sent it.
    pub path: &'a str,
    /// The method.
    pub method: &'a str,
    /// Now, Unix seconds.
    pub now_s: i64,
}

/// Checks a key against the API, in Tyk's order: known, active, not
/// expired, organisation active, access to the API and version, then
/// `allowed_urls`. Returns what the gateway enforces for it.
pub fn check_key<'a>(
    keys: &'a KeysState,
    route: &Route,
    input: &KeyInput<'_>,
) -> Result<&'a Enforced, Refusal> {
    let enforced = keys.enforced(input.key_hash).ok_or(Refusal::Disallowed)?;
    // A key whose policies cannot be applied is refused as an unknown one
    // (as Tyk does).
    let session = enforced
        .effective
        .as_ref()
        .map_err(|_| Refusal::Disallowed)?;
    check_session(keys, session, route, input)?;
    Ok(enforced)
}

fn check_session(
    keys: &KeysState,
    session: &Session,
    route: &Route,
    input: &KeyInput<'_>,
) -> Result<(), Refusal> {
    if session.is_inactive {
        return Err(Refusal::KeyInactive);
    }
    if session.expires > 0 && session.expires <= input.now_s {
        return Err(Refusal::KeyExpired);
    }
    if !session.org_id.is_empty()
        && keys
            .org(&session.org_id)
            .is_some_and(|org| org.value.is_inactive)
    {
        return Err(Refusal::OrgInactive);
    }
    // A session naming no API may use every API (Tyk's rule).
    if session.access_rights.is_empty() {
        return Ok(());
    }
    let Some(right) = session.access_rights.get(&route.api_id) else {
        return Err(Refusal::Disallowed);
    };
    if let Some(version) = input.version
        && !right.versions.iter().any(|v| v == version)
    {
        return Err(Refusal::Disallowed);
    }
    if !right.allowed_urls.is_empty()
        && !right.allowed_urls.iter().any(|allowed| {
            allowed.pattern.is_match(input.path)
                && allowed
                    .methods
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(input.method))
        })
    {
        return Err(Refusal::ResourceDisallowed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::apidef::ApiDefinition;
    use crate::domain::routes::compile;
    use meridian_keys::hash_secret;
    use meridian_schemas::keys::KeysEvent;
    use serde_json::{Value, json};
    use uuid::Uuid;

    fn route(v: Value) -> Route {
        let mut def = json!({"api_id": "api1",
            "proxy": {"listen_path": "/a/", "target_url": "http://up:1"}});
        def.as_object_mut()
            .unwrap()
            .extend(v.as_object().unwrap().clone());
        compile(&serde_json::from_value::<ApiDefinition>(def).unwrap()).unwrap()
    }

    fn keys(sessions: &[(&str, Value)], orgs: &[(&str, Value)]) -> KeysState {
        let mut state = KeysState::default();
        let mut seq = 0;
        for (org, session) in orgs {
            seq += 1;
            let event = KeysEvent::OrgSaved {
                org_id: (*org).into(),
                session: session.to_string(),
                created: true,
                change_id: Uuid::new_v4(),
                at_ms: 0,
            };
            state.apply(&event, seq).unwrap();
        }
        for (key, session) in sessions {
            seq += 1;
            let event = KeysEvent::KeySaved {
                key_hash: hash_secret(key),
                session: session.to_string(),
                created: true,
                change_id: Uuid::new_v4(),
                at_ms: 0,
            };
            state.apply(&event, seq).unwrap();
        }
        state
    }

    fn check(
        state: &KeysState,
        r: &Route,
        key: &str,
        version: Option<&str>,
        path: &str,
        method: &str,
    ) -> Result<(), Refusal> {
        let hash = hash_secret(key);
        let input = KeyInput {
            key_hash: &hash,
            version,
            path,
            method,
            now_s: 1_000,
        };
        check_key(state, r, &input).map(|_| ())
    }

    #[test]
    fn keys_are_refused_as_tyk_refuses_them() {
        let r = route(json!({"version_data": {"not_versioned": true}}));
        let state = keys(
            &[
                ("open", json!({})),
                (
                    "mine",
                    json!({"access_rights": {"api1": {"api_id": "api1"}}}),
                ),
                (
                    "other",
                    json!({"access_rights": {"api2": {"api_id": "api2"}}}),
                ),
                ("off", json!({"is_inactive": true})),
                ("old", json!({"expires": 999})),
                ("later", json!({"expires": 1001})),
                ("orgless", json!({"org_id": "o1"})),
                ("orphan", json!({"apply_policies": ["missing"]})),
                (
                    "urls",
                    json!({"access_rights": {"api1": {"allowed_urls": [
                    {"url": "^/a/pets(/.*)?$", "methods": ["GET"]}]}}}),
                ),
            ],
            &[("o1", json!({"is_inactive": true}))],
        );
        let c = |k: &str, p: &str, m: &str| check(&state, &r, k, None, p, m);
        assert_eq!(c("open", "/a/x", "GET"), Ok(()));
        assert_eq!(c("mine", "/a/x", "GET"), Ok(()));
        assert_eq!(c("later", "/a/x", "GET"), Ok(()));
        assert_eq!(c("nobody", "/a/x", "GET"), Err(Refusal::Disallowed));
        assert_eq!(c("other", "/a/x", "GET"), Err(Refusal::Disallowed));
        assert_eq!(c("off", "/a/x", "GET"), Err(Refusal::KeyInactive));
        assert_eq!(c("old", "/a/x", "GET"), Err(Refusal::KeyExpired));
        assert_eq!(c("orgless", "/a/x", "GET"), Err(Refusal::OrgInactive));
        assert_eq!(c("orphan", "/a/x", "GET"), Err(Refusal::Disallowed));
        assert_eq!(c("urls", "/a/pets/1", "get"), Ok(()));
        assert_eq!(
            c("urls", "/a/pets/1", "POST"),
            Err(Refusal::ResourceDisallowed)
        );
        assert_eq!(
            c("urls", "/a/cats", "GET"),
            Err(Refusal::ResourceDisallowed)
        );
        assert_eq!(Refusal::KeyMissing.code(), ErrorCode::Unauthenticated);
        assert_eq!(Refusal::KeyExpired.code(), ErrorCode::PermissionDenied);
        assert_eq!(Refusal::RateLimited.code(), ErrorCode::RateLimited);
        assert_eq!(Refusal::OrgRateLimited.code(), ErrorCode::PermissionDenied);
        assert_eq!(Refusal::QuotaUnavailable.code(), ErrorCode::Unavailable);
        for (i, r) in Refusal::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?} is in its slot");
        }
    }

    #[test]
    fn versions_are_read_where_the_api_says_and_checked_against_the_key() {
        let header = route(json!({
            "definition": {"location": "header", "key": "x-v"},
            "version_data": {"versions": {"v1": {}, "v2": {}, "old": {"expires": "1970-01-01 00:01"}}}}));
        let input = |h: Option<&'static str>| VersionInput {
            header: h,
            query: None,
            rest: "/x",
        };
        assert_eq!(
            resolve_version(&header, &input(Some("v2")), 1_000),
            Ok(Some("v2".into()))
        );
        assert_eq!(
            resolve_version(&header, &input(None), 1_000),
            Err(Refusal::VersionMissing)
        );
        assert_eq!(
            resolve_version(&header, &input(Some("v9")), 1_000),
            Err(Refusal::VersionUnknown)
        );
        assert_eq!(
            resolve_version(&header, &input(Some("old")), 1_000),
            Err(Refusal::VersionExpired)
        );

        let url = route(json!({"definition": {"location": "url"},
            "version_data": {"default_version": "v1", "versions": {"v1": {}, "v2": {}}}}));
        let at = |rest: &'static str| VersionInput {
            header: None,
            query: None,
            rest,
        };
        assert_eq!(
            resolve_version(&url, &at("/v2/pets"), 0),
            Ok(Some("v2".into()))
        );
        assert_eq!(
            resolve_version(&url, &at("/pets"), 0),
            Ok(Some("v1".into()))
        );

        let param = route(json!({"definition": {"location": "url-param"},
            "version_data": {"versions": {"v1": {}}}}));
        let q = VersionInput {
            header: None,
            query: Some("a=1&version=v1"),
            rest: "/",
        };
        assert_eq!(resolve_version(&param, &q, 0), Ok(Some("v1".into())));

        let state = keys(
            &[(
                "k",
                json!({"access_rights": {"api1": {"versions": ["v1"]}}}),
            )],
            &[],
        );
        assert_eq!(check(&state, &url, "k", Some("v1"), "/a/v1", "GET"), Ok(()));
        assert_eq!(
            check(&state, &url, "k", Some("v2"), "/a/v2", "GET"),
            Err(Refusal::Disallowed)
        );
    }

    #[test]
    fn keys_come_with_or_without_bearer() {
        assert_eq!(key_from_header("abc"), Some("abc"));
        assert_eq!(key_from_header("Bearer abc"), Some("abc"));
        assert_eq!(key_from_header("bearer  abc "), Some("abc"));
        assert_eq!(key_from_header("Bearer "), None);
        assert_eq!(key_from_header(""), None);
        assert_eq!(first_segment("/v1/x"), Some("v1"));
        assert_eq!(first_segment("/"), None);
    }

    #[test]
    fn oauth_apis_want_a_bearer_token_as_tyk_reads_it() {
        assert_eq!(bearer_token(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(Some("abc")), Err(Refusal::BearerMissing));
        assert_eq!(bearer_token(None), Err(Refusal::BearerMissing));
        assert_eq!(
            bearer_token(Some("Basic abc")),
            Err(Refusal::BearerMalformed)
        );
        for r in [Refusal::BearerMissing, Refusal::BearerMalformed] {
            assert_eq!(r.code().http_status(), 400);
        }
        assert_eq!(Refusal::TokenUnknown.code().http_status(), 403);
    }
}
