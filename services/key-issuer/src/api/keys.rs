//! `/tyk/keys`: API keys (sessions).

use axum::extract::State;
use meridian_kit::tyk::{StatusMessage, TykError, TykJson, TykPath, TykQuery};
use meridian_schemas::keys::KeysEvent;
use meridian_schemas::streams::KeysEntity;
use serde::Deserialize;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{
    AllKeys, ApiState, Filter, ModifyKey, invalid, now, random_hex, to_json, write_failed,
};
use crate::adapters::fold::read;
use crate::domain::{self, KeysState, Quota, Session, check_id, hash_secret, is_hash};

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(create_key_generated))
        .routes(routes!(preview_key))
        .routes(routes!(set_policies))
        .routes(routes!(get_key, create_custom_key, update_key, delete_key))
}

/// Query parameters of a key's routes.
#[derive(Debug, Default, Deserialize)]
pub struct KeyQuery {
    /// `true`: the path names the key by its hash.
    #[serde(default)]
    hashed: Option<String>,
    /// `1`: keep the quota counters on update.
    #[serde(default)]
    suppress_reset: Option<String>,
    /// `true`: answer the effective session (the key merged with its
    /// policies) instead of the key as stored (a Meridian extension).
    #[serde(default)]
    effective: Option<String>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | "yes"))
}

/// `Session` as a JSON body; the schema documents it loosely (any object):
/// Tyk's `SessionState` is the contract.
type SessionBody = TykJson<Session>;

impl ApiState {
    /// The hash a path names: the key itself, or its hash with `hashed=true`.
    fn key_hash(&self, key_id: &str, hashed: bool) -> Result<String, TykError> {
        if hashed {
            if !is_hash(key_id) {
                return Err(TykError::bad_request(
                    "Request malformed: keyID: with hashed=true it must be a key hash (64 lower-case hex characters)",
                ));
            }
            return Ok(key_id.to_owned());
        }
        check_id("keyID", key_id).map_err(invalid)?;
        Ok(hash_secret(key_id))
    }

    /// The stored key, catching up with the log before "not found".
    async fn find_key(&self, hash: &str, missing: &str) -> Result<Session, TykError> {
        self.find(|state| state.key(hash).map(|k| k.value.as_ref().clone()))
            .await
            .ok_or_else(|| TykError::not_found(missing))
    }

    fn answer(&self, key: String, action: &str, hash: &str) -> ModifyKey {
        let mut answer = ModifyKey::new(key, action);
        if self.hash_keys {
            answer.key_hash = Some(hash.to_owned());
        }
        answer
    }
}

/// Checks a session for a write: its fields, and that its policies exist.
fn check(session: &mut Session, state: &KeysState) -> Result<(), TykError> {
    domain::check_session(session).map_err(invalid)?;
    for id in session.policy_ids() {
        if state.policy(&id).is_none() {
            return Err(TykError::bad_request(format!(
                "Request malformed: apply_policies: policy {id:?} not found"
            )));
        }
    }
    Ok(())
}

/// Stores a new key under `hash`.
async fn create(s: &ApiState, hash: &str, session: Session) -> Result<(), TykError> {
    let change_id = Uuid::new_v4();
    let (now_s, date) = now();
    s.writer
        .write(KeysEntity::Key, hash, |state| {
            if state.key(hash).is_some() {
                return Err(TykError::bad_request("Key already exists"));
            }
            let mut session = session.clone();
            check(&mut session, state)?;
            domain::check_has_access(&session).map_err(|e| TykError::bad_request(e.message))?;
            let stored = domain::stamp(session, None, Quota::Reset, now_s, &date);
            let event = KeysEvent::KeySaved {
                key_hash: hash.to_owned(),
                session: to_json(&stored),
                created: true,
                change_id,
                at_ms: now_s * 1000,
            };
            Ok((event, ()))
        })
        .await
        .map_err(write_failed)?;
    Ok(())
}

/// Replaces a stored key with what `change` makes of it (decided on the
/// view at each attempt, so a concurrent change is not lost).
async fn replace(
    s: &ApiState,
    hash: &str,
    quota: Quota,
    change: impl Fn(&Session) -> Session,
) -> Result<(), TykError> {
    let change_id = Uuid::new_v4();
    let (now_s, date) = now();
    s.writer
        .write(KeysEntity::Key, hash, |state| {
            let old = state
                .key(hash)
                .ok_or_else(|| TykError::not_found("Key not found"))?;
            let mut session = change(&old.value);
            check(&mut session, state)?;
            let stored = domain::stamp(session, Some(&old.value), quota, now_s, &date);
            Ok((
                KeysEvent::KeySaved {
                    key_hash: hash.to_owned(),
                    session: to_json(&stored),
                    created: false,
                    change_id,
                    at_ms: now_s * 1000,
                },
                (),
            ))
        })
        .await
        .map_err(write_failed)?;
    Ok(())
}

