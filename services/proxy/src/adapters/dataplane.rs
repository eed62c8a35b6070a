//! The data plane: HTTP/1.1 from clients, forwarded to each API's upstream
//! over pooled keep-alive connections (HTTP/1.1, `https`, or h2c), bodies
//! streamed both ways. A request reads the routing table and the key view
//! from this replica's folds, holding each lock only while it looks (never
//! across an await), so the hot path touches no network but the upstream.
//!
//! Before anything else a request's path is normalised, once
//! ([`crate::domain::path`]), and the request rewritten to it: routing,
//! versions, `allowed_urls` and the upstream path all read that one path.
//! A header that must appear once (`Host`, `Authorization`, the API's auth
//! header, ...) appearing twice is refused, not forwarded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery, Scheme};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use meridian_keys::fold::{Shared as SharedKeys, read as read_keys};
use meridian_keys::hash_secret;
use meridian_keys::limits::{Kind, key_budget, org_budget};
use meridian_kit::CancellationToken;
use meridian_kit::headers::remove_hop_by_hop;
use meridian_kit::metrics::{Counter, Family, Labels, Metrics, SpreadCounter};
use tracing::Instrument as _;

use super::fold::{SharedApis, read};
use super::limits::{Limit, Limiter, Refused};
use super::upstream::{Affinity, ClientBody, Http1Pool, caused_by_client_body, client_body};
use crate::domain::Route;
use crate::domain::access::{
    KeyInput, Refusal, VersionInput, bearer_token, check_key, first_segment, key_from_header,
    resolve_version,
};
use crate::domain::cors::{Added, Decision};
use crate::domain::limits::{HeaderSource, LimitHeaders, throttle};
use crate::domain::path;
use crate::domain::pipeline::{Context, Facts, Identity, Step};
use crate::domain::routes::{VersionLocation, Versioning, join_path};
use crate::domain::transforms::{Rendered, Vars, meta_value};

/// What the data plane answers with: the upstream's streamed body, or one
/// of its own small JSON errors.
pub type Body = Either<Incoming, Full<Bytes>>;

/// How a data plane talks to upstreams and answers.
#[derive(Clone, Copy, Debug)]
pub struct Settings<'a> {
    /// Timeouts towards upstreams.
    pub timeouts: Timeouts,
    /// A PEM file of CAs trusted for `https` upstreams, beside the system's.
    pub extra_ca: Option<&'a str>,
    /// What `X-RateLimit-*` describe.
    pub header_source: HeaderSource,
    /// Plain HTTP/1.1 requests take the fast path ([`super::fastpath`]);
    /// without, hyper serves every connection.
    pub fast_path: bool,
    /// Bytes of answers the response cache keeps.
    pub cache_max_bytes: u64,
}

/// Timeouts towards upstreams.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// To open a connection.
    pub connect: Duration,
    /// From sending a request to the upstream's response headers.
    pub read: Duration,
}

/// Tyk's answer when the upstream cannot be reached (502).
pub const UPSTREAM_FAILED: &str = "There was a problem proxying the request";
/// The answer when the client's request body cannot be read (400).
pub const CLIENT_BODY_FAILED: &str = "The request body is malformed or incomplete";
/// Tyk's answer when the upstream is too slow (504).
pub const UPSTREAM_TIMED_OUT: &str = "Upstream service reached hard timeout.";

/// What a client connection keeps between its requests: its address (and
/// its `X-Forwarded-For` value, made once) and its upstream connections.
pub struct ClientConn {
    /// The client's address.
    pub peer: SocketAddr,
    ip_header: HeaderValue,
    /// Its upstream connections.
    pub affinity: Affinity,
}

impl ClientConn {
    /// A new client connection from `peer`.
    pub fn new(peer: SocketAddr, pool: Arc<Http1Pool>) -> Self {
        let ip_header = HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self {
            peer,
            ip_header,
            affinity: Affinity::new(pool),
        }
    }
}

/// The span of one request to `api`: a real one only when spans are
/// exported (logging alone does not need one: the gateway's log lines name
/// the API themselves, and a span per request costs a formatted allocation).
pub(super) fn request_span(api: &str, method: &str) -> tracing::Span {
    if meridian_kit::telemetry::exporting() {
        tracing::info_span!("gateway.request", api = %api, http.method = %method)
    } else {
        tracing::Span::none()
    }
}

/// A request hyper parsed, as the steps read it.
struct HyperFacts<'a, B>(&'a Request<B>);

impl<B: Sync> Facts for HyperFacts<'_, B> {
    fn path(&self) -> &str {
        self.0.uri().path()
    }
    fn query(&self) -> Option<&str> {
        self.0.uri().query()
    }
    fn method(&self) -> &str {
        self.0.method().as_str()
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.0.headers().get(name).and_then(|v| v.to_str().ok())
    }
}

/// Removes and sets headers as header injection rendered them (names
/// and values were checked when the definition was compiled and
/// rendered).
fn apply_edits(headers: &mut HeaderMap, edits: &Rendered) {
    for name in &edits.remove {
        headers.remove(name.as_str());
    }
    for (name, value) in &edits.set {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            headers.append(name, value);
        }
    }
}

/// The client's address as Tyk's `RealIP` reads it: `X-Real-IP`, else the
/// first `X-Forwarded-For`, else the connection's.
fn real_ip<'a>(req: &'a (dyn Facts + Sync), peer_ip: &'a str) -> &'a str {
    req.header("x-real-ip")
        .or_else(|| {
            req.header("x-forwarded-for")
                .and_then(|v| v.split(',').next())
        })
        .map_or(peer_ip, str::trim)
}

/// Tyk's variables for one request: `$tyk_context.NAME` (with
/// `enable_context_vars`, as in Tyk: `request_id`, `remote_addr`, `path`,
/// `path_parts`, `token`, `headers_NAME`, `cookies_NAME`,
/// `request_data_NAME` from the query) and `$tyk_meta.KEY` (the key's
/// session metadata).
struct RequestVars<'a> {
    req: &'a (dyn Facts + Sync),
    cx: &'a Context,
    peer_ip: &'a str,
    context_vars: bool,
    /// Made when first named, the same for every header of the request.
    request_id: std::cell::OnceCell<String>,
}

