//! `/tyk/oauth/...`: OAuth clients, and the tokens the proxy issued to them.
//! A client's secret is shown when it is created or rotated and stored only
//! as its hash; tokens are known only by their hashes (a listing's `code`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse as _;
use meridian_kit::time::now_ms;
use meridian_kit::tyk::{StatusMessage, TykError, TykForm, TykJson, TykPath, TykQuery};
use meridian_schemas::keys::KeysEvent;
use meridian_schemas::streams::KeysEntity;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiState, ModifyKey, ok, random_hex, to_json};
use crate::adapters::fold::read;
use std::collections::BTreeMap;

use crate::domain::clients::{self, ClientRefusal, GatewayApi};
use crate::domain::{KeysState, OAuthClient, check_id, hash_secret};
use meridian_kit::writer::WriteError;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(create_client))
        .routes(routes!(list_clients))
        .routes(routes!(get_client, update_client, delete_client))
        .routes(routes!(rotate_secret))
        .routes(routes!(client_tokens))
        .routes(routes!(client_apis))
        .routes(routes!(revoke_token))
        .routes(routes!(revoke_all))
        .routes(routes!(purge_tokens))
        .routes(routes!(invalidate_refresh))
        .routes(routes!(revoke_by_hash))
}

const MISSING: &str = "OAuth Client ID not found";

/// Tyk's `NewClientRequest`: a client as sent and answered.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ClientBody {
    /// The client id (generated when left out at creation).
    pub client_id: String,
    /// The secret: taken at creation (generated when left out), answered
    /// only by a creation or a rotation.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub secret: String,
    /// Where authorisation answers go.
    pub redirect_uri: String,
    /// The API it belongs to (or leave it out and name a policy).
    pub api_id: String,
    /// The policy whose access rights its tokens get.
    pub policy_id: String,
    /// A description.
    pub description: String,
    /// Free-form metadata: any JSON, as Tyk takes it (`{}` when left out).
    #[schema(value_type = Object)]
    #[serde(
        default = "crate::domain::model::empty_object",
        deserialize_with = "crate::domain::model::null_as_empty_object"
    )]
    pub meta_data: serde_json::Value,
}

fn view(c: &OAuthClient, secret: Option<String>) -> ClientBody {
    ClientBody {
        client_id: c.client_id.clone(),
        secret: secret.unwrap_or_default(),
        redirect_uri: c.redirect_uri.clone(),
        api_id: c.api_id.clone(),
        policy_id: c.policy_id.clone(),
        description: c.description.clone(),
        meta_data: c.meta_data.clone(),
    }
}

/// A client refused as Tyk refuses it: a 400 with Tyk's message.
fn refused(e: ClientRefusal) -> TykError {
    TykError::bad_request(e.to_string())
}

/// The gateway's definitions of the APIs a client is for (each found after
/// catching up with `APIS`), checked by [`clients::check_gateway_apis`].
async fn check_gateway_apis(s: &ApiState, c: &OAuthClient) -> Result<(), TykError> {
    // Only a client given by policy alone is checked through its policy.
    let policy = if !c.api_id.is_empty() || c.policy_id.is_empty() {
        None
    } else {
        s.find(|state| state.policy(&c.policy_id).map(|p| p.value.clone()))
            .await
    };
    let mut found = BTreeMap::new();
    for api_id in clients::apis_to_check(c, policy.as_deref()) {
        if let Some(api) = s.apis.find(&api_id).await {
            found.insert(
                api_id,
                GatewayApi {
                    oauth2: api.oauth2,
                    jwt: api.jwt,
                },
            );
        }
    }
    clients::check_gateway_apis(c, policy.as_deref(), &found).map_err(refused)
}

/// 400 when a form field is missing.
fn required(field: &str, value: &str) -> Result<(), TykError> {
    if value.is_empty() {
        return Err(TykError::bad_request(format!(
            "Request malformed: {field}: is required"
        )));
    }
    Ok(())
}

impl ApiState {
    /// Stores an event that depends on no entity's state.
    async fn append(&self, event: &KeysEvent) -> Result<(), TykError> {
        self.writer
            .append(event)
            .await
            .map(|_| ())
            .map_err(|e| TykError::unavailable(format!("the event log is not available: {e}")))
    }

