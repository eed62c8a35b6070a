//! CORS as Tyk answers it: an API definition's `CORS` section, read the way
//! Tyk's gateway reads it (through rs/cors 1.7), decided before any other
//! step so that a browser's preflight, which carries no key, is answered
//! without one.
//!
//! - A preflight (`OPTIONS` with `Access-Control-Request-Method`) is
//!   answered 200 with no body, unless `options_passthrough`: then it goes
//!   on through the pipeline to the upstream, with the same headers. It
//!   always varies on `Origin`, `Access-Control-Request-Method` and
//!   `-Headers`; the `Access-Control-Allow-*` headers are added only when
//!   the origin, the method and every requested header are allowed.
//! - Any other request (not `OPTIONS`) gets `Vary: Origin`, and when its
//!   origin and method are allowed `Access-Control-Allow-Origin`,
//!   `-Expose-Headers` and `-Allow-Credentials`, on whatever it is
//!   answered: the upstream's answer or a refusal (so a browser can read a
//!   401).
//! - Defaults, as rs/cors's: no origins listed allows every origin; no
//!   methods, `GET`, `POST` and `HEAD`; no headers, `Origin`, `Accept` and
//!   `Content-Type` (`Origin` is always allowed). `*` in origins or headers
//!   allows all; one `*` inside an origin is a wildcard
//!   (`https://*.example.com`). With every origin allowed and no
//!   credentials the origin answered is `*`, otherwise the request's own.
//!   Origins and methods compare without regard to case.
//!
//! Pure: the decision is a function of the settings and the request's
//! method and headers.

use serde::Deserialize;
use serde_json::Value;

use super::Invalid;

/// The `CORS` section as Tyk's definitions write it (`null` lists are
/// empty).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Section {
    enable: bool,
    allowed_origins: Option<Vec<String>>,
    allowed_methods: Option<Vec<String>>,
    allowed_headers: Option<Vec<String>>,
    exposed_headers: Option<Vec<String>>,
    allow_credentials: bool,
    max_age: i64,
    options_passthrough: bool,
    /// Tyk's debug logging of CORS decisions: accepted, not used.
    #[allow(dead_code)]
    debug: bool,
}

/// Which origins may call.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Origins {
    All,
    Listed {
        /// Lower case.
        exact: Vec<String>,
        /// Lower case, split at their `*`.
        wildcards: Vec<(String, String)>,
    },
}

/// Which request headers a preflight may ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Headers {
    All,
    /// Canonical case (`Content-Type`).
    Listed(Vec<String>),
}

/// An API's CORS settings, compiled once when its definition is folded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cors {
    origins: Origins,
    /// Upper case.
    methods: Vec<String>,
    headers: Headers,
    /// `Access-Control-Expose-Headers`, canonical, joined (empty: none).
    exposed: String,
    credentials: bool,
    max_age: i64,
    passthrough: bool,
}

/// Headers CORS adds to an answer (names in lower case). `vary` is added
/// beside the upstream's own; the others replace any the upstream sent.
pub type Added = Vec<(&'static str, String)>;

/// What CORS decides for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A preflight, answered here: 200, no body, these headers.
    Preflight(Added),
    /// Go on; these headers go on the answer, whatever it is.
    Continue(Added),
}

/// Compiles a definition's `CORS` section (`None` when it is absent or
/// not enabled); a malformed one is refused naming the field.
pub fn compile(section: Option<&Value>) -> Result<Option<Cors>, Invalid> {
    let Some(section) = section.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let section: Section = serde_json::from_value(section.clone()).map_err(|e| {
        Invalid::new(
            "CORS",
            format!("{e} (enable, allowed_origins, allowed_methods, allowed_headers, exposed_headers: lists of strings, allow_credentials, options_passthrough, debug: booleans, max_age: seconds)"),
        )
    })?;
    if !section.enable {
        return Ok(None);
    }
    if section.max_age < 0 {
        return Err(Invalid::new("CORS.max_age", "must not be negative"));
    }
    let origins = section.allowed_origins.unwrap_or_default();
    let origins = if origins.is_empty() || origins.iter().any(|o| o == "*") {
        Origins::All
    } else {
        let (mut exact, mut wildcards) = (Vec::new(), Vec::new());
        for origin in origins {
            let origin = origin.to_ascii_lowercase();
            match origin.split_once('*') {
                Some((start, end)) if !end.contains('*') => {
                    wildcards.push((start.to_owned(), end.to_owned()));
                }
                Some(_) => {
                    return Err(Invalid::new(
                        "CORS.allowed_origins",
                        format!("{origin:?} has more than one *"),
                    ));
                }
                None => exact.push(origin),
            }
        }
        Origins::Listed { exact, wildcards }
    };
    let methods = section.allowed_methods.unwrap_or_default();
    let methods = if methods.is_empty() {
        vec!["GET".into(), "POST".into(), "HEAD".into()]
    } else {
        methods.iter().map(|m| m.to_ascii_uppercase()).collect()
    };
    let headers = section.allowed_headers.unwrap_or_default();
    let headers = if headers.is_empty() {
        Headers::Listed(vec![
            "Origin".into(),
            "Accept".into(),
            "Content-Type".into(),
        ])
    } else if headers.iter().any(|h| h == "*") {
        Headers::All
    } else {
        let mut listed: Vec<String> = headers
            .iter()
            .map(|h| meridian_kit::headers::canonical(h))
            .collect();
        listed.push("Origin".into());
        Headers::Listed(listed)
    };
    let exposed: Vec<String> = section
        .exposed_headers
        .unwrap_or_default()
        .iter()
        .map(|h| meridian_kit::headers::canonical(h))
        .collect();
    Ok(Some(Cors {
        origins,
        methods,
        headers,
        exposed: exposed.join(", "),
        credentials: section.allow_credentials,
        max_age: section.max_age,
        passthrough: section.options_passthrough,
    }))
}

