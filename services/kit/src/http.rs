//! HTTP plumbing shared by every service.
//!
//! Every error leaves as `{"error": "<code>", "message": "<what and which field>"}`
//! with the status of its [`ErrorCode`]; the same code maps to a gRPC status.
//! Internal failures are logged here and answered without internals.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{StatusCode, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json as AxumJson, Router};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub use crate::error::ErrorCode;

/// The JSON body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code: `invalid_argument`, `unauthenticated`,
    /// `not_found`, `method_not_allowed`, `too_large`, `conflict`,
    /// `unavailable`, `bad_gateway`, `internal`, `permission_denied`,
    /// `rate_limited` or `gateway_timeout`.
    pub error: String,
    /// What went wrong, naming the field where one is at fault.
    pub message: String,
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The kind.
    pub code: ErrorCode,
    /// What to tell the caller.
    pub message: String,
}

impl ApiError {
    /// Any code with a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// 400 naming a field.
    pub fn invalid_field(field: &str, why: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::InvalidArgument, format!("{field}: {why}"))
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    /// 503.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    /// 500: logs the cause, tells the caller only that it happened.
    pub fn internal(context: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "{context}");
        Self::new(
            ErrorCode::Internal,
            format!("{context}; see the service log"),
        )
    }
}

/// A folded view's digest and the stream position it reflects: equal on
/// every replica, and on a rebuild, that folded the same log as far.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DigestView {
    /// SHA-256 over the whole view.
    pub digest: String,
    /// The last stream sequence the view reflects.
    pub position: u64,
}

impl From<crate::invalid::Invalid> for ApiError {
    fn from(e: crate::invalid::Invalid) -> Self {
        Self::invalid_field(&e.field, e.message)
    }
}

impl crate::writer::Answer for ApiError {
    fn conflict(message: String) -> Self {
        Self::conflict(message)
    }
    fn unavailable(message: String) -> Self {
        Self::unavailable(message)
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.code.grpc_code(), e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code.as_str().to_owned(),
            message: self.message,
        };
        (self.code.http_status(), AxumJson(body)).into_response()
    }
}

/// The largest request body any service reads.
pub const MAX_BODY_BYTES: usize = 2 << 20;

/// A JSON request body, whatever the `Content-Type` says (as Tyk's APIs take
/// it, so `curl -d '{...}'` works without `-H 'Content-Type: ...'`). A bad
/// body is refused with an [`ApiError`] naming the field at fault; one over
/// [`MAX_BODY_BYTES`] with 413.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// [`Json`] for a body that may be left out: an empty (or blank) body is
/// `T::default()`.
pub struct JsonOrEmpty<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for JsonOrEmpty<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonOrEmpty(T::default()));
        }
        parse_json(&bytes).map(JsonOrEmpty)
    }
}

/// How much of an oversized body is still read (and thrown away) before the
/// 413, so that a client that sends it whole gets the answer instead of a
/// broken connection.
const DRAIN_BYTES: usize = 64 << 20;

pub(crate) async fn body_bytes<S: Send + Sync>(
    req: Request,
    _state: &S,
) -> Result<bytes::Bytes, ApiError> {
    use futures_util::StreamExt;
    let too_large = || {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("body: larger than {} MiB", MAX_BODY_BYTES >> 20),
        )
    };
    let mut body = req.into_body().into_data_stream();
    let mut kept = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid_field("body", e))?;
        seen += chunk.len();
        if seen > DRAIN_BYTES {
            return Err(too_large());
        }
        if seen <= MAX_BODY_BYTES {
            kept.extend_from_slice(&chunk);
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(kept.freeze())
}

/// Parses a JSON body; the error names the field (`provider: invalid type:
/// integer `5`, expected a string`), or `body` when the JSON itself is bad.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            not_json(&inner)
        } else if path == "." {
            ApiError::invalid_field("body", without_position(&inner.to_string()))
        } else {
            ApiError::invalid_field(&path, without_position(&inner.to_string()))
        }
    })?;
    de.end().map_err(|e| not_json(&e))?;
    Ok(value)
}

/// A body that is not JSON at all: said so, with where it stops being JSON
/// (a multi-line body needs the line).
fn not_json(e: &serde_json::Error) -> ApiError {
    ApiError::invalid_field(
        "body",
        format!(
            "is not valid JSON: {} (line {}, column {})",
            without_position(&e.to_string()),
            e.line(),
            e.column()
        ),
    )
}

