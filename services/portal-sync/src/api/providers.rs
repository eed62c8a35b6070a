//! `/portal-api/providers`: connections to Tyk Dashboards and key-issuer,
//! and their syncs.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use meridian_kit::http::{ApiError, ErrorBody, Json};
use meridian_schemas::portal::PortalEntity;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{ApiState, new_id, time};
use crate::adapters::providers::{Connection, ConnectionTest};
use crate::domain::model::{
    Provider, ProviderType, check_name, check_url, invalid as field, parse_policy_tags,
};
use crate::domain::state::SyncReport;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_providers, create_provider))
        .routes(routes!(get_provider, update_provider, delete_provider))
        .routes(routes!(synchronize_all))
        .routes(routes!(synchronize_one))
}

/// Shown instead of a secret.
const MASK: &str = "********";

/// A provider as the API shows it: the secret masked.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProviderView {
    /// Portal id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// `tyk` (a Tyk Dashboard) or `meridian` (key-issuer).
    #[serde(rename = "type")]
    pub kind: ProviderType,
    /// Where its API answers.
    pub url: String,
    /// Always masked: the secret is write-only.
    pub secret: String,
    /// The Tyk organisation (may be empty).
    pub org_id: String,
    /// TLS certificates are not checked.
    pub insecure_skip_verify: bool,
    /// Comma-separated, as entered (`tag1,tag2`).
    pub policy_tags: String,
    /// Where developers send API requests.
    pub baseline_url: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// The last sync's report.
    pub last_sync: Option<SyncReport>,
    /// What the connection test found (answers to a save only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionTest>,
}

/// What an admin sends to create or change a provider. (No `Debug`: it
/// holds the secret.)
#[derive(Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderInput {
    /// Required.
    pub name: String,
    /// `tyk` (default) or `meridian`.
    #[serde(rename = "type")]
    pub kind: ProviderType,
    /// Required: `http(s)://host[:port]`.
    pub url: String,
    /// Required when creating; left out on a change, the stored one stays.
    /// Write-only: never answered.
    #[schema(write_only, format = Password)]
    pub secret: Option<String>,
    /// Optional.
    pub org_id: String,
    /// Default off; a warning is logged when on.
    pub insecure_skip_verify: bool,
    /// Required: comma-separated with no spaces after the commas.
    pub policy_tags: String,
    /// Optional: shown on Products.
    pub baseline_url: String,
}

fn view(
    p: &Provider,
    last: Option<SyncReport>,
    connection: Option<ConnectionTest>,
) -> ProviderView {
    ProviderView {
        id: p.id.clone(),
        name: p.name.clone(),
        kind: p.kind,
        url: p.url.clone(),
        secret: MASK.into(),
        org_id: p.org_id.clone(),
        insecure_skip_verify: p.insecure_skip_verify,
        policy_tags: p.policy_tags.join(","),
        baseline_url: p.baseline_url.clone(),
        created_at: time(p.created_at_ms),
        updated_at: time(p.updated_at_ms),
        last_sync: last,
        connection,
    }
}

/// Checks `input` and makes the provider `id` from it (`old`: the stored
/// one, whose secret stays when none is sent).
fn build(
    s: &ApiState,
    id: &str,
    input: &ProviderInput,
    old: Option<&Provider>,
    now: i64,
) -> Result<Provider, ApiError> {
    check_name("name", &input.name)?;
    check_url("url", &input.url, true)?;
    check_url("baseline_url", &input.baseline_url, false)?;
    let policy_tags = parse_policy_tags(&input.policy_tags)?;
    let sealed_secret = match (&input.secret, old) {
        (Some(secret), _) if !secret.is_empty() => s.sealer.seal(id, secret),
        (Some(_), _) | (None, None) => {
            return Err(ApiError::from(field(
                "secret",
                "must not be empty (the provider's API credential)",
            )));
        }
        (None, Some(old)) => old.sealed_secret.clone(),
    };
    Ok(Provider {
        id: id.to_owned(),
        name: input.name.clone(),
        kind: input.kind,
        url: input.url.trim_end_matches('/').to_owned(),
        sealed_secret,
        org_id: input.org_id.clone(),
        insecure_skip_verify: input.insecure_skip_verify,
        policy_tags,
        baseline_url: input.baseline_url.clone(),
        created_at_ms: old.map_or(now, |o| o.created_at_ms),
        updated_at_ms: now,
    })
}

/// Tests the saved provider's connection (never refuses the save).
async fn test(s: &ApiState, p: &Provider) -> ConnectionTest {
    if p.insecure_skip_verify {
        tracing::warn!(provider = %p.name, url = %p.url,
            "insecure_skip_verify is on: the provider's TLS certificate is not checked");
    }
    let secret = match s.sealer.open(&p.id, &p.sealed_secret) {
        Ok(secret) => secret,
        Err(e) => {
            return ConnectionTest {
                message: e.to_string(),
                ..ConnectionTest::default()
            };
        }
    };
    match Connection::new(p, secret) {
        Ok(c) => c.test().await,
        Err(e) => ConnectionTest {
            message: e.to_string(),
            ..ConnectionTest::default()
        },
    }
}

/// Every provider, by name.
#[utoipa::path(get, path = "/portal-api/providers", tag = "providers", security(("api_key" = [])),
    responses((status = 200, body = Vec<ProviderView>), (status = 401, body = ErrorBody)))]
async fn list_providers(State(s): State<ApiState>) -> Json<Vec<ProviderView>> {
    s.writer.catch_up().await;
    let state = s.writer.read();
    let mut all: Vec<ProviderView> = state
        .providers()
        .map(|p| view(p, state.sync(&p.id).last, None))
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    Json(all)
}