async fn generated(s: ApiState, session: Session) -> Result<axum::Json<ModifyKey>, TykError> {
    // Tyk's form: the organisation id followed by 32 random hex characters.
    let key = format!("{}{}", session.org_id, random_hex(16)?);
    let hash = hash_secret(&key);
    create(&s, &hash, session).await?;
    tracing::info!("key created");
    Ok(axum::Json(s.answer(key, "added", &hash)))
}

/// Lists keys: their hashes, when hashed listing is enabled.
#[utoipa::path(get, path = "/tyk/keys", tag = "keys", security(("tyk_secret" = [])),
    params(("filter" = Option<String>, Query, description = "Only hashes starting with this")),
    responses((status = 200, body = AllKeys), (status = 404, body = StatusMessage,
        description = "Keys are hashed and ENABLE_HASHED_KEYS_LISTING is off")))]
async fn list_keys(
    State(s): State<ApiState>,
    TykQuery(q): TykQuery<Filter>,
) -> Result<axum::Json<AllKeys>, TykError> {
    if s.hash_keys && !s.hashed_listing {
        return Err(TykError::not_found(
            "Hashed key listing is disabled in config (enable_hashed_keys_listing)",
        ));
    }
    s.writer.catch_up().await;
    let keys = read(s.writer.state())
        .key_hashes()
        .into_iter()
        .filter(|h| h.starts_with(&q.filter))
        .map(str::to_owned)
        .collect();
    Ok(axum::Json(AllKeys { keys }))
}

/// Creates a key with a generated id (the organisation id and 32 random
/// hex characters); the answer is the only place the key appears.
#[utoipa::path(post, path = "/tyk/keys", tag = "keys", security(("tyk_secret" = [])),
    request_body(content = Object, description = "A SessionState"),
    responses((status = 200, body = ModifyKey)))]
async fn create_key(
    State(s): State<ApiState>,
    TykJson(session): SessionBody,
) -> Result<axum::Json<ModifyKey>, TykError> {
    generated(s, session).await
}

/// The same as `POST /tyk/keys`.
#[utoipa::path(post, path = "/tyk/keys/create", tag = "keys", security(("tyk_secret" = [])),
    request_body(content = Object, description = "A SessionState"),
    responses((status = 200, body = ModifyKey)))]
async fn create_key_generated(
    State(s): State<ApiState>,
    TykJson(session): SessionBody,
) -> Result<axum::Json<ModifyKey>, TykError> {
    generated(s, session).await
}

/// Checks a session and answers it merged with its policies, storing nothing.
#[utoipa::path(post, path = "/tyk/keys/preview", tag = "keys", security(("tyk_secret" = [])),
    request_body(content = Object, description = "A SessionState"),
    responses((status = 200, body = Object, description = "The effective session")))]
async fn preview_key(
    State(s): State<ApiState>,
    TykJson(mut session): SessionBody,
) -> Result<axum::Json<Session>, TykError> {
    s.writer.catch_up().await;
    let state = read(s.writer.state());
    check(&mut session, &state)?;
    // As it would be stored now.
    let (now_s, date) = now();
    let session = domain::stamp(session, None, Quota::Reset, now_s, &date);
    let merged = state
        .merge(&session)
        .map_err(|e| TykError::bad_request(format!("Request malformed: {e}")))?;
    Ok(axum::Json(merged.as_ref().clone()))
}

/// `POST /tyk/keys/policy/{keyID}` body (Tyk's `PolicyUpdateObj`).
#[derive(Debug, Deserialize)]
struct PolicyUpdate {
    #[serde(default, deserialize_with = "nullable")]
    apply_policies: Vec<String>,
    #[serde(default)]
    policy: String,
}

fn nullable<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

/// Sets the policies a key applies. `keyID` is the key's hash (or the key).
#[utoipa::path(post, path = "/tyk/keys/policy/{keyID}", tag = "keys", security(("tyk_secret" = [])),
    params(("keyID" = String, Path)),
    request_body(content = Object, description = "{\"apply_policies\": [...], \"policy\": \"\"}"),
    responses((status = 200, body = ModifyKey)))]
async fn set_policies(
    State(s): State<ApiState>,
    TykPath(key_id): TykPath<String>,
    TykJson(update): TykJson<PolicyUpdate>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    check_id("keyID", &key_id).map_err(invalid)?;
    let mut hash = if is_hash(&key_id) {
        key_id.clone()
    } else {
        hash_secret(&key_id)
    };
    if s.find_key(&hash, "Key not found").await.is_err() {
        // A 64-hex custom key: try it as a key too.
        hash = hash_secret(&key_id);
        s.find_key(&hash, "Key not found").await?;
    }
    let policies = if update.apply_policies.is_empty() && !update.policy.is_empty() {
        vec![update.policy]
    } else {
        update.apply_policies
    };
    replace(&s, &hash, Quota::Keep, |old| {
        let mut session = old.clone();
        session.apply_policies.clone_from(&policies);
        session
    })
    .await?;
    Ok(axum::Json(s.answer(key_id, "updated", &hash)))
}

