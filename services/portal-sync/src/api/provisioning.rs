//! `/portal-api/apps`, `/portal-api/provisioning-requests` and
//! `/portal-api/credentials`: a developer's app asks for a Product with a
//! Plan; an admin (or the Plan's auto-approval) approves; the provider
//! issues a key applying the Product's and the Plan's policies. The key is
//! answered once; the portal keeps only its hash and alias. Revoking a
//! credential deletes the key in the provider.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use meridian_kit::http::{ApiError, ErrorBody, Json, JsonOrEmpty, Query};
use meridian_schemas::ids::MERIDIAN_NAMESPACE;
use meridian_schemas::portal::PortalEntity;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiState, Unsettled, new_id, provider_failed, time};
use crate::adapters::providers::Connection;
use crate::domain::PortalState;
use crate::domain::hash_key;
use crate::domain::model::{App, Credential, Issuing, Request, Status, check_name};
use crate::domain::rules::{self, credential_owner};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_apps, create_app))
        .routes(routes!(get_app, update_app, delete_app))
        .routes(routes!(list_requests, create_request))
        .routes(routes!(get_request))
        .routes(routes!(approve_request))
        .routes(routes!(reject_request))
        .routes(routes!(list_credentials))
        .routes(routes!(revoke_credential))
}

/// An app to create or change.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AppInput {
    /// Required.
    pub name: String,
    /// Required: the developer who owns it (e-mail or id).
    pub owner: String,
    /// Optional.
    pub description: String,
}

/// A credential as the API shows it: never the key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CredentialView {
    /// Portal id.
    pub id: String,
    /// The request whose approval issued it.
    pub request_id: String,
    /// Its app.
    pub app_id: String,
    /// The Product and Plan it grants.
    pub product_id: String,
    /// See `product_id`.
    pub plan_id: String,
    /// The provider that issued it.
    pub provider_id: String,
    /// SHA-256 (hex) of the key.
    pub key_hash: String,
    /// The key's alias in the provider.
    pub alias: String,
    /// The provider's policies the key applies.
    pub policies: Vec<String>,
    /// RFC 3339.
    pub issued_at: String,
    /// RFC 3339; empty while live.
    pub revoked_at: String,
}

/// An app with its requests and credentials.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AppView {
    /// Portal id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its owner.
    pub owner: String,
    /// A description.
    pub description: String,
    /// Its provisioning requests, by id.
    pub requests: Vec<String>,
    /// The credentials issued to it.
    pub credentials: Vec<CredentialView>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// A provisioning request as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RequestView {
    /// Portal id.
    pub id: String,
    /// The app asking.
    pub app_id: String,
    /// The Product asked for.
    pub product_id: String,
    /// The Plan asked for.
    pub plan_id: String,
    /// Their provider.
    pub provider_id: String,
    /// `pending`, `approved` or `rejected`.
    pub status: Status,
    /// Approved by the Plan's auto-approval.
    pub automatic: bool,
    /// Why it was rejected.
    pub reason: String,
    /// The credential its approval issued.
    pub credential: Option<CredentialView>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; empty while pending.
    pub decided_at: String,
    /// An approval is under way: recorded, its key asked of the provider,
    /// not yet recorded as approved (a portal replica finishes or undoes
    /// it).
    pub approving: bool,
}

/// The answer to an approval (or to a request its Plan approved at once):
/// the only time the key is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Provisioned {
    /// The request, now approved (or still pending).
    pub request: RequestView,
    /// The key the provider issued: store it now, it is not shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

fn credential_view(r: &Request, c: &Credential) -> CredentialView {
    CredentialView {
        id: c.id.clone(),
        request_id: r.id.clone(),
        app_id: r.app_id.clone(),
        product_id: r.product_id.clone(),
        plan_id: r.plan_id.clone(),
        provider_id: r.provider_id.clone(),
        key_hash: c.key_hash.clone(),
        alias: c.alias.clone(),
        policies: c.policies.clone(),
        issued_at: time(c.issued_at_ms),
        revoked_at: time(c.revoked_at_ms),
    }
}

