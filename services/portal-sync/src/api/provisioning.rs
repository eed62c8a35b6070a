//! `/portal-api/apps`, `/portal-api/provisioning-requests` and
//! `/portal-api/credentials`: a developer's app asks for a Product with a
//! Plan; an admin (or the Plan's auto-approval) approves; the provider
//! issues a key applying the Product's and the Plan's policies. The key is
//! answered once; the portal keeps only its hash and alias. Revoking a
//! credential deletes the key in the provider.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use meridian_kit::http::{ApiError, ErrorBody, Json, JsonOrEmpty, Query};
use meridian_schemas::ids::MERIDIAN_NAMESPACE;
use meridian_schemas::portal::PortalEntity;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiState, invalid, new_id, provider_failed, time};
use crate::domain::PortalState;
use crate::domain::hash_key;
use crate::domain::model::{App, Credential, Request, Status, check_name, invalid as field};

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
    check_name("name", &input.name).map_err(invalid)?;
    check_name("owner", &input.owner).map_err(invalid)
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
            a.name.clone_from(&input.name);
            a.owner.clone_from(&input.owner);
            a.description.clone_from(&input.description);
            a.updated_at_ms = meridian_kit::time::now_ms();
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

/// Checks a request against the portal: the app exists, the Product and
/// Plan exist, are shown and published, and share one provider.
fn check_request(state: &PortalState, input: &RequestInput) -> Result<String, ApiError> {
    if state.app(&input.app_id).is_none() {
        return Err(invalid(field(
            "app_id",
            format!("no app {:?}", input.app_id),
        )));
    }
    let product = state.product(&input.product_id).ok_or_else(|| {
        invalid(field(
            "product_id",
            format!("no Product {:?}", input.product_id),
        ))
    })?;
    let plan = state
        .plan(&input.plan_id)
        .ok_or_else(|| invalid(field("plan_id", format!("no Plan {:?}", input.plan_id))))?;
    for (name, hidden, published) in [
        ("product_id", product.hidden, product.display.published),
        ("plan_id", plan.hidden, plan.display.published),
    ] {
        if hidden || !published {
            return Err(invalid(field(
                name,
                if hidden {
                    "is hidden: its policy is gone from the provider"
                } else {
                    "is not published"
                },
            )));
        }
    }
    if product.provider_id != plan.provider_id {
        return Err(invalid(field(
            "plan_id",
            format!(
                "the Plan comes from provider {:?} and the Product from {:?}: a credential is issued by one provider",
                plan.provider_id, product.provider_id
            ),
        )));
    }
    Ok(product.provider_id.clone())
}

/// An app asks for a Product with a Plan. When the Plan approves
/// automatically, the credential is issued at once and its key answered.
#[utoipa::path(post, path = "/portal-api/provisioning-requests", tag = "provisioning", security(("api_key" = [])),
    request_body = RequestInput,
    responses((status = 201, body = Provisioned), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
async fn create_request(
    State(s): State<ApiState>,
    Json(input): Json<RequestInput>,
) -> Result<(StatusCode, Json<Provisioned>), ApiError> {
    s.writer.catch_up().await;
    let id = new_id();
    let now = meridian_kit::time::now_ms();
    let created = s
        .save(PortalEntity::Request, &id, "created", |state| {
            let provider_id = check_request(state, &input)?;
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
        .await?;
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
/// the Product's and the Plan's policies applied. If another admin decided
/// the request meanwhile, the key just issued is deleted again.
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
            serde_json::to_value(request.status)
                .expect("a status serializes")
                .as_str()
                .unwrap_or_default()
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
    let (_, connection) = s.connect(&request.provider_id).await?;
    let policies = vec![product.policy_id.clone(), plan.policy_id.clone()];
    let alias = format!("{}-{}", app.name, id.chars().take(8).collect::<String>());
    let issued = connection
        .create_key(
            &policies,
            &alias,
            json!({"portal_app_id": app.id, "portal_request_id": id, "portal_app_owner": app.owner}),
        )
        .await
        .map_err(|e| provider_failed("issue the credential", &e))?;
    let now = meridian_kit::time::now_ms();
    let credential = Credential {
        id: Uuid::new_v5(
            &MERIDIAN_NAMESPACE,
            format!("portal:credential:{id}").as_bytes(),
        )
        .to_string(),
        key_hash: hash_key(&issued.key),
        provider_key_ref: issued.key_ref.clone(),
        alias,
        policies,
        issued_at_ms: now,
        revoked_at_ms: 0,
    };
    let stored = s
        .save(PortalEntity::Request, id, "approved", |state| {
            let mut r = state.request(id).cloned().ok_or_else(|| no_request(id))?;
            if r.status != Status::Pending {
                return Err(ApiError::conflict(format!(
                    "provisioning request {id:?} was decided by someone else meanwhile"
                )));
            }
            r.status = Status::Approved;
            r.automatic = automatic;
            r.decided_at_ms = now;
            r.credential = Some(credential.clone());
            Ok(r)
        })
        .await;
    match stored {
        Ok(r) => {
            tracing::info!(request = %id, app = %r.app_id, automatic, key_hash = %credential.key_hash, "provisioning request approved");
            Ok(Provisioned {
                request: request_view(&r),
                key: Some(issued.key),
            })
        }
        Err(e) => {
            // Nothing refers to the key: take it back.
            if let Err(undo) = connection.delete_key(&issued.key_ref).await {
                tracing::error!(request = %id, error = %undo,
                    "a key issued for a request that was not approved could not be deleted; delete it in the provider");
            }
            Err(e)
        }
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
            let mut r = state.request(&id).cloned().ok_or_else(|| no_request(&id))?;
            if r.status != Status::Pending {
                return Err(ApiError::conflict(format!(
                    "provisioning request {id:?} was decided already"
                )));
            }
            r.status = Status::Rejected;
            r.reason.clone_from(&rejection.reason);
            r.decided_at_ms = meridian_kit::time::now_ms();
            Ok(r)
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

/// Revokes a credential: its key is deleted in the provider, then the
/// credential is marked revoked.
async fn revoke(s: &ApiState, credential_id: &str) -> Result<Request, ApiError> {
    let not_found = || ApiError::not_found(format!("no credential {credential_id:?}"));
    let owner = |state: &PortalState| {
        state
            .requests()
            .find(|r| r.credential.as_ref().is_some_and(|c| c.id == credential_id))
            .cloned()
    };
    let request = s.find(owner).await.ok_or_else(not_found)?;
    let credential = request.credential.clone().ok_or_else(not_found)?;
    if credential.revoked_at_ms != 0 {
        return Err(ApiError::conflict(format!(
            "credential {credential_id:?} was revoked already"
        )));
    }
    let (_, connection) = s.connect(&request.provider_id).await?;
    connection
        .delete_key(&credential.provider_key_ref)
        .await
        .map_err(|e| provider_failed("delete the credential's key", &e))?;
    let now = meridian_kit::time::now_ms();
    let r = s
        .save(PortalEntity::Request, &request.id, "revoked", |state| {
            let mut r = owner(state).ok_or_else(not_found)?;
            if let Some(c) = r.credential.as_mut().filter(|c| c.revoked_at_ms == 0) {
                c.revoked_at_ms = now;
            }
            Ok(r)
        })
        .await?;
    tracing::info!(credential = %credential_id, key_hash = %credential.key_hash, "credential revoked");
    Ok(r)
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
