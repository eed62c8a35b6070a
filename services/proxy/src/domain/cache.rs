//! The response cache as Tyk's classic definitions configure it
//! (`cache_options`, and per version `extended_paths.cache` /
//! `advance_cache_config`): which requests are cached, under which key,
//! for how long, and which answers may be kept. The store itself (bounded,
//! per replica) is in the data plane.
//!
//! - Cached: safe requests (`GET`, `HEAD`, `OPTIONS`) when
//!   `cache_all_safe_requests`, else those matching a `cache` path or an
//!   `advance_cache_config` entry of the request's version.
//! - The key ([`Cache::key`]): the API, who asks (the key's hash; on a
//!   keyless API the client's address, as Tyk does), the method, the path
//!   and query as asked (the path normalised), and the values of
//!   `cache_by_headers`. One caller never gets an answer cached for
//!   another.
//! - Kept: answers whose status is in the rule's `cache_response_codes`
//!   (none listed: 200 only) with a body of known length up to
//!   [`MAX_ENTRY`], for `cache_timeout` seconds (60 when 0); with
//!   `enable_upstream_cache_control`, the upstream decides: `Cache-Control:
//!   no-store`, `no-cache` or `private` keeps nothing, `s-maxage` /
//!   `max-age` (else `Expires`, else Tyk's `X-Tyk-Cache-Action-Set-TTL`)
//!   set the time.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Invalid;
use super::apidef::ApiDefinition;

/// Largest body kept for one answer.
pub const MAX_ENTRY: usize = 1024 * 1024;

/// Seconds an answer is kept when `cache_timeout` is 0.
pub const DEFAULT_TTL_S: u64 = 60;

/// The header Tyk marks answers from its cache with.
pub const CACHED_HEADER: &str = "x-tyk-cached-response";

/// What the upstream may say about caching, with
/// `enable_upstream_cache_control`.
const TTL_HEADER_DEFAULT: &str = "x-tyk-cache-action-set-ttl";

/// Methods whose answers may be kept.
fn safe(method: &str) -> bool {
    matches!(method, "GET" | "HEAD" | "OPTIONS")
}

/// Tyk's `cache_options`.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Options {
    enable_cache: bool,
    cache_timeout: i64,
    cache_all_safe_requests: bool,
    cache_response_codes: Option<Vec<u16>>,
    enable_upstream_cache_control: bool,
    cache_control_ttl_header: String,
    cache_by_headers: Option<Vec<String>>,
}

/// One `advance_cache_config` entry.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Advanced {
    method: String,
    path: String,
    cache_key_regex: String,
    cache_response_codes: Option<Vec<u16>>,
    timeout: i64,
}

/// A path that is cached, and how.
#[derive(Clone, Debug)]
struct PathRule {
    /// `None`: every safe method.
    method: Option<String>,
    path: regex::Regex,
    codes: Option<Vec<u16>>,
    ttl_s: Option<u64>,
}

/// An API's cache settings, compiled.
#[derive(Clone, Debug)]
pub struct Cache {
    all_safe: bool,
    ttl_s: u64,
    codes: Vec<u16>,
    upstream_control: bool,
    ttl_header: String,
    by_headers: Vec<String>,
    /// Per version name.
    paths: HashMap<String, Vec<PathRule>>,
    /// The version of a request to an API that is not versioned.
    unversioned: Option<String>,
}

/// How one request is cached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The answer statuses kept.
    pub codes: Vec<u16>,
    /// Seconds kept (before the upstream's say).
    pub ttl_s: u64,
    /// The upstream's `Cache-Control` / `Expires` decide.
    pub upstream_control: bool,
    /// Tyk's TTL header, lower case.
    pub ttl_header: String,
}

