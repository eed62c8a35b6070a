//! The routing table the data plane reads: each active definition checked
//! and compiled once (upstream parsed, header names built, version expiry
//! read), and looked up by the longest listen path that is a whole-segment
//! prefix of the request path.

use std::collections::HashMap;
use std::sync::Arc;

use hyper::header::HeaderName;
use hyper::http::uri::{Authority, Scheme};

use super::Invalid;
use super::apidef::{ApiDefinition, normalize_listen_path};
use super::pipeline::{Plan, PlanInput};

/// Where a request names its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionLocation {
    /// A header (default `x-api-version`).
    Header(HeaderName),
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
    /// `http` or `https` (h2c is `http` with [`Upstream::h2c`]).
    pub scheme: Scheme,
    /// Host and port.
    pub authority: Authority,
    /// The target's path, without trailing `/` (empty for none).
    pub base_path: String,
    /// HTTP/2 with prior knowledge, no TLS (`h2c://`).
    pub h2c: bool,
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
    /// The header carrying the key.
    pub auth_header: HeaderName,
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
    let uri: hyper::Uri = target
        .parse()
        .map_err(|e| invalid(FIELD, format!("{target:?} is not a URL: {e}")))?;
    let (scheme, h2c) = match uri.scheme_str() {
        Some("http") => (Scheme::HTTP, false),
        Some("https") => (Scheme::HTTPS, false),
        Some("h2c") => (Scheme::HTTP, true),
        _ => {
            return Err(invalid(
                FIELD,
                format!("{target:?} must start with http://, https:// or h2c://"),
            ));
        }
    };
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| invalid(FIELD, format!("{target:?} names no host")))?;
    if authority.as_str().contains('@') {
        return Err(invalid(
            FIELD,
            "must not carry credentials (user:password@); set them as upstream headers",
        ));
    }
    if uri.query().is_some() {
        return Err(invalid(FIELD, "must not carry a query string"));
    }
    Ok(Upstream {
        scheme,
        authority,
        base_path: uri.path().trim_end_matches('/').to_owned(),
        h2c,
    })
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
            HeaderName::try_from(if key.is_empty() { "x-api-version" } else { key })
                .map_err(|_| invalid("definition.key", format!("{key:?} is not a header name")))?,
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
    let auth_header = HeaderName::try_from(header).map_err(|_| {
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
        assert_eq!(r.upstream.scheme, Scheme::HTTP);
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
    fn paths_join_with_one_slash() {
        assert_eq!(join_path("", ""), "/");
        assert_eq!(join_path("", "/a"), "/a");
        assert_eq!(join_path("/base", "/a/b"), "/base/a/b");
        assert_eq!(join_path("/base", ""), "/base");
        assert_eq!(join_path("/base", "/"), "/base/");
    }
}
