//! The Tyk-compatible admin surface (`/tyk/...`) shared by key-issuer and
//! the proxy: Tyk's error shape `{"status": "error", "message": ...}`, the
//! Gateway API secret in `x-tyk-authorization`, and bodies read the way
//! Tyk reads them (JSON whatever the `Content-Type`).

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::http::{ApiError, ApiKey, ErrorCode};

/// The header carrying the Gateway API secret.
pub const SECRET_HEADER: &str = "x-tyk-authorization";

/// Shortest Gateway API secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// The Gateway API secret from a service's configuration (`prefix` names
/// its variables): required, at least [`MIN_SECRET_BYTES`].
pub fn secret_from_config(
    secret: Option<&crate::config::Secret>,
    prefix: &str,
) -> Result<ApiKey, crate::config::ConfigError> {
    let secret =
        secret
            .filter(|s| !s.expose().is_empty())
            .ok_or_else(|| crate::config::ConfigError {
                message: format!(
                    "set {prefix}SECRET to the Gateway API secret (x-tyk-authorization), \
                 at least {MIN_SECRET_BYTES} bytes"
                ),
            })?;
    if secret.expose().len() < MIN_SECRET_BYTES {
        return Err(crate::config::ConfigError {
            message: format!(
                "{prefix}SECRET is {} bytes; the Gateway API secret must be at least \
                 {MIN_SECRET_BYTES}",
                secret.expose().len()
            ),
        });
    }
    Ok(ApiKey::new(secret.expose()))
}

/// Tyk's answer to a missing or wrong secret (403).
pub const BAD_SECRET: &str = "Attempted administrative access with invalid or missing key!";

/// Tyk's `ApiStatusMessage`: every error, and some successes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusMessage {
    /// `error` or `ok`.
    pub status: String,
    /// What happened.
    pub message: String,
}

impl StatusMessage {
    /// `{"status": "ok", "message": ...}`.
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            status: "ok".into(),
            message: message.into(),
        }
    }
}

/// An error answered in Tyk's shape, of one of the shared kinds
/// ([`ErrorCode`]: its HTTP status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TykError {
    /// The kind, and so the HTTP status.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
}

impl TykError {
    /// Any kind.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        self.code.http_status()
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// 409: another writer changed the same thing at the same time.
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

/// A refused field as Tyk says it: "Request malformed", then which field and why.
impl From<crate::invalid::Invalid> for TykError {
    fn from(e: crate::invalid::Invalid) -> Self {
        Self::bad_request(format!("Request malformed: {e}"))
    }
}

impl crate::writer::Answer for TykError {
    fn conflict(message: String) -> Self {
        Self::conflict(message)
    }
    fn unavailable(message: String) -> Self {
        Self::unavailable(message)
    }
}

impl From<ApiError> for TykError {
    fn from(e: ApiError) -> Self {
        let message = match e.code {
            // Tyk says "Request malformed"; we also say which field and why.
            ErrorCode::InvalidArgument => format!("Request malformed: {}", e.message),
            _ => e.message,
        };
        Self::new(e.code, message)
    }
}

impl IntoResponse for TykError {
    fn into_response(self) -> Response {
        let body = StatusMessage {
            status: "error".into(),
            message: self.message,
        };
        (self.code.http_status(), axum::Json(body)).into_response()
    }
}

/// A JSON body, whatever the `Content-Type` says; a malformed one is a 400
/// `Request malformed: <field>: <why>`, one over the size limit a 413.
pub struct TykJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for TykJson<T> {
    type Rejection = TykError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = crate::http::body_bytes(req, state).await?;
        crate::http::parse_json(&bytes)
            .map(TykJson)
            .map_err(Into::into)
    }
}

/// Query parameters, read as Tyk (Go's `r.URL.Query().Get`) reads them:
/// the first value of a repeated parameter wins, a pair that does not
/// decode is skipped, bytes that are not UTF-8 are replaced. Only a value
/// that cannot be of its field's type is a 400, in Tyk's shape.
pub struct TykQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for TykQuery<T> {
    type Rejection = TykError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let mut first: Vec<(String, String)> = Vec::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if !first.iter().any(|(k, _)| *k == key) {
                first.push((key.into_owned(), value.into_owned()));
            }
        }
        let canonical = serde_urlencoded::to_string(&first).unwrap_or_default();
        serde_urlencoded::from_str(&canonical)
            .map(TykQuery)
            .map_err(|e| TykError::bad_request(format!("Request malformed: query: {e}")))
    }
}

/// Path parameters; one that cannot be read (not UTF-8 once decoded, or
/// not of its type) is a 400 in Tyk's shape.
pub struct TykPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for TykPath<T> {
    type Rejection = TykError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(t)| TykPath(t))
            .map_err(|e| {
                TykError::bad_request(format!("Request malformed: path: {}", e.body_text()))
            })
    }
}

/// A form body (`application/x-www-form-urlencoded`), as Tyk's OAuth
/// revocation endpoints take; a malformed one is a 400.
pub struct TykForm<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for TykForm<T> {
    type Rejection = TykError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = crate::http::body_bytes(req, state).await?;
        parse_form(&bytes).map(TykForm)
    }
}

fn parse_form<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, TykError> {
    serde_urlencoded::from_bytes(bytes)
        .map_err(|e| TykError::bad_request(format!("Cannot parse form. Form malformed: {e}")))
}

/// Middleware: 403 in Tyk's words unless `x-tyk-authorization` matches
/// (compared in constant time).
pub async fn require_secret(State(secret): State<ApiKey>, req: Request, next: Next) -> Response {
    match req.headers().get(SECRET_HEADER).map(|v| v.to_str()) {
        Some(Ok(v)) if secret.matches(v) => next.run(req).await,
        _ => TykError::new(ErrorCode::PermissionDenied, BAD_SECRET).into_response(),
    }
}

/// `api` with every route behind the Gateway API secret.
pub fn with_secret(
    api: utoipa_axum::router::OpenApiRouter,
    secret: ApiKey,
) -> utoipa_axum::router::OpenApiRouter {
    api.layer(axum::middleware::from_fn_with_state(secret, require_secret))
}

/// Tyk's `ApiModifyKeySuccess`: the answer to a write.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModifyKey {
    /// The key (only a create answers with a generated key), policy,
    /// organisation or client id, as the request named it.
    pub key: String,
    /// Always `ok`.
    pub status: String,
    /// `added`, `modified`, `updated` or `deleted`.
    pub action: String,
    /// SHA-256 (hex) of the key, when keys are hashed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_hash: Option<String>,
}

impl ModifyKey {
    /// `{"key": key, "status": "ok", "action": action}`.
    pub fn new(key: impl Into<String>, action: &str) -> Self {
        Self {
            key: key.into(),
            status: "ok".into(),
            action: action.into(),
            key_hash: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Revoke {
        token: String,
        client_id: Option<String>,
    }

    #[test]
    fn forms_parse_like_tyk_reads_them() {
        let r: Revoke = parse_form(b"token=a%2Bb&client_id=c1").unwrap();
        assert_eq!(
            r,
            Revoke {
                token: "a+b".into(),
                client_id: Some("c1".into())
            }
        );
        let missing = parse_form::<Revoke>(b"client_id=c1").unwrap_err();
        assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
        assert!(missing.message.contains("token"), "{}", missing.message);
    }

    #[test]
    fn field_errors_keep_tyk_words_and_name_the_field() {
        let e: TykError = ApiError::invalid_field("rate", "invalid type").into();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.message, "Request malformed: rate: invalid type");
    }
}
