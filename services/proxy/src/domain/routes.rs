//! The routing table the data plane reads: each active definition checked
//! and compiled once (upstream parsed, header names built, version expiry
//! read), and looked up by the longest listen path that is a whole-segment
//! prefix of the request path.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::Invalid;
use super::apidef::{ApiDefinition, normalize_listen_path};
use super::pipeline::{Plan, PlanInput};

/// Where a request names its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionLocation {
    /// A header (default `x-api-version`), its name in lower case.
    Header(String),
    /// A query parameter (default `version`).
    UrlParam(String),
    /// The first path segment after the listen path.
    Url,
}

/// How an API reads versions.
#[derive(Clone, Debug, PartialEq)]
pub enum Versioning {
    /// `version_data.not_versioned`.
    None,
    /// Versions by name, read from `location`.
    By {
        /// Where.
        location: VersionLocation,
        /// The version of a request that names none (empty: none).
        default: String,
        /// Remove the version before forwarding.
        strip: bool,
        /// Each version's expiry (Unix seconds), if any.
        versions: HashMap<String, Option<i64>>,
    },
}

/// The upstream of an API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// TLS (`https://`).
    pub tls: bool,
    /// HTTP/2 with prior knowledge, no TLS (`h2c://`).
    pub h2c: bool,
    /// Host and port as the target names them (the port only when it is
    /// not the scheme's default): what `Host` says and what kept
    /// connections are pooled by. ASCII.
    pub authority: Bytes,
    /// The host to connect to (an IPv6 address without brackets).
    pub host: String,
    /// The port to connect to (the scheme's default when none is named).
    pub port: u16,
    /// The target's path, without trailing `/` (empty for none).
    pub base_path: String,
}

impl Upstream {
    /// [`Upstream::authority`] as text (for logs).
    pub fn authority_str(&self) -> &str {
        std::str::from_utf8(&self.authority).unwrap_or_default()
    }
}

/// One API as the data plane uses it.
#[derive(Clone, Debug)]
pub struct Route {
    /// The API id (what keys' access rights name).
    pub api_id: String,
    /// The owning organisation (whose session's limits apply; empty: none).
    pub org_id: String,
    /// The listen path, normalized (no trailing `/`).
    pub listen_path: String,
    /// No key needed.
    pub keyless: bool,
    /// The header carrying the key, its name in lower case.
    pub auth_header: String,
    /// Remove the listen path before forwarding.
    pub strip_listen_path: bool,
    /// Forward the client's `Host`.
    pub preserve_host: bool,
    /// Where to.
    pub upstream: Upstream,
    /// Versions.
    pub versioning: Versioning,
    /// The steps its requests go through.
    pub plan: Plan,
    /// CORS, when its definition enables it (decided before the steps).
    pub cors: Option<super::cors::Cors>,
    /// Headers injected and removed, when its definition has any.
    pub transforms: Option<super::transforms::Transforms>,
    /// `enable_batch_request_support`: `POST {listen_path}/tyk/batch/`
    /// runs a batch ([`super::batch`]).
    pub batch: bool,
    /// The response cache, when `cache_options` enables it.
    pub cache: Option<super::cache::Cache>,
    /// OAuth 2.0 (`use_oauth2`): its endpoints under the listen path
    /// ([`super::oauth`]) and the bearer-token check of the key step.
    pub oauth: Option<std::sync::Arc<super::oauth::OAuth>>,
    /// A Tyk OAS API's per-operation rules ([`super::endpoints`]).
    pub endpoints: Option<std::sync::Arc<super::endpoints::Endpoints>>,
}

impl Route {
    /// What of the (normalised) `path` follows the listen path.
    pub fn rest_of<'a>(&self, path: &'a str) -> &'a str {
        &path[self.listen_path.len().min(path.len())..]
    }

    /// The path as an API's own rules match it (header injection, the
    /// cache, as Tyk's path specs do): after the listen path, `/` when
    /// nothing follows.
    pub fn relative_path<'a>(&self, path: &'a str) -> &'a str {
        match self.rest_of(path) {
            "" => "/",
            rest => rest,
        }
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid::new(field, message)
}

