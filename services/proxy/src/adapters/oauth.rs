//! OAuth 2.0's endpoints under an API's listen path
//! ([`crate::domain::oauth`] decides): tokens and codes are made here,
//! recorded by hash in `KEYS` through key-issuer (the only writer of
//! `KEYS`; [`RecordTokens`]), and handed out only once every live gateway
//! replica has folded them, so a token works on whichever replica the
//! client reaches next. The tokens themselves are never logged, never
//! stored: only their SHA-256 travels.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use meridian_keys::hash_secret;
use meridian_kit::bus::{self, RequestError};
use meridian_kit::http::ApiKey;
use meridian_schemas::commands::{RecordTokens, RecordTokensReply};
use meridian_schemas::keys::{CodeRecord, TokenRecord};
use meridian_schemas::streams::RECORD_TOKENS_SUBJECT;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::dataplane::{Body, json_response};
use super::replicas::Replicas;
use crate::domain::Route;
use crate::domain::oauth::{
    self, Authorization, CODE_LIFETIME_MS, Endpoint, Error, Form, Issue, OAuth, ResponseType,
};

/// Largest body the endpoints read (a form of a few fields).
const MAX_BODY: usize = 64 * 1024;

/// How long key-issuer may take to record a request's tokens, per attempt.
const RECORD_PATIENCE: Duration = Duration::from_secs(5);

/// What the gateway's OAuth endpoints need beyond the views.
pub struct Issuer {
    /// NATS, to reach key-issuer.
    pub client: async_nats::Client,
    /// Live replicas and what they applied.
    pub replicas: Replicas,
    /// The Gateway API secret (`/tyk/oauth/authorize-client/` asks for it).
    pub secret: ApiKey,
    /// Access tokens' lifetime unless the definition sets `session_lifetime`.
    pub token_lifetime: Duration,
    /// Refresh tokens' lifetime.
    pub refresh_lifetime: Duration,
    /// How long to wait for every live replica to fold a new token.
    pub patience: Duration,
}

/// A random token: `len` bytes, hex.
fn random_hex(len: usize) -> Result<String, Error> {
    let mut buf = vec![0u8; len];
    getrandom::fill(&mut buf).map_err(|_| Error::unavailable("no randomness available"))?;
    Ok(meridian_kit::hex::encode(&buf))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An OAuth error as Tyk answers it: 403 with RFC 6749's body.
fn oauth_error(e: &Error) -> Response<Body> {
    let status = match e.error {
        "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    };
    no_store(json_response(status, &e.body()))
}

/// Tyk's `{"status": "error", "message"}` answer.
fn status_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({"status": "error", "message": message}))
}

/// Token answers are not to be cached (RFC 6749 5.1).
fn no_store(mut res: Response<Body>) -> Response<Body> {
    let headers = res.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    res
}