    /// The client, if it belongs to `api_id`; catches up before "not found".
    async fn find_client(&self, api_id: &str, client_id: &str) -> Result<OAuthClient, TykError> {
        let lookup = |state: &KeysState| {
            state
                .client(client_id)
                .filter(|c| state.client_apis(&c.value).iter().any(|a| a == api_id))
                .map(|c| c.value.as_ref().clone())
        };
        self.find(lookup)
            .await
            .ok_or_else(|| TykError::not_found(MISSING))
    }

    /// Stores a client; `decide` gets the stored one (if any).
    async fn save_client(
        &self,
        client_id: &str,
        rotated: bool,
        decide: impl Fn(Option<&OAuthClient>) -> Result<OAuthClient, TykError>,
    ) -> Result<OAuthClient, TykError> {
        let change_id = Uuid::new_v4();
        let at_ms = now_ms();
        let (client, _) = self
            .writer
            .write(KeysEntity::Client, client_id, |state| {
                let old = state.client(client_id).map(|c| c.value.as_ref());
                let client = decide(old)?;
                clients::check_client(&client, state).map_err(refused)?;
                Ok((
                    KeysEvent::ClientSaved {
                        client_id: client_id.to_owned(),
                        client: to_json(&client),
                        created: old.is_none(),
                        rotated,
                        change_id,
                        at_ms,
                    },
                    client,
                ))
            })
            .await
            .map_err(WriteError::<TykError>::answer)?;
        Ok(client)
    }
}

/// Creates a client; its secret (generated when not given) is in the answer
/// and nowhere else.
#[utoipa::path(post, path = "/tyk/oauth/clients/create", tag = "oauth", security(("tyk_secret" = [])),
    request_body = ClientBody, responses((status = 200, body = ClientBody)))]
async fn create_client(
    State(s): State<ApiState>,
    TykJson(body): TykJson<ClientBody>,
) -> Result<axum::Json<ClientBody>, TykError> {
    let client_id = if body.client_id.is_empty() {
        random_hex(16)?
    } else {
        check_id("client_id", &body.client_id)?;
        body.client_id.clone()
    };
    let secret = if body.secret.is_empty() {
        random_hex(24)?
    } else {
        body.secret.clone()
    };
    let wanted = OAuthClient {
        client_id: client_id.clone(),
        secret_hash: hash_secret(&secret),
        redirect_uri: body.redirect_uri,
        api_id: body.api_id,
        policy_id: body.policy_id,
        description: body.description,
        meta_data: body.meta_data,
    };
    if wanted.api_id.is_empty() && wanted.policy_id.is_empty() {
        return Err(TykError::bad_request(
            "Request malformed: api_id: an OAuth client needs an api_id or a policy_id",
        ));
    }
    check_gateway_apis(&s, &wanted).await?;
    s.writer.catch_up().await;
    let client = s
        .save_client(&client_id, false, |old| match old {
            Some(_) => Err(TykError::bad_request(format!(
                "an OAuth client {client_id:?} already exists"
            ))),
            None => Ok(wanted.clone()),
        })
        .await?;
    tracing::info!(client = %client_id, "OAuth client created");
    Ok(axum::Json(view(&client, Some(secret))))
}

/// The clients of an API (none for an API nobody registered a client for;
/// 404 for an API the gateway does not have, as Tyk).
#[utoipa::path(get, path = "/tyk/oauth/clients/{apiID}", tag = "oauth", security(("tyk_secret" = [])),
    params(("apiID" = String, Path)), responses((status = 200, body = Vec<ClientBody>),
        (status = 404, description = "The gateway has no such API (no body, as Tyk answers)")))]
async fn list_clients(
    State(s): State<ApiState>,
    TykPath(api_id): TykPath<String>,
) -> Result<axum::response::Response, TykError> {
    check_id("apiID", &api_id)?;
    if s.apis.find(&api_id).await.is_none() {
        // Tyk answers this 404 without a message.
        return Ok((StatusCode::NOT_FOUND, ()).into_response());
    }
    s.writer.catch_up().await;
    let state = read(s.writer.state());
    let clients: Vec<ClientBody> = state
        .clients_of_api(&api_id)
        .into_iter()
        .map(|c| view(&c.value, None))
        .collect();
    Ok(axum::Json(clients).into_response())
}