fn request_view(r: &Request) -> RequestView {
    RequestView {
        id: r.id.clone(),
        app_id: r.app_id.clone(),
        product_id: r.product_id.clone(),
        plan_id: r.plan_id.clone(),
        provider_id: r.provider_id.clone(),
        status: r.status,
        automatic: r.automatic,
        reason: r.reason.clone(),
        credential: r.credential.as_ref().map(|c| credential_view(r, c)),
        created_at: time(r.created_at_ms),
        decided_at: time(r.decided_at_ms),
        approving: r.issuing.is_some(),
    }
}

fn app_view(state: &PortalState, a: &App) -> AppView {
    let requests: Vec<&Request> = state.requests().filter(|r| r.app_id == a.id).collect();
    AppView {
        id: a.id.clone(),
        name: a.name.clone(),
        owner: a.owner.clone(),
        description: a.description.clone(),
        requests: requests.iter().map(|r| r.id.clone()).collect(),
        credentials: requests
            .iter()
            .filter_map(|r| r.credential.as_ref().map(|c| credential_view(r, c)))
            .collect(),
        created_at: time(a.created_at_ms),
        updated_at: time(a.updated_at_ms),
    }
}

fn no_app(id: &str) -> ApiError {
    ApiError::not_found(format!("no app {id:?}"))
}

fn no_request(id: &str) -> ApiError {
    ApiError::not_found(format!("no provisioning request {id:?}"))
}

fn check_app(input: &AppInput) -> Result<(), ApiError> {
    check_name("name", &input.name)?;
    check_name("owner", &input.owner).map_err(ApiError::from)
}

/// Every app, by name.
#[utoipa::path(get, path = "/portal-api/apps", tag = "apps", security(("api_key" = [])),
    responses((status = 200, body = Vec<AppView>), (status = 401, body = ErrorBody)))]
async fn list_apps(State(s): State<ApiState>) -> Json<Vec<AppView>> {
    s.writer.catch_up().await;
    let state = s.writer.read();
    let mut all: Vec<AppView> = state.apps().map(|a| app_view(&state, a)).collect();
    all.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    Json(all)
}

/// Creates an app.
#[utoipa::path(post, path = "/portal-api/apps", tag = "apps", security(("api_key" = [])),
    request_body = AppInput,
    responses((status = 201, body = AppView), (status = 400, body = ErrorBody)))]
async fn create_app(
    State(s): State<ApiState>,
    Json(input): Json<AppInput>,
) -> Result<(StatusCode, Json<AppView>), ApiError> {
    check_app(&input)?;
    let id = new_id();
    let now = meridian_kit::time::now_ms();
    let app = App {
        id: id.clone(),
        name: input.name,
        owner: input.owner,
        description: input.description,
        created_at_ms: now,
        updated_at_ms: now,
    };
    let saved = s
        .save(PortalEntity::App, &id, "created", |_| Ok(app.clone()))
        .await?;
    let state = s.writer.read();
    Ok((StatusCode::CREATED, Json(app_view(&state, &saved))))
}

