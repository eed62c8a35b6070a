//! REST API: agents, tokens, manual sync. Every route needs the admin key.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use meridian_kit::bus::{self, RequestError};
use meridian_kit::http::{ApiError, ErrorBody, Json, JsonOrEmpty, read_last};
use meridian_kit::time::{NEVER, now_ms, rfc3339};
use meridian_schemas::agents::{AgentStatus, Heartbeat};
use meridian_schemas::commands::{SyncRefused, TriggerSync, TriggerSyncReply};
use meridian_schemas::{AgentId, streams};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use crate::adapters::registry::{ExecError, Registry};
use crate::adapters::tokens::Tokens;
use crate::domain::{AgentRecord, Command, Rejection};

/// Handler state.
#[derive(Clone)]
pub struct ApiState {
    /// The registry.
    pub registry: Registry,
    /// Token signing.
    pub tokens: Tokens,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// NATS, for sync requests and heartbeats.
    pub client: async_nats::Client,
}

/// The routes with their OpenAPI description. The reference API spells
/// collection paths with a trailing slash; both spellings are served.
pub fn router(state: ApiState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(create_agent, list_agents))
        .routes(routes!(get_agent, update_agent, delete_agent))
        .routes(routes!(issue_token))
        .routes(routes!(revoke_token))
        .routes(routes!(trigger_sync))
        .route(
            "/api/agents",
            axum::routing::post(create_agent).get(list_agents),
        )
        .route("/api/auth/token", axum::routing::post(issue_token))
        .with_state(state)
}

/// An agent as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AgentView {
    /// Agent id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// RFC 3339; `0001-01-01T00:00:00Z` when never.
    pub last_heartbeat: String,
    /// `ACTIVE` or `INACTIVE`.
    pub status: String,
    /// Providers as the agent reported them; null until it first connects.
    pub providers: Option<Vec<ProviderView>>,
}

/// A provider as reported by its agent.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProviderView {
    /// Name.
    pub name: String,
    /// Kind.
    #[serde(rename = "type")]
    pub provider_type: String,
}

/// `POST /api/agents/` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAgent {
    /// Display name (required): 1 to 200 characters after trimming, no
    /// control characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Free text, at most 2000 characters.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: String,
}

/// `PUT /api/agents/{id}` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAgent {
    /// New name: 1 to 200 characters after trimming, no control characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// New description, at most 2000 characters.
    #[schema(max_length = 2000)]
    pub description: Option<String>,
}

/// `POST /api/auth/token/` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The agent to issue a token for.
    #[schema(format = Uuid)]
    pub agent_id: String,
}

/// A freshly issued token. Shown once; the hub keeps only its id.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// The JWT for the agent's `governanceDashboard.auth.token`.
    pub token: String,
}

/// `POST /api/agents/{id}/sync` body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncBody {
    /// One provider; all when absent.
    pub provider: Option<String>,
}

/// Runs started by a manual sync.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SyncAccepted {
    /// One run per provider.
    pub runs: Vec<RunView>,
}

/// One started run.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RunView {
    /// Provider.
    pub provider: String,
    /// Run id, as it appears in the sync log and the repository.
    pub run_id: Uuid,
}

fn parse_agent_id(field: &str, id: &str) -> Result<AgentId, ApiError> {
    AgentId::parse(id).map_err(|_| ApiError::invalid_field(field, format!("{id:?} is not a UUID")))
}

fn exec_error(e: ExecError) -> ApiError {
    match e {
        ExecError::Rejected(Rejection::Invalid { field, why }) => {
            ApiError::invalid_field(&field, why)
        }
        ExecError::Rejected(r @ (Rejection::UnknownAgent(_) | Rejection::NoToken(_))) => {
            ApiError::not_found(r.to_string())
        }
        ExecError::Rejected(r @ (Rejection::AlreadyExists(_) | Rejection::Fenced { .. })) => {
            ApiError::conflict(r.to_string())
        }
        ExecError::Bus(e) => ApiError::unavailable(format!("the event log is not available: {e}")),
        ExecError::Lagging => {
            ApiError::unavailable("the change was recorded but is not visible yet; retry the read")
        }
    }
}

async fn view(state: &ApiState, r: AgentRecord) -> Result<AgentView, ApiError> {
    let js = async_nats::jetstream::new(state.client.clone());
    let beat = read_last::<Heartbeat>(&js, &streams::heartbeat_subject(r.id)).await?;
    Ok(AgentView {
        id: r.id.0,
        name: r.name,
        description: r.description,
        last_heartbeat: beat
            .as_ref()
            .map_or_else(|| NEVER.to_owned(), |h| rfc3339(h.at_ms)),
        status: AgentStatus::at(beat.as_ref(), now_ms()).as_str().to_owned(),
        providers: r.providers.map(|ps| {
            ps.into_iter()
                .map(|p| ProviderView {
                    name: p.name,
                    provider_type: p.provider_type,
                })
                .collect()
        }),
    })
}

fn found(id: AgentId, r: Option<AgentRecord>) -> Result<AgentRecord, ApiError> {
    r.ok_or_else(|| ApiError::not_found(format!("no agent with id {id}")))
}

/// Register an agent.
#[utoipa::path(post, path = "/api/agents/", tag = "agents", request_body = CreateAgent,
    security(("api_key" = [])),
    responses((status = 201, body = AgentView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn create_agent(
    State(s): State<ApiState>,
    Json(body): Json<CreateAgent>,
) -> Result<impl IntoResponse, ApiError> {
    let id = AgentId::new_random();
    let command = Command::Register {
        name: body.name,
        description: body.description,
    };
    let record = found(
        id,
        s.registry.execute(id, command).await.map_err(exec_error)?,
    )?;
    tracing::info!(agent = %id, name = %record.name, "agent registered");
    Ok((StatusCode::CREATED, Json(view(&s, record).await?)))
}

/// List agents.
#[utoipa::path(get, path = "/api/agents/", tag = "agents", security(("api_key" = [])),
    responses((status = 200, body = Vec<AgentView>), (status = 401, body = ErrorBody)))]