/// Reads `2006-01-02 15:04` (Tyk's version expiry, UTC) as Unix seconds.
pub fn parse_expiry(s: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

fn parse_upstream(target: &str) -> Result<Upstream, Invalid> {
    const FIELD: &str = "proxy.target_url";
    if target.is_empty() {
        return Err(invalid(FIELD, "is required (the upstream's URL)"));
    }
    let url = url::Url::parse(target)
        .map_err(|e| invalid(FIELD, format!("{target:?} is not a URL: {e}")))?;
    let (tls, h2c) = match url.scheme() {
        "http" => (false, false),
        "https" => (true, false),
        "h2c" => (false, true),
        _ => {
            return Err(invalid(
                FIELD,
                format!("{target:?} must start with http://, https:// or h2c://"),
            ));
        }
    };
    let host = match url.host() {
        Some(url::Host::Domain("")) | None => None,
        Some(url::Host::Ipv6(address)) => Some(address.to_string()),
        Some(host) => Some(host.to_string()),
    }
    .ok_or_else(|| invalid(FIELD, format!("{target:?} names no host")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            FIELD,
            "must not carry credentials (user:password@); set them as upstream headers",
        ));
    }
    if url.query().is_some() {
        return Err(invalid(FIELD, "must not carry a query string"));
    }
    let named = url.host_str().unwrap_or_default();
    let authority = match url.port() {
        Some(port) => format!("{named}:{port}"),
        None => named.to_owned(),
    };
    Ok(Upstream {
        tls,
        h2c,
        authority: Bytes::from(authority),
        host,
        port: url.port_or_known_default().unwrap_or(80),
        base_path: url.path().trim_end_matches('/').to_owned(),
    })
}

/// `name` as a header name in lower case, when it is one (RFC 9110's
/// token).
fn header_name(name: &str) -> Option<String> {
    const SYMBOLS: &[u8] = b"!#$%&'*+-.^_`|~";
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || SYMBOLS.contains(&b));
    token.then(|| name.to_ascii_lowercase())
}

fn versioning(def: &ApiDefinition) -> Result<Versioning, Invalid> {
    let mut versions = HashMap::new();
    for (name, info) in &def.version_data.versions {
        let expires = if info.expires.is_empty() || info.expires == "-1" {
            None
        } else {
            Some(parse_expiry(&info.expires).ok_or_else(|| {
                invalid(
                    format!("version_data.versions.{name}.expires"),
                    format!(
                        "{:?} is not a date as Tyk writes it (2006-01-02 15:04, UTC)",
                        info.expires
                    ),
                )
            })?)
        };
        versions.insert(name.clone(), expires);
    }
    // Without versions there is nothing to choose between: served as not
    // versioned (a minimal definition often leaves `version_data` out).
    if def.version_data.not_versioned || versions.is_empty() {
        return Ok(Versioning::None);
    }
    let key = def.definition.key.trim();
    let location = match def.definition.location.as_str() {
        "" | "header" => VersionLocation::Header(
            header_name(if key.is_empty() { "x-api-version" } else { key }).ok_or_else(|| {
                invalid("definition.key", format!("{key:?} is not a header name"))
            })?,
        ),
        "url-param" => {
            VersionLocation::UrlParam(if key.is_empty() { "version" } else { key }.to_owned())
        }
        "url" => VersionLocation::Url,
        other => {
            return Err(invalid(
                "definition.location",
                format!("{other:?} is not one of header, url-param, url"),
            ));
        }
    };
    let default = def.version_data.default_version.clone();
    if !default.is_empty() && !versions.contains_key(&default) {
        return Err(invalid(
            "version_data.default_version",
            format!("{default:?} is not one of version_data.versions"),
        ));
    }
    Ok(Versioning::By {
        location,
        default,
        strip: def.definition.strip_path || def.definition.strip_versioning_data,
        versions,
    })
}

/// Checks a definition and compiles it: the 400s of `POST`/`PUT
/// /tyk/apis`, each naming its field.
pub fn compile(def: &ApiDefinition) -> Result<Route, Invalid> {
    let listen = &def.proxy.listen_path;
    if listen.is_empty() {
        return Err(invalid(
            "proxy.listen_path",
            "is required (the path prefix the API answers on, such as /pets/)",
        ));
    }
    if !listen.starts_with('/') {
        return Err(invalid(
            "proxy.listen_path",
            format!("{listen:?} must start with /"),
        ));
    }
    if listen.contains(['?', '#', ' ']) || listen.chars().any(char::is_control) {
        return Err(invalid(
            "proxy.listen_path",
            format!("{listen:?} must be a plain path (no query, fragment, spaces)"),
        ));
    }
    let header = def.auth_header();
    let auth_header = header_name(header).ok_or_else(|| {
        invalid(
            "auth.auth_header_name",
            format!("{header:?} is not a header name"),
        )
    })?;
    let versioning = versioning(def)?;
    let plan = Plan::of(PlanInput {
        has_org: !def.org_id.is_empty(),
        versioned: versioning != Versioning::None,
        keyless: def.use_keyless,
        disable_rate_limit: def.disable_rate_limit,
        disable_quota: def.disable_quota,
    });
    Ok(Route {
        api_id: def.api_id.clone(),
        org_id: def.org_id.clone(),
        listen_path: normalize_listen_path(listen).to_owned(),
        keyless: def.use_keyless,
        auth_header,
        strip_listen_path: def.proxy.strip_listen_path,
        preserve_host: def.proxy.preserve_host_header,
        upstream: parse_upstream(&def.proxy.target_url)?,
        versioning,
        plan,
        cors: super::cors::compile(def.other.get("CORS"))?,
        transforms: super::transforms::compile(def)?,
        batch: def
            .other
            .get("enable_batch_request_support")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false),
        cache: super::cache::compile(def)?,
        oauth: super::oauth::compile(def)?.map(std::sync::Arc::new),
        endpoints: None,
    })
}