/// One client of an API.
#[utoipa::path(get, path = "/tyk/oauth/clients/{apiID}/{keyName}", tag = "oauth", security(("tyk_secret" = [])),
    params(("apiID" = String, Path), ("keyName" = String, Path, description = "The client id")),
    responses((status = 200, body = ClientBody)))]
async fn get_client(
    State(s): State<ApiState>,
    TykPath((api_id, client_id)): TykPath<(String, String)>,
) -> Result<axum::Json<ClientBody>, TykError> {
    let client = s.find_client(&api_id, &client_id).await?;
    Ok(axum::Json(view(&client, None)))
}

/// Changes a client's redirect URI, description, metadata or policy (a
/// `secret` in the body replaces the secret).
#[utoipa::path(put, path = "/tyk/oauth/clients/{apiID}/{keyName}", tag = "oauth", security(("tyk_secret" = [])),
    params(("apiID" = String, Path), ("keyName" = String, Path, description = "The client id")),
    request_body = ClientBody, responses((status = 200, body = ClientBody)))]
async fn update_client(
    State(s): State<ApiState>,
    TykPath((api_id, client_id)): TykPath<(String, String)>,
    TykJson(body): TykJson<ClientBody>,
) -> Result<axum::Json<ClientBody>, TykError> {
    if !body.client_id.is_empty() && body.client_id != client_id {
        return Err(TykError::bad_request(
            "Request malformed: client_id: does not match the path's",
        ));
    }
    let current = s.find_client(&api_id, &client_id).await?;
    let asked = OAuthClient {
        api_id: if body.api_id.is_empty() {
            current.api_id.clone()
        } else {
            body.api_id.clone()
        },
        policy_id: body.policy_id.clone(),
        ..current
    };
    check_gateway_apis(&s, &asked).await?;
    let new_secret = (!body.secret.is_empty()).then(|| hash_secret(&body.secret));
    let client = s
        .save_client(&client_id, new_secret.is_some(), |old| {
            let old = old.ok_or_else(|| TykError::not_found(MISSING))?;
            Ok(OAuthClient {
                client_id: client_id.clone(),
                secret_hash: new_secret
                    .clone()
                    .unwrap_or_else(|| old.secret_hash.clone()),
                redirect_uri: body.redirect_uri.clone(),
                api_id: if body.api_id.is_empty() {
                    old.api_id.clone()
                } else {
                    body.api_id.clone()
                },
                policy_id: body.policy_id.clone(),
                description: body.description.clone(),
                meta_data: body.meta_data.clone(),
            })
        })
        .await?;
    tracing::info!(client = %client_id, "OAuth client updated");
    Ok(axum::Json(view(&client, None)))
}

/// Gives a client a new generated secret, shown in the answer.
#[utoipa::path(put, path = "/tyk/oauth/clients/{apiID}/{keyName}/rotate", tag = "oauth", security(("tyk_secret" = [])),
    params(("apiID" = String, Path), ("keyName" = String, Path, description = "The client id")),
    responses((status = 200, body = ClientBody)))]
async fn rotate_secret(
    State(s): State<ApiState>,
    TykPath((api_id, client_id)): TykPath<(String, String)>,
) -> Result<axum::Json<ClientBody>, TykError> {
    s.find_client(&api_id, &client_id).await?;
    let secret = random_hex(24)?;
    let hash = hash_secret(&secret);
    let client = s
        .save_client(&client_id, true, |old| {
            let mut c = old.ok_or_else(|| TykError::not_found(MISSING))?.clone();
            c.secret_hash.clone_from(&hash);
            Ok(c)
        })
        .await?;
    tracing::info!(client = %client_id, "OAuth client secret rotated");
    Ok(axum::Json(view(&client, Some(secret))))
}

