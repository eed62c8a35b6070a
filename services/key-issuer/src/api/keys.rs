//! `/tyk/keys`: API keys (sessions).

use axum::extract::State;
use meridian_kit::tyk::{StatusMessage, TykError, TykJson, TykPath, TykQuery};
use meridian_schemas::keys::KeysEvent;
use meridian_schemas::streams::KeysEntity;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::{ApiState, ModifyKey, now, random_hex, to_json};
use crate::adapters::fold::read;
use crate::domain::limits::{self, Kind};
use crate::domain::{self, KeysState, MergeError, Quota, Session, check_id, hash_secret, is_hash};
use meridian_kit::writer::WriteError;

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
    /// Any value: the path names the key by its hash (as Tyk reads it).
    #[serde(default)]
    hashed: Option<String>,
    /// `1` (only): keep the quota counters on update.
    #[serde(default)]
    suppress_reset: Option<String>,
    /// `true`: answer the key as stored, without its policies applied (a
    /// Meridian extension; Tyk answers the merged key).
    #[serde(default)]
    stored: Option<String>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "1" | "yes"))
}

impl KeyQuery {
    /// `hashed`, as Tyk reads it: any value but an empty one.
    fn hashed(&self) -> bool {
        self.hashed.as_deref().is_some_and(|v| !v.is_empty())
    }

    /// `suppress_reset`, as Tyk reads it: exactly `1`.
    fn suppress_reset(&self) -> bool {
        self.suppress_reset.as_deref() == Some("1")
    }
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
        check_id("keyID", key_id)?;
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

/// Checks a session for a write: its fields, and that its policies can be
/// applied together. A policy that does not exist is skipped, as Tyk's
/// merge skips it (the key is stored; the gateway refuses it while its
/// only policy is missing); policies that can never be applied together
/// (per-API beside partitioned ones) are refused, as Tyk refuses them.
fn check(session: &mut Session, state: &KeysState) -> Result<(), TykError> {
    domain::check_session(session)?;
    match domain::effective(session, |id| state.policy(id).map(|p| p.value.as_ref())) {
        Err(e @ (MergeError::MixedPerApiAndPartitions | MergeError::PerApiWithPartitions(_))) => {
            Err(TykError::bad_request(format!("Failed to create key - {e}")))
        }
        _ => Ok(()),
    }
}

/// Stores `session` under `hash`: a new key, or (`upsert`) a replacement
/// of the key stored there, as Tyk's `POST /tyk/keys/{keyID}` does. Says
/// whether it created the key.
async fn save(
    s: &ApiState,
    hash: &str,
    session: Session,
    upsert: bool,
    quota: Quota,
) -> Result<bool, TykError> {
    let change_id = Uuid::new_v4();
    let (now_s, date) = now();
    let (created, _) = s
        .writer
        .write(KeysEntity::Key, hash, |state| {
            let old = state.key(hash);
            if old.is_some() && !upsert {
                return Err(TykError::bad_request("Key already exists"));
            }
            let mut session = session.clone();
            check(&mut session, state)?;
            domain::check_has_access(&session).map_err(|e| TykError::bad_request(e.message))?;
            let old = old.map(|o| o.value.as_ref());
            let stored = domain::stamp(session, old, quota, now_s, &date);
            let created = old.is_none();
            let event = KeysEvent::KeySaved {
                key_hash: hash.to_owned(),
                session: to_json(&stored),
                created,
                change_id,
                at_ms: now_s * 1000,
            };
            Ok((event, created))
        })
        .await
        .map_err(WriteError::<TykError>::answer)?;
    Ok(created)
}

/// Replaces a stored key with what `change` makes of it, decided on the
/// view at each attempt, so a concurrent change is not lost (a missing key
/// is `Key is not found`, Tyk's `PUT` wording).
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
                .ok_or_else(|| TykError::not_found("Key is not found"))?;
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
        .map_err(WriteError::<TykError>::answer)?;
    Ok(())
}

async fn generated(s: ApiState, session: Session) -> Result<axum::Json<ModifyKey>, TykError> {
    // Tyk's form: the organisation id followed by 32 random hex characters.
    let key = format!("{}{}", session.org_id, random_hex(16)?);
    let hash = hash_secret(&key);
    save(&s, &hash, session, false, Quota::Reset).await?;
    tracing::info!("key created");
    Ok(axum::Json(s.answer(key, "added", &hash)))
}

/// `GET /tyk/keys`: `?filter=` a prefix of the hashes; `?sessions=true`
/// (a Meridian extension) each key's stored session and quota too.
#[derive(Debug, Default, Deserialize)]
struct KeyList {
    #[serde(default)]
    filter: String,
    #[serde(default)]
    sessions: Option<String>,
}

/// Tyk's `ApiAllKeys`, and with `?sessions=true` every key's session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyListing {
    /// The key hashes.
    pub keys: Vec<String>,
    /// With `?sessions=true`: each key as stored and its quota as the
    /// gateways count it, in the order of `keys`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Vec<KeySession>>,
}

/// One key of a `?sessions=true` listing.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeySession {
    /// Its hash.
    pub key_hash: String,
    /// The key as stored (what a read-modify-write sends back).
    #[schema(value_type = Object)]
    pub session: Session,
    /// Its quota with its policies applied, from the gateways' counters
    /// (as a plain `GET /tyk/keys/{key}` shows it).
    pub quota: ShownQuota,
}

/// A key's quota as shown: `quota_max`, what is left, when it renews.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShownQuota {
    /// -1: unlimited.
    pub quota_max: i64,
    /// Left in the current period.
    pub quota_remaining: i64,
    /// When the period ends (Unix seconds; 0: none running).
    pub quota_renews: i64,
    /// The period's length in seconds.
    pub quota_renewal_rate: i64,
}