impl Vars for RequestVars<'_> {
    fn context(&self, name: &str) -> Option<String> {
        if !self.context_vars {
            return None;
        }
        let req = self.req;
        match name {
            "request_id" => Some(
                self.request_id
                    .get_or_init(|| uuid::Uuid::new_v4().to_string())
                    .clone(),
            ),
            // Tyk's RealIP: X-Real-IP, else the first X-Forwarded-For,
            // else the connection's address.
            "remote_addr" => Some(real_ip(req, self.peer_ip).to_owned()),
            "path" => Some(req.path().to_owned()),
            "path_parts" => Some(
                req.path()
                    .split('/')
                    .filter(|p| !p.is_empty())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            "token" => {
                self.cx.identity.as_ref()?;
                req.header(&self.cx.route.auth_header)
                    .and_then(key_from_header)
                    .map(str::to_owned)
            }
            _ => {
                if let Some(header) = name.strip_prefix("headers_") {
                    return req
                        .header(&header.replace('_', "-").to_ascii_lowercase())
                        .map(str::to_owned);
                }
                if let Some(cookie) = name.strip_prefix("cookies_") {
                    return req.header("cookie")?.split(';').find_map(|pair| {
                        let (n, v) = pair.trim().split_once('=')?;
                        (n.replace('-', "_") == cookie).then(|| v.to_owned())
                    });
                }
                let param = name.strip_prefix("request_data_")?;
                form_urlencoded::parse(req.query()?.as_bytes())
                    .find(|(n, _)| n.replace('-', "_") == param)
                    .map(|(_, v)| v.into_owned())
            }
        }
    }

    fn meta(&self, key: &str) -> Option<String> {
        let session = &self.cx.identity.as_ref()?.session;
        session.meta_data.get(key).and_then(meta_value)
    }
}

/// The data plane of one replica.
pub struct DataPlane {
    apis: SharedApis,
    keys: SharedKeys,
    limiter: Arc<Limiter>,
    header_source: HeaderSource,
    fast_path: bool,
    /// `meridian_gateway_refused`, one counter per [`Refusal`].
    refused: Vec<Counter>,
    plain: Arc<Http1Pool>,
    http: Client<HttpsConnector<HttpConnector>, ClientBody>,
    h2c: Client<HttpConnector, ClientBody>,
    timeouts: Timeouts,
    answered: Family<Labels, SpreadCounter>,
    /// Client connections hyper served (from their first request, or from
    /// one the fast path handed over).
    handed_to_hyper: Counter,
    /// Client connections open now.
    open_connections: meridian_kit::metrics::Gauge,
    /// Where this replica's gateway listens (batches send their requests
    /// there), once it does.
    listening: std::sync::OnceLock<SocketAddr>,
    /// The client batches send with.
    batches: super::batch::SelfClient,
    /// Kept answers of APIs with the cache on.
    cache: Arc<super::cache::ResponseCache>,
    /// OAuth 2.0's endpoints, once the replica has NATS to record tokens.
    oauth: std::sync::OnceLock<super::oauth::Issuer>,
    /// The counters of `answered` by API and status class, found without
    /// building labels on every request.
    counters: meridian_kit::writer::Lock<HashMap<String, [Option<SpreadCounter>; 5]>>,
}

fn connector(timeouts: Timeouts) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(timeouts.connect));
    http
}

/// Why the TLS settings towards upstreams cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("UPSTREAM_CA_FILE {path}: {reason}")]
pub struct TlsSetupError {
    /// The file.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// The system's CA certificates, and those of `extra_ca` (a PEM file) when
/// given: what `https` upstreams are checked against.
fn roots(extra_ca: Option<&str>) -> Result<rustls::RootCertStore, TlsSetupError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "a system CA certificate cannot be read");
    }
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = extra_ca {
        let fail = |reason: String| TlsSetupError {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(fail("holds no certificate".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| fail(format!("a certificate is not usable as a CA: {e}")))?;
        }
    }
    if roots.is_empty() {
        tracing::warn!("no CA certificates: https upstreams will not verify");
    }
    Ok(roots)
}

fn tls_connector(
    timeouts: Timeouts,
    extra_ca: Option<&str>,
) -> Result<HttpsConnector<HttpConnector>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError {
            path: extra_ca.unwrap_or_default().to_owned(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots(extra_ca)?)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector(timeouts)))
}

/// A JSON error in Tyk's data-plane shape: `{"error": "..."}`.
pub fn error_response(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &serde_json::json!({ "error": message }))
}

/// A JSON answer.
pub(super) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut res = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Sets `X-RateLimit-Limit`, `-Remaining` (never negative) and `-Reset`.
fn set_limit_headers(headers: &mut HeaderMap, h: LimitHeaders) {
    headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(h.limit));
    headers.insert(
        X_RATELIMIT_REMAINING.clone(),
        HeaderValue::from(h.remaining.max(0)),
    );
    headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(h.reset));
}

/// Adds what CORS decided: `Vary` beside the upstream's, the others in
/// place of any the upstream sent.
fn add_cors_headers(headers: &mut HeaderMap, added: &Added) {
    for (name, value) in added {
        let Ok(value) = HeaderValue::try_from(value.as_str()) else {
            continue;
        };
        let name = HeaderName::from_static(name);
        if name == header::VARY {
            headers.append(name, value);
        } else {
            headers.insert(name, value);
        }
    }
}

/// Request headers that may appear only once (RFC 9110 defines each as a
/// single value, not a list): two of them are ambiguous (which one did the
/// gateway check, which one will the upstream read?), so refused.
pub(super) const SINGLETONS: [HeaderName; 14] = [
    header::HOST,
    header::AUTHORIZATION,
    header::PROXY_AUTHORIZATION,
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::CONTENT_LOCATION,
    header::DATE,
    header::FROM,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
    header::MAX_FORWARDS,
    header::RANGE,
    header::REFERER,
];

/// The first of [`SINGLETONS`] (and `also`) that `headers` carries more
/// than once. Free when no name repeats at all, the common case.
pub fn repeated_singleton<'a>(headers: &HeaderMap, also: Option<&'a str>) -> Option<&'a str> {
    if headers.len() == headers.keys_len() {
        return None;
    }
    SINGLETONS
        .iter()
        .map(HeaderName::as_str)
        .chain(also)
        .find(|name| headers.get_all(*name).iter().nth(1).is_some())
}

/// Rewrites the request to its normalised path (see [`crate::domain::path`]),
/// or says why it is refused (a 400). Allocates only when the path changes.
fn normalize_path(req: &mut Request<Incoming>) -> Result<(), String> {
    const UNFORWARDABLE: &str = "The request path cannot be forwarded";
    let normalized = match path::normalize(req.uri().path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(refusal) => return Err(refusal.to_string()),
    };
    let target = match req.uri().query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query =
        Some(PathAndQuery::try_from(target).map_err(|_| UNFORWARDABLE.to_owned())?);
    *req.uri_mut() = Uri::from_parts(parts).map_err(|_| UNFORWARDABLE.to_owned())?;
    Ok(())
}