/// An app, with its requests and credentials.
#[utoipa::path(get, path = "/portal-api/apps/{id}", tag = "apps", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = AppView), (status = 404, body = ErrorBody)))]
async fn get_app(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<AppView>, ApiError> {
    s.find(|state| state.app(&id).map(|a| app_view(state, a)))
        .await
        .map(Json)
        .ok_or_else(|| no_app(&id))
}

/// Changes an app's name, owner or description.
#[utoipa::path(put, path = "/portal-api/apps/{id}", tag = "apps", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)), request_body = AppInput,
    responses((status = 200, body = AppView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn update_app(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    Json(input): Json<AppInput>,
) -> Result<Json<AppView>, ApiError> {
    check_app(&input)?;
    s.find(|state| state.app(&id).map(drop))
        .await
        .ok_or_else(|| no_app(&id))?;
    let saved = s
        .save(PortalEntity::App, &id, "updated", |state| {
            let mut a = state.app(&id).cloned().ok_or_else(|| no_app(&id))?;
            let before = a.clone();
            a.name.clone_from(&input.name);
            a.owner.clone_from(&input.owner);
            a.description.clone_from(&input.description);
            if a != before {
                a.updated_at_ms = meridian_kit::time::now_ms();
            }
            Ok(a)
        })
        .await?;
    let state = s.writer.read();
    Ok(Json(app_view(&state, &saved)))
}

/// Deletes an app: its live credentials are revoked first (their keys
/// deleted in the provider); if a provider fails, the app stays.
#[utoipa::path(delete, path = "/portal-api/apps/{id}", tag = "apps", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn delete_app(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.find(|state| state.app(&id).map(drop))
        .await
        .ok_or_else(|| no_app(&id))?;
    let live: Vec<String> = s
        .writer
        .read()
        .requests()
        .filter(|r| r.app_id == id)
        .filter_map(|r| r.credential.as_ref().filter(|c| c.revoked_at_ms == 0))
        .map(|c| c.id.clone())
        .collect();
    for credential in live {
        revoke(&s, &credential).await?;
    }
    s.delete(PortalEntity::App, &id, |state| {
        state.app(&id).cloned().ok_or_else(|| no_app(&id))
    })
    .await?;
    tracing::info!(app = %id, "app deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `?status=` filters requests.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(default, deny_unknown_fields)]
pub struct RequestQuery {
    /// `pending`, `approved` or `rejected`.
    pub status: Option<Status>,
}

/// Provisioning requests, oldest first.
#[utoipa::path(get, path = "/portal-api/provisioning-requests", tag = "provisioning", security(("api_key" = [])),
    params(RequestQuery),
    responses((status = 200, body = Vec<RequestView>), (status = 400, body = ErrorBody)))]
async fn list_requests(
    State(s): State<ApiState>,
    Query(q): Query<RequestQuery>,
) -> Json<Vec<RequestView>> {
    s.writer.catch_up().await;
    let state = s.writer.read();
    let mut all: Vec<&Request> = state
        .requests()
        .filter(|r| q.status.is_none_or(|st| r.status == st))
        .collect();
    all.sort_by(|a, b| a.created_at_ms.cmp(&b.created_at_ms).then(a.id.cmp(&b.id)));
    Json(all.into_iter().map(request_view).collect())
}

/// What an app asks for.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RequestInput {
    /// The app.
    pub app_id: String,
    /// A published Product.
    pub product_id: String,
    /// A published Plan of the same provider.
    pub plan_id: String,
}

/// The header that makes a request's creation safe to retry.
const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The request id an `Idempotency-Key` stands for (per app): a retry with
/// the same key names the same request.
fn idempotent_id(headers: &HeaderMap, app_id: &str) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::invalid_field(
                "Idempotency-Key",
                "must be 1 to 255 visible ASCII characters",
            )
        })?;
    Ok(Some(
        Uuid::new_v5(
            &MERIDIAN_NAMESPACE,
            format!("portal:request:{app_id}:{key}").as_bytes(),
        )
        .to_string(),
    ))
}

