//! REST API of the repository: `/api/apis`, `/api/apis/{id}`, `/api/providers`,
//! `/api/repository/digest`. Every route needs the admin key.

use axum::extract::{Path, State};
use meridian_kit::http::DigestView;
use meridian_kit::http::{ApiError, ErrorBody, Json, Query, read_last};
use meridian_kit::time::{NEVER, now_ms, rfc3339};
use meridian_schemas::agents::{AgentStatus, Heartbeat};
use meridian_schemas::{AgentId, ApiId, streams};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::adapters::public::{self, Start};
use crate::adapters::store::{self, ApiFilter, Queries, StatusFilter};
use crate::domain::{ApiRecord, HistoryEntry, RunRecord, RunResult};

/// Largest page a listing returns.
pub const MAX_PER_PAGE: usize = 500;

/// Handler state.
#[derive(Clone)]
pub struct ApiState {
    /// Repository reads.
    pub queries: Queries,
    /// For agent status (heartbeats).
    pub js: async_nats::jetstream::Context,
    /// Position of the projection, for the digest answer.
    pub progress: meridian_kit::projection::Progress,
}

/// The routes, with their OpenAPI description.
pub fn router(state: ApiState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_apis))
        .routes(routes!(get_api))
        .routes(routes!(api_history))
        .routes(routes!(list_events))
        .routes(routes!(list_providers))
        .routes(routes!(digest))
        .with_state(state)
}

/// An API as listed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiSummary {
    /// Repository id (stable: derived from agent, provider and provider id).
    pub id: uuid::Uuid,
    /// Reporting agent.
    pub agent_id: uuid::Uuid,
    /// Provider name.
    pub provider: String,
    /// The provider's own id.
    pub provider_api_id: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `active` or `deleted`.
    pub status: String,
    /// Hash of the current definition.
    pub content_hash: String,
    /// RFC 3339.
    pub first_seen: String,
    /// RFC 3339.
    pub last_seen: String,
    /// RFC 3339, when deleted.
    pub deleted_at: Option<String>,
}

impl From<&ApiRecord> for ApiSummary {
    fn from(r: &ApiRecord) -> Self {
        Self {
            id: r.api_id.0,
            agent_id: r.agent_id.0,
            provider: r.provider.clone(),
            provider_api_id: r.provider_api_id.clone(),
            name: r.name.clone(),
            version: r.version.clone(),
            status: if r.deleted_at_ms.is_some() {
                "deleted"
            } else {
                "active"
            }
            .to_owned(),
            content_hash: r.content_hash.clone(),
            first_seen: rfc3339(r.first_seen_ms),
            last_seen: rfc3339(r.last_seen_ms),
            deleted_at: r.deleted_at_ms.map(rfc3339),
        }
    }
}

/// One page of APIs.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiPage {
    /// The APIs on this page, ordered by id.
    pub apis: Vec<ApiSummary>,
    /// How many match in all.
    pub total: usize,
    /// This page (1-based).
    pub page: usize,
    /// Page size.
    pub per_page: usize,
}

/// Listing filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only APIs of this provider.
    pub provider: Option<String>,
    /// Only APIs reported by this agent.
    pub agent_id: Option<String>,
    /// `active` (default), `deleted` or `all`.
    pub status: Option<String>,
    /// Case-insensitive substring of the name.
    pub q: Option<String>,
    /// 1-based page (default 1).
    pub page: Option<usize>,
    /// Page size, 1 to 500 (default 50).
    pub per_page: Option<usize>,
}

/// A lifecycle change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HistoryView {
    /// `created`, `updated`, `deleted` or `restored`.
    pub kind: String,
    /// RFC 3339.
    pub at: String,
    /// The sync run that caused it.
    pub run_id: uuid::Uuid,
    /// Definition hash after the change.
    pub content_hash: String,
    /// For `updated`: which fields changed.
    pub changed: Vec<String>,
}

impl From<&HistoryEntry> for HistoryView {
    fn from(h: &HistoryEntry) -> Self {
        Self {
            kind: h.kind.as_str().to_owned(),
            at: rfc3339(h.at_ms),
            run_id: h.run_id.0,
            content_hash: h.content_hash.clone(),
            changed: h.changed.clone(),
        }
    }
}