/// A mocked operation's answer ([`crate::domain::endpoints::Mock`]).
fn mock_response(mock: &crate::domain::endpoints::Mock) -> Response<Body> {
    let mut res = Response::new(Either::Right(Full::new(mock.body.clone())));
    *res.status_mut() = StatusCode::from_u16(mock.code).unwrap_or(StatusCode::OK);
    for (name, value) in &mock.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            res.headers_mut().append(n, v);
        }
    }
    res
}

/// The 400 for a header that must appear once and came twice.
fn repeated(name: &str) -> Response<Body> {
    error_response(
        StatusCode::BAD_REQUEST,
        &format!("The {name} header must appear only once"),
    )
}

impl DataPlane {
    /// A data plane over the replica's folds; `https` upstreams are checked
    /// against the system's CAs and `extra_ca`'s. Its counter of answers goes
    /// to `metrics`.
    pub fn new(
        apis: SharedApis,
        keys: SharedKeys,
        limiter: Arc<Limiter>,
        settings: Settings<'_>,
        metrics: &Metrics,
    ) -> Result<Self, TlsSetupError> {
        let Settings {
            timeouts,
            extra_ca,
            header_source,
            fast_path,
            cache_max_bytes,
        } = settings;
        let refused = metrics.counters(
            "meridian_gateway_refused",
            "Requests the gateway refused before the upstream, by reason (rate, quota, org_rate, org_quota, org_inactive, key_*, version_*, ...).",
        );
        let refused = Refusal::ALL
            .iter()
            .map(|r| {
                refused
                    .get_or_create(&vec![("reason", r.reason().to_owned())])
                    .clone()
            })
            .collect();
        let pool = |b: &mut hyper_util::client::legacy::Builder| {
            b.pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .timer(TokioTimer::new());
        };
        let mut http = Client::builder(TokioExecutor::new());
        pool(&mut http);
        let mut h2c = Client::builder(TokioExecutor::new());
        pool(&mut h2c);
        h2c.http2_only(true);
        Ok(Self {
            apis,
            keys,
            limiter,
            header_source,
            fast_path,
            refused,
            plain: Http1Pool::new(timeouts.connect),
            http: http.build(tls_connector(timeouts, extra_ca)?),
            h2c: h2c.build(connector(timeouts)),
            timeouts,
            counters: meridian_kit::writer::Lock::default(),
            listening: std::sync::OnceLock::new(),
            oauth: std::sync::OnceLock::new(),
            batches: super::batch::self_client(),
            cache: Arc::new(super::cache::ResponseCache::new(cache_max_bytes, metrics)),
            handed_to_hyper: metrics
                .counters(
                    "meridian_gateway_hyper_connections",
                    "Client connections served by hyper rather than the HTTP/1.1 fast path (HTTP/1.0, chunked or upgraded requests, Expect, https and h2c upstreams, or the fast path turned off).",
                )
                .get_or_create(&vec![])
                .clone(),
            open_connections: metrics.gauge(
                "meridian_gateway_open_connections",
                "Client connections the gateway's data plane holds open now.",
            ),
            answered: metrics.spread_counters(
                "meridian_gateway_requests",
                "Requests answered by the gateway's data plane, by API (or none) and status class.",
            ),
        })
    }

    /// The API listening on `path` (normalised).
    pub(super) fn route(&self, path: &str) -> Option<Arc<Route>> {
        read(&self.apis).table().lookup(path).cloned()
    }

    /// The replica's response cache (purges reach it through this).
    pub fn response_cache(&self) -> Arc<super::cache::ResponseCache> {
        self.cache.clone()
    }

    /// The timeouts towards upstreams.
    pub(super) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// The kept plain HTTP/1.1 upstream connections of the hyper path,
    /// for a connection hyper is about to serve (counted).
    pub(super) fn hyper_connection(&self) -> Arc<Http1Pool> {
        self.handed_to_hyper.inc();
        self.plain.clone()
    }

    pub(super) fn count(&self, api: &str, status: StatusCode) {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let class = usize::from((status.as_u16() / 100).clamp(1, 5) - 1);
        // Every worker thread counts: a shared read, a write only the first
        // time an API answers with a class.
        if let Some(Some(counter)) = self
            .counters
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(api)
            .map(|c| &c[class])
        {
            counter.inc();
            return;
        }
        let counter = self
            .answered
            .get_or_create(&vec![
                ("api", api.to_owned()),
                ("status", CLASSES[class].to_owned()),
            ])
            .clone();
        counter.inc();
        self.counters
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(api.to_owned())
            .or_default()[class] = Some(counter);
    }

    /// Serves OAuth 2.0's endpoints with `issuer` (set once, at start).
    pub fn issue_tokens_with(&self, issuer: super::oauth::Issuer) {
        let _ = self.oauth.set(issuer);
    }