async fn list_agents(State(s): State<ApiState>) -> Result<Json<Vec<AgentView>>, ApiError> {
    let mut out = Vec::new();
    for r in s.registry.list() {
        out.push(view(&s, r).await?);
    }
    Ok(Json(out))
}

/// One agent: status, last heartbeat, providers.
#[utoipa::path(get, path = "/api/agents/{id}", tag = "agents", params(("id" = uuid::Uuid, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_agent(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    let id = parse_agent_id("id", &id)?;
    let record = found(id, s.registry.get_fresh(id).await)?;
    Ok(Json(view(&s, record).await?))
}

/// Change an agent's name or description.
#[utoipa::path(put, path = "/api/agents/{id}", tag = "agents", params(("id" = uuid::Uuid, Path)), request_body = UpdateAgent,
    security(("api_key" = [])),
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_agent(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Json(body): Json<UpdateAgent>,
) -> Result<Json<AgentView>, ApiError> {
    let id = parse_agent_id("id", &id)?;
    let command = Command::Update {
        name: body.name,
        description: body.description,
        update_id: Uuid::new_v4(),
    };
    let record = found(
        id,
        s.registry.execute(id, command).await.map_err(exec_error)?,
    )?;
    Ok(Json(view(&s, record).await?))
}

/// Remove an agent and revoke its token. Its APIs stay in the repository.
#[utoipa::path(delete, path = "/api/agents/{id}", tag = "agents", params(("id" = uuid::Uuid, Path)),
    security(("api_key" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn delete_agent(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_agent_id("id", &id)?;
    s.registry
        .execute(id, Command::Delete)
        .await
        .map_err(exec_error)?;
    tracing::info!(agent = %id, "agent deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Issue a token for an agent; any earlier token stops working.
#[utoipa::path(post, path = "/api/auth/token/", tag = "tokens", request_body = TokenRequest,
    security(("api_key" = [])),
    responses((status = 200, body = TokenResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn issue_token(
    State(s): State<ApiState>,
    Json(body): Json<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let id = parse_agent_id("agent_id", &body.agent_id)?;
    let token_id = Uuid::new_v4();
    let now = now_ms();
    let expires_at_ms = now + s.token_ttl.as_millis() as i64;
    s.registry
        .execute(
            id,
            Command::IssueToken {
                token_id,
                expires_at_ms,
            },
        )
        .await
        .map_err(exec_error)?;
    tracing::info!(agent = %id, token_id = %token_id, "token issued");
    Ok(Json(TokenResponse {
        token: s.tokens.issue(id, token_id, now, expires_at_ms),
    }))
}

/// Revoke an agent's token; its open streams end at their next message.
#[utoipa::path(delete, path = "/api/auth/token/{agent_id}", tag = "tokens", params(("agent_id" = uuid::Uuid, Path)),
    security(("api_key" = [])),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn revoke_token(
    State(s): State<ApiState>,
    Path(agent_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_agent_id("agent_id", &agent_id)?;
    s.registry
        .execute(id, Command::RevokeToken)
        .await
        .map_err(exec_error)?;
    tracing::info!(agent = %id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Ask a connected agent to sync one provider, or all, now.
#[utoipa::path(post, path = "/api/agents/{id}/sync", tag = "agents", params(("id" = uuid::Uuid, Path)),
    request_body(content = Option<SyncBody>),
    security(("api_key" = [])),
    responses((status = 202, body = SyncAccepted), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn trigger_sync(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    JsonOrEmpty(body): JsonOrEmpty<SyncBody>,
) -> Result<impl IntoResponse, ApiError> {
    let id = parse_agent_id("id", &id)?;
    let record = found(id, s.registry.get_fresh(id).await)?;
    if let (Some(p), Some(known)) = (&body.provider, &record.providers)
        && !known.iter().any(|k| &k.name == p)
    {
        return Err(ApiError::invalid_field(
            "provider",
            format!("agent {id} has not reported a provider named {p:?}"),
        ));
    }
    let patience = Duration::from_secs(10);
    let trigger = TriggerSync {
        provider: body.provider,
    };
    let subject = streams::sync_request_subject(id);
    let answer = bus::request::<_, TriggerSyncReply>(&s.client, subject, &trigger, patience).await;
    let not_connected = || ApiError::conflict(format!("agent {id} is not connected"));
    match answer.map(TriggerSyncReply::into_runs) {
        Ok(Ok(runs)) => Ok((
            StatusCode::ACCEPTED,
            Json(SyncAccepted {
                runs: runs
                    .into_iter()
                    .map(|r| RunView {
                        provider: r.provider,
                        run_id: r.run_id.0,
                    })
                    .collect(),
            }),
        )),
        Ok(Err(e @ SyncRefused::UnknownProvider(_))) => Err(ApiError::invalid_field("provider", e)),
        Ok(Err(SyncRefused::SyncStreamDown)) => Err(ApiError::conflict(format!(
            "agent {id} is not connected (its sync stream just closed)"
        ))),
        Err(RequestError::NoResponders(_)) => Err(not_connected()),
        Err(e) => Err(ApiError::unavailable(format!(
            "the agent's gateway replica did not answer: {e}"
        ))),
    }
}