impl Issuer {
    /// Answers a request to one of `route`'s OAuth endpoints.
    pub async fn answer(
        &self,
        keys: &meridian_keys::fold::Shared,
        route: &Route,
        oauth: &OAuth,
        endpoint: Endpoint,
        req: Request<Incoming>,
    ) -> Response<Body> {
        let method = req.method().clone();
        let allowed = match endpoint {
            Endpoint::AuthorizeClient => method == Method::POST,
            Endpoint::Token | Endpoint::Authorize => {
                method == Method::POST || method == Method::GET
            }
        };
        if !allowed {
            return status_error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
        }
        if endpoint == Endpoint::AuthorizeClient {
            let given = req
                .headers()
                .get("x-tyk-authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if !self.secret.matches(given) {
                return status_error(
                    StatusCode::FORBIDDEN,
                    "Attempted administrative access with invalid or missing key!",
                );
            }
        }
        if endpoint == Endpoint::Token && method != Method::POST {
            return oauth_error(&Error::invalid_request("Request must be POST"));
        }
        let header = |name| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header(header::CONTENT_TYPE);
        let authorization = header(header::AUTHORIZATION);
        let query = req.uri().query().map(str::to_owned);
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return oauth_error(&Error::invalid_request(format!(
                    "the body is larger than {MAX_BODY} bytes"
                )));
            }
            Err(_) => {
                return oauth_error(&Error::invalid_request(
                    "The request body is malformed or incomplete",
                ));
            }
        };
        let form = match Form::parse(content_type.as_deref(), &body, query.as_deref()) {
            Ok(form) => form,
            Err(e) => return oauth_error(&e),
        };
        let now_ms = meridian_kit::time::now_ms();
        match endpoint {
            Endpoint::Token => {
                let decided = {
                    let keys = meridian_keys::fold::read(keys);
                    oauth::token_request(
                        &keys,
                        (&route.api_id, &route.org_id),
                        oauth,
                        authorization.as_deref(),
                        &form,
                        now_ms,
                    )
                };
                match decided {
                    Ok(issue) => self.tokens(route, oauth, &issue, now_ms, None).await,
                    Err(e) => oauth_error(&e),
                }
            }
            Endpoint::Authorize => {
                let decided = authorize(keys, route, oauth, &form);
                match decided {
                    Ok(_) => {
                        let location = match (&method, query.as_deref()) {
                            (&Method::GET, Some(q)) => format!("{}?{q}", oauth.login_redirect),
                            _ => oauth.login_redirect.clone(),
                        };
                        let mut res =
                            Response::new(http_body_util::Either::Right(Full::new(Bytes::new())));
                        *res.status_mut() = StatusCode::TEMPORARY_REDIRECT;
                        if let Ok(v) = HeaderValue::try_from(location) {
                            res.headers_mut().insert(header::LOCATION, v);
                        }
                        res
                    }
                    Err(e) => status_error(StatusCode::FORBIDDEN, &e.description),
                }
            }
            Endpoint::AuthorizeClient => {
                if !form.get("key_rules").is_empty() {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &Error::invalid_request(
                            "key_rules: the gateway issues tokens carrying the client's policy; \
                             give the client a policy_id instead of sending key rules",
                        )
                        .body(),
                    );
                }
                match authorize(keys, route, oauth, &form) {
                    Ok(a) => self.authorized(route, oauth, &a, now_ms).await,
                    Err(e) => oauth_error(&e),
                }
            }
        }
    }

    /// The API owner approved: a code, or (implicit grant) a token.
    async fn authorized(
        &self,
        route: &Route,
        oauth: &OAuth,
        a: &Authorization,
        now_ms: i64,
    ) -> Response<Body> {
        let mut params: Vec<(&str, String)> = Vec::new();
        if a.response_type == ResponseType::Token {
            let issue = Issue {
                client_id: a.client_id.clone(),
                redeem: None,
                key_hash: String::new(),
                refresh: false,
            };
            return self.tokens(route, oauth, &issue, now_ms, Some(a)).await;
        }
        let code = match random_hex(16) {
            Ok(c) => c,
            Err(e) => return oauth_error(&e),
        };
        let record = RecordTokens {
            request_id: Uuid::new_v4(),
            tokens: Vec::new(),
            codes: vec![(
                hash_secret(&code),
                CodeRecord {
                    client_id: a.client_id.clone(),
                    api_id: route.api_id.clone(),
                    redirect_uri: a.redirect_uri.clone(),
                    expires_ms: now_ms + CODE_LIFETIME_MS,
                    issued_ms: now_ms,
                },
            )],
            redeem: None,
        };
        if let Err(e) = self.record(record).await {
            return oauth_error(&e);
        }
        params.push(("code", code));
        if !a.state.is_empty() {
            params.push(("state", a.state.clone()));
        }
        answer_with_redirect(&params, &a.redirect_uri, false)
    }

    /// Issues an access token (and a refresh token when `issue` asks for
    /// one) and answers with them: as the token endpoint does, or, for the
    /// implicit grant (`implicit`), with the redirect carrying them.
    async fn tokens(
        &self,
        route: &Route,
        oauth: &OAuth,
        issue: &Issue,
        now_ms: i64,
        implicit: Option<&Authorization>,
    ) -> Response<Body> {
        let (access, refresh) = match (random_hex(16), random_hex(16)) {
            (Ok(a), Ok(r)) => (format!("{}{a}", route.org_id), r),
            (Err(e), _) | (_, Err(e)) => return oauth_error(&e),
        };
        let lifetime_ms = oauth
            .token_lifetime_s
            .map_or_else(|| ms(self.token_lifetime), |s| s.saturating_mul(1000));
        let access_hash = hash_secret(&access);
        let record = |refresh: bool, expires_ms: i64, access_hash: String| TokenRecord {
            client_id: issue.client_id.clone(),
            api_id: route.api_id.clone(),
            refresh,
            expires_ms,
            issued_ms: now_ms,
            key_hash: issue.key_hash.clone(),
            access_hash,
        };
        let mut tokens = vec![(
            access_hash.clone(),
            record(false, now_ms + lifetime_ms, String::new()),
        )];
        if issue.refresh {
            let expires = now_ms + ms(self.refresh_lifetime);
            tokens.push((hash_secret(&refresh), record(true, expires, access_hash)));
        }
        let request = RecordTokens {
            request_id: Uuid::new_v4(),
            tokens,
            codes: Vec::new(),
            redeem: issue.redeem.clone(),
        };
        if let Err(e) = self.record(request).await {
            return oauth_error(&e);
        }
        let expires_in = (lifetime_ms / 1000).to_string();
        if let Some(a) = implicit {
            let mut params = vec![
                ("access_token", access),
                ("expires_in", expires_in),
                ("token_type", "Bearer".to_owned()),
            ];
            if !a.state.is_empty() {
                params.push(("state", a.state.clone()));
            }
            return answer_with_redirect(&params, &a.redirect_uri, true);
        }
        let mut out = Map::new();
        out.insert("access_token".into(), access.into());
        out.insert("token_type".into(), "Bearer".into());
        out.insert("expires_in".into(), json!(lifetime_ms / 1000));
        if issue.refresh {
            out.insert("refresh_token".into(), refresh.into());
        }
        no_store(json_response(StatusCode::OK, &Value::Object(out)))
    }

    /// Records tokens and codes through key-issuer (one retry of the same
    /// request when the first attempt's outcome is unknown: it stores
    /// nothing twice), then waits until every live replica folded them.
    async fn record(&self, request: RecordTokens) -> Result<(), Error> {
        let mut attempts = 0;
        let reply = loop {
            attempts += 1;
            let sent: Result<RecordTokensReply, RequestError> = bus::request(
                &self.client,
                RECORD_TOKENS_SUBJECT.to_owned(),
                &request,
                RECORD_PATIENCE,
            )
            .await;
            match sent {
                Ok(reply) => break reply,
                Err(RequestError::TimedOut { .. }) if attempts < 2 => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not record OAuth tokens");
                    return Err(Error::unavailable(
                        "the token could not be recorded now; try again shortly",
                    ));
                }
            }
        };
        let keys_seq = match reply {
            RecordTokensReply::Recorded { keys_seq } => keys_seq,
            RecordTokensReply::GrantInvalid => return Err(Error::grant_used()),
            RecordTokensReply::Refused(why) => return Err(Error::invalid_request(why)),
        };
        if let Err(e) = self.replicas.wait_applied(0, keys_seq, self.patience).await {
            // Handed out anyway: the replicas behind will know the token
            // as soon as they catch up.
            tracing::warn!(error = %e, "OAuth tokens handed out before every replica folded them");
        }
        Ok(())
    }
}

/// Checks an authorization request on this replica's view.
fn authorize(
    keys: &meridian_keys::fold::Shared,
    route: &Route,
    oauth: &OAuth,
    form: &Form,
) -> Result<Authorization, Error> {
    let keys = meridian_keys::fold::read(keys);
    oauth::authorize_request(&keys, &route.api_id, oauth, form)
}

/// `params` as JSON, with `redirect_to`: the redirect URI carrying them
/// (in its query, or its fragment).
fn answer_with_redirect(
    params: &[(&str, String)],
    redirect_uri: &str,
    fragment: bool,
) -> Response<Body> {
    let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut out: Map<String, Value> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String(v.clone())))
        .collect();
    if let Some(v) = out.get_mut("expires_in")
        && let Some(n) = v.as_str().and_then(|s| s.parse::<i64>().ok())
    {
        *v = json!(n);
    }
    out.insert(
        "redirect_to".into(),
        oauth::with_params(redirect_uri, &pairs, fragment).into(),
    );
    no_store(json_response(StatusCode::OK, &Value::Object(out)))
}