    /// Answers one request of the client connection `client`.
    pub async fn handle(&self, req: Request<Incoming>, client: &ClientConn) -> Response<Body> {
        let mut req = req;
        if let Err(why) = normalize_path(&mut req) {
            self.count("", StatusCode::BAD_REQUEST);
            return error_response(StatusCode::BAD_REQUEST, &why);
        }
        if let Some(name) = repeated_singleton(req.headers(), None) {
            self.count("", StatusCode::BAD_REQUEST);
            return repeated(name);
        }
        let route = self.route(req.uri().path());
        let Some(route) = route else {
            self.count("", StatusCode::NOT_FOUND);
            return error_response(StatusCode::NOT_FOUND, "No API listens on this path");
        };
        if !route.keyless
            && let Some(name) = repeated_singleton(req.headers(), Some(route.auth_header.as_str()))
        {
            self.count(&route.api_id, StatusCode::BAD_REQUEST);
            return repeated(name);
        }
        // One span per request when spans are exported, continuing the
        // client's trace; the upstream is sent this span's `traceparent`.
        let span = request_span(&route.api_id, req.method().as_str());
        if !span.is_disabled() {
            meridian_kit::telemetry::follow_http(&span, req.headers());
            if let Some(tp) = meridian_kit::telemetry::traceparent_of(&span)
                .and_then(|tp| HeaderValue::try_from(tp).ok())
            {
                req.headers_mut().insert(TRACEPARENT.clone(), tp);
            }
        }
        if route.batch
            && req.method() == hyper::Method::POST
            && crate::domain::batch::is_batch_path(&route.listen_path, req.uri().path())
        {
            let res = self.batch(req, &route, client).await;
            self.count(&route.api_id, res.status());
            return res;
        }
        if let Some(oauth) = &route.oauth
            && let Some(endpoint) = crate::domain::oauth::endpoint(route.rest_of(req.uri().path()))
        {
            let res = match self.oauth.get() {
                Some(issuer) => {
                    issuer
                        .answer(&self.keys, &route, oauth, endpoint, req)
                        .await
                }
                None => error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "OAuth tokens cannot be issued by this replica",
                ),
            };
            self.count(&route.api_id, res.status());
            return res;
        }
        let mut cx = Context::new(route, meridian_kit::time::now_ms());
        if let Some(preflight) = Self::cors_phase(&mut cx, &HyperFacts(&req)) {
            let mut res = Response::new(Either::Right(Full::new(Bytes::new())));
            add_cors_headers(res.headers_mut(), &preflight);
            self.done_phase(&cx, &res);
            return res;
        }
        let res = match self.request_phase(&mut cx, &HyperFacts(&req)).await {
            Ok(()) => {
                let peer_ip = client.ip_header.to_str().unwrap_or_default();
                Self::transform_phase(&mut cx, &HyperFacts(&req), peer_ip);
                let req = match Self::validate_phase(req, &cx).await {
                    Ok(req) => req,
                    Err(mut refused) => {
                        add_cors_headers(refused.headers_mut(), &cx.cors_headers);
                        self.done_phase(&cx, &refused);
                        return refused;
                    }
                };
                if let Some(mock) = cx.mock.as_deref() {
                    let mut res = mock_response(mock);
                    self.response_phase(&cx, &mut res);
                    self.done_phase(&cx, &res);
                    return res;
                }
                let forwarded = self.cached_or_forwarded(req, &cx, client);
                let mut res = if span.is_disabled() {
                    forwarded.await
                } else {
                    forwarded.instrument(span).await
                };
                self.response_phase(&cx, &mut res);
                res
            }
            Err(refusal) => {
                let (status, message, limits) = self.refusal_answer(&cx, refusal);
                let mut res = error_response(status, message);
                if let Some(h) = limits {
                    set_limit_headers(res.headers_mut(), h);
                }
                add_cors_headers(res.headers_mut(), &cx.cors_headers);
                res
            }
        };
        self.done_phase(&cx, &res);
        res
    }

    /// A batch ([`crate::domain::batch`]): its requests sent back through
    /// this gateway, their answers in one. 400 for a body that is not a
    /// batch (Tyk's `Batch request malformed`, naming the request at fault
    /// when one is), 413 for one over the size cap.
    async fn batch(
        &self,
        req: Request<Incoming>,
        route: &Route,
        client: &ClientConn,
    ) -> Response<Body> {
        use crate::domain::batch::{MAX_BODY, MAX_REPLY, parse};
        let status_error = |status: StatusCode, message: &str| {
            json_response(
                status,
                &serde_json::json!({"status": "error", "message": message}),
            )
        };
        let body = http_body_util::Limited::new(req.into_body(), MAX_BODY);
        let body = match http_body_util::BodyExt::collect(body).await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return status_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("A batch request's body is at most {MAX_BODY} bytes"),
                );
            }
            Err(_) => return status_error(StatusCode::BAD_REQUEST, CLIENT_BODY_FAILED),
        };
        let (subs, serial) = match parse(&body, &route.listen_path) {
            Ok(parsed) => parsed,
            Err(message) => return status_error(StatusCode::BAD_REQUEST, &message),
        };
        let Some(addr) = self.listening.get().copied() else {
            return status_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "The gateway is not listening yet",
            );
        };
        let timeout = self.timeouts.connect + self.timeouts.read + Duration::from_secs(1);
        let ip = client.ip_header.to_str().unwrap_or_default();
        match super::batch::run(&self.batches, addr, subs, serial, ip, timeout).await {
            Ok(replies) => json_response(StatusCode::OK, &serde_json::json!(replies)),
            Err(super::batch::Failed::TooLarge) => status_error(
                StatusCode::BAD_REQUEST,
                &format!(
                    "The batch's answers would pass {MAX_REPLY} bytes; ask for fewer or smaller resources"
                ),
            ),
        }
    }

    /// A refusal counted, and answered with: its status, its message and,
    /// when they describe the rate limit, the `X-RateLimit-*` values.
    pub(super) fn refusal_answer(
        &self,
        cx: &Context,
        refusal: Refusal,
    ) -> (StatusCode, &'static str, Option<LimitHeaders>) {
        self.refused[refusal.index()].inc();
        let limits = cx
            .rate_headers
            .filter(|_| self.header_source == HeaderSource::RateLimits);
        (refusal.code().http_status(), refusal.message(), limits)
    }

    /// The done phase: what is counted once the answer is decided.
    fn done_phase(&self, cx: &Context, res: &Response<Body>) {
        self.count(&cx.route.api_id, res.status());
    }

    /// The request phase: the API's steps in order, each continuing or
    /// refusing (see [`crate::domain::pipeline`]).
    pub(super) async fn request_phase(
        &self,
        cx: &mut Context,
        req: &(dyn Facts + Sync),
    ) -> Result<(), Refusal> {
        let route = cx.route.clone();
        for step in &route.plan.steps {
            match step {
                Step::Org => self.org_step(cx).await?,
                Step::Version => self.version_step(cx, req)?,
                Step::Endpoint => Self::endpoint_step(cx, req)?,
                Step::Key | Step::KeyRate | Step::KeyQuota if cx.skip_auth => {}
                Step::Key => self.key_step(cx, req)?,
                Step::KeyRate => self.key_rate_step(cx).await?,
                Step::KeyQuota => self.key_quota_step(cx).await?,
            }
        }
        Ok(())
    }

    /// Header injection, once the steps passed: the API's rules rendered
    /// for this request ([`crate::domain::transforms`]), kept in `cx` for
    /// the upstream request and the answer. `peer_ip` is the client's
    /// address.
    pub(super) fn transform_phase(cx: &mut Context, req: &(dyn Facts + Sync), peer_ip: &str) {
        let Some(transforms) = &cx.route.transforms else {
            return;
        };
        let rest = cx.route.relative_path(req.path());
        let vars = RequestVars {
            req,
            cx,
            peer_ip,
            context_vars: transforms.context_vars,
            request_id: std::cell::OnceCell::new(),
        };
        let edits = transforms.for_request(cx.version.as_deref(), req.method(), rest, &vars);
        cx.edits = edits.map(Box::new);
    }

    /// The API's organisation: inactive refuses; its rate limit and quota
    /// count every request to its APIs.
    async fn org_step(&self, cx: &mut Context) -> Result<(), Refusal> {
        let org_id = cx.route.org_id.as_str();
        let Some(org) = read_keys(&self.keys).org(org_id).map(|e| e.value.clone()) else {
            return Ok(());
        };
        if org.is_inactive {
            return Err(Refusal::OrgInactive);
        }
        let budget = org_budget(&org);
        if let Some(window) = budget.window() {
            let verdict = self
                .limiter
                .admit(
                    Kind::OrgRate,
                    org_id,
                    "",
                    Limit::Rate(window),
                    "",
                    cx.now_ms,
                )
                .await;
            if verdict.admitted.is_err() {
                return Err(Refusal::OrgRateLimited);
            }
        }
        if let Some(quota) = budget.quota() {
            let verdict = self
                .limiter
                .admit(
                    Kind::OrgQuota,
                    org_id,
                    "",
                    Limit::Quota(quota),
                    &org.last_updated,
                    cx.now_ms,
                )
                .await;
            match verdict.admitted {
                Ok(()) => {}
                Err(Refused::Exhausted) => return Err(Refusal::OrgQuotaExceeded),
                Err(Refused::Unavailable) => return Err(Refusal::QuotaUnavailable),
            }
        }
        Ok(())
    }

    /// The version the request is for, and whether its path segment goes.
    fn version_step(&self, cx: &mut Context, req: &(dyn Facts + Sync)) -> Result<(), Refusal> {
        let route = &cx.route;
        let rest = route.rest_of(req.path());
        let header = match &route.versioning {
            Versioning::By {
                location: VersionLocation::Header(name),
                ..
            } => req.header(name),
            _ => None,
        };
        let version = resolve_version(
            route,
            &VersionInput {
                header,
                query: req.query(),
                rest,
            },
            cx.now_s(),
        )?;
        cx.strip_segment = match &route.versioning {
            Versioning::By {
                location: VersionLocation::Url,
                strip: true,
                ..
            } => version
                .as_deref()
                .is_some_and(|v| first_segment(rest) == Some(v)),
            _ => false,
        };
        cx.version = version;
        Ok(())
    }

    /// `validateRequest` ([`crate::domain::validate`]), after the steps as
    /// in Tyk: the parameters, then the body, read whole (at most
    /// [`crate::domain::validate::MAX_BODY`]) and sent on as read. A
    /// refusal is the operation's error status with Tyk's message.
    async fn validate_phase(
        req: Request<Incoming>,
        cx: &Context,
    ) -> Result<Request<ClientBody>, Response<Body>> {
        use crate::domain::validate::MAX_BODY;
        let Some((v, path_params)) = &cx.validate else {
            return Ok(req.map(client_body));
        };
        let refuse = |status: u16, message: String| {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
            error_response(status, &message)
        };
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        };
        let params: Vec<&str> = path_params.iter().map(String::as_str).collect();
        v.check_params(req.uri().query(), &header, &params)
            .map_err(|e| refuse(v.error_code, e.to_string()))?;
        if !v.reads_body() {
            return Ok(req.map(client_body));
        }
        let content_type = header("content-type");
        let (parts, body) = req.into_parts();
        let bytes =
            match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_BODY))
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                    // The rest of the body is not read: the connection ends.
                    let mut res = refuse(
                        413,
                        format!(
                            "request validation error: the body is larger than {MAX_BODY} bytes"
                        ),
                    );
                    res.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return Err(res);
                }
                Err(_) => return Err(refuse(400, CLIENT_BODY_FAILED.to_owned())),
            };
        v.check_body(content_type.as_deref(), &bytes)
            .map_err(|e| refuse(v.error_code, e.to_string()))?;
        Ok(Request::from_parts(
            parts,
            ClientBody::Buffered(Some(bytes)),
        ))
    }

    /// A Tyk OAS API's operation rules ([`crate::domain::endpoints`]).
    fn endpoint_step(cx: &mut Context, req: &(dyn Facts + Sync)) -> Result<(), Refusal> {
        let route = cx.route.clone();
        let Some(endpoints) = &route.endpoints else {
            return Ok(());
        };
        let rest = route.relative_path(req.path());
        match endpoints.decide(req.method(), rest) {
            Err(_) => Err(Refusal::EndpointForbidden),
            Ok(Some(rule)) => {
                cx.skip_auth = rule.ignore_auth;
                cx.mock.clone_from(&rule.mock);
                if let Some(v) = &rule.validate {
                    let params = rule
                        .path_params(rest)
                        .into_iter()
                        .map(str::to_owned)
                        .collect();
                    cx.validate = Some((v.clone(), params));
                }
                Ok(())
            }
            Ok(None) => Ok(()),
        }
    }

    /// Key auth: the key from the API's header, checked against its
    /// effective session.
    fn key_step(&self, cx: &mut Context, req: &(dyn Facts + Sync)) -> Result<(), Refusal> {
        let header = req.header(&cx.route.auth_header);
        let oauth = cx.route.oauth.is_some();
        let key = if oauth {
            bearer_token(header)?
        } else {
            header
                .and_then(key_from_header)
                .ok_or(Refusal::KeyMissing)?
        };
        let key_hash = hash_secret(key);
        let input = KeyInput {
            key_hash: &key_hash,
            version: cx.version.as_deref(),
            path: req.path(),
            method: req.method(),
            now_s: cx.now_s(),
        };
        let (session, quota_reset) = {
            let keys = read_keys(&self.keys);
            let enforced = match check_key(&keys, &cx.route, &input) {
                // Tyk's OAuth middleware's answer for a token it does not know.
                Err(Refusal::Disallowed) if oauth && keys.enforced(&key_hash).is_none() => {
                    return Err(Refusal::TokenUnknown);
                }
                checked => checked?,
            };
            let Ok(session) = &enforced.effective else {
                return Err(Refusal::Disallowed);
            };
            (session.clone(), enforced.quota_reset.clone())
        };
        cx.identity = Some(Identity {
            key_hash,
            session,
            quota_reset,
        });
        Ok(())
    }

    /// The key's rate limit on this API, throttled as its session says.
    async fn key_rate_step(&self, cx: &mut Context) -> Result<(), Refusal> {
        let Some(id) = &cx.identity else {
            return Ok(());
        };
        let (budget, scope) = key_budget(&id.session, &cx.route.api_id);
        let Some(window) = budget.window() else {
            return Ok(());
        };
        let limit = Limit::Rate(window);
        let mut verdict = self
            .limiter
            .admit(Kind::KeyRate, &id.key_hash, scope, limit, "", cx.now_ms)
            .await;
        if verdict.admitted.is_err()
            && let Some((retries, pause)) = throttle(&budget)
        {
            for _ in 0..retries {
                tokio::time::sleep(pause).await;
                let now_ms = meridian_kit::time::now_ms();
                verdict = self
                    .limiter
                    .admit(Kind::KeyRate, &id.key_hash, scope, limit, "", now_ms)
                    .await;
                if verdict.admitted.is_ok() {
                    break;
                }
            }
        }
        cx.rate_headers = Some(verdict.headers);
        verdict.admitted.map_err(|_| Refusal::RateLimited)
    }

    /// The key's quota on this API.
    async fn key_quota_step(&self, cx: &mut Context) -> Result<(), Refusal> {
        let Some(id) = &cx.identity else {
            return Ok(());
        };
        let (budget, scope) = key_budget(&id.session, &cx.route.api_id);
        let Some(quota) = budget.quota() else {
            return Ok(());
        };
        let verdict = self
            .limiter
            .admit(
                Kind::KeyQuota,
                &id.key_hash,
                scope,
                Limit::Quota(quota),
                &id.quota_reset,
                cx.now_ms,
            )
            .await;
        cx.quota_headers = Some(verdict.headers);
        match verdict.admitted {
            Ok(()) => Ok(()),
            Err(Refused::Exhausted) => Err(Refusal::QuotaExceeded),
            Err(Refused::Unavailable) => Err(Refusal::QuotaUnavailable),
        }
    }

    /// The response phase: what the steps add to the upstream's answer.
    /// `X-RateLimit-*` replace any the upstream sent, as Tyk's do: the
    /// quota's by default (a key without a counted quota shows what its
    /// session stores, a keyless API zeros), the rate limit's with
    /// `rate_limits`.
    fn response_phase(&self, cx: &Context, res: &mut Response<Body>) {
        let out = res.headers_mut();
        if let Some(edits) = &cx.edits {
            apply_edits(out, &edits.response);
        }
        match self.limit_headers(cx) {
            Some(h) => set_limit_headers(out, h),
            None => {
                for name in [
                    &X_RATELIMIT_LIMIT,
                    &X_RATELIMIT_REMAINING,
                    &X_RATELIMIT_RESET,
                ] {
                    out.remove(name);
                }
            }
        }
        add_cors_headers(out, &cx.cors_headers);
    }

    /// CORS, before the request phase ([`crate::domain::cors`]): the
    /// headers of a preflight answered here (200, no body), or `None` with
    /// what CORS adds to the answer kept in `cx`.
    pub(super) fn cors_phase(cx: &mut Context, req: &(dyn Facts + Sync)) -> Option<Added> {
        let decided = cx.route.cors.as_ref()?.decide(
            req.method(),
            req.header("origin"),
            req.header("access-control-request-method"),
            req.header("access-control-request-headers"),
        );
        match decided {
            Decision::Preflight(headers) => Some(headers),
            Decision::Continue(headers) => {
                cx.cors_headers = headers;
                None
            }
        }
    }

    /// The `X-RateLimit-*` values an upstream's answer carries (`None`: the
    /// upstream's own are removed and none are sent).
    pub(super) fn limit_headers(&self, cx: &Context) -> Option<LimitHeaders> {
        match self.header_source {
            HeaderSource::Quotas => Some(cx.quota_headers.unwrap_or_else(|| {
                cx.identity
                    .as_ref()
                    .map(|id| {
                        let (limit, remaining, reset) =
                            meridian_keys::limits::stored_quota(&id.session, &cx.route.api_id);
                        LimitHeaders {
                            limit,
                            remaining,
                            reset,
                        }
                    })
                    .unwrap_or_default()
            })),
            HeaderSource::RateLimits => cx.rate_headers,
        }
    }

    /// The upstream path and query of a request.
    fn upstream_path(route: &Route, uri: &Uri, strip_segment: bool) -> Option<PathAndQuery> {
        PathAndQuery::try_from(Self::upstream_target(
            route,
            uri.path(),
            uri.query(),
            strip_segment,
        ))
        .ok()
    }

    /// The upstream path and query of a request to `path` (normalised)
    /// with `query`.
    pub(super) fn upstream_target(
        route: &Route,
        path: &str,
        query: Option<&str>,
        strip_segment: bool,
    ) -> String {
        let mut rest = route.rest_of(path);
        if strip_segment && let Some(segment) = first_segment(rest) {
            rest = &rest[1 + segment.len()..];
        }
        let mut target = if route.strip_listen_path {
            join_path(&route.upstream.base_path, rest)
        } else {
            let mut full = String::with_capacity(route.listen_path.len() + rest.len());
            full.push_str(&route.listen_path);
            full.push_str(rest);
            join_path(&route.upstream.base_path, &full)
        };
        if let Some(q) = query {
            target.push('?');
            target.push_str(q);
        }
        target
    }

    /// The absolute upstream URI of a request (for the pooled client).
    fn upstream_uri(route: &Route, uri: &Uri, strip_segment: bool) -> Option<Uri> {
        Uri::builder()
            .scheme(if route.upstream.tls {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            })
            .authority(Authority::from_maybe_shared(route.upstream.authority.clone()).ok()?)
            .path_and_query(Self::upstream_path(route, uri, strip_segment)?)
            .build()
            .ok()
    }

    /// The upstream-request phase: the request to forward, written from the
    /// client's (the upstream path, `Host`, hop-by-hop headers dropped,
    /// `X-Forwarded-For` and `-Proto`), and whether it goes over a plain
    /// kept connection; `None` when its path cannot be forwarded.
    fn upstream_request_phase(
        req: Request<ClientBody>,
        cx: &Context,
        client: &ClientConn,
    ) -> Option<(Request<ClientBody>, bool)> {
        let (route, strip_segment) = (&*cx.route, cx.strip_segment);
        let (mut parts, body) = req.into_parts();
        let plain = !route.upstream.h2c && !route.upstream.tls;
        let uri = if plain {
            Self::upstream_path(route, &parts.uri, strip_segment).map(Uri::from)
        } else {
            Self::upstream_uri(route, &parts.uri, strip_segment)
        };
        parts.uri = uri?;
        let headers = &mut parts.headers;
        remove_hop_by_hop(headers);
        if let Some(edits) = &cx.edits {
            apply_edits(headers, &edits.request);
        }
        if !route.preserve_host || route.upstream.h2c {
            headers.remove(header::HOST);
        }
        if plain && !headers.contains_key(header::HOST) {
            // The pooled client sets Host from the URI; a kept connection
            // is sent an origin-form URI, so it is set here.
            if let Ok(host) = HeaderValue::from_maybe_shared(route.upstream.authority.clone()) {
                headers.insert(header::HOST, host);
            }
        }
        let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prior) => HeaderValue::try_from(format!("{prior}, {}", client.peer.ip())).ok(),
            None => Some(client.ip_header.clone()),
        };
        if let Some(v) = forwarded_for {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        }
        Some((Request::from_parts(parts, body), plain))
    }

    /// The cache phase, for requests the API's cache covers
    /// ([`crate::domain::cache`]): a kept answer (marked
    /// `X-Tyk-Cached-Response: 1`; 304 when `If-None-Match` names its
    /// `ETag`), or the exchange with the upstream, whose answer is kept
    /// when its rule says so and its body is small enough. Everything else
    /// goes straight to the exchange.
    async fn cached_or_forwarded(
        &self,
        req: Request<ClientBody>,
        cx: &Context,
        client: &ClientConn,
    ) -> Response<Body> {
        use crate::domain::cache::{CACHED_HEADER, Caller, MAX_ENTRY};
        let route = &*cx.route;
        let Some(cache) = &route.cache else {
            return self.forward(req, cx, client).await;
        };
        let method = req.method().as_str();
        let rest = route.relative_path(req.uri().path());
        let Some(rule) = cache.rule(cx.version.as_deref(), method, rest) else {
            return self.forward(req, cx, client).await;
        };
        let facts = HyperFacts(&req);
        let address;
        let caller = match &cx.identity {
            Some(id) => Caller::Key(&id.key_hash),
            None => {
                address = real_ip(&facts, client.ip_header.to_str().unwrap_or_default()).to_owned();
                Caller::Address(&address)
            }
        };
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let key = cache.key(&route.api_id, &caller, method, target, |n| facts.header(n));
        let if_none_match = facts.header("if-none-match").map(str::to_owned);
        let miss = match self.cache.lookup(&key, cx.now_ms).await {
            super::cache::Lookup::Hit(entry) => {
                let not_modified = if_none_match.as_deref().is_some_and(|asked| {
                    entry
                        .headers
                        .get(header::ETAG)
                        .and_then(|t| t.to_str().ok())
                        .is_some_and(|tag| asked.contains(tag))
                });
                let mut res = Response::new(Either::Right(Full::new(if not_modified {
                    Bytes::new()
                } else {
                    entry.body.clone()
                })));
                *res.status_mut() = if not_modified {
                    StatusCode::NOT_MODIFIED
                } else {
                    entry.status
                };
                *res.headers_mut() = entry.headers.clone();
                res.headers_mut()
                    .insert(CACHED_HEADER, HeaderValue::from_static("1"));
                return res;
            }
            super::cache::Lookup::Miss(miss) => miss,
            super::cache::Lookup::Pass => return self.forward(req, cx, client).await,
        };
        let pass = |miss: super::cache::Miss<'_>| {
            miss.keep(Arc::new(super::cache::Entry::pass(
                &route.api_id,
                cx.now_ms,
            )));
        };
        let res = self.forward(req, cx, client).await;
        let length = res
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let headers: Vec<(&str, &str)> = res
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?)))
            .collect();
        let keep = rule.keep_for(res.status().as_u16(), &headers, cx.now_s());
        let (Some(ttl_s), Some(length)) = (keep, length.filter(|l| *l <= MAX_ENTRY)) else {
            pass(miss);
            return res;
        };
        let (parts, body) = res.into_parts();
        let Either::Left(body) = body else {
            pass(miss);
            return Response::from_parts(parts, body);
        };
        let read = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, length));
        let Ok(Ok(collected)) = tokio::time::timeout(self.timeouts.read, read).await else {
            // The upstream cut the answer off: nothing kept, a 502.
            pass(miss);
            return error_response(StatusCode::BAD_GATEWAY, UPSTREAM_FAILED);
        };
        let entry = Arc::new(super::cache::Entry {
            api_id: route.api_id.clone(),
            status: parts.status,
            headers: parts.headers.clone(),
            body: collected.to_bytes(),
            expires_ms: cx.now_ms + i64::try_from(ttl_s.saturating_mul(1000)).unwrap_or(i64::MAX),
            pass: false,
        });
        miss.keep(entry.clone());
        Response::from_parts(parts, Either::Right(Full::new(entry.body.clone())))
    }

    /// The exchange with the upstream: the upstream-request phase, then
    /// the request sent and its answer read (502 and 504 on failure).
    async fn forward(
        &self,
        req: Request<ClientBody>,
        cx: &Context,
        client: &ClientConn,
    ) -> Response<Body> {
        let route = &*cx.route;
        let Some((mut req, plain)) = Self::upstream_request_phase(req, cx, client) else {
            return error_response(
                StatusCode::BAD_REQUEST,
                "The request path cannot be forwarded",
            );
        };
        let read = self.timeouts.read;
        type Failure = Box<dyn std::error::Error + Send + Sync>;
        let sent = if plain {
            *req.version_mut() = Version::HTTP_11;
            tokio::time::timeout(read, client.affinity.send(&route.upstream, req))
                .await
                .map(|r| r.map_err(Failure::from))
        } else if route.upstream.h2c {
            *req.version_mut() = Version::HTTP_2;
            tokio::time::timeout(read, self.h2c.request(req))
                .await
                .map(|r| r.map_err(Failure::from))
        } else {
            *req.version_mut() = Version::HTTP_11;
            tokio::time::timeout(read, self.http.request(req))
                .await
                .map(|r| r.map_err(Failure::from))
        };
        match sent {
            Ok(Ok(res)) => {
                let (mut parts, body) = res.into_parts();
                // Both framings from the upstream: the chunked one is the
                // body (RFC 9112 6.3), so its length is not passed on.
                if parts.headers.contains_key(header::TRANSFER_ENCODING) {
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                remove_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Either::Left(body))
            }
            Ok(Err(e)) if caused_by_client_body(&*e) => {
                // The client's fault, not the upstream's.
                tracing::info!(api = %route.api_id, peer = %client.peer, error = %e, "the client's request body is malformed or was cut off");
                error_response(StatusCode::BAD_REQUEST, CLIENT_BODY_FAILED)
            }
            Ok(Err(e)) => {
                tracing::warn!(api = %route.api_id, upstream = %route.upstream.authority_str(), error = %e, "upstream request failed");
                error_response(StatusCode::BAD_GATEWAY, UPSTREAM_FAILED)
            }
            Err(_) => {
                tracing::warn!(api = %route.api_id, upstream = %route.upstream.authority_str(), timeout = ?read, "upstream did not answer in time");
                error_response(StatusCode::GATEWAY_TIMEOUT, UPSTREAM_TIMED_OUT)
            }
        }
    }

    /// Serves clients on `listener` until `stop`; then stops accepting,
    /// lets requests in flight finish (up to `grace`) and returns. With
    /// `workers` > 0, that many threads serve, each with a single-threaded
    /// runtime of its own (nginx's model: a connection stays on one thread,
    /// no work is handed between threads); with 0, the caller's runtime
    /// serves.
    pub async fn serve_until_stopped(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        stop: CancellationToken,
        grace: Duration,
        workers: usize,
    ) -> std::io::Result<()> {
        if let Ok(mut addr) = listener.local_addr() {
            // Bound to every address: batches come back over loopback.
            if addr.ip().is_unspecified() {
                addr.set_ip(match addr {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            let _ = self.listening.set(addr);
        }
        if workers == 0 {
            self.accept_until_stopped(listener, stop, grace).await;
            return Ok(());
        }
        let listener = listener.into_std()?;
        let mut done = Vec::new();
        for n in 0..workers {
            let listener = listener.try_clone()?;
            let (plane, stop) = (self.clone(), stop.clone());
            let (tx, rx) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
            std::thread::Builder::new()
                .name(format!("gateway-{n}"))
                .spawn(move || {
                    // Its rate limits and quotas take from leases of its own.
                    super::limits::Limiter::set_worker(n);
                    let served = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .and_then(|rt| {
                            rt.block_on(async move {
                                let listener = tokio::net::TcpListener::from_std(listener)?;
                                plane.accept_until_stopped(listener, stop, grace).await;
                                Ok(())
                            })
                        });
                    let _ = tx.send(served);
                })?;
            done.push(rx);
        }
        let mut outcome = Ok(());
        for rx in done {
            if let Ok(Err(e)) = rx.await {
                // One thread failing stops the others: the replica is not
                // serving as configured.
                stop.cancel();
                outcome = Err(e);
            }
        }
        outcome
    }

    async fn accept_until_stopped(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        stop: CancellationToken,
        grace: Duration,
    ) {
        let connections = tokio_util::task::TaskTracker::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.keep_alive(true).timer(TokioTimer::new());
        let mut failing = AcceptFailures::default();
        loop {
            let (stream, peer) = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off
                        // (longer each time), keep serving what is open.
                        let pause = failing.failed(&e);
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(pause) => continue,
                        }
                    }
                },
            };
            failing.recovered();
            let _ = stream.set_nodelay(true);
            let (plane, stop, http) = (self.clone(), stop.clone(), http.clone());
            let open = self.open_connections.clone();
            open.inc();
            connections.spawn(async move {
                if plane.fast_path {
                    super::fastpath::serve(plane, stream, peer, stop, http).await;
                } else {
                    super::fastpath::hyper_only(plane, stream, peer, stop, http).await;
                }
                open.dec();
            });
        }
        drop(listener);
        // Each connection finishes the request it is serving and closes.
        connections.close();
        if tokio::time::timeout(grace, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "some gateway connections were still busy at shutdown"
            );
        }
    }
}

