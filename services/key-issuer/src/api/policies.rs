//! `/tyk/policies`: policies, which keys apply.

use axum::extract::State;
use meridian_kit::tyk::{StatusMessage, TykError, TykJson, TykPath};
use meridian_schemas::keys::KeysEvent;
use meridian_schemas::streams::KeysEntity;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiState, ModifyKey, now, random_hex, to_json};
use crate::adapters::fold::read;
use crate::domain::{self, Policy, check_id};
use meridian_kit::writer::WriteError;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_policies, create_policy))
        .routes(routes!(
            get_policy,
            create_policy_at,
            update_policy,
            delete_policy
        ))
}

const MISSING: &str = "Policy not found";

/// Every policy.
#[utoipa::path(get, path = "/tyk/policies", tag = "policies", security(("tyk_secret" = [])),
    responses((status = 200, body = Vec<Object>, description = "Policies")))]
async fn list_policies(State(s): State<ApiState>) -> axum::Json<Vec<Policy>> {
    s.writer.catch_up().await;
    let state = read(s.writer.state());
    axum::Json(state.policies().map(|p| p.value.as_ref().clone()).collect())
}

/// Stores a policy (creating or replacing it, as Tyk does on `POST` and
/// `PUT`): `created` when `id` is new.
async fn save(s: &ApiState, id: &str, policy: Policy) -> Result<bool, TykError> {
    let change_id = Uuid::new_v4();
    let (now_s, _) = now();
    let (created, _) = s
        .writer
        .write(KeysEntity::Policy, id, |state| {
            let old = state.policy(id);
            let created = old.is_none();
            let mut policy = policy.clone();
            policy.id = id.to_owned();
            // Stamped when it changes: saved again as it is, it keeps its
            // time, and the writer appends nothing.
            policy.last_updated = match old {
                Some(old)
                    if Policy {
                        last_updated: old.value.last_updated.clone(),
                        ..policy.clone()
                    } == *old.value =>
                {
                    old.value.last_updated.clone()
                }
                _ => now_s.to_string(),
            };
            Ok((
                KeysEvent::PolicySaved {
                    policy_id: id.to_owned(),
                    policy: to_json(&policy),
                    created,
                    change_id,
                    at_ms: now_s * 1000,
                },
                created,
            ))
        })
        .await
        .map_err(WriteError::<TykError>::answer)?;
    Ok(created)
}

/// The id a `POST` stores a policy under: its own `id`, else the path's,
/// else a generated one.
fn post_id(policy: &Policy, path_id: Option<&str>) -> Result<String, TykError> {
    match (policy.id.as_str(), path_id) {
        ("", Some(id)) | (id, _) if !id.is_empty() => {
            check_id("id", id)?;
            Ok(id.to_owned())
        }
        _ => random_hex(12),
    }
}

async fn post(
    s: ApiState,
    mut policy: Policy,
    path_id: Option<&str>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    domain::check_policy(&mut policy)?;
    let id = post_id(&policy, path_id)?;
    let created = save(&s, &id, policy).await?;
    tracing::info!(policy = %id, created, "policy saved");
    Ok(axum::Json(ModifyKey::new(id, "added")))
}

/// Creates a policy, or replaces the one with its `id` (as Tyk); without
/// an `id`, one is generated.
#[utoipa::path(post, path = "/tyk/policies", tag = "policies", security(("tyk_secret" = [])),
    request_body(content = Object, description = "A Policy"),
    responses((status = 200, body = ModifyKey)))]
async fn create_policy(
    State(s): State<ApiState>,
    TykJson(policy): TykJson<Policy>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    post(s, policy, None).await
}

/// As `POST /tyk/policies`; the path names the policy when the body does
/// not (Tyk's route; the body's `id` wins).
#[utoipa::path(post, path = "/tyk/policies/{polID}", tag = "policies", security(("tyk_secret" = [])),
    params(("polID" = String, Path)),
    request_body(content = Object, description = "A Policy"),
    responses((status = 200, body = ModifyKey)))]
async fn create_policy_at(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
    TykJson(policy): TykJson<Policy>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    check_id("polID", &id)?;
    post(s, policy, Some(&id)).await
}

/// A policy.
#[utoipa::path(get, path = "/tyk/policies/{polID}", tag = "policies", security(("tyk_secret" = [])),
    params(("polID" = String, Path)),
    responses((status = 200, body = Object, description = "A Policy")))]
async fn get_policy(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
) -> Result<axum::Json<Policy>, TykError> {
    check_id("polID", &id)?;
    s.find(|state| state.policy(&id).map(|p| p.value.as_ref().clone()))
        .await
        .map(axum::Json)
        .ok_or_else(|| TykError::not_found(MISSING))
}

/// Creates or replaces a policy; a body `id` must match the path's. The
/// effective sessions of the keys that apply it change with it.
#[utoipa::path(put, path = "/tyk/policies/{polID}", tag = "policies", security(("tyk_secret" = [])),
    params(("polID" = String, Path)),
    request_body(content = Object, description = "A Policy"),
    responses((status = 200, body = ModifyKey)))]
async fn update_policy(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
    TykJson(mut policy): TykJson<Policy>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    check_id("polID", &id)?;
    if !policy.id.is_empty() && policy.id != id {
        return Err(TykError::bad_request(
            "Request ID does not match that in policy! For Update operations these must match",
        ));
    }
    domain::check_policy(&mut policy)?;
    let created = save(&s, &id, policy).await?;
    tracing::info!(policy = %id, created, "policy saved");
    Ok(axum::Json(ModifyKey::new(id, "modified")))
}

/// Deletes a policy. Keys that apply it lose what it gave them (a key whose
/// only policy it was is refused by the proxy until it gets another).
#[utoipa::path(delete, path = "/tyk/policies/{polID}", tag = "policies", security(("tyk_secret" = [])),
    params(("polID" = String, Path)),
    responses((status = 200, body = ModifyKey), (status = 404, body = StatusMessage)))]
async fn delete_policy(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    check_id("polID", &id)?;
    if read(s.writer.state()).policy(&id).is_none() {
        s.writer.catch_up().await;
    }
    let change_id = Uuid::new_v4();
    let (now_s, _) = now();
    s.writer
        .write(KeysEntity::Policy, &id, |state| {
            let old = state
                .policy(&id)
                .ok_or_else(|| TykError::not_found(MISSING))?;
            Ok((
                KeysEvent::PolicyDeleted {
                    policy_id: id.clone(),
                    org_id: old.value.org_id.clone(),
                    change_id,
                    at_ms: now_s * 1000,
                },
                (),
            ))
        })
        .await
        .map_err(WriteError::<TykError>::answer)?;
    tracing::info!(policy = %id, "policy deleted");
    Ok(axum::Json(ModifyKey::new(id, "deleted")))
}