/// serde_json ends its messages with ` at line 1 column 13`; a field's
/// error names the field instead, and syntax errors say it in words.
fn without_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) if message[at..].contains(" column ") => message[..at].to_owned(),
        _ => message.to_owned(),
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        AxumJson(self.0).into_response()
    }
}

/// `axum::extract::Query` whose rejection is an [`ApiError`].
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|r| {
                ApiError::new(
                    ErrorCode::InvalidArgument,
                    format!("query: {}", r.body_text()),
                )
            })
    }
}

/// The admin key, kept only as its SHA-256 so comparisons take constant time
/// and the key itself is not held in memory longer than start-up.
#[derive(Clone)]
pub struct ApiKey(Arc<[u8; 32]>);

/// The header carrying the admin key.
pub const API_KEY_HEADER: &str = "x-api-key";

impl ApiKey {
    /// Wraps the expected key.
    pub fn new(key: &str) -> Self {
        Self(Arc::new(Sha256::digest(key.as_bytes()).into()))
    }

    /// Constant-time comparison (over digests of equal length).
    pub fn matches(&self, candidate: &str) -> bool {
        let c: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        self.0
            .iter()
            .zip(c.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Middleware: 401 unless `X-API-Key` matches.
pub async fn require_api_key(State(key): State<ApiKey>, req: Request, next: Next) -> Response {
    match req.headers().get(API_KEY_HEADER).map(|v| v.to_str()) {
        None => {
            ApiError::new(ErrorCode::Unauthenticated, "missing X-API-Key header").into_response()
        }
        Some(Ok(v)) if key.matches(v) => next.run(req).await,
        Some(_) => {
            ApiError::new(ErrorCode::Unauthenticated, "X-API-Key is not valid").into_response()
        }
    }
}

/// Middleware: 401 unless `X-API-Key`, or else `Authorization` (the key
/// alone, as Tyk's developer portal takes it), matches.
pub async fn require_api_key_or_authorization(
    State(key): State<ApiKey>,
    req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    let given = headers
        .get(API_KEY_HEADER)
        .or_else(|| headers.get(axum::http::header::AUTHORIZATION))
        .map(|v| v.to_str());
    match given {
        None => ApiError::new(
            ErrorCode::Unauthenticated,
            "missing X-API-Key (or Authorization) header",
        )
        .into_response(),
        Some(Ok(v)) if key.matches(v) => next.run(req).await,
        Some(_) => {
            ApiError::new(ErrorCode::Unauthenticated, "the admin key is not valid").into_response()
        }
    }
}

/// A readiness check: `Ok` or the reason the service is not ready. A check
/// made from a fold ([`projection_ready`]) also holds the service's traffic
/// until that fold has caught up at start (see [`StartGate`]).
#[derive(Clone)]
pub struct ReadyCheck {
    check: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    fold: Option<(&'static str, crate::projection::Progress)>,
}

impl ReadyCheck {
    /// A check of anything but a fold.
    pub fn new(check: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Self {
        Self {
            check: Arc::new(check),
            fold: None,
        }
    }

    /// `Ok`, or why the service is not ready.
    pub fn check(&self) -> Result<(), String> {
        (self.check)()
    }
}

/// Readiness of a NATS client.
pub fn nats_ready(client: async_nats::Client) -> ReadyCheck {
    ReadyCheck::new(move || match client.connection_state() {
        async_nats::connection::State::Connected => Ok(()),
        other => Err(format!("NATS is {other}")),
    })
}

/// Readiness of a projection: caught up and not halted. The service's
/// traffic waits for it at start.
pub fn projection_ready(name: &'static str, progress: crate::projection::Progress) -> ReadyCheck {
    let fold = Some((name, progress.clone()));
    let check = move || {
        if let Some(why) = progress.halted() {
            Err(format!("{name} halted: {why}"))
        } else if progress.caught_up() {
            Ok(())
        } else {
            Err(format!(
                "{name} is catching up (at sequence {})",
                progress.position()
            ))
        }
    };
    ReadyCheck {
        check: Arc::new(check),
        fold,
    }
}

/// How long a request that arrives while a service is still catching up
/// with the log at start waits before it is answered 503.
pub const START_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Opens once every fold of a service has reached the end of its stream as
/// it was when the service started; until then the service answers no
/// traffic from its views (a view that is behind answers wrong 404s, 403s
/// and 400s, which is worse than a short wait). Once open it stays open:
/// the check on the hot path is one atomic load.
#[derive(Clone)]
pub struct StartGate {
    open: Arc<std::sync::atomic::AtomicBool>,
    opened: Arc<tokio::sync::Notify>,
    folds: Arc<[(&'static str, crate::projection::Progress)]>,
}

impl StartGate {
    /// The gate of the folds among `checks`; open at once when there are
    /// none.
    pub fn of(checks: &[ReadyCheck]) -> Self {
        let folds: Arc<[_]> = checks.iter().filter_map(|c| c.fold.clone()).collect();
        Self {
            open: Arc::new(std::sync::atomic::AtomicBool::new(folds.is_empty())),
            opened: Arc::new(tokio::sync::Notify::new()),
            folds,
        }
    }

    /// Whether every fold has caught up at start.
    pub fn is_open(&self) -> bool {
        self.open.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Waits until every fold has caught up, then opens the gate and logs
    /// how long it took (`service`, and the gauge
    /// `meridian_start_catch_up_seconds`). Run once per service, from its
    /// start. `Err` when a fold halted first.
    pub async fn open_when_caught_up(
        &self,
        service: &str,
        metrics: &Metrics,
    ) -> Result<(), String> {
        let started = std::time::Instant::now();
        for (name, progress) in self.folds.iter() {
            progress
                .reached_start()
                .await
                .map_err(|why| format!("{name}: {why}"))?;
        }
        let took = started.elapsed();
        metrics.start_catch_up().set(took.as_secs_f64());
        let positions: Vec<String> = self
            .folds
            .iter()
            .map(|(name, p)| format!("{name}@{}", p.position()))
            .collect();
        tracing::info!(service, took_ms = took.as_millis() as u64, folds = %positions.join(" "), "caught up with the log: serving traffic");
        self.open.store(true, std::sync::atomic::Ordering::Release);
        self.opened.notify_waiters();
        Ok(())
    }

    /// Waits (at most `patience`) for the gate to open.
    pub async fn wait(&self, patience: std::time::Duration) -> bool {
        let opened = self.opened.notified();
        tokio::pin!(opened);
        opened.as_mut().enable();
        if self.is_open() {
            return true;
        }
        tokio::time::timeout(patience, opened).await.is_ok() || self.is_open()
    }

    /// Where the folds are, for a 503 while catching up.
    fn describe(&self) -> String {
        self.folds
            .iter()
            .filter(|(_, p)| !p.caught_up())
            .map(|(name, p)| format!("{name} at sequence {}", p.position()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Middleware: holds a request until the service's [`StartGate`] opens
/// (at most [`START_PATIENCE`], then 503 saying which fold is behind).
async fn hold_until_caught_up(State(gate): State<StartGate>, req: Request, next: Next) -> Response {
    if gate.is_open() || gate.wait(START_PATIENCE).await {
        return next.run(req).await;
    }
    let mut res = ApiError::new(
        ErrorCode::Unavailable,
        format!(
            "catching up with the event log after a start ({}); retry shortly",
            gate.describe()
        ),
    )
    .into_response();
    res.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("1"),
    );
    res
}

/// `/healthz` (alive) and `/readyz` (every check passes; 503 listing failures).
pub fn health_router(checks: Vec<ReadyCheck>) -> Router {
    let checks = Arc::new(checks);
    Router::new()
        .route(
            "/healthz",
            get(|| async { AxumJson(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            get(move || {
                let checks = checks.clone();
                async move {
                    let problems: Vec<String> =
                        checks.iter().filter_map(|c| c.check().err()).collect();
                    if problems.is_empty() {
                        (
                            StatusCode::OK,
                            AxumJson(serde_json::json!({"status": "ready"})),
                        )
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            AxumJson(
                                serde_json::json!({"status": "not_ready", "problems": problems}),
                            ),
                        )
                    }
                }
            }),
        )
}

/// The router's fallback: a JSON 404.
pub async fn not_found_fallback(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

/// A path that exists asked with another method: a JSON 405.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} does not answer {method}", uri.path()),
    )
}

/// Serves `router` until `stop` is cancelled, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// Serves `router` on `listener` while `work` runs (a service's consumers,
/// firing loop, gRPC server...); when `work` ends, cancels `stop`, waits for
/// the server to drain, and returns `work`'s result, or the server's error.
pub async fn serve_while<E: From<std::io::Error>>(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
    work: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), E> {
    let server = tokio::spawn(serve(listener, router, stop.clone()));
    let result = work.await;
    stop.cancel();
    server
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    result
}

/// What a service shows over HTTP: its REST routes with their OpenAPI
/// description, and the checks that say it is ready. The hub merges every
/// service's; a service on its own serves its own with [`serve_service`].
pub trait Surface {
    /// The title of its OpenAPI document ("Meridian key-issuer").
    const TITLE: &'static str;

    /// Its REST routes, behind its credentials.
    fn api(&self) -> utoipa_axum::router::OpenApiRouter;

    /// Ready when every one of these is.
    fn ready_checks(&self) -> Vec<ReadyCheck>;

    /// Where its series go.
    fn metrics(&self) -> &Metrics;
}

/// Serves `app` on its own: its [`Surface`] (with health, metrics and the
/// OpenAPI document, see [`service_router`]) on `listener` while
/// `run(app, stop)` does its work, as [`serve_while`].
pub async fn serve_service<A, E, W>(
    app: A,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
    run: impl FnOnce(A, CancellationToken) -> W,
) -> Result<(), E>
where
    A: Surface,
    E: From<std::io::Error>,
    W: std::future::Future<Output = Result<(), E>>,
{
    let router = service_router(app.api(), app.ready_checks(), A::TITLE, app.metrics());
    serve_while(listener, router, stop.clone(), run(app, stop)).await
}

/// Completes a generated OpenAPI document: title, version, license and
/// contact, the `X-API-Key` security scheme the handlers refer to as
/// `api_key`, and the error answers every operation of its kind can give
/// (see [`declare_errors`]).
pub fn finish_openapi(mut doc: utoipa::openapi::OpenApi, title: &str) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{ApiKey as Scheme, ApiKeyValue, SecurityScheme};
    use utoipa::openapi::{ContactBuilder, LicenseBuilder};
    doc.info.title = title.to_owned();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.info.description = Some(
        "Meridian: a federated API governance hub. Authenticate with the X-API-Key header; \
         errors are `{\"error\", \"message\"}` naming the field or parameter at fault. \
         The Tyk Gateway API paths (`/tyk/...`) take the Gateway API secret in \
         x-tyk-authorization and answer errors as Tyk does, `{\"status\": \"error\", \"message\"}`."
            .into(),
    );
    doc.info.license = Some(
        LicenseBuilder::new()
            .name("Apache-2.0")
            .identifier(Some("Apache-2.0"))
            .build(),
    );
    doc.info.contact = Some(
        ContactBuilder::new()
            .name(Some("The Meridian team"))
            .build(),
    );
    let components = doc.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        "api_key".into(),
        SecurityScheme::ApiKey(Scheme::Header(ApiKeyValue::new("X-API-Key"))).into(),
    );
    components.security_schemes.insert(
        TYK_SCHEME.into(),
        SecurityScheme::ApiKey(Scheme::Header(ApiKeyValue::new(crate::tyk::SECRET_HEADER))).into(),
    );
    declare_errors(doc)
}

/// Adds to every operation the error answers its shape implies, each with
/// the [`ErrorBody`] schema, where the handler did not declare them: 401
/// behind the admin key; 400 and 404 with path parameters; 400 with query
/// parameters or a body, and 413 with a body; 503 for a write (it goes
/// through the event log).
pub fn declare_errors(doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::PartialSchema;
    let mut value = serde_json::to_value(&doc).expect("an OpenAPI document serializes");
    let error = |description: &str, schema: &str| {
        serde_json::json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}
        })
    };
    let mut any_tyk = false;
    if let Some(paths) = value["paths"].as_object_mut() {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                if !["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                    continue;
                }
                let has = |key: &str| operation.get(key).is_some_and(|v| !v.is_null());
                let params_in = |place: &str| {
                    operation["parameters"]
                        .as_array()
                        .is_some_and(|ps| ps.iter().any(|p| p["in"] == place))
                };
                // Behind the Gateway API secret: Tyk's shape and codes.
                let tyk = operation["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|r| r.get(TYK_SCHEME).is_some()));
                any_tyk |= tyk;
                let mut add: Vec<(&str, &str)> = Vec::new();
                if tyk {
                    add.push((
                        "403",
                        "The Gateway API secret (x-tyk-authorization) is missing or wrong.",
                    ));
                } else if has("security") {
                    add.push(("401", "The admin key is missing or wrong."));
                }
                if params_in("path") {
                    add.push((
                        "400",
                        "A parameter or the body is invalid (the message names it).",
                    ));
                    add.push(("404", "What the path names does not exist."));
                }
                if params_in("query") || has("requestBody") {
                    add.push((
                        "400",
                        "A parameter or the body is invalid (the message names it).",
                    ));
                }
                if has("requestBody") {
                    add.push(("413", "The body is larger than 2 MiB."));
                }
                if method != "get" {
                    add.push(("503", "The event log (NATS) is not available."));
                    if tyk {
                        add.push((
                            "409",
                            "Another writer kept changing the same thing; try again.",
                        ));
                    }
                }
                let schema = if tyk { "StatusMessage" } else { "ErrorBody" };
                let responses = operation["responses"]
                    .as_object_mut()
                    .expect("an operation has responses");
                for (status, description) in add {
                    responses
                        .entry(status)
                        .or_insert_with(|| error(description, schema));
                }
            }
        }
    }
    if any_tyk {
        value["components"]["schemas"]["StatusMessage"] =
            serde_json::to_value(crate::tyk::StatusMessage::schema()).expect("a schema serializes");
    }
    serde_json::from_value(value).expect("the completed document deserializes")
}

/// The security scheme of routes behind the Gateway API secret.
pub const TYK_SCHEME: &str = "tyk_secret";

/// `GET /api/openapi.json` and the browsable UI at `/api/docs`.
pub fn docs_router(doc: utoipa::openapi::OpenApi) -> Router {
    utoipa_swagger_ui::SwaggerUi::new("/api/docs")
        .url("/api/openapi.json", doc)
        .into()
}

/// The newest event on `subject` of `E`'s stream, for a request handler:
/// a slow or failing NATS becomes a 503 or 500 instead of a hung request.
pub async fn read_last<E: meridian_schemas::Event>(
    js: &async_nats::jetstream::Context,
    subject: &str,
) -> Result<Option<E>, ApiError> {
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        crate::bus::last_event::<E>(js, subject),
    )
    .await
    .map_err(|_| ApiError::unavailable("NATS did not answer in time"))?
    .map(|found| found.map(|(event, _)| event))
    .map_err(|e| ApiError::internal("reading the event log failed", e))
}

/// `api` with every route behind the admin key.
pub fn with_api_key(
    api: utoipa_axum::router::OpenApiRouter,
    key: ApiKey,
) -> utoipa_axum::router::OpenApiRouter {
    api.layer(axum::middleware::from_fn_with_state(key, require_api_key))
}

/// A service's whole HTTP surface: its API routes, `/healthz` and `/readyz`
/// with `checks`, the OpenAPI document titled `title` with its UI, and a JSON
/// 404 for anything else. The API routes wait for the folds among `checks`
/// to catch up at start ([`StartGate`]); health, metrics and the document
/// answer at once.
pub fn service_router(
    api: utoipa_axum::router::OpenApiRouter,
    checks: Vec<ReadyCheck>,
    title: &str,
    metrics: &Metrics,
) -> Router {
    let (api, doc) = api.split_for_parts();
    let service = title.strip_prefix("Meridian ").unwrap_or(title);
    let gate = StartGate::of(&checks);
    if !gate.is_open() {
        let (gate, service, metrics) = (gate.clone(), service.to_owned(), metrics.clone());
        tokio::spawn(async move {
            if let Err(why) = gate.open_when_caught_up(&service, &metrics).await {
                tracing::error!(service, %why, "a fold halted before catching up: traffic stays held");
            }
        });
    }
    let api = api.layer(axum::middleware::from_fn_with_state(
        gate,
        hold_until_caught_up,
    ));
    tracked(
        api.merge(health_router(checks))
            .merge(docs_router(finish_openapi(doc, title)))
            .fallback(not_found_fallback)
            .method_not_allowed_fallback(method_not_allowed),
        service,
        metrics,
    )
}

/// Adds `/metrics` (the series of `metrics`) and counts and times every
/// request as `service`.
pub fn tracked(router: Router, service: &str, metrics: &Metrics) -> Router {
    router
        .merge(metrics.router())
        .layer(axum::middleware::from_fn_with_state(
            (std::sync::Arc::<str>::from(service), metrics.clone()),
            crate::metrics::track_requests,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    #[test]
    fn api_key_matches_only_itself() {
        let k = ApiKey::new("s3cret");
        assert!(k.matches("s3cret"));
        assert!(!k.matches("s3cre"));
        assert!(!k.matches(""));
    }

    #[derive(Debug, serde::Deserialize)]
    struct Trigger {
        provider: String,
    }

    async fn post(app: &Router, content_type: Option<&str>, body: Vec<u8>) -> (StatusCode, String) {
        let mut req = axum::http::Request::builder().method("POST").uri("/x");
        if let Some(t) = content_type {
            req = req.header("content-type", t);
        }
        let res = app
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn json_bodies_parse_without_a_content_type_and_errors_name_the_field() {
        let app = Router::new()
            .route(
                "/x",
                axum::routing::post(|Json(t): Json<Trigger>| async move { t.provider }),
            )
            .method_not_allowed_fallback(method_not_allowed);
        let ok = br#"{"provider": "p"}"#.to_vec();
        for content_type in [
            None,
            Some("application/x-www-form-urlencoded"),
            Some("application/json"),
        ] {
            assert_eq!(
                post(&app, content_type, ok.clone()).await,
                (StatusCode::OK, "p".to_owned()),
                "{content_type:?}"
            );
        }
        let (status, text) = post(&app, None, br#"{"provider": 5}"#.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let error: ErrorBody = serde_json::from_str(&text).unwrap();
        assert!(
            error.message.starts_with("provider: invalid type"),
            "{text}"
        );
        let (status, text) = post(&app, None, b"{".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("body: is not valid JSON: "), "{text}");
        let (_, text) = post(&app, None, b"{\n  \"provider\": \"p\",\n}".to_vec()).await;
        let error: ErrorBody = serde_json::from_str(&text).unwrap();
        assert_eq!(
            error.message,
            "body: is not valid JSON: trailing comma (line 3, column 1)"
        );
        let (_, text) = post(&app, None, br#"{"provider": "p"} x"#.to_vec()).await;
        let error: ErrorBody = serde_json::from_str(&text).unwrap();
        assert!(
            error
                .message
                .starts_with("body: is not valid JSON: trailing characters (line 1, column"),
            "{text}"
        );
        let (status, text) = post(&app, None, vec![b' '; 10 << 20]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let error: ErrorBody = serde_json::from_str(&text).unwrap();
        assert_eq!(error.error, "too_large");
        let res = app
            .clone()
            .oneshot(
                axum::http::Request::builder()
                    .method("DELETE")
                    .uri("/x")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        let body = axum::body::to_bytes(res.into_body(), 1 << 16)
            .await
            .unwrap();
        let error: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(error.error, "method_not_allowed");
    }

    #[tokio::test]
    async fn missing_and_wrong_keys_get_json_401() {
        let app = Router::new().route("/x", get(|| async { "ok" })).layer(
            axum::middleware::from_fn_with_state(ApiKey::new("k"), require_api_key),
        );
        for header in [None, Some("wrong")] {
            let mut req = axum::http::Request::builder().uri("/x");
            if let Some(h) = header {
                req = req.header(API_KEY_HEADER, h);
            }
            let res = app
                .clone()
                .oneshot(req.body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
            let body = axum::body::to_bytes(res.into_body(), 1 << 16)
                .await
                .unwrap();
            let body: ErrorBody = serde_json::from_slice(&body).unwrap();
            assert_eq!(body.error, "unauthenticated");
        }
        let req = axum::http::Request::builder()
            .uri("/x")
            .header(API_KEY_HEADER, "k");
        let res = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}