/// Adds a provider. The connection is tested and reported in
/// `connection`; an unreachable provider is saved all the same.
#[utoipa::path(post, path = "/portal-api/providers", tag = "providers", security(("api_key" = [])),
    request_body = ProviderInput,
    responses((status = 201, body = ProviderView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_provider(
    State(s): State<ApiState>,
    Json(input): Json<ProviderInput>,
) -> Result<(StatusCode, Json<ProviderView>), ApiError> {
    let id = new_id();
    let now = meridian_kit::time::now_ms();
    let provider = build(&s, &id, &input, None, now)?;
    let name_taken = |state: &crate::domain::PortalState, own: &str| {
        state
            .providers()
            .any(|p| p.name == provider.name && p.id != own)
    };
    let saved = s
        .save(PortalEntity::Provider, &id, "created", |state| {
            if name_taken(state, &id) {
                return Err(ApiError::conflict(format!(
                    "name: a provider named {:?} exists already",
                    provider.name
                )));
            }
            Ok(provider.clone())
        })
        .await?;
    tracing::info!(provider = %saved.name, id = %saved.id, kind = saved.kind.as_str(), "provider added");
    let connection = test(&s, &saved).await;
    Ok((
        StatusCode::CREATED,
        Json(view(&saved, None, Some(connection))),
    ))
}

/// A provider.
#[utoipa::path(get, path = "/portal-api/providers/{id}", tag = "providers", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = ProviderView), (status = 404, body = ErrorBody)))]
async fn get_provider(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<ProviderView>, ApiError> {
    s.find(|state| {
        state
            .provider(&id)
            .map(|p| view(p, state.sync(&id).last, None))
    })
    .await
    .map(Json)
    .ok_or_else(|| ApiError::not_found(format!("no provider {id:?}")))
}

/// Changes a provider; without `secret` the stored one stays. The
/// connection is tested again.
#[utoipa::path(put, path = "/portal-api/providers/{id}", tag = "providers", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)), request_body = ProviderInput,
    responses((status = 200, body = ProviderView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_provider(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Json(input): Json<ProviderInput>,
) -> Result<Json<ProviderView>, ApiError> {
    let old = s
        .find(|state| state.provider(&id).cloned())
        .await
        .ok_or_else(|| ApiError::not_found(format!("no provider {id:?}")))?;
    let now = meridian_kit::time::now_ms();
    // Sealing happens once: the same sealed secret on every attempt.
    let candidate = build(&s, &id, &input, Some(&old), now)?;
    let saved = s
        .save(PortalEntity::Provider, &id, "updated", |state| {
            let Some(current) = state.provider(&id) else {
                return Err(ApiError::not_found(format!("no provider {id:?}")));
            };
            if state
                .providers()
                .any(|p| p.name == candidate.name && p.id != id)
            {
                return Err(ApiError::conflict(format!(
                    "name: a provider named {:?} exists already",
                    candidate.name
                )));
            }
            let mut next = candidate.clone();
            if input.secret.is_none() {
                next.sealed_secret.clone_from(&current.sealed_secret);
            }
            Ok(next)
        })
        .await?;
    tracing::info!(provider = %saved.name, id = %saved.id, "provider changed");
    let connection = test(&s, &saved).await;
    let last = s.writer.read().sync(&id).last;
    Ok(Json(view(&saved, last, Some(connection))))
}

/// Removes a provider. Refused while Products or Plans of it remain (they
/// would lose their provider): delete those first.
#[utoipa::path(delete, path = "/portal-api/providers/{id}", tag = "providers", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_provider(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.find(|state| state.provider(&id).map(drop))
        .await
        .ok_or_else(|| ApiError::not_found(format!("no provider {id:?}")))?;
    let gone = s
        .delete(PortalEntity::Provider, &id, |state| {
            let provider = state
                .provider(&id)
                .ok_or_else(|| ApiError::not_found(format!("no provider {id:?}")))?;
            let products = state.products().filter(|p| p.provider_id == id).count();
            let plans = state.plans().filter(|p| p.provider_id == id).count();
            if products + plans > 0 {
                return Err(ApiError::conflict(format!(
                    "provider {:?} still has {products} Products and {plans} Plans; delete them first",
                    provider.name
                )));
            }
            Ok(provider.clone())
        })
        .await?;
    tracing::info!(provider = %gone.name, id = %id, "provider removed");
    Ok(StatusCode::NO_CONTENT)
}

/// The report of a manual sync: one entry per provider.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SyncAnswer {
    /// Each provider's outcome: `ok` with counts, or `failed` with the
    /// reason.
    pub providers: Vec<SyncReport>,
}

/// Synchronises every provider in turn (a failed one does not stop the
/// others) and reports each.
#[utoipa::path(put, path = "/portal-api/providers/synchronize", tag = "providers", security(("api_key" = [])),
    responses((status = 200, body = SyncAnswer), (status = 401, body = ErrorBody)))]
async fn synchronize_all(State(s): State<ApiState>) -> Json<SyncAnswer> {
    Json(SyncAnswer {
        providers: s.syncer.sync_all().await,
    })
}

/// Synchronises one provider and reports it.
#[utoipa::path(put, path = "/portal-api/providers/{id}/synchronize", tag = "providers", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = SyncAnswer), (status = 404, body = ErrorBody)))]
async fn synchronize_one(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<SyncAnswer>, ApiError> {
    s.find(|state| state.provider(&id).map(drop))
        .await
        .ok_or_else(|| ApiError::not_found(format!("no provider {id:?}")))?;
    let report = s
        .syncer
        .sync_one(&id)
        .await
        .ok_or_else(|| ApiError::not_found(format!("no provider {id:?}")))?;
    Ok(Json(SyncAnswer {
        providers: vec![report],
    }))
}