/// The normalized definition.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DefinitionView {
    /// Base or listen path.
    pub base_path: String,
    /// Upstream URL.
    pub upstream_url: String,
    /// Authentication methods.
    pub auth_methods: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Stages.
    pub stages: Vec<String>,
    /// The OpenAPI document, when the provider has one: a JSON object, or
    /// the text as the provider gave it when it is not JSON; null when none.
    #[schema(schema_with = object_string_or_null)]
    pub openapi: Option<serde_json::Value>,
    /// The provider's raw definition: a JSON object as the provider
    /// returned it, the text when it is not JSON, null when it gave none.
    #[schema(schema_with = object_string_or_null)]
    pub raw: serde_json::Value,
}

/// The schema of a value that is a JSON object, a string, or null.
fn object_string_or_null() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{SchemaType, Type};
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([
            Type::Object,
            Type::String,
            Type::Null,
        ]))
        .build()
}

/// One API in full.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiDetail {
    /// The summary fields.
    #[serde(flatten)]
    pub summary: ApiSummary,
    /// The current definition.
    pub definition: DefinitionView,
    /// Lifecycle history, oldest first.
    pub history: Vec<HistoryView>,
}

/// The last sync of a provider.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SyncView {
    /// The run.
    pub run_id: uuid::Uuid,
    /// `completed`, `incomplete` or `failed`.
    pub result: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub ended_at: Option<String>,
    /// APIs received.
    pub count: u64,
    /// APIs the run deleted.
    pub deleted: u64,
    /// Why it failed or is incomplete.
    pub reason: Option<String>,
}

impl From<&RunRecord> for SyncView {
    fn from(r: &RunRecord) -> Self {
        let (result, deleted, reason) = match &r.result {
            RunResult::Running => ("running", 0, None),
            RunResult::Completed {
                deleted,
                superseded: false,
                ..
            } => ("completed", *deleted, None),
            RunResult::Completed {
                superseded: true, ..
            } => (
                "completed",
                0,
                Some("a newer run had already completed; nothing deleted".to_owned()),
            ),
            RunResult::Incomplete { expected, received } => (
                "incomplete",
                0,
                Some(format!(
                    "agent said {expected} APIs, {received} arrived; nothing deleted"
                )),
            ),
            RunResult::Failed { reason } => ("failed", 0, Some(reason.clone())),
        };
        Self {
            run_id: r.run_id.0,
            result: result.to_owned(),
            started_at: rfc3339(r.started_at_ms),
            ended_at: r.ended_at_ms.map(rfc3339),
            count: r.seen,
            deleted,
            reason,
        }
    }
}

/// A provider as the repository knows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProviderView {
    /// The agent the provider belongs to.
    pub agent_id: uuid::Uuid,
    /// Provider name.
    pub name: String,
    /// Provider kind.
    #[serde(rename = "type")]
    pub provider_type: String,
    /// Live APIs.
    pub api_count: u64,
    /// Deleted APIs.
    pub deleted_count: u64,
    /// The agent's connection status, `ACTIVE` or `INACTIVE`.
    pub agent_status: String,
    /// RFC 3339 (`0001-01-01T00:00:00Z` when never).
    pub last_heartbeat: String,
    /// RFC 3339 of the last run's end.
    pub last_sync_at: Option<String>,
    /// The last run that ended.
    pub last_sync: Option<SyncView>,
}

fn parse_status(s: Option<&str>) -> Result<StatusFilter, ApiError> {
    match s.unwrap_or("active") {
        "active" => Ok(StatusFilter::Active),
        "deleted" => Ok(StatusFilter::Deleted),
        "all" => Ok(StatusFilter::All),
        other => Err(ApiError::invalid_field(
            "status",
            format!("{other:?} is not one of active, deleted, all"),
        )),
    }
}

impl ApiState {
    /// An API's record; when there is none, first catch up with everything
    /// `SYNC` holds now (the API may have just been synced, or the
    /// repository may still be replaying after a start).
    async fn record(&self, api_id: ApiId) -> Result<crate::domain::ApiRecord, ApiError> {
        let read = || {
            self.queries
                .get(api_id)
                .map_err(|e| ApiError::internal("reading the API failed", e))
        };
        if let Some(record) = read()? {
            return Ok(record);
        }
        self.progress.catch_up(CATCH_UP).await;
        read()?.ok_or_else(|| ApiError::not_found(format!("no API with id {api_id}")))
    }
}