/// Deletes a client; its tokens stop working.
#[utoipa::path(delete, path = "/tyk/oauth/clients/{apiID}/{keyName}", tag = "oauth", security(("tyk_secret" = [])),
    params(("apiID" = String, Path), ("keyName" = String, Path, description = "The client id")),
    responses((status = 200, body = ModifyKey)))]
async fn delete_client(
    State(s): State<ApiState>,
    TykPath((api_id, client_id)): TykPath<(String, String)>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    s.find_client(&api_id, &client_id).await?;
    let change_id = Uuid::new_v4();
    let at_ms = now_ms();
    s.writer
        .write(KeysEntity::Client, &client_id, |state| {
            let old = state
                .client(&client_id)
                .ok_or_else(|| TykError::not_found(MISSING))?;
            Ok((
                KeysEvent::ClientDeleted {
                    client_id: client_id.clone(),
                    api_id: old.value.api_id.clone(),
                    change_id,
                    at_ms,
                },
                (),
            ))
        })
        .await
        .map_err(WriteError::<TykError>::answer)?;
    tracing::info!(client = %client_id, "OAuth client deleted");
    Ok(axum::Json(ModifyKey::new(client_id, "deleted")))
}

/// `?page=`: pages of [`TOKENS_PAGE`] tokens. Read as Tyk reads it: a
/// value that is not a number, or below 1, is page 1.
#[derive(Debug, Default, Deserialize)]
struct Page {
    #[serde(default)]
    page: Option<String>,
}

/// Tokens per page of a paginated token listing.
const TOKENS_PAGE: usize = 100;

/// A live token (Tyk's `OAuthClientToken`): `code` is its hash.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct TokenView {
    /// SHA-256 (hex) of the token.
    code: String,
    /// When it expires (Unix seconds).
    expires: i64,
}

/// Tyk's `PaginationStatus`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
struct Pagination {
    page_num: usize,
    page_size: usize,
    page_total: usize,
}

/// Tyk's `PaginatedOAuthClientTokens`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[allow(non_snake_case)]
struct TokenPage {
    Pagination: Pagination,
    Tokens: Vec<TokenView>,
}

/// A token listing: every token, or (with `page`) one page.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
enum Tokens {
    /// Without `page`.
    All(Vec<TokenView>),
    /// With `page`.
    Page(TokenPage),
}

/// A client's live tokens, oldest first; with `page`, one page of them.
#[utoipa::path(get, path = "/tyk/oauth/clients/{apiID}/{keyName}/tokens", tag = "oauth", security(("tyk_secret" = [])),
    params(("apiID" = String, Path), ("keyName" = String, Path, description = "The client id"),
        ("page" = Option<u32>, Query, description = "From 1: pages of 100 tokens")),
    responses((status = 200, body = Tokens, description = "A list of tokens, or a page of them")))]
async fn client_tokens(
    State(s): State<ApiState>,
    TykPath((api_id, client_id)): TykPath<(String, String)>,
    TykQuery(q): TykQuery<Page>,
) -> Result<axum::Json<Tokens>, TykError> {
    s.find_client(&api_id, &client_id).await?;
    let state = read(s.writer.state());
    let tokens: Vec<TokenView> = state
        .tokens_of_client(&client_id, now_ms())
        .into_iter()
        .filter(|(_, t)| !t.refresh)
        .map(|(hash, t)| TokenView {
            code: hash.to_owned(),
            expires: t.expires_ms.div_euclid(1000),
        })
        .collect();
    let Some(page) = q.page.filter(|p| !p.is_empty()) else {
        return Ok(axum::Json(Tokens::All(tokens)));
    };
    let page = page.parse::<i64>().unwrap_or(1).max(1) as usize;
    let total = tokens.len().div_ceil(TOKENS_PAGE).max(1);
    let tokens = tokens
        .into_iter()
        .skip((page - 1).saturating_mul(TOKENS_PAGE))
        .take(TOKENS_PAGE)
        .collect();
    Ok(axum::Json(Tokens::Page(TokenPage {
        Pagination: Pagination {
            page_num: page,
            page_size: TOKENS_PAGE,
            page_total: total,
        },
        Tokens: tokens,
    })))
}

