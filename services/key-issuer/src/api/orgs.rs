//! `/tyk/org/keys`: organisation sessions: a rate limit and quota shared by
//! every key of an organisation, and `is_inactive`, which blocks them all.

use axum::extract::State;
use meridian_kit::tyk::{StatusMessage, TykError, TykJson, TykPath, TykQuery};
use meridian_schemas::keys::KeysEvent;
use meridian_schemas::streams::KeysEntity;
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{AllKeys, ApiState, Filter, ModifyKey, now, to_json};
use crate::adapters::fold::read;
use crate::domain::limits::{self, Kind};
use crate::domain::{self, Quota, Session, check_id};
use meridian_kit::writer::WriteError;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_orgs))
        .routes(routes!(get_org, create_org, update_org, delete_org))
}

const MISSING: &str = "Org not found";

/// `?reset_quota=1`: start a new quota period.
#[derive(Debug, Default, Deserialize)]
struct ResetQuota {
    #[serde(default)]
    reset_quota: Option<String>,
}

impl ResetQuota {
    fn quota(&self) -> Quota {
        if matches!(self.reset_quota.as_deref(), Some("1" | "true")) {
            Quota::Reset
        } else {
            Quota::Keep
        }
    }
}

/// Every organisation with a session, by id.
#[utoipa::path(get, path = "/tyk/org/keys", tag = "organisations", security(("tyk_secret" = [])),
    params(("filter" = Option<String>, Query, description = "Only ids starting with this")),
    responses((status = 200, body = AllKeys)))]
async fn list_orgs(
    State(s): State<ApiState>,
    TykQuery(q): TykQuery<Filter>,
) -> axum::Json<AllKeys> {
    s.writer.catch_up().await;
    let keys = read(s.writer.state())
        .org_ids()
        .filter(|id| id.starts_with(&q.filter))
        .map(str::to_owned)
        .collect();
    axum::Json(AllKeys { keys })
}

async fn find(s: &ApiState, id: &str) -> Option<Session> {
    s.find(|state| state.org(id).map(|o| o.value.as_ref().clone()))
        .await
}

/// An organisation's session.
#[utoipa::path(get, path = "/tyk/org/keys/{keyID}", tag = "organisations", security(("tyk_secret" = [])),
    params(("keyID" = String, Path, description = "The organisation id")),
    responses((status = 200, body = Object, description = "A SessionState")))]
async fn get_org(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
) -> Result<axum::Json<Session>, TykError> {
    check_id("keyID", &id)?;
    let mut org = find(&s, &id)
        .await
        .ok_or_else(|| TykError::not_found(MISSING))?;
    // The quota as the gateway counts it (within a lease of the truth).
    if limits::quota_scopes(&org).iter().any(String::is_empty) {
        let counters = s
            .quota_counters(Kind::OrgQuota, &id, &[String::new()])
            .await;
        let (now_s, _) = now();
        let reset = org.last_updated.clone();
        limits::show_quotas(&mut org, &reset, &counters, now_s);
    }
    Ok(axum::Json(org))
}

async fn save(s: &ApiState, id: &str, session: Session, quota: Quota) -> Result<(), TykError> {
    check_id("keyID", id)?;
    let mut session = session;
    domain::check_session(&mut session)?;
    if session.org_id.is_empty() {
        session.org_id = id.to_owned();
    } else if session.org_id != id {
        return Err(TykError::bad_request(format!(
            "Request malformed: org_id: is {:?}, the path names {id:?}",
            session.org_id
        )));
    }
    let change_id = Uuid::new_v4();
    let (now_s, date) = now();
    s.writer
        .write(KeysEntity::Org, id, |state| {
            let old = state.org(id).map(|o| o.value.as_ref());
            let stored = domain::stamp(session.clone(), old, quota, now_s, &date);
            Ok((
                KeysEvent::OrgSaved {
                    org_id: id.to_owned(),
                    session: to_json(&stored),
                    created: old.is_none(),
                    change_id,
                    at_ms: now_s * 1000,
                },
                (),
            ))
        })
        .await
        .map_err(WriteError::<TykError>::answer)?;
    tracing::info!(org = %id, "organisation session saved");
    Ok(())
}

/// Creates (or replaces) an organisation's session.
#[utoipa::path(post, path = "/tyk/org/keys/{keyID}", tag = "organisations", security(("tyk_secret" = [])),
    params(("keyID" = String, Path, description = "The organisation id"), ("reset_quota" = Option<String>, Query)),
    request_body(content = Object, description = "A SessionState"),
    responses((status = 200, body = ModifyKey)))]
async fn create_org(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
    TykQuery(q): TykQuery<ResetQuota>,
    TykJson(session): TykJson<Session>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    save(&s, &id, session, q.quota()).await?;
    Ok(axum::Json(ModifyKey::new(id, "added")))
}

/// Replaces an organisation's session, or creates it when there is none
/// (as Tyk does).
#[utoipa::path(put, path = "/tyk/org/keys/{keyID}", tag = "organisations", security(("tyk_secret" = [])),
    params(("keyID" = String, Path, description = "The organisation id"), ("reset_quota" = Option<String>, Query)),
    request_body(content = Object, description = "A SessionState"),
    responses((status = 200, body = ModifyKey)))]
async fn update_org(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
    TykQuery(q): TykQuery<ResetQuota>,
    TykJson(session): TykJson<Session>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    save(&s, &id, session, q.quota()).await?;
    Ok(axum::Json(ModifyKey::new(id, "modified")))
}

/// Deletes an organisation's session (its keys are no longer limited or
/// blocked as a group).
#[utoipa::path(delete, path = "/tyk/org/keys/{keyID}", tag = "organisations", security(("tyk_secret" = [])),
    params(("keyID" = String, Path, description = "The organisation id")),
    responses((status = 200, body = ModifyKey), (status = 404, body = StatusMessage)))]
async fn delete_org(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    check_id("keyID", &id)?;
    if find(&s, &id).await.is_none() {
        return Err(TykError::not_found(MISSING));
    }
    let change_id = Uuid::new_v4();
    let (now_s, _) = now();
    s.writer
        .write(KeysEntity::Org, &id, |state| {
            state.org(&id).ok_or_else(|| TykError::not_found(MISSING))?;
            Ok((
                KeysEvent::OrgDeleted {
                    org_id: id.clone(),
                    change_id,
                    at_ms: now_s * 1000,
                },
                (),
            ))
        })
        .await
        .map_err(WriteError::<TykError>::answer)?;
    tracing::info!(org = %id, "organisation session deleted");
    Ok(axum::Json(ModifyKey::new(id, "deleted")))
}