/// How long a read waits for the repository to catch up before "not found".
const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(3);

fn parse_api_id(id: &str) -> Result<ApiId, ApiError> {
    ApiId::parse(id).map_err(|_| ApiError::invalid_field("id", format!("{id:?} is not a UUID")))
}

/// List APIs in the repository.
#[utoipa::path(get, path = "/api/apis", tag = "repository", params(ListParams),
    security(("api_key" = [])),
    responses((status = 200, body = ApiPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_apis(
    State(s): State<ApiState>,
    Query(p): Query<ListParams>,
) -> Result<Json<ApiPage>, ApiError> {
    let page = p.page.unwrap_or(1);
    if page == 0 {
        return Err(ApiError::invalid_field("page", "pages start at 1"));
    }
    let per_page = p.per_page.unwrap_or(50);
    if per_page == 0 || per_page > MAX_PER_PAGE {
        return Err(ApiError::invalid_field(
            "per_page",
            format!("must be between 1 and {MAX_PER_PAGE}"),
        ));
    }
    if (page - 1).checked_mul(per_page).is_none() {
        return Err(ApiError::invalid_field(
            "page",
            "too large: it starts past any repository",
        ));
    }
    let agent_id = p
        .agent_id
        .as_deref()
        .map(|a| {
            AgentId::parse(a)
                .map_err(|_| ApiError::invalid_field("agent_id", format!("{a:?} is not a UUID")))
        })
        .transpose()?;
    let filter = ApiFilter {
        provider: p.provider,
        agent_id,
        status: parse_status(p.status.as_deref())?,
        name_contains: p.q,
        page,
        per_page,
    };
    let queries = s.queries.clone();
    let (records, total) = tokio::task::spawn_blocking(move || queries.list(&filter))
        .await
        .map_err(|e| ApiError::internal("listing APIs failed", e))?
        .map_err(|e| ApiError::internal("listing APIs failed", e))?;
    Ok(Json(ApiPage {
        apis: records.iter().map(ApiSummary::from).collect(),
        total,
        page,
        per_page,
    }))
}

/// One API: definition, first and last seen, deletion, lifecycle history.
#[utoipa::path(get, path = "/api/apis/{id}", tag = "repository",
    params(("id" = uuid::Uuid, Path, description = "API id")),
    security(("api_key" = [])),
    responses((status = 200, body = ApiDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_api(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ApiDetail>, ApiError> {
    let api_id = parse_api_id(&id)?;
    let record = s.record(api_id).await?;
    let def = store::definition(&s.js, &record)
        .await
        .map_err(|e| ApiError::internal("reading the API's definition from the log failed", e))?;
    let json_or_string = |s: &str| {
        serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_owned()))
    };
    Ok(Json(ApiDetail {
        summary: ApiSummary::from(&record),
        definition: DefinitionView {
            base_path: def.base_path,
            upstream_url: def.upstream_url,
            auth_methods: def.auth_methods,
            tags: def.tags,
            stages: def.stages,
            openapi: (!def.openapi.is_empty()).then(|| json_or_string(&def.openapi)),
            raw: if def.raw.is_empty() {
                serde_json::Value::Null
            } else {
                json_or_string(&def.raw)
            },
        },
        history: record.history.iter().map(HistoryView::from).collect(),
    }))
}

/// Providers: agent, type, API count, agent status, last sync.
#[utoipa::path(get, path = "/api/providers", tag = "repository",
    security(("api_key" = [])),
    responses((status = 200, body = Vec<ProviderView>), (status = 401, body = ErrorBody)))]
async fn list_providers(State(s): State<ApiState>) -> Result<Json<Vec<ProviderView>>, ApiError> {
    let records = s
        .queries
        .providers()
        .map_err(|e| ApiError::internal("reading providers failed", e))?;
    let now = now_ms();
    let mut out = Vec::with_capacity(records.len());
    let mut beats: std::collections::HashMap<AgentId, Option<Heartbeat>> = Default::default();
    for p in records {
        let Some(agent_id) = p.agent_id else { continue };
        let beat = match beats.get(&agent_id) {
            Some(known) => known.clone(),
            None => {
                let read =
                    read_last::<Heartbeat>(&s.js, &streams::heartbeat_subject(agent_id)).await?;
                beats.insert(agent_id, read.clone());
                read
            }
        };
        let beat = beat.as_ref();
        out.push(ProviderView {
            agent_id: agent_id.0,
            name: p.provider.clone(),
            provider_type: p.provider_type.clone(),
            api_count: p.active,
            deleted_count: p.deleted,
            agent_status: AgentStatus::at(beat, now).as_str().to_owned(),
            last_heartbeat: beat.map_or_else(|| NEVER.to_owned(), |h| rfc3339(h.at_ms)),
            last_sync_at: p.last_run.as_ref().and_then(|r| r.ended_at_ms).map(rfc3339),
            last_sync: p.last_run.as_ref().map(SyncView::from),
        });
    }
    Ok(Json(out))
}

/// Digest of the repository, to compare with `meridian-inventory rebuild`.
#[utoipa::path(get, path = "/api/repository/digest", tag = "repository",
    security(("api_key" = [])),
    responses((status = 200, body = DigestView)))]