/// Lists keys: their hashes, when hashed listing is enabled; with
/// `?sessions=true` each one's stored session and quota in the same answer
/// (the console's key list: one call, not one per key).
#[utoipa::path(get, path = "/tyk/keys", tag = "keys", security(("tyk_secret" = [])),
    params(("filter" = Option<String>, Query, description = "Only hashes starting with this"),
        ("sessions" = Option<bool>, Query, description = "Meridian extension: each key's stored session and quota too")),
    responses((status = 200, body = KeyListing), (status = 404, body = StatusMessage,
        description = "Keys are hashed and ENABLE_HASHED_KEYS_LISTING is off")))]
async fn list_keys(
    State(s): State<ApiState>,
    TykQuery(q): TykQuery<KeyList>,
) -> Result<axum::Json<KeyListing>, TykError> {
    if s.hash_keys && !s.hashed_listing {
        return Err(TykError::not_found(
            "Hashed key listing is disabled in config (enable_hashed_keys_listing)",
        ));
    }
    s.writer.catch_up().await;
    let listed: Vec<(String, Option<Session>)> = {
        let state = read(s.writer.state());
        state
            .key_hashes()
            .into_iter()
            .filter(|h| h.starts_with(&q.filter))
            .map(|h| {
                let stored = flag(&q.sessions)
                    .then(|| state.key(h).map(|k| k.value.as_ref().clone()))
                    .flatten();
                (h.to_owned(), stored)
            })
            .collect()
    };
    let sessions = if flag(&q.sessions) {
        let mut sessions = Vec::with_capacity(listed.len());
        for (hash, stored) in &listed {
            let Some(stored) = stored else { continue };
            let shown = shown_key(&s, hash, stored, false).await;
            sessions.push(KeySession {
                key_hash: hash.clone(),
                session: stored.clone(),
                quota: ShownQuota {
                    quota_max: shown.quota_max,
                    quota_remaining: shown.quota_remaining,
                    quota_renews: shown.quota_renews,
                    quota_renewal_rate: shown.quota_renewal_rate,
                },
            });
        }
        Some(sessions)
    } else {
        None
    };
    Ok(axum::Json(KeyListing {
        keys: listed.into_iter().map(|(h, _)| h).collect(),
        sessions,
    }))
}

/// The key `hash` as a `GET` shows it: merged with its policies (unless
/// `as_stored`, or the merge fails), its quota from the gateways' counters.
async fn shown_key(s: &ApiState, hash: &str, stored: &Session, as_stored: bool) -> Session {
    let mut shown = if as_stored {
        stored.clone()
    } else {
        match read(s.writer.state()).effective(hash) {
            Some(Ok(merged)) => merged.as_ref().clone(),
            _ => stored.clone(),
        }
    };
    // The quota as the gateway counts it (within a lease of the truth).
    let scopes = limits::quota_scopes(&shown);
    if !scopes.is_empty() {
        let counters = s.quota_counters(Kind::KeyQuota, hash, &scopes).await;
        let (now_s, _) = now();
        limits::show_quotas(&mut shown, &stored.last_updated, &counters, now_s);
    }
    shown
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
    check_id("keyID", &key_id)?;
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

/// A key merged with its policies, as Tyk answers it (its quota counters
/// included); `stored=true` (a Meridian extension) answers it as stored,
/// which is what a read-modify-write should send back. A key whose
/// policies cannot be applied is answered as stored, as Tyk does.
#[utoipa::path(get, path = "/tyk/keys/{keyID}", tag = "keys", security(("tyk_secret" = [])),
    params(("keyID" = String, Path), ("hashed" = Option<bool>, Query), ("stored" = Option<bool>, Query,
        description = "Meridian extension: the key as stored, without its policies applied")),
    responses((status = 200, body = Object, description = "A SessionState")))]
async fn get_key(
    State(s): State<ApiState>,
    TykPath(key_id): TykPath<String>,
    TykQuery(q): TykQuery<KeyQuery>,
) -> Result<axum::Json<Session>, TykError> {
    let hash = s.key_hash(&key_id, q.hashed())?;
    let stored = s.find_key(&hash, "Key not found").await?;
    Ok(axum::Json(
        shown_key(&s, &hash, &stored, flag(&q.stored)).await,
    ))
}

/// Creates a key with the id given (Tyk's custom keys; at least
/// `MIN_KEY_LENGTH` characters), or replaces the key stored under it, as
/// Tyk does (its quota starts a new period unless `suppress_reset=1`).
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
    if q.hashed() {
        return Err(TykError::bad_request(
            "Request malformed: hashed: a key is created from the key itself, not its hash",
        ));
    }
    check_id("keyID", &key_id)?;
    if key_id.chars().count() < s.min_key_length {
        return Err(TykError::bad_request(format!(
            "Request malformed: keyID: must be at least {} characters (MIN_KEY_LENGTH)",
            s.min_key_length
        )));
    }
    let hash = hash_secret(&key_id);
    let quota = if q.suppress_reset() {
        Quota::Keep
    } else {
        Quota::Reset
    };
    let created = save(&s, &hash, session, true, quota).await?;
    tracing::info!(created, "custom key saved");
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
    let hash = s.key_hash(&key_id, q.hashed())?;
    s.find_key(&hash, "Key is not found").await?;
    let quota = if q.suppress_reset() {
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
    let hash = s.key_hash(&key_id, q.hashed())?;
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
        .map_err(WriteError::<TykError>::answer)?;
    tracing::info!("key deleted");
    let mut answer = s.answer(key_id, "deleted", &hash);
    answer.key_hash = None;
    Ok(axum::Json(answer))
}