/// A key as stored, or (`effective=true`) merged with its policies.
#[utoipa::path(get, path = "/tyk/keys/{keyID}", tag = "keys", security(("tyk_secret" = [])),
    params(("keyID" = String, Path), ("hashed" = Option<bool>, Query), ("effective" = Option<bool>, Query,
        description = "Meridian extension: the session the proxy enforces")),
    responses((status = 200, body = Object, description = "A SessionState"),
        (status = 409, body = StatusMessage, description = "effective=true, and the key's policies cannot be applied")))]
async fn get_key(
    State(s): State<ApiState>,
    TykPath(key_id): TykPath<String>,
    TykQuery(q): TykQuery<KeyQuery>,
) -> Result<axum::Json<Session>, TykError> {
    let hash = s.key_hash(&key_id, flag(&q.hashed))?;
    let stored = s.find_key(&hash, "Key not found").await?;
    if !flag(&q.effective) {
        return Ok(axum::Json(stored));
    }
    let state = read(s.writer.state());
    match state.effective(&hash) {
        Some(Ok(merged)) => Ok(axum::Json(merged.as_ref().clone())),
        Some(Err(e)) => Err(TykError::conflict(format!(
            "the key's policies cannot be applied: {e}"
        ))),
        None => Err(TykError::not_found("Key not found")),
    }
}

/// Creates a key with the id given (Tyk's custom keys; at least
/// `MIN_KEY_LENGTH` characters).
#[utoipa::path(post, path = "/tyk/keys/{keyID}", tag = "keys", security(("tyk_secret" = [])),
    params(("keyID" = String, Path), ("hashed" = Option<bool>, Query), ("suppress_reset" = Option<String>, Query)),
    request_body(content = Object, description = "A SessionState"),
    responses((status = 200, body = ModifyKey)))]
async fn create_custom_key(
    State(s): State<ApiState>,
    TykPath(key_id): TykPath<String>,
    TykQuery(q): TykQuery<KeyQuery>,
    TykJson(session): SessionBody,
) -> Result<axum::Json<ModifyKey>, TykError> {
    if flag(&q.hashed) {
        return Err(TykError::bad_request(
            "Request malformed: hashed: a key is created from the key itself, not its hash",
        ));
    }
    check_id("keyID", &key_id).map_err(invalid)?;
    if key_id.chars().count() < s.min_key_length {
        return Err(TykError::bad_request(format!(
            "Request malformed: keyID: must be at least {} characters (MIN_KEY_LENGTH)",
            s.min_key_length
        )));
    }
    let hash = hash_secret(&key_id);
    create(&s, &hash, session).await?;
    tracing::info!("custom key created");
    Ok(axum::Json(s.answer(key_id, "added", &hash)))
}

/// Replaces a key's session. Its quota counters start a new period unless
/// `suppress_reset=1`.
#[utoipa::path(put, path = "/tyk/keys/{keyID}", tag = "keys", security(("tyk_secret" = [])),
    params(("keyID" = String, Path), ("hashed" = Option<bool>, Query), ("suppress_reset" = Option<String>, Query)),
    request_body(content = Object, description = "A SessionState"),
    responses((status = 200, body = ModifyKey)))]
async fn update_key(
    State(s): State<ApiState>,
    TykPath(key_id): TykPath<String>,
    TykQuery(q): TykQuery<KeyQuery>,
    TykJson(session): SessionBody,
) -> Result<axum::Json<ModifyKey>, TykError> {
    let hash = s.key_hash(&key_id, flag(&q.hashed))?;
    s.find_key(&hash, "Key not found").await?;
    let quota = if flag(&q.suppress_reset) {
        Quota::Keep
    } else {
        Quota::Reset
    };
    replace(&s, &hash, quota, |_| session.clone()).await?;
    tracing::info!("key updated");
    Ok(axum::Json(s.answer(key_id, "modified", &hash)))
}

/// Deletes a key.
#[utoipa::path(delete, path = "/tyk/keys/{keyID}", tag = "keys", security(("tyk_secret" = [])),
    params(("keyID" = String, Path), ("hashed" = Option<bool>, Query)),
    responses((status = 200, body = ModifyKey)))]
async fn delete_key(
    State(s): State<ApiState>,
    TykPath(key_id): TykPath<String>,
    TykQuery(q): TykQuery<KeyQuery>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    const MISSING: &str = "There is no such key found";
    let hash = s.key_hash(&key_id, flag(&q.hashed))?;
    s.find_key(&hash, MISSING).await?;
    let change_id = Uuid::new_v4();
    let (now_s, _) = now();
    s.writer
        .write(KeysEntity::Key, &hash, |state| {
            let old = state
                .key(&hash)
                .ok_or_else(|| TykError::not_found(MISSING))?;
            Ok((
                KeysEvent::KeyDeleted {
                    key_hash: hash.clone(),
                    org_id: old.value.org_id.clone(),
                    alias: old.value.alias.clone(),
                    change_id,
                    at_ms: now_s * 1000,
                },
                (),
            ))
        })
        .await
        .map_err(write_failed)?;
    tracing::info!("key deleted");
    let mut answer = s.answer(key_id, "deleted", &hash);
    answer.key_hash = None;
    Ok(axum::Json(answer))
}