async fn digest(State(s): State<ApiState>) -> Result<Json<DigestView>, ApiError> {
    let position = s.progress.position();
    let digest = s
        .queries
        .digest()
        .map_err(|e| ApiError::internal("digest failed", e))?;
    Ok(Json(DigestView { digest, position }))
}

/// An API's lifecycle, oldest first: the same CloudEvents the public stream
/// carries for it (kept here after the stream's retention drops them).
#[utoipa::path(get, path = "/api/apis/{id}/history", tag = "events", params(("id" = uuid::Uuid, Path)),
    security(("api_key" = [])),
    responses((status = 200, body = Vec<Object>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn api_history(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let api_id = parse_api_id(&id)?;
    let record = s.record(api_id).await?;
    let provider_type = s
        .queries
        .provider_type(record.agent_id, &record.provider)
        .map_err(|e| ApiError::internal("reading the provider failed", e))?;
    let events = record
        .history
        .iter()
        .map(|entry| {
            let event = store::lifecycle_event(&record, entry, &provider_type);
            serde_json::to_value(meridian_schemas::public::api_event(&event))
                .expect("a CloudEvent always serializes")
        })
        .collect();
    Ok(Json(events))
}

/// `GET /api/events` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// `created`, `updated`, `deleted`, `restored` or `status_changed` (or
    /// the full `io.meridian....` type).
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Only this provider's API events.
    pub provider: Option<String>,
    /// Start at this time: RFC 3339, or a duration back from now (`1h`, `7d`).
    pub since: Option<String>,
    /// Start after this cursor (`next_after` of the previous page); wins over `since`.
    pub after: Option<u64>,
    /// Most events returned (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// A page of public events.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EventsPageView {
    /// CloudEvents, oldest first.
    pub events: Vec<serde_json::Value>,
    /// Pass as `after` to continue where this page ended.
    pub next_after: u64,
}

/// Poll the public events (the `MERIDIAN_EVENTS` stream) without NATS access.
#[utoipa::path(get, path = "/api/events", tag = "events", params(EventsQuery),
    security(("api_key" = [])),
    responses((status = 200, body = EventsPageView), (status = 400, body = ErrorBody)))]
async fn list_events(
    State(s): State<ApiState>,
    Query(q): Query<EventsQuery>,
) -> Result<Json<EventsPageView>, ApiError> {
    let filter =
        meridian_schemas::public::filter_for(q.event_type.as_deref(), q.provider.as_deref())
            .map_err(|e| {
                ApiError::new(
                    meridian_kit::http::ErrorCode::InvalidArgument,
                    e.to_string(),
                )
            })?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid_field(
            "limit",
            "must be between 1 and 1000",
        ));
    }
    let start = match (q.after, q.since.as_deref()) {
        (Some(after), _) if after == u64::MAX => {
            return Err(ApiError::invalid_field(
                "after",
                "past the end of any stream",
            ));
        }
        (Some(after), _) => Start::After(after),
        (None, Some(since)) => Start::Since(
            meridian_kit::time::parse_since(since, now_ms())
                .map_err(|e| ApiError::invalid_field("since", e))?,
        ),
        (None, None) => Start::After(0),
    };
    let page = public::read_events(&s.js, &filter, start, limit)
        .await
        .map_err(|e| ApiError::unavailable(format!("the public stream is not available: {e}")))?;
    Ok(Json(EventsPageView {
        events: page.events,
        next_after: page.last_seq,
    }))
}