/// Who is asking, as the cache key names them.
pub enum Caller<'a> {
    /// A key, by its hash.
    Key(&'a str),
    /// No key: the client's address.
    Address(&'a str),
}

impl Cache {
    /// The rule for a request with `method` to `path` (relative to the
    /// listen path) in `version`, if it is cached at all.
    pub fn rule(&self, version: Option<&str>, method: &str, path: &str) -> Option<Rule> {
        if !safe(method) {
            return None;
        }
        let api_level = |codes: Option<&Vec<u16>>, ttl: Option<u64>| Rule {
            codes: codes.cloned().unwrap_or_else(|| self.codes.clone()),
            ttl_s: ttl.unwrap_or(self.ttl_s),
            upstream_control: self.upstream_control,
            ttl_header: self.ttl_header.clone(),
        };
        let name = version.or(self.unversioned.as_deref());
        let matched = name.and_then(|n| self.paths.get(n)).and_then(|rules| {
            rules
                .iter()
                .find(|r| r.method.as_deref().is_none_or(|m| m == method) && r.path.is_match(path))
        });
        match matched {
            Some(r) => Some(api_level(r.codes.as_ref(), r.ttl_s)),
            None if self.all_safe => Some(api_level(None, None)),
            None => None,
        }
    }

    /// The cache key of a request: see the module documentation. `header`
    /// reads the request's headers (first value).
    pub fn key<'h>(
        &self,
        api_id: &str,
        caller: &Caller<'_>,
        method: &str,
        target: &str,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [api_id, method, target] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        match caller {
            Caller::Key(hash) => h.update(format!("key:{hash}")),
            Caller::Address(ip) => h.update(format!("ip:{ip}")),
        }
        for name in &self.by_headers {
            h.update([0]);
            h.update(name.as_bytes());
            h.update(b":");
            h.update(header(name).unwrap_or_default().as_bytes());
        }
        h.finalize().into()
    }
}

impl Rule {
    /// How long an answer with `status` and `headers` (name in lower case,
    /// value) is kept, in seconds at `now_s`; `None`: not kept.
    pub fn keep_for(&self, status: u16, headers: &[(&str, &str)], now_s: i64) -> Option<u64> {
        if !self.codes.contains(&status) {
            return None;
        }
        if !self.upstream_control {
            return Some(self.ttl_s);
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        };
        if let Some(control) = find("cache-control") {
            let mut max_age = None;
            for directive in control.split(',').map(str::trim) {
                let lower = directive.to_ascii_lowercase();
                if matches!(lower.as_str(), "no-store" | "no-cache" | "private") {
                    return None;
                }
                if let Some(v) = lower.strip_prefix("s-maxage=") {
                    max_age = v.parse().ok().or(max_age);
                } else if let Some(v) = lower.strip_prefix("max-age=") {
                    max_age = max_age.or_else(|| v.parse().ok());
                }
            }
            if let Some(age) = max_age {
                return (age > 0).then_some(age);
            }
        }
        if let Some(expires) = find("expires") {
            let at = httpdate::parse_http_date(expires)
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs() as i64);
            let left = at - now_s;
            return (left > 0).then_some(left as u64);
        }
        if let Some(ttl) = find(&self.ttl_header).and_then(|v| v.trim().parse::<u64>().ok()) {
            return (ttl > 0).then_some(ttl);
        }
        Some(self.ttl_s)
    }
}

fn path_pattern(field: &str, path: &str) -> Result<regex::Regex, Invalid> {
    super::transforms::path_pattern(field, path)
}

