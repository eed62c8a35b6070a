//! The web console on the hub URL: a small static page and script
//! (`console/`, compiled in) that does the daily work through the hub's own
//! REST APIs, so there is no separate server to run and no build step.
//!
//! Sign-in takes the admin key once and answers a session cookie
//! (`HttpOnly`, `SameSite=Strict`, twelve hours): an expiry and a nonce,
//! signed with HMAC-SHA256 under a key derived from the admin key, so every
//! hub replica accepts it. Signing out ends the session on every replica: a
//! revocation on the `CONSOLE` stream ([`sessions`]). The browser never holds the
//! admin key or the Gateway API secret: it calls `/console/api/<path>`, and
//! the console forwards to `/<path>` on the hub with the credentials added.
//! Writes also need `x-csrf-token` (an HMAC of the session, from
//! `/console/session`), on top of `SameSite=Strict`. Every console answer
//! carries a Content-Security-Policy that allows only the console's own
//! script and style.

use std::time::Duration;

use aws_lc_rs::hmac;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use meridian_kit::http::{ApiError, ApiKey, ErrorCode};
use serde::Deserialize;
use tower::ServiceExt;

pub mod sessions;
pub use sessions::Sessions;

/// The session cookie's name.
pub const COOKIE: &str = "meridian_session";
/// How long a session lasts.
pub const SESSION: Duration = Duration::from_secs(12 * 3600);
/// The header writes carry the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

const INDEX: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/app.css");

/// What the console needs.
#[derive(Clone)]
pub struct Console {
    /// The hub's routes (the console forwards to them).
    pub inner: Router,
    /// The admin key (`X-API-Key`).
    pub api_key: String,
    /// The Gateway API secret (`x-tyk-authorization`), for the keys and
    /// policies pages; `None`: those pages say it is not configured.
    pub gateway_secret: Option<String>,
    /// What agents connect to (shown in the `agent-config.yaml` snippet).
    pub agent_url: String,
    /// The signed-out sessions of every replica.
    pub sessions: Sessions,
}

#[derive(Clone)]
struct Shared {
    console: Console,
    check: ApiKey,
    signer: Signer,
}

/// Signs and checks session cookies and CSRF tokens.
#[derive(Clone)]
struct Signer {
    key: hmac::Key,
}