/// An app asks for a Product with a Plan. When the Plan approves
/// automatically, the credential is issued at once and its key answered.
/// With an `Idempotency-Key` header, asking again with the same key (after
/// a timeout, a crash, a 503) answers the same request, and its key again
/// when it was approved: never a second request or key.
#[utoipa::path(post, path = "/portal-api/provisioning-requests", tag = "provisioning", security(("api_key" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry answer the same request (and key) instead of making another")),
    request_body = RequestInput,
    responses((status = 201, body = Provisioned), (status = 200, body = Provisioned, description = "A retry with the same Idempotency-Key"), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_request(
    State(s): State<ApiState>,
    headers: HeaderMap,
    Json(input): Json<RequestInput>,
) -> Result<(StatusCode, Json<Provisioned>), ApiError> {
    s.writer.catch_up().await;
    let given = idempotent_id(&headers, &input.app_id)?;
    if let Some(id) = &given
        && let Some(existing) = s.find(|state| state.request(id).cloned()).await
    {
        return retried(&s, &existing, &input)
            .await
            .map(|p| (StatusCode::OK, Json(p)));
    }
    let id = given.clone().unwrap_or_else(new_id);
    let now = meridian_kit::time::now_ms();
    let created = s
        .save(PortalEntity::Request, &id, "created", |state| {
            if state.request(&id).is_some() {
                return Err(ApiError::conflict("created by a retry meanwhile"));
            }
            let provider_id =
                rules::check_request(state, &input.app_id, &input.product_id, &input.plan_id)?;
            Ok(Request {
                id: id.clone(),
                app_id: input.app_id.clone(),
                product_id: input.product_id.clone(),
                plan_id: input.plan_id.clone(),
                provider_id,
                created_at_ms: now,
                ..Request::default()
            })
        })
        .await;
    let created = match (created, &given) {
        (Ok(r), _) => r,
        (Err(e), Some(id)) => {
            // A retry with the same key won the race: answer its request.
            let Some(existing) = s.find(|state| state.request(id).cloned()).await else {
                return Err(e);
            };
            return retried(&s, &existing, &input)
                .await
                .map(|p| (StatusCode::OK, Json(p)));
        }
        (Err(e), None) => return Err(e),
    };
    let automatic = s
        .writer
        .read()
        .plan(&created.plan_id)
        .is_some_and(|p| p.auto_approve);
    if !automatic {
        return Ok((
            StatusCode::CREATED,
            Json(Provisioned {
                request: request_view(&created),
                key: None,
            }),
        ));
    }
    let provisioned = approve(&s, &id, true).await?;
    Ok((StatusCode::CREATED, Json(provisioned)))
}

/// The answer to a retry of a request made with the same `Idempotency-Key`:
/// the request as it is (with its key again while its credential is live);
/// a pending one whose Plan approves automatically is approved now (or
/// its approval under way finished, once it is past the deadline).
async fn retried(
    s: &ApiState,
    existing: &Request,
    input: &RequestInput,
) -> Result<Provisioned, ApiError> {
    if (&existing.app_id, &existing.product_id, &existing.plan_id)
        != (&input.app_id, &input.product_id, &input.plan_id)
    {
        return Err(ApiError::conflict(
            "this Idempotency-Key was used for another request (another app, Product or Plan); use a new key",
        ));
    }
    let automatic = s
        .writer
        .read()
        .plan(&existing.plan_id)
        .is_some_and(|p| p.auto_approve);
    match existing.status {
        Status::Pending if automatic => match &existing.issuing {
            None => approve(s, &existing.id, true).await,
            Some(i) if meridian_kit::time::now_ms() - i.started_at_ms >= ms(s.intent_deadline) => {
                finish_approval(s, existing).await
            }
            Some(_) => Err(ApiError::conflict(format!(
                "an approval of provisioning request {:?} is under way; ask again in a moment",
                existing.id
            ))),
        },
        Status::Approved => {
            let key = s.sealer.credential_key(&existing.id);
            let live = existing
                .credential
                .as_ref()
                .is_some_and(|c| c.revoked_at_ms == 0 && c.key_hash == hash_key(&key));
            Ok(Provisioned {
                request: request_view(existing),
                key: live.then_some(key),
            })
        }
        _ => Ok(Provisioned {
            request: request_view(existing),
            key: None,
        }),
    }
}

/// A provisioning request.
#[utoipa::path(get, path = "/portal-api/provisioning-requests/{id}", tag = "provisioning", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = RequestView), (status = 404, body = ErrorBody)))]
async fn get_request(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RequestView>, ApiError> {
    s.find(|state| state.request(&id).map(request_view))
        .await
        .map(Json)
        .ok_or_else(|| no_request(&id))
}

/// Issues the credential of a pending request: a key in the provider with
/// the Product's and the Plan's policies applied. The approval is recorded
/// as under way first, then the provider is asked for the request's own
/// key, then the approval is recorded; see [`finish_approval`].
async fn approve(s: &ApiState, id: &str, automatic: bool) -> Result<Provisioned, ApiError> {
    let (request, product, plan, app) = s
        .find(|state| {
            let r = state.request(id)?.clone();
            Some((
                r.clone(),
                state.product(&r.product_id).cloned(),
                state.plan(&r.plan_id).cloned(),
                state.app(&r.app_id).cloned(),
            ))
        })
        .await
        .ok_or_else(|| no_request(id))?;
    if request.status != Status::Pending {
        return Err(ApiError::conflict(format!(
            "provisioning request {id:?} is {} already",
            status_name(request.status)
        )));
    }
    let (Some(product), Some(plan), Some(app)) = (product, plan, app) else {
        return Err(ApiError::conflict(format!(
            "provisioning request {id:?} names a Product, Plan or app that was deleted; reject it"
        )));
    };
    if product.hidden || plan.hidden {
        return Err(ApiError::conflict(
            "the Product or Plan is hidden (its policy is gone from the provider); approve once a sync finds it again",
        ));
    }
    let issuing = Issuing {
        alias: format!("{}-{}", app.name, id.chars().take(8).collect::<String>()),
        policies: vec![product.policy_id.clone(), plan.policy_id.clone()],
        automatic,
        started_at_ms: meridian_kit::time::now_ms(),
    };
    let deadline = ms(s.intent_deadline);
    let started = s
        .save_settled(
            PortalEntity::Request,
            id,
            "approval-started",
            |state| {
                Ok(rules::start_approval(
                    state,
                    id,
                    &issuing,
                    meridian_kit::time::now_ms(),
                    deadline,
                )?)
            },
            |state| {
                state
                    .request(id)
                    .filter(|r| r.issuing.as_ref() == Some(&issuing))
                    .cloned()
            },
        )
        .await
        .map_err(Unsettled::into_error)?;
    finish_approval(s, &started).await
}

fn status_name(status: Status) -> String {
    serde_json::to_value(status)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Finishes an approval recorded as under way (`request.issuing`): asks
/// the provider for the request's own key (creating it, or writing the same
/// session over it when an earlier attempt made it), then records the
/// approval, settling a publish with no answer before anything else. When
/// the provider fails, or the request can no longer be approved, the key is
/// deleted and the approval taken back; when that delete fails too, the
/// approval stays under way for the next try. When the log gives no answer,
/// nothing is undone: the approval stays recorded as under way, and a
/// replica finishes it later.
async fn finish_approval(s: &ApiState, request: &Request) -> Result<Provisioned, ApiError> {
    let id = request.id.as_str();
    let Some(issuing) = request.issuing.clone() else {
        return Err(ApiError::conflict(format!(
            "provisioning request {id:?} has no approval under way"
        )));
    };
    let key = s.sealer.credential_key(id);
    let key_hash = hash_key(&key);
    let (_, connection) = s.connect(&request.provider_id).await?;
    let app = s.find(|state| state.app(&request.app_id).cloned()).await;
    let meta = json!({
        "portal_app_id": request.app_id,
        "portal_request_id": id,
        "portal_app_owner": app.map(|a| a.owner).unwrap_or_default(),
    });
    let issued = match connection
        .put_key(&key, &issuing.policies, &issuing.alias, meta)
        .await
    {
        Ok(issued) => issued,
        Err(e) => {
            let failed = provider_failed("issue the credential", &e);
            undo_approval(s, request, &connection, &key).await;
            return Err(failed);
        }
    };
    let credential = rules::credential(
        id,
        &issuing,
        &key_hash,
        &issued.key_ref,
        meridian_kit::time::now_ms(),
    );
    let recorded = s
        .save_settled(
            PortalEntity::Request,
            id,
            "approved",
            |state| {
                Ok(rules::finish_approval(
                    state,
                    id,
                    credential.clone(),
                    meridian_kit::time::now_ms(),
                )?)
            },
            |state| rules::approved_with(state, id, &key_hash),
        )
        .await;
    match recorded {
        Ok(r) => {
            tracing::info!(request = %id, app = %r.app_id, automatic = r.automatic, key_hash = %key_hash, "provisioning request approved");
            Ok(Provisioned {
                request: request_view(&r),
                key: Some(key),
            })
        }
        Err(Unsettled::Unknown(e)) => Err(e),
        Err(Unsettled::Failed(e)) => {
            undo_approval(s, request, &connection, &key).await;
            Err(e)
        }
    }
}

/// Takes back an approval that cannot be finished: deletes the request's
/// key in the provider (already gone is fine), then records that no
/// approval is under way. A delete that fails leaves the approval under way
/// (a later try undoes or finishes it), and says so.
async fn undo_approval(s: &ApiState, request: &Request, connection: &Connection, key: &str) {
    let id = request.id.as_str();
    if let Err(e) = connection.delete_key_itself(key).await {
        tracing::error!(request = %id, error = %e,
            "an approval that failed could not take its key back; it stays under way and is tried again");
        return;
    }
    s.recovered("approval_undone");
    tracing::warn!(request = %id, "approval undone: the request's key was deleted in the provider");
    let cleared = s
        .save_settled(
            PortalEntity::Request,
            id,
            "approval-undone",
            |state| Ok(rules::undo_approval(state, id)?),
            |state| rules::approval_cleared(state, id),
        )
        .await;
    if let Err(e) = cleared {
        tracing::warn!(request = %id, error = %e.into_error().message, "an undone approval is still recorded as under way; the next try clears it");
    }
}

/// Approves a pending request: the provider issues the credential, whose
/// key is answered this once.
#[utoipa::path(put, path = "/portal-api/provisioning-requests/{id}/approve", tag = "provisioning", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = Provisioned), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn approve_request(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Provisioned>, ApiError> {
    approve(&s, &id, false).await.map(Json)
}

/// Why a request is rejected.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Rejection {
    /// Shown to the developer.
    pub reason: String,
}

/// Rejects a pending request.
#[utoipa::path(put, path = "/portal-api/provisioning-requests/{id}/reject", tag = "provisioning", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)), request_body = Rejection,
    responses((status = 200, body = RequestView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn reject_request(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    JsonOrEmpty(rejection): JsonOrEmpty<Rejection>,
) -> Result<Json<RequestView>, ApiError> {
    s.find(|state| state.request(&id).map(drop))
        .await
        .ok_or_else(|| no_request(&id))?;
    let r = s
        .save(PortalEntity::Request, &id, "rejected", |state| {
            Ok(rules::reject(
                state,
                &id,
                &rejection.reason,
                meridian_kit::time::now_ms(),
            )?)
        })
        .await?;
    tracing::info!(request = %id, "provisioning request rejected");
    Ok(Json(request_view(&r)))
}

/// Every credential issued (revoked ones too).
#[utoipa::path(get, path = "/portal-api/credentials", tag = "provisioning", security(("api_key" = [])),
    responses((status = 200, body = Vec<CredentialView>)))]
async fn list_credentials(State(s): State<ApiState>) -> Json<Vec<CredentialView>> {
    s.writer.catch_up().await;
    let state = s.writer.read();
    Json(
        state
            .requests()
            .filter_map(|r| r.credential.as_ref().map(|c| credential_view(r, c)))
            .collect(),
    )
}

/// Revokes a credential: the revocation is recorded as under way, the key
/// is deleted in the provider, then the credential is marked revoked (see
/// [`finish_revocation`]).
async fn revoke(s: &ApiState, credential_id: &str) -> Result<Request, ApiError> {
    let not_found = || ApiError::not_found(format!("no credential {credential_id:?}"));
    let request = s
        .find(|state| credential_owner(state, credential_id))
        .await
        .ok_or_else(not_found)?;
    let credential = request.credential.clone().ok_or_else(not_found)?;
    if credential.revoked_at_ms != 0 {
        return Err(ApiError::conflict(format!(
            "credential {credential_id:?} was revoked already"
        )));
    }
    let started = if credential.revoking_at_ms != 0 {
        request
    } else {
        s.save_settled(
            PortalEntity::Request,
            &request.id,
            "revocation-started",
            |state| {
                Ok(rules::start_revocation(
                    state,
                    credential_id,
                    meridian_kit::time::now_ms(),
                )?)
            },
            |state| rules::revocation_recorded(state, credential_id),
        )
        .await
        .map_err(Unsettled::into_error)?
    };
    finish_revocation(s, &started).await
}

/// Finishes a revocation recorded as under way: deletes the key in the
/// provider (already gone is fine: an earlier try deleted it) and marks the
/// credential revoked, settling a publish with no answer. A provider that
/// fails leaves the revocation under way for the next try.
async fn finish_revocation(s: &ApiState, request: &Request) -> Result<Request, ApiError> {
    let credential = request
        .credential
        .clone()
        .ok_or_else(|| ApiError::conflict("no credential"))?;
    let credential_id = credential.id.clone();
    let (_, connection) = s.connect(&request.provider_id).await?;
    connection
        .delete_key(&credential.provider_key_ref)
        .await
        .map_err(|e| provider_failed("delete the credential's key", &e))?;
    let r = s
        .save_settled(
            PortalEntity::Request,
            &request.id,
            "revoked",
            |state| {
                Ok(rules::finish_revocation(
                    state,
                    &credential_id,
                    meridian_kit::time::now_ms(),
                )?)
            },
            |state| rules::revoked(state, &credential_id),
        )
        .await
        .map_err(Unsettled::into_error)?;
    tracing::info!(credential = %credential_id, key_hash = %credential.key_hash, "credential revoked");
    Ok(r)
}

/// Finishes on this replica what another left under way longer than the
/// intent deadline (it crashed, or the log was away): approvals (finished,
/// or undone when they cannot be), Products and Plans being created with
/// their policies, revocations, and requests whose Plan approves
/// automatically but that are still pending. Runs once the fold
/// has caught up, then every half deadline, until `stop`.
pub async fn recover_until_stopped(
    s: ApiState,
    progress: meridian_kit::projection::Progress,
    stop: meridian_kit::CancellationToken,
) {
    tokio::select! {
        () = stop.cancelled() => return,
        _ = progress.catch_up(std::time::Duration::from_secs(3600)) => {}
    }
    let every = (s.intent_deadline / 2).max(std::time::Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = recover(&s) => {}
        }
    }
}