/// Active APIs by listen path.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    by_path: HashMap<String, Arc<Route>>,
}

impl RouteTable {
    /// A table of `routes` (the first of two with one listen path wins;
    /// writes refuse such a pair, so it only happens with a corrupt log).
    pub fn new(routes: impl IntoIterator<Item = Arc<Route>>) -> Self {
        let mut by_path = HashMap::new();
        for route in routes {
            by_path.entry(route.listen_path.clone()).or_insert(route);
        }
        Self { by_path }
    }

    /// The API whose listen path is the longest whole-segment prefix of
    /// `path` (`/pets` serves `/pets`, `/pets/` and `/pets/1`, not
    /// `/petshop`).
    pub fn lookup(&self, path: &str) -> Option<&Arc<Route>> {
        if self.by_path.is_empty() {
            return None;
        }
        let path = path.trim_end_matches('/');
        if let Some(route) = self.by_path.get(path) {
            return Some(route);
        }
        let mut end = path.len();
        while let Some(slash) = path[..end].rfind('/') {
            if let Some(route) = self.by_path.get(&path[..slash]) {
                return Some(route);
            }
            end = slash;
        }
        None
    }

    /// How many APIs it serves.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// Whether it serves none.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

/// Joins an upstream base path and the rest of a request path (Tyk's
/// single joining slash): `""` + `""` is `/`, an empty rest leaves the
/// base as it is.
pub fn join_path(base: &str, rest: &str) -> String {
    if rest.is_empty() && !base.is_empty() {
        return base.to_owned();
    }
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let mut out = String::with_capacity(base.len() + rest.len() + 2);
    out.push_str(base);
    out.push('/');
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(v: serde_json::Value) -> ApiDefinition {
        serde_json::from_value(v).unwrap()
    }

    fn route(id: &str, listen: &str) -> Arc<Route> {
        Arc::new(
            compile(&def(json!({
                "api_id": id,
                "proxy": {"listen_path": listen, "target_url": "http://up:1/base/"},
                "version_data": {"not_versioned": true},
            })))
            .unwrap(),
        )
    }

    #[test]
    fn the_longest_whole_segment_prefix_wins() {
        let t = RouteTable::new([
            route("root", "/"),
            route("pets", "/pets/"),
            route("cats", "/pets/cats"),
        ]);
        let hit = |p: &str| t.lookup(p).map(|r| r.api_id.as_str());
        assert_eq!(hit("/pets/cats/1"), Some("cats"));
        assert_eq!(hit("/pets/cats"), Some("cats"));
        assert_eq!(hit("/pets/catsup"), Some("pets"));
        assert_eq!(hit("/pets"), Some("pets"));
        assert_eq!(hit("/petshop"), Some("root"));
        assert_eq!(hit("/"), Some("root"));
        let no_root = RouteTable::new([route("pets", "/pets")]);
        assert!(no_root.lookup("/petshop").is_none());
        assert!(no_root.lookup("/").is_none());
        assert!(no_root.lookup("").is_none());
    }

    #[test]
    fn compile_names_the_field_at_fault() {
        let bad = |v: serde_json::Value| compile(&def(v)).unwrap_err().field;
        assert_eq!(
            bad(json!({"proxy": {"target_url": "http://x"}})),
            "proxy.listen_path"
        );
        assert_eq!(
            bad(json!({"proxy": {"listen_path": "x/", "target_url": "http://x"}})),
            "proxy.listen_path"
        );
        assert_eq!(
            bad(json!({"proxy": {"listen_path": "/x/"}})),
            "proxy.target_url"
        );
        assert_eq!(
            bad(json!({"proxy": {"listen_path": "/x/", "target_url": "ftp://x"}})),
            "proxy.target_url"
        );
        assert_eq!(
            bad(
                json!({"proxy": {"listen_path": "/x/", "target_url": "http://x"},
                "auth": {"auth_header_name": "bad header"}})
            ),
            "auth.auth_header_name"
        );
        assert_eq!(
            bad(
                json!({"proxy": {"listen_path": "/x/", "target_url": "http://x"},
                "definition": {"location": "cookie"},
                "version_data": {"versions": {"v1": {"name": "v1"}}}})
            ),
            "definition.location"
        );
        assert_eq!(
            bad(
                json!({"proxy": {"listen_path": "/x/", "target_url": "http://x"},
                "version_data": {"versions": {"v1": {"expires": "tomorrow"}}}})
            ),
            "version_data.versions.v1.expires"
        );
        assert_eq!(
            bad(
                json!({"proxy": {"listen_path": "/x/", "target_url": "http://x"},
                "version_data": {"default_version": "v2", "versions": {"v1": {}}}})
            ),
            "version_data.default_version"
        );
    }

    #[test]
    fn upstreams_and_versions_compile() {
        let r = compile(&def(json!({
            "proxy": {"listen_path": "/x/", "target_url": "h2c://up:9/"},
            "definition": {"location": "url-param", "key": ""},
            "version_data": {"default_version": "v1",
                "versions": {"v1": {"expires": "2030-01-02 03:04"}, "v2": {}}},
        })))
        .unwrap();
        assert!(r.upstream.h2c);
        assert!(!r.upstream.tls);
        assert_eq!(
            (
                r.upstream.authority_str(),
                r.upstream.host.as_str(),
                r.upstream.port
            ),
            ("up:9", "up", 9)
        );
        assert_eq!(r.upstream.base_path, "");
        assert_eq!(r.auth_header, "authorization");
        let Versioning::By {
            location,
            versions,
            default,
            ..
        } = r.versioning
        else {
            panic!("versioned")
        };
        assert_eq!(location, VersionLocation::UrlParam("version".into()));
        assert_eq!(default, "v1");
        assert_eq!(versions["v1"], parse_expiry("2030-01-02 03:04"));
        assert_eq!(versions["v2"], None);
        assert_eq!(parse_expiry("1970-01-01 00:01"), Some(60));
    }

    #[test]
    fn upstream_targets_are_parsed_once_into_what_the_data_plane_needs() {
        // target -> (tls, h2c, authority, host, port, base path)
        for (target, expected) in [
            (
                "http://127.0.0.1:8080/base/",
                (false, false, "127.0.0.1:8080", "127.0.0.1", 8080, "/base"),
            ),
            (
                "https://API.example.com",
                (true, false, "api.example.com", "api.example.com", 443, ""),
            ),
            ("http://up", (false, false, "up", "up", 80, "")),
            ("http://up:80/", (false, false, "up", "up", 80, "")),
            ("h2c://up:9", (false, true, "up:9", "up", 9, "")),
            (
                "http://[::1]:9000/v1",
                (false, false, "[::1]:9000", "::1", 9000, "/v1"),
            ),
        ] {
            let u = parse_upstream(target).unwrap();
            assert_eq!(
                (
                    u.tls,
                    u.h2c,
                    u.authority_str(),
                    u.host.as_str(),
                    u.port,
                    u.base_path.as_str()
                ),
                expected,
                "{target}"
            );
        }
        for (target, why) in [
            ("", "is required"),
            ("up:80", "must start with"),
            ("not a url", "is not a URL"),
            ("ftp://up", "must start with"),
            ("http://user:secret@up", "credentials"),
            ("http://up/?a=1", "query string"),
            ("h2c:///path", "names no host"),
        ] {
            let refused = parse_upstream(target).unwrap_err();
            assert_eq!(refused.field, "proxy.target_url");
            assert!(
                refused.message.contains(why),
                "{target}: {}",
                refused.message
            );
        }
    }

    #[test]
    fn header_names_are_tokens_kept_in_lower_case() {
        assert_eq!(header_name("X-Api-Key").as_deref(), Some("x-api-key"));
        assert_eq!(
            header_name("Authorization").as_deref(),
            Some("authorization")
        );
        for bad in ["", "x api", "x:y", "é", "x\r"] {
            assert_eq!(header_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn paths_join_with_one_slash() {
        assert_eq!(join_path("", ""), "/");
        assert_eq!(join_path("", "/a"), "/a");
        assert_eq!(join_path("/base", "/a/b"), "/base/a/b");
        assert_eq!(join_path("/base", ""), "/base");
        assert_eq!(join_path("/base", "/"), "/base/");
    }
}