/// The APIs a client's tokens open (none for an unknown client, as Tyk answers).
#[utoipa::path(get, path = "/tyk/oauth/clients/apis/{appID}", tag = "oauth", security(("tyk_secret" = [])),
    params(("appID" = String, Path, description = "The client id"), ("orgID" = Option<String>, Query)),
    responses((status = 200, body = Vec<String>)))]
async fn client_apis(
    State(s): State<ApiState>,
    TykPath(client_id): TykPath<String>,
) -> Result<axum::Json<Vec<String>>, TykError> {
    check_id("appID", &client_id)?;
    s.writer.catch_up().await;
    let state = read(s.writer.state());
    Ok(axum::Json(
        state
            .client(&client_id)
            .map(|c| state.client_apis(&c.value))
            .unwrap_or_default(),
    ))
}

/// `POST /tyk/oauth/revoke` form.
#[derive(Debug, Deserialize)]
struct RevokeForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    token_type_hint: String,
    #[serde(default)]
    client_id: String,
}

/// Revokes one access or refresh token of a client (RFC 7009: an unknown
/// token is answered like a revoked one).
#[utoipa::path(post, path = "/tyk/oauth/revoke", tag = "oauth", security(("tyk_secret" = [])),
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "token, token_type_hint (access_token or refresh_token), client_id"),
    responses((status = 200, body = StatusMessage)))]
async fn revoke_token(
    State(s): State<ApiState>,
    TykForm(form): TykForm<RevokeForm>,
) -> Result<axum::Json<StatusMessage>, TykError> {
    required("token", &form.token)?;
    required("client_id", &form.client_id)?;
    if !matches!(
        form.token_type_hint.as_str(),
        "" | "access_token" | "refresh_token"
    ) {
        return Err(TykError::bad_request(
            "Request malformed: token_type_hint: must be access_token or refresh_token",
        ));
    }
    let hash = hash_secret(&form.token);
    s.writer.catch_up().await;
    let known = read(s.writer.state())
        .token(&hash)
        .is_some_and(|t| t.value.client_id == form.client_id);
    if known {
        let event = KeysEvent::TokenRevoked {
            token_hash: hash,
            change_id: Uuid::new_v4(),
            at_ms: now_ms(),
        };
        s.append(&event).await?;
        tracing::info!(client = %form.client_id, "OAuth token revoked");
    }
    Ok(ok("token revoked successfully"))
}

/// `POST /tyk/oauth/revoke_all` form.
#[derive(Debug, Deserialize)]
struct RevokeAllForm {
    #[serde(default)]
    client_id: String,
    #[serde(default)]
    client_secret: String,
}

/// Revokes every token of a client, given its secret.
#[utoipa::path(post, path = "/tyk/oauth/revoke_all", tag = "oauth", security(("tyk_secret" = [])),
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "client_id, client_secret"),
    responses((status = 200, body = StatusMessage), (status = 401, body = StatusMessage),
        (status = 404, body = StatusMessage)))]
async fn revoke_all(
    State(s): State<ApiState>,
    TykForm(form): TykForm<RevokeAllForm>,
) -> Result<axum::Json<StatusMessage>, TykError> {
    required("client_id", &form.client_id)?;
    required("client_secret", &form.client_secret)?;
    check_id("client_id", &form.client_id)?;
    s.writer.catch_up().await;
    let secret_hash = read(s.writer.state())
        .client(&form.client_id)
        .map(|c| c.value.secret_hash.clone())
        .ok_or_else(|| TykError::not_found(MISSING))?;
    if !meridian_keys::secret_matches(&form.client_secret, &secret_hash) {
        return Err(TykError::new(
            meridian_kit::error::ErrorCode::Unauthenticated,
            "client secret is invalid",
        ));
    }
    let event = KeysEvent::ClientTokensRevoked {
        client_id: form.client_id.clone(),
        change_id: Uuid::new_v4(),
        at_ms: now_ms(),
    };
    s.append(&event).await?;
    tracing::info!(client = %form.client_id, "every OAuth token of the client revoked");
    Ok(ok("tokens revoked successfully"))
}

/// `?scope=`.
#[derive(Debug, Default, Deserialize)]
struct Scope {
    #[serde(default)]
    scope: Option<String>,
}