/// One pass of [`recover_until_stopped`].
async fn recover(s: &ApiState) {
    let stale_before = meridian_kit::time::now_ms() - ms(s.intent_deadline);
    let (approvals, automatic, revocations) = {
        let state = s.writer.read();
        let mut approvals = Vec::new();
        let mut automatic = Vec::new();
        let mut revocations = Vec::new();
        for r in state.requests() {
            match (&r.issuing, r.status, &r.credential) {
                (Some(i), Status::Pending, _) if i.started_at_ms < stale_before => {
                    approvals.push(r.clone());
                }
                (None, Status::Pending, _)
                    if r.created_at_ms < stale_before
                        && state.plan(&r.plan_id).is_some_and(|p| p.auto_approve) =>
                {
                    automatic.push(r.id.clone());
                }
                (_, Status::Approved, Some(c))
                    if c.revoked_at_ms == 0
                        && c.revoking_at_ms != 0
                        && c.revoking_at_ms < stale_before =>
                {
                    revocations.push(r.clone());
                }
                _ => {}
            }
        }
        (approvals, automatic, revocations)
    };
    for r in approvals {
        tracing::warn!(request = %r.id, "an approval was left under way; finishing it here");
        match finish_approval(s, &r).await {
            Ok(_) => s.recovered("approval_finished"),
            Err(e) => {
                tracing::warn!(request = %r.id, error = %e.message, "a left approval could not be finished yet")
            }
        }
    }
    for id in automatic {
        tracing::warn!(request = %id, "a request whose Plan approves automatically was left pending; approving it here");
        match approve(s, &id, true).await {
            Ok(_) => s.recovered("auto_approval_finished"),
            Err(e) => {
                tracing::warn!(request = %id, error = %e.message, "a left automatic approval could not be finished yet")
            }
        }
    }
    let creations: Vec<_> = s
        .writer
        .read()
        .creations()
        .filter(|c| c.started_at_ms < stale_before)
        .cloned()
        .collect();
    for c in creations {
        tracing::warn!(creation = %c.id, "a Product or Plan creation was left under way; finishing or undoing it here");
        if let Err(e) = super::catalogue::recover_creation(s, &c).await {
            tracing::warn!(creation = %c.id, error = %e.message, "a left creation could not be settled yet");
        }
    }
    for r in revocations {
        tracing::warn!(request = %r.id, "a revocation was left under way; finishing it here");
        match finish_revocation(s, &r).await {
            Ok(_) => s.recovered("revocation_finished"),
            Err(e) => {
                tracing::warn!(request = %r.id, error = %e.message, "a left revocation could not be finished yet")
            }
        }
    }
}

/// Revokes a credential: the key is deleted in the provider.
#[utoipa::path(delete, path = "/portal-api/credentials/{id}", tag = "provisioning", security(("api_key" = [])),
    params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = CredentialView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn revoke_credential(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<CredentialView>, ApiError> {
    let r = revoke(&s, &id).await?;
    let c = r
        .credential
        .as_ref()
        .expect("a revoked request has its credential");
    Ok(Json(credential_view(&r, c)))
}