/// Accept failures in a row: the pause before the next attempt doubles
/// from 5 ms to 1 s, and one warning is logged when they start and one
/// when they end (with the count), not one per failure.
#[derive(Default)]
struct AcceptFailures {
    count: u64,
    pause: Duration,
}

impl AcceptFailures {
    const FIRST: Duration = Duration::from_millis(5);
    const MOST: Duration = Duration::from_secs(1);

    fn failed(&mut self, error: &std::io::Error) -> Duration {
        if self.count == 0 {
            tracing::warn!(%error, "cannot accept connections (out of file descriptors? see docs/running.md, operations); backing off");
            self.pause = Self::FIRST;
        } else {
            self.pause = (self.pause * 2).min(Self::MOST);
        }
        self.count += 1;
        self.pause
    }

    fn recovered(&mut self) {
        if self.count > 0 {
            tracing::warn!(failures = self.count, "accepting connections again");
            *self = Self::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_singletons_are_found_and_lists_are_not() {
        let mut h = HeaderMap::new();
        h.append(header::ACCEPT, HeaderValue::from_static("a"));
        h.append(header::ACCEPT, HeaderValue::from_static("b"));
        h.append(header::HOST, HeaderValue::from_static("x"));
        assert_eq!(repeated_singleton(&h, None), None, "Accept is a list");
        h.append(header::HOST, HeaderValue::from_static("y"));
        assert_eq!(repeated_singleton(&h, None), Some("host"));
        let mut h = HeaderMap::new();
        let custom = HeaderName::from_static("x-api-key");
        h.append(&custom, HeaderValue::from_static("k1"));
        h.append(&custom, HeaderValue::from_static("k2"));
        assert_eq!(repeated_singleton(&h, None), None);
        assert_eq!(repeated_singleton(&h, Some("x-api-key")), Some("x-api-key"));
    }

    #[test]
    fn accept_failures_back_off_to_a_second_and_start_over() {
        let mut f = AcceptFailures::default();
        let e = std::io::Error::other("EMFILE");
        let pauses: Vec<Duration> = (0..12).map(|_| f.failed(&e)).collect();
        assert_eq!(pauses[0], AcceptFailures::FIRST);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*pauses.last().unwrap(), AcceptFailures::MOST);
        f.recovered();
        assert_eq!(f.failed(&e), AcceptFailures::FIRST);
    }

    #[test]
    fn upstream_uris_strip_and_join_as_tyk_does() {
        let route = |v: serde_json::Value| {
            crate::domain::routes::compile(&serde_json::from_value(v).unwrap()).unwrap()
        };
        let plain = route(serde_json::json!({
            "proxy": {"listen_path": "/pets/", "target_url": "http://up:9/base/", "strip_listen_path": true},
            "version_data": {"not_versioned": true}}));
        let at = |r: &Route, uri: &str, strip: bool| {
            DataPlane::upstream_uri(r, &uri.parse().unwrap(), strip)
                .unwrap()
                .to_string()
        };
        assert_eq!(at(&plain, "/pets/1?x=2", false), "http://up:9/base/1?x=2");
        assert_eq!(at(&plain, "/pets", false), "http://up:9/base");
        let kept = route(serde_json::json!({
            "proxy": {"listen_path": "/pets/", "target_url": "http://up:9"},
            "definition": {"location": "url", "strip_versioning_data": true},
            "version_data": {"versions": {"v1": {}}}}));
        assert_eq!(at(&kept, "/pets/v1/cats", true), "http://up:9/pets/cats");
        assert_eq!(
            at(&kept, "/pets/v1/cats", false),
            "http://up:9/pets/v1/cats"
        );
    }
}