/// Drops every expired token (`scope=lapsed`, the only scope).
#[utoipa::path(delete, path = "/tyk/oauth/tokens", tag = "oauth", security(("tyk_secret" = [])),
    params(("scope" = String, Query, description = "lapsed")),
    responses((status = 200, body = StatusMessage)))]
async fn purge_tokens(
    State(s): State<ApiState>,
    TykQuery(q): TykQuery<Scope>,
) -> Result<axum::Json<StatusMessage>, TykError> {
    match q.scope.as_deref() {
        Some("lapsed") => {}
        None | Some("") => {
            return Err(TykError::bad_request(
                "Request malformed: scope: is required (lapsed)",
            ));
        }
        Some(other) => {
            return Err(TykError::bad_request(format!(
                "Request malformed: scope: unknown scope {other:?} (lapsed)"
            )));
        }
    }
    let event = KeysEvent::LapsedTokensPurged {
        change_id: Uuid::new_v4(),
        at_ms: now_ms(),
    };
    s.append(&event).await?;
    Ok(ok("lapsed tokens purged"))
}

/// `?api_id=`.
#[derive(Debug, Default, Deserialize)]
struct ApiIdQuery {
    #[serde(default)]
    api_id: Option<String>,
}

/// Invalidates a refresh token of an API.
#[utoipa::path(delete, path = "/tyk/oauth/refresh/{keyName}", tag = "oauth", security(("tyk_secret" = [])),
    params(("keyName" = String, Path, description = "The refresh token"), ("api_id" = String, Query)),
    responses((status = 200, body = ModifyKey)))]
async fn invalidate_refresh(
    State(s): State<ApiState>,
    TykPath(token): TykPath<String>,
    TykQuery(q): TykQuery<ApiIdQuery>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    let api_id = q.api_id.unwrap_or_default();
    if api_id.is_empty() {
        return Err(TykError::bad_request("Missing parameter api_id"));
    }
    check_id("keyName", &token)?;
    let hash = hash_secret(&token);
    s.writer.catch_up().await;
    let known = read(s.writer.state())
        .token(&hash)
        .is_some_and(|t| t.value.refresh && t.value.api_id == api_id);
    if !known {
        return Err(TykError::not_found("API for this refresh token not found"));
    }
    let event = KeysEvent::TokenRevoked {
        token_hash: hash,
        change_id: Uuid::new_v4(),
        at_ms: now_ms(),
    };
    s.append(&event).await?;
    tracing::info!(api = %api_id, "OAuth refresh token invalidated");
    Ok(axum::Json(ModifyKey::new(token, "deleted")))
}

/// Revokes one live token (access or refresh) by its SHA-256, as token
/// listings show it: Meridian's own, for the console, beside Tyk's
/// `POST /tyk/oauth/revoke` (which needs the token itself).
#[utoipa::path(delete, path = "/api/keys/oauth/tokens/{tokenHash}", tag = "oauth", security(("tyk_secret" = [])),
    params(("tokenHash" = String, Path, description = "SHA-256 (hex) of the token, as `code` in a token listing")),
    responses((status = 200, body = StatusMessage), (status = 400, body = StatusMessage),
        (status = 404, body = StatusMessage, description = "No live token has this hash")))]
async fn revoke_by_hash(
    State(s): State<ApiState>,
    TykPath(hash): TykPath<String>,
) -> Result<axum::Json<StatusMessage>, TykError> {
    if !crate::domain::is_hash(&hash) {
        return Err(TykError::bad_request(
            "Request malformed: tokenHash: must be 64 lower-case hex characters (a SHA-256)",
        ));
    }
    s.writer.catch_up().await;
    let client = read(s.writer.state())
        .token(&hash)
        .map(|t| t.value.client_id.clone())
        .ok_or_else(|| TykError::not_found("token not found"))?;
    let event = KeysEvent::TokenRevoked {
        token_hash: hash,
        change_id: Uuid::new_v4(),
        at_ms: now_ms(),
    };
    s.append(&event).await?;
    tracing::info!(client = %client, "OAuth token revoked by its hash");
    Ok(ok("token revoked"))
}