/// Compiles a definition's cache settings (`None` when the cache is off);
/// a malformed or unserved setting is refused naming its field.
pub fn compile(def: &ApiDefinition) -> Result<Option<Cache>, Invalid> {
    let Some(section) = def.other.get("cache_options").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let options: Options = serde_json::from_value(section.clone()).map_err(|e| {
        Invalid::new(
            "cache_options",
            format!("{e} (enable_cache, cache_all_safe_requests, enable_upstream_cache_control: booleans; cache_timeout: seconds; cache_response_codes: status codes; cache_by_headers: names)"),
        )
    })?;
    if !options.enable_cache {
        return Ok(None);
    }
    if options.cache_timeout < 0 {
        return Err(Invalid::new(
            "cache_options.cache_timeout",
            "must not be negative",
        ));
    }
    let mut paths = HashMap::new();
    for (name, info) in &def.version_data.versions {
        let field = format!("version_data.versions.{name}.extended_paths");
        let Some(extended) = info.other.get("extended_paths").and_then(Value::as_object) else {
            continue;
        };
        let mut rules = Vec::new();
        if let Some(list) = extended.get("cache").filter(|v| !v.is_null()) {
            let list: Vec<String> = serde_json::from_value(list.clone()).map_err(|e| {
                Invalid::new(format!("{field}.cache"), format!("{e} (a list of paths)"))
            })?;
            for (i, path) in list.iter().enumerate() {
                rules.push(PathRule {
                    method: None,
                    path: path_pattern(&format!("{field}.cache[{i}]"), path)?,
                    codes: None,
                    ttl_s: None,
                });
            }
        }
        if let Some(list) = extended
            .get("advance_cache_config")
            .filter(|v| !v.is_null())
        {
            let list: Vec<Advanced> = serde_json::from_value(list.clone()).map_err(|e| {
                Invalid::new(
                    format!("{field}.advance_cache_config"),
                    format!("{e} (a list of {{method, path, cache_response_codes, timeout}})"),
                )
            })?;
            for (i, entry) in list.into_iter().enumerate() {
                let at = format!("{field}.advance_cache_config[{i}]");
                let method = entry.method.to_ascii_uppercase();
                if !safe(&method) {
                    return Err(Invalid::new(
                        format!("{at}.method"),
                        format!(
                            "{:?}: only GET, HEAD and OPTIONS answers are cached by Meridian's gateway (answers keyed by request bodies are not)",
                            entry.method
                        ),
                    ));
                }
                if !entry.cache_key_regex.is_empty() {
                    return Err(Invalid::new(
                        format!("{at}.cache_key_regex"),
                        "keys from request bodies are not served by Meridian's gateway",
                    ));
                }
                if entry.timeout < 0 {
                    return Err(Invalid::new(
                        format!("{at}.timeout"),
                        "must not be negative",
                    ));
                }
                rules.push(PathRule {
                    method: Some(method),
                    path: path_pattern(&format!("{at}.path"), &entry.path)?,
                    codes: entry.cache_response_codes.filter(|c| !c.is_empty()),
                    ttl_s: (entry.timeout > 0).then_some(entry.timeout as u64),
                });
            }
        }
        if !rules.is_empty() {
            paths.insert(name.clone(), rules);
        }
    }
    let by_headers = options
        .cache_by_headers
        .unwrap_or_default()
        .iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let codes = options
        .cache_response_codes
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| vec![200]);
    let ttl_header = if options.cache_control_ttl_header.is_empty() {
        TTL_HEADER_DEFAULT.to_owned()
    } else {
        options.cache_control_ttl_header.to_ascii_lowercase()
    };
    Ok(Some(Cache {
        all_safe: options.cache_all_safe_requests,
        ttl_s: if options.cache_timeout == 0 {
            DEFAULT_TTL_S
        } else {
            options.cache_timeout as u64
        },
        codes,
        upstream_control: options.enable_upstream_cache_control,
        ttl_header,
        by_headers,
        paths,
        unversioned: super::transforms::unversioned_name(def),
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn def(cache: Value, version: Value) -> ApiDefinition {
        serde_json::from_value(
            json!({"api_id": "a", "proxy": {"listen_path": "/a/", "target_url": "http://u"},
            "cache_options": cache,
            "version_data": {"not_versioned": true, "versions": {"Default": version}}}),
        )
        .unwrap()
    }

    #[test]
    fn which_requests_are_cached_and_for_how_long() {
        let c = compile(&def(
            json!({"enable_cache": true, "cache_timeout": 30, "cache_response_codes": [200, 404]}),
            json!({"name": "Default", "extended_paths": {
                "cache": ["/items"],
                "advance_cache_config": [{"method": "GET", "path": "/slow/{id}", "timeout": 5, "cache_response_codes": [200]}]}}),
        ))
        .unwrap()
        .expect("on");
        let items = c.rule(None, "GET", "/items/1").expect("a cache path");
        assert_eq!((items.ttl_s, items.codes.clone()), (30, vec![200, 404]));
        assert!(c.rule(None, "HEAD", "/items").is_some());
        assert!(
            c.rule(None, "POST", "/items").is_none(),
            "unsafe methods never"
        );
        assert_eq!(c.rule(None, "GET", "/slow/2").unwrap().ttl_s, 5);
        assert!(
            c.rule(None, "OPTIONS", "/slow/2").is_none(),
            "that entry is for GET"
        );
        assert!(c.rule(None, "GET", "/other").is_none());
        let all = compile(&def(
            json!({"enable_cache": true, "cache_all_safe_requests": true}),
            json!({"name": "Default"}),
        ))
        .unwrap()
        .unwrap();
        let r = all.rule(None, "GET", "/anything").unwrap();
        assert_eq!((r.ttl_s, r.codes), (DEFAULT_TTL_S, vec![200]));
        assert!(
            compile(&def(
                json!({"enable_cache": false, "cache_all_safe_requests": true}),
                json!({})
            ))
            .unwrap()
            .is_none()
        );
    }

    #[test]
    fn keys_differ_by_caller_target_and_named_headers() {
        let c = compile(&def(
            json!({"enable_cache": true, "cache_all_safe_requests": true, "cache_by_headers": ["Accept-Language"]}),
            json!({"name": "Default"}),
        ))
        .unwrap()
        .unwrap();
        let en = |n: &str| (n == "accept-language").then_some("en");
        let fr = |n: &str| (n == "accept-language").then_some("fr");
        let k = |caller: &Caller<'_>, target: &str, h: &dyn Fn(&str) -> Option<&'static str>| {
            c.key("a", caller, "GET", target, h)
        };
        let one = k(&Caller::Key("h1"), "/x?a=1", &en);
        assert_eq!(one, k(&Caller::Key("h1"), "/x?a=1", &en));
        assert_ne!(one, k(&Caller::Key("h2"), "/x?a=1", &en), "another key");
        assert_ne!(
            one,
            k(&Caller::Address("h1"), "/x?a=1", &en),
            "a key is not an address"
        );
        assert_ne!(one, k(&Caller::Key("h1"), "/x?a=2", &en), "another query");
        assert_ne!(
            one,
            k(&Caller::Key("h1"), "/x?a=1", &fr),
            "another language"
        );
    }

    #[test]
    fn the_upstream_decides_with_upstream_cache_control() {
        let rule = |upstream_control| Rule {
            codes: vec![200],
            ttl_s: 60,
            upstream_control,
            ttl_header: TTL_HEADER_DEFAULT.into(),
        };
        let keep = |r: &Rule, status, headers: &[(&str, &str)]| r.keep_for(status, headers, 1_000);
        let off = rule(false);
        assert_eq!(
            keep(&off, 200, &[("cache-control", "no-store")]),
            Some(60),
            "ignored, as in Tyk"
        );
        assert_eq!(keep(&off, 500, &[]), None);
        let on = rule(true);
        assert_eq!(keep(&on, 200, &[]), Some(60));
        assert_eq!(
            keep(&on, 200, &[("cache-control", "public, max-age=10")]),
            Some(10)
        );
        assert_eq!(
            keep(&on, 200, &[("cache-control", "max-age=10, s-maxage=20")]),
            Some(20)
        );
        assert_eq!(
            keep(&on, 200, &[("Cache-Control", "private, max-age=10")]),
            None
        );
        assert_eq!(keep(&on, 200, &[("cache-control", "no-cache")]), None);
        assert_eq!(keep(&on, 200, &[("cache-control", "max-age=0")]), None);
        let later =
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_030));
        assert_eq!(keep(&on, 200, &[("expires", later.as_str())]), Some(30));
        assert_eq!(
            keep(&on, 200, &[("expires", "0")]),
            None,
            "an invalid date is in the past"
        );
        assert_eq!(
            keep(&on, 200, &[("x-tyk-cache-action-set-ttl", "7")]),
            Some(7)
        );
    }

    #[test]
    fn what_is_not_served_is_refused_naming_the_field() {
        let cases = [
            (
                json!({"enable_cache": true, "cache_timeout": -1}),
                json!({}),
                "cache_options.cache_timeout",
            ),
            (json!({"enable_cache": "yes"}), json!({}), "cache_options"),
            (
                json!({"enable_cache": true}),
                json!({"extended_paths": {"advance_cache_config": [{"method": "POST", "path": "/x"}]}}),
                "version_data.versions.Default.extended_paths.advance_cache_config[0].method",
            ),
            (
                json!({"enable_cache": true}),
                json!({"extended_paths": {"advance_cache_config": [{"method": "GET", "path": "/x", "cache_key_regex": "id"}]}}),
                "version_data.versions.Default.extended_paths.advance_cache_config[0].cache_key_regex",
            ),
            (
                json!({"enable_cache": true}),
                json!({"extended_paths": {"cache": ["/x("]}}),
                "version_data.versions.Default.extended_paths.cache[0]",
            ),
        ];
        for (cache, version, field) in cases {
            let e = compile(&def(cache, version)).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }
}