impl Cors {
    fn origin_allowed(&self, origin: &str) -> bool {
        match &self.origins {
            Origins::All => true,
            Origins::Listed { exact, wildcards } => {
                let origin = origin.to_ascii_lowercase();
                exact.contains(&origin)
                    || wildcards.iter().any(|(start, end)| {
                        origin.len() >= start.len() + end.len()
                            && origin.starts_with(start.as_str())
                            && origin.ends_with(end.as_str())
                    })
            }
        }
    }

    fn method_allowed(&self, method: &str) -> bool {
        method.eq_ignore_ascii_case("OPTIONS")
            || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    fn headers_allowed(&self, requested: &[String]) -> bool {
        match &self.headers {
            Headers::All => true,
            Headers::Listed(listed) => requested.iter().all(|h| listed.contains(h)),
        }
    }

    /// The `Access-Control-Allow-Origin` value for `origin`.
    fn allow_origin(&self, origin: &str) -> String {
        if self.origins == Origins::All && !self.credentials {
            "*".into()
        } else {
            origin.to_owned()
        }
    }

    /// The decision for a request of `method` with these headers (each its
    /// first value, when it is text).
    pub fn decide(
        &self,
        method: &str,
        origin: Option<&str>,
        request_method: Option<&str>,
        request_headers: Option<&str>,
    ) -> Decision {
        let origin = origin.filter(|o| !o.is_empty());
        let request_method = request_method.filter(|m| !m.is_empty());
        if method == "OPTIONS"
            && let Some(request_method) = request_method
        {
            let headers = self.preflight(origin, request_method, request_headers);
            return if self.passthrough {
                Decision::Continue(headers)
            } else {
                Decision::Preflight(headers)
            };
        }
        if method == "OPTIONS" {
            return Decision::Continue(Vec::new());
        }
        let mut added = vec![("vary", "Origin".to_owned())];
        let Some(origin) = origin else {
            return Decision::Continue(added);
        };
        if !self.origin_allowed(origin) || !self.method_allowed(method) {
            return Decision::Continue(added);
        }
        added.push(("access-control-allow-origin", self.allow_origin(origin)));
        if !self.exposed.is_empty() {
            added.push(("access-control-expose-headers", self.exposed.clone()));
        }
        if self.credentials {
            added.push(("access-control-allow-credentials", "true".into()));
        }
        Decision::Continue(added)
    }

    fn preflight(
        &self,
        origin: Option<&str>,
        request_method: &str,
        request_headers: Option<&str>,
    ) -> Added {
        let mut added = vec![
            ("vary", "Origin".to_owned()),
            ("vary", "Access-Control-Request-Method".to_owned()),
            ("vary", "Access-Control-Request-Headers".to_owned()),
        ];
        let Some(origin) = origin else {
            return added;
        };
        let requested: Vec<String> = request_headers
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(meridian_kit::headers::canonical)
            .collect();
        if !self.origin_allowed(origin)
            || !self.method_allowed(request_method)
            || !self.headers_allowed(&requested)
        {
            return added;
        }
        added.push(("access-control-allow-origin", self.allow_origin(origin)));
        added.push((
            "access-control-allow-methods",
            request_method.to_ascii_uppercase(),
        ));
        if !requested.is_empty() {
            added.push(("access-control-allow-headers", requested.join(", ")));
        }
        if self.credentials {
            added.push(("access-control-allow-credentials", "true".into()));
        }
        if self.max_age > 0 {
            added.push(("access-control-max-age", self.max_age.to_string()));
        }
        added
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cors(section: Value) -> Cors {
        compile(Some(&section)).unwrap().expect("enabled")
    }

    fn names(added: &Added) -> Vec<(&str, &str)> {
        added.iter().map(|(n, v)| (*n, v.as_str())).collect()
    }

    #[test]
    fn preflights_are_answered_only_when_everything_asked_is_allowed() {
        let c = cors(
            json!({"enable": true, "allowed_origins": ["https://app.example", "https://*.example.org"],
            "allowed_methods": ["get", "PUT"], "allowed_headers": ["authorization", "X-Trace"],
            "allow_credentials": true, "max_age": 600}),
        );
        let Decision::Preflight(ok) = c.decide(
            "OPTIONS",
            Some("https://APP.example"),
            Some("put"),
            Some("authorization, x-trace"),
        ) else {
            panic!("answered here")
        };
        assert_eq!(
            names(&ok)[3..],
            [
                ("access-control-allow-origin", "https://APP.example"),
                ("access-control-allow-methods", "PUT"),
                ("access-control-allow-headers", "Authorization, X-Trace"),
                ("access-control-allow-credentials", "true"),
                ("access-control-max-age", "600"),
            ]
        );
        assert_eq!(names(&ok)[0], ("vary", "Origin"));
        let vary_only = |d: Decision| matches!(d, Decision::Preflight(h) if h.len() == 3);
        for (origin, method, headers) in [
            ("https://evil.example", "PUT", None),
            ("https://app.example", "DELETE", None),
            ("https://app.example", "PUT", Some("x-other")),
            ("", "PUT", None),
        ] {
            assert!(
                vary_only(c.decide("OPTIONS", Some(origin), Some(method), headers)),
                "{origin} {method} {headers:?}"
            );
        }
        assert!(matches!(
            c.decide("OPTIONS", Some("https://api.example.org"), Some("GET"), None),
            Decision::Preflight(h) if h.len() > 3
        ));
        assert!(
            matches!(
                c.decide("OPTIONS", Some("https://example.org"), Some("GET"), None),
                Decision::Preflight(h) if h.len() == 3
            ),
            "the wildcard needs its dot"
        );
    }

    #[test]
    fn other_requests_carry_their_headers_and_defaults_are_rs_cors_ones() {
        let open = cors(json!({"enable": true, "exposed_headers": ["x-total"]}));
        assert_eq!(
            open.decide("GET", Some("https://any.example"), None, None),
            Decision::Continue(vec![
                ("vary", "Origin".into()),
                ("access-control-allow-origin", "*".into()),
                ("access-control-expose-headers", "X-Total".into()),
            ])
        );
        assert_eq!(
            open.decide("DELETE", Some("https://any.example"), None, None),
            Decision::Continue(vec![("vary", "Origin".into())]),
            "DELETE is not a default method"
        );
        assert_eq!(
            open.decide("GET", None, None, None),
            Decision::Continue(vec![("vary", "Origin".into())])
        );
        assert_eq!(
            open.decide("OPTIONS", Some("https://any.example"), None, None),
            Decision::Continue(vec![]),
            "an OPTIONS that is not a preflight gets nothing"
        );
        let Decision::Preflight(h) = open.decide(
            "OPTIONS",
            Some("https://a"),
            Some("POST"),
            Some("content-type"),
        ) else {
            panic!()
        };
        assert!(h.contains(&("access-control-allow-origin", "*".into())));
        let passthrough = cors(json!({"enable": true, "options_passthrough": true,
            "allowed_origins": ["*"], "allow_credentials": true}));
        assert!(
            matches!(
                passthrough.decide("OPTIONS", Some("https://a"), Some("GET"), None),
                Decision::Continue(h) if h.contains(&("access-control-allow-origin", "https://a".into()))
            ),
            "credentials: the origin itself, never *"
        );
    }

    #[test]
    fn sections_off_or_malformed() {
        assert_eq!(compile(None).unwrap(), None);
        assert_eq!(compile(Some(&Value::Null)).unwrap(), None);
        assert_eq!(
            compile(Some(&json!({"enable": false, "allowed_origins": ["x"]}))).unwrap(),
            None
        );
        assert!(
            compile(Some(&json!({"enable": true, "allowed_origins": null}))).is_ok(),
            "Tyk writes null lists"
        );
        for (bad, field) in [
            (json!({"enable": true, "allowed_origins": "x"}), "CORS"),
            (json!({"enable": true, "max_age": -1}), "CORS.max_age"),
            (
                json!({"enable": true, "allowed_origins": ["https://*.*.x"]}),
                "CORS.allowed_origins",
            ),
        ] {
            let e = compile(Some(&bad)).unwrap_err();
            assert_eq!(e.field, field, "{bad}: {}", e.message);
        }
    }
}