/// The console's routes: `/`, its assets, sign-in and sign-out, the session
/// and the forwarding of `/console/api/*`.
pub fn router(console: Console) -> Router {
    let mut material = b"meridian console sessions v1\0".to_vec();
    material.extend_from_slice(console.api_key.as_bytes());
    let shared = Shared {
        check: ApiKey::new(&console.api_key),
        signer: Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, &material),
        },
        console,
    };
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/console/app.js",
            get(|| async { page(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/console/app.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/session", get(session))
        .route("/console/api/{*path}", any(forward))
        .with_state(shared)
}

fn secured(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn page(body: &'static str, content_type: &'static str) -> Response {
    secured(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

impl Signer {
    fn sign(&self, what: &str) -> String {
        meridian_kit::hex::encode(hmac::sign(&self.key, what.as_bytes()).as_ref())
    }

    /// A new session value: expiry, nonce, signature.
    fn new_session(&self, now_ms: i64) -> String {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).expect("the OS random source");
        let expires = now_ms + i64::try_from(SESSION.as_millis()).unwrap_or(i64::MAX);
        let body = format!("{expires}.{}", meridian_kit::hex::encode(&nonce));
        let mac = self.sign(&format!("session|{body}"));
        format!("{body}.{mac}")
    }

    /// When the session `value` expires (ms since the epoch), if it is one
    /// this console signed.
    fn signed_until(&self, value: &str) -> Option<i64> {
        let (body, mac) = value.rsplit_once('.')?;
        let expires = body.split('.').next()?.parse::<i64>().ok()?;
        let mac = meridian_kit::hex::decode(mac)?;
        hmac::verify(&self.key, format!("session|{body}").as_bytes(), &mac)
            .is_ok()
            .then_some(expires)
    }

    fn csrf(&self, session: &str) -> String {
        self.sign(&format!("csrf|{session}"))
    }

    /// Whether `token` is the CSRF token of `session`, compared in
    /// constant time (the library's HMAC verification), so its timing says
    /// nothing about how much of a guess was right.
    fn csrf_ok(&self, session: &str, token: &str) -> bool {
        meridian_kit::hex::decode(token).is_some_and(|mac| {
            hmac::verify(&self.key, format!("csrf|{session}").as_bytes(), &mac).is_ok()
        })
    }
}

impl Shared {
    /// Whether `value` is a session this console signed, not expired and
    /// not signed out.
    fn valid(&self, value: &str, now_ms: i64) -> bool {
        self.signer
            .signed_until(value)
            .is_some_and(|expires| expires > now_ms)
            && !self.console.sessions.is_revoked(value)
    }

    /// The session of a request, checked; the refusal otherwise (503 while
    /// this replica has not yet caught up with the signed-out sessions).
    async fn session_of(&self, headers: &HeaderMap) -> Result<String, Response> {
        let Some(value) = cookie(headers) else {
            return Err(refused("not signed in"));
        };
        if !self
            .console
            .sessions
            .ready(meridian_kit::http::START_PATIENCE)
            .await
        {
            return Err(secured(
                ApiError::unavailable(
                    "the console is catching up with signed-out sessions; retry shortly",
                )
                .into_response(),
            ));
        }
        if !self.valid(&value, meridian_kit::time::now_ms()) {
            return Err(refused(
                "the session has ended (expired or signed out); sign in again",
            ));
        }
        Ok(value)
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn refused(message: &str) -> Response {
    secured(ApiError::new(ErrorCode::Unauthenticated, message).into_response())
}

#[derive(Deserialize)]
struct SignIn {
    key: String,
}

async fn login(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Ok(SignIn { key }) = serde_json::from_slice(&body) else {
        return secured(
            ApiError::invalid_field("key", "send {\"key\": \"<admin key>\"}").into_response(),
        );
    };
    if !s.check.matches(&key) {
        tracing::warn!("console sign-in with a wrong admin key");
        return refused("that is not the admin key");
    }
    let value = s.signer.new_session(meridian_kit::time::now_ms());
    // Behind a TLS-terminating Ingress the cookie is sent over HTTPS only.
    let https = headers
        .get("x-forwarded-proto")
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let set = format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION.as_secs(),
        if https { "; Secure" } else { "" }
    );
    let mut response = secured(
        axum::Json(
            serde_json::json!({"csrf": s.signer.csrf(&value), "agent_url": s.console.agent_url}),
        )
        .into_response(),
    );
    if let Ok(v) = HeaderValue::from_str(&set) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// Signs out: the session is revoked on every replica (through the log),
/// and the cookie cleared. When the log cannot be reached the cookie is
/// still cleared, and the answer (503) says the session was not ended.
async fn logout(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let revoked = match cookie(&headers) {
        Some(value) => match s.signer.signed_until(&value) {
            Some(expires) => s.console.sessions.revoke(&value, expires).await,
            None => Ok(()),
        },
        None => Ok(()),
    };
    let mut response = match revoked {
        Ok(()) => secured(StatusCode::NO_CONTENT.into_response()),
        Err(e) => {
            tracing::warn!(error = %e, "a console session could not be revoked");
            secured(
                ApiError::unavailable(format!(
                    "signed out in this browser, but the session could not be ended on the server (the event log is not available: {e}); sign out again"
                ))
                .into_response(),
            )
        }
    };
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        ))
        .expect("a valid header"),
    );
    response
}

/// The session's CSRF token and settings, when signed in.
async fn session(State(s): State<Shared>, headers: HeaderMap) -> Response {
    match s.session_of(&headers).await {
        Ok(value) => secured(
            axum::Json(
                serde_json::json!({"csrf": s.signer.csrf(&value), "agent_url": s.console.agent_url}),
            )
            .into_response(),
        ),
        Err(refusal) => refusal,
    }
}

/// `/console/api/<path>` to `/<path>` on the hub, with the credentials the
/// path needs.
async fn forward(State(s): State<Shared>, request: Request) -> Response {
    let value = match s.session_of(request.headers()).await {
        Ok(value) => value,
        Err(refusal) => return refusal,
    };
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        let token = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok());
        if !token.is_some_and(|t| s.signer.csrf_ok(&value, t)) {
            return secured(
                ApiError::new(ErrorCode::Unauthenticated, "missing or wrong CSRF token")
                    .into_response(),
            );
        }
    }
    let (parts, body) = request.into_parts();
    let rest = parts
        .uri
        .path_and_query()
        .map_or("", |p| p.as_str())
        .strip_prefix("/console/api")
        .unwrap_or("/")
        .to_owned();
    let tyk = rest.starts_with("/tyk/") || rest.starts_with("/api/keys/");
    let mut inner = Request::builder().method(parts.method).uri(&rest);
    if let Some(t) = parts.headers.get(header::CONTENT_TYPE) {
        inner = inner.header(header::CONTENT_TYPE, t);
    }
    if tyk {
        match &s.console.gateway_secret {
            Some(secret) => inner = inner.header("x-tyk-authorization", secret),
            None => {
                return secured(
                    ApiError::unavailable(
                        "the console has no Gateway API secret (set MERIDIAN_GATEWAY_SECRET where the hub runs)",
                    )
                    .into_response(),
                );
            }
        }
    } else {
        inner = inner.header("x-api-key", &s.console.api_key);
    }
    let Ok(inner) = inner.body(Body::new(body)) else {
        return secured(ApiError::invalid_field("path", "not a valid path").into_response());
    };
    match s.console.inner.clone().oneshot(inner).await {
        Ok(response) => secured(response),
        Err(never) => match never {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_and_expire() {
        let s = Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, b"k"),
        };
        let session = s.new_session(1_000);
        let valid = |v: &str, now: i64| s.signed_until(v).is_some_and(|e| e > now);
        assert!(valid(&session, 2_000));
        assert!(!valid(&session, 1_000 + 12 * 3600 * 1000 + 1), "expired");
        let mut forged = session.clone();
        forged.replace_range(0..1, "9");
        assert!(!valid(&forged, 2_000), "a longer expiry is not signed");
        assert!(!valid("garbage", 2_000));
        assert_ne!(s.csrf(&session), s.csrf(&s.new_session(1_000)));
        assert!(s.csrf_ok(&session, &s.csrf(&session)));
        let other = s.csrf(&s.new_session(1_000));
        for wrong in [other.as_str(), "", "zz", &s.csrf(&session)[..10]] {
            assert!(!s.csrf_ok(&session, wrong), "{wrong:?} passed");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; meridian_session=x.y.z"),
        );
        assert_eq!(cookie(&headers).as_deref(), Some("x.y.z"));
    }
}
