//! The gateway's part of the Gateway API, as Tyk answers it: API
//! definitions (`/tyk/apis`), hot reload (`/tyk/reload`, `/tyk/reload/group`)
//! and the health check (`/hello`). Writes are decided on the whole table
//! and stored through the [`Writer`]; reads come from the fold, after a
//! catch-up with the log before any "not found".
//!
//! Where Meridian differs from Tyk, on purpose: a change is live on every
//! replica as soon as it is stored (a reload only waits for that, with
//! `block=true`); a definition without `active` is active; two active APIs
//! on one listen path are refused (400 naming both) instead of one
//! shadowing the other.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use meridian_kit::error::ErrorCode;
use meridian_kit::projection::Progress;
use meridian_kit::tyk::ModifyKey;
use meridian_kit::tyk::{StatusMessage, TykError, TykJson, TykPath, TykQuery};
use meridian_schemas::apis::ApisEvent;
use meridian_schemas::streams;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::adapters::fold::read;
use crate::adapters::replicas::Replicas;
use crate::adapters::writer::{WriteError, Writer};
use crate::domain::routes::compile;
use crate::domain::{ApiDefinition, ApisState};

mod oas;

/// Handler state.
#[derive(Clone)]
pub struct ApiState {
    /// Stores changes and holds the fold.
    pub writer: Writer,
    /// Live replicas and what they applied.
    pub replicas: Replicas,
    /// JetStream (the streams' last sequences).
    pub js: async_nats::jetstream::Context,
    /// NATS (its state, for `/hello`).
    pub client: async_nats::Client,
    /// This replica's progress through `APIS`.
    pub apis: Progress,
    /// This replica's progress through `KEYS`.
    pub keys: Progress,
    /// How long `?block=true` waits for every live replica.
    pub reload_timeout: Duration,
    /// How long NATS has been away, and after how long the key view counts
    /// as unconfirmed.
    pub staleness: KeyViewStaleness,
}

/// Whether this replica can still confirm its key view: not once NATS has
/// been away longer than `after` (it keeps serving the keys it knows, and
/// says so in `/hello` and `meridian_gateway_key_view_unconfirmed`).
#[derive(Clone)]
pub struct KeyViewStaleness {
    /// Where the NATS connection's state is recorded.
    pub metrics: meridian_kit::metrics::Metrics,
    /// How long an outage may last before the view counts as unconfirmed.
    pub after: Duration,
}

impl KeyViewStaleness {
    /// How long NATS has been away, when that is longer than allowed.
    pub fn unconfirmed_for(&self) -> Option<Duration> {
        self.metrics
            .nats_away_for()
            .filter(|away| *away > self.after)
    }
}

/// The routes behind the Gateway API secret.
pub fn router(state: ApiState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_apis, create_api))
        .routes(routes!(get_api, update_api, delete_api))
        .routes(routes!(reload))
        .routes(routes!(reload_group))
        .routes(routes!(invalidate_cache))
        .merge(oas::routes())
        .with_state(state)
}

/// `/hello`, open as in Tyk.
pub fn open_router(state: ApiState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(hello))
        .with_state(state)
}

const MISSING: &str = "API not found";

/// Checks a definition before it is stored.
fn check(def: &ApiDefinition) -> Result<(), TykError> {
    meridian_keys::check_id("api_id", &def.api_id)?;
    compile(def).map(|_| ()).map_err(TykError::from)
}

/// Refuses an active definition whose listen path another active API holds.
fn refuse_taken_path(state: &ApisState, def: &ApiDefinition) -> Result<(), TykError> {
    if !def.active {
        return Ok(());
    }
    match state.listen_path_taken(&def.proxy.listen_path, &def.api_id) {
        Some(other) => Err(TykError::bad_request(format!(
            "Request malformed: proxy.listen_path: {:?} is already the listen path of API {:?} ({:?}); \
             API {:?} ({:?}) cannot use it while both are active",
            def.proxy.listen_path, other.api_id, other.name, def.api_id, def.name
        ))),
        None => Ok(()),
    }
}

/// Stores a definition; `must_exist` for `PUT`, `must_be_new` for `POST`.
async fn save(s: &ApiState, def: ApiDefinition, must_be_new: bool) -> Result<(), TykError> {
    let change_id = Uuid::new_v4();
    let at_ms = meridian_kit::time::now_ms();
    let definition = serde_json::to_string(&def).expect("definitions serialize");
    s.writer
        .write(|state| {
            let exists = state.get(&def.api_id).is_some();
            if must_be_new && exists {
                return Err(TykError::bad_request(format!(
                    "API {:?} already exists; PUT /tyk/apis/{} replaces it",
                    def.api_id, def.api_id
                )));
            }
            if !must_be_new && !exists {
                return Err(TykError::not_found(MISSING));
            }
            if state.get(&def.api_id).is_some_and(|a| a.document.is_some()) {
                return Err(TykError::bad_request(format!(
                    "API {:?} is a Tyk OAS API: change it with PUT /tyk/apis/oas/{}",
                    def.api_id, def.api_id
                )));
            }
            refuse_taken_path(state, &def)?;
            Ok((
                ApisEvent::ApiSaved {
                    api_id: def.api_id.clone(),
                    definition: definition.clone(),
                    created: !exists,
                    change_id,
                    at_ms,
                },
                (),
            ))
        })
        .await
        .map_err(WriteError::<TykError>::answer)
}

/// Every API definition.
#[utoipa::path(get, path = "/tyk/apis", tag = "apis", security(("tyk_secret" = [])),
    responses((status = 200, body = Vec<Object>, description = "API definitions")))]
async fn list_apis(State(s): State<ApiState>) -> axum::Json<Vec<ApiDefinition>> {
    s.writer.catch_up().await;
    let state = read(s.writer.state());
    axum::Json(state.all().map(|a| a.definition.as_ref().clone()).collect())
}

/// Creates an API; without an `api_id`, one is generated. Live on every
/// replica once stored.
#[utoipa::path(post, path = "/tyk/apis", tag = "apis", security(("tyk_secret" = [])),
    request_body(content = Object, description = "An APIDefinition"),
    responses((status = 200, body = ModifyKey)))]
async fn create_api(
    State(s): State<ApiState>,
    TykJson(mut def): TykJson<ApiDefinition>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    if def.api_id.is_empty() {
        def.api_id = Uuid::new_v4().simple().to_string();
    }
    check(&def)?;
    let id = def.api_id.clone();
    save(&s, def, true).await?;
    tracing::info!(api = %id, "API created");
    Ok(axum::Json(ModifyKey::new(id, "added")))
}

/// An API definition, as stored.
#[utoipa::path(get, path = "/tyk/apis/{apiID}", tag = "apis", security(("tyk_secret" = [])),
    params(("apiID" = String, Path)),
    responses((status = 200, body = Object, description = "An APIDefinition")))]
async fn get_api(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
) -> Result<axum::Json<ApiDefinition>, TykError> {
    let find = || {
        read(s.writer.state())
            .get(&id)
            .map(|a| a.definition.as_ref().clone())
    };
    if let Some(def) = find() {
        return Ok(axum::Json(def));
    }
    s.writer.catch_up().await;
    find()
        .map(axum::Json)
        .ok_or_else(|| TykError::not_found(MISSING))
}

/// Replaces an API definition; a body `api_id` must match the path's.
#[utoipa::path(put, path = "/tyk/apis/{apiID}", tag = "apis", security(("tyk_secret" = [])),
    params(("apiID" = String, Path)),
    request_body(content = Object, description = "An APIDefinition"),
    responses((status = 200, body = ModifyKey)))]
async fn update_api(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
    TykJson(mut def): TykJson<ApiDefinition>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    if !def.api_id.is_empty() && def.api_id != id {
        return Err(TykError::bad_request(
            "Request APIID does not match that in Definition! For Update operations these must match.",
        ));
    }
    def.api_id = id.clone();
    check(&def)?;
    s.writer.catch_up().await;
    save(&s, def, false).await?;
    tracing::info!(api = %id, "API replaced");
    Ok(axum::Json(ModifyKey::new(id, "modified")))
}

/// Deletes an API definition: its listen path answers 404 on every
/// replica once stored.
#[utoipa::path(delete, path = "/tyk/apis/{apiID}", tag = "apis", security(("tyk_secret" = [])),
    params(("apiID" = String, Path)),
    responses((status = 200, body = ModifyKey)))]
async fn delete_api(
    State(s): State<ApiState>,
    TykPath(id): TykPath<String>,
) -> Result<axum::Json<ModifyKey>, TykError> {
    delete_stored(&s, &id).await?;
    tracing::info!(api = %id, "API deleted");
    Ok(axum::Json(ModifyKey::new(id, "deleted")))
}

/// Deletes an API of either format (404 when there is none).
async fn delete_stored(s: &ApiState, id: &str) -> Result<(), TykError> {
    s.writer.catch_up().await;
    let change_id = Uuid::new_v4();
    let at_ms = meridian_kit::time::now_ms();
    s.writer
        .write(|state| {
            if state.get(id).is_none() {
                return Err(TykError::not_found(MISSING));
            }
            Ok((
                ApisEvent::ApiDeleted {
                    api_id: id.to_owned(),
                    change_id,
                    at_ms,
                },
                (),
            ))
        })
        .await
        .map_err(WriteError::<TykError>::answer)
}

/// `?block=true`: answer once every live replica applied every change.
#[derive(Debug, Default, Deserialize)]
pub struct ReloadQuery {
    /// `true` or `1` to wait.
    #[serde(default)]
    pub block: String,
}

async fn last_sequence(js: &async_nats::jetstream::Context, stream: &str) -> Result<u64, TykError> {
    let stream = js
        .get_stream(stream)
        .await
        .map_err(|e| TykError::unavailable(format!("the event log is not available: {e}")))?;
    Ok(stream.cached_info().state.last_sequence)
}

async fn reload_all(s: &ApiState, q: &ReloadQuery) -> Result<axum::Json<StatusMessage>, TykError> {
    if matches!(q.block.as_str(), "true" | "1") {
        let apis = last_sequence(&s.js, streams::APIS).await?;
        let keys = last_sequence(&s.js, streams::KEYS).await?;
        let replicas = s
            .replicas
            .wait_applied(apis, keys, s.reload_timeout)
            .await
            .map_err(|e| TykError::new(ErrorCode::GatewayTimeout, e.to_string()))?;
        tracing::debug!(
            replicas,
            apis,
            keys,
            "every live replica applied the changes"
        );
    }
    Ok(axum::Json(StatusMessage::ok("")))
}

/// Meridian applies every change as it is stored; with `block=true` this
/// answers once every live gateway replica (each announces what it applied
/// about every 500 ms; one silent for 2 s is not live) has applied every
/// API and key change stored before the call. 504 names the replicas
/// still behind after `RELOAD_TIMEOUT` (10 s).
#[utoipa::path(get, path = "/tyk/reload", tag = "reload", security(("tyk_secret" = [])),
    params(("block" = Option<bool>, Query, description = "Wait until every live replica applied every change")),
    responses((status = 200, body = StatusMessage),
        (status = 504, body = StatusMessage, description = "Live replicas had not applied every change in time")))]
async fn reload(
    State(s): State<ApiState>,
    TykQuery(q): TykQuery<ReloadQuery>,
) -> Result<axum::Json<StatusMessage>, TykError> {
    reload_all(&s, &q).await
}

/// As `/tyk/reload`: every replica applies changes on its own (`block=true`
/// waits for all of them).
#[utoipa::path(get, path = "/tyk/reload/group", tag = "reload", security(("tyk_secret" = [])),
    params(("block" = Option<bool>, Query, description = "Wait until every live replica applied every change")),
    responses((status = 200, body = StatusMessage),
        (status = 504, body = StatusMessage, description = "Live replicas had not applied every change in time")))]
async fn reload_group(
    State(s): State<ApiState>,
    TykQuery(q): TykQuery<ReloadQuery>,
) -> Result<axum::Json<StatusMessage>, TykError> {
    reload_all(&s, &q).await
}

/// How long a purge waits for every live replica to confirm.
const PURGE_WITHIN: Duration = Duration::from_secs(2);

/// Drops the API's kept answers on every live gateway replica before it
/// answers (each confirms); an API with nothing kept, or unknown, is
/// answered the same, as in Tyk. 500 when a live replica did not confirm
/// within 2 s (it is named in the log).
#[utoipa::path(delete, path = "/tyk/cache/{apiID}", tag = "cache", security(("tyk_secret" = [])),
    params(("apiID" = String, Path, description = "The API")),
    responses((status = 200, body = StatusMessage),
        (status = 500, body = StatusMessage, description = "A live replica did not confirm")))]
async fn invalidate_cache(
    State(s): State<ApiState>,
    TykPath(api_id): TykPath<String>,
) -> Result<axum::Json<StatusMessage>, TykError> {
    let live = s.replicas.live().into_iter().map(|a| a.replica).collect();
    match crate::adapters::cache::purge_everywhere(&s.client, &api_id, live, PURGE_WITHIN).await {
        Ok(()) => Ok(axum::Json(StatusMessage::ok("cache invalidated"))),
        Err(silent) => {
            tracing::warn!(api = %api_id, replicas = ?silent, "live gateway replicas did not confirm a cache purge");
            Err(TykError::new(
                ErrorCode::Internal,
                "Cache invalidation failed.",
            ))
        }
    }
}

/// One component of the health check (Tyk's `HealthCheckItem`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthItem {
    /// `pass`, `warn` or `fail`.
    pub status: String,
    /// `datastore` (NATS) or `system` (a view).
    #[serde(rename = "componentType")]
    pub component_type: String,
    /// When it was checked (RFC 3339).
    pub time: String,
    /// What is wrong, or how far behind a view is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// Tyk's `HealthCheckResponse`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Hello {
    /// `pass`, `warn` or `fail`: the worst of the details.
    pub status: String,
    /// Meridian's version.
    pub version: String,
    /// What answers.
    pub description: String,
    /// `nats`, `apis` (the routing table's lag behind `APIS`), `keys` (the
    /// key view's lag behind `KEYS`) and `replicas` (the live gateway
    /// replicas this one hears, and what each applied).
    pub details: BTreeMap<String, HealthItem>,
}

async fn view_health(
    js: &async_nats::jetstream::Context,
    stream: &str,
    progress: &Progress,
    time: &str,
) -> HealthItem {
    let (status, output) = match (progress.halted(), last_sequence(js, stream).await) {
        (Some(why), _) => ("fail", format!("halted: {why}")),
        (None, Ok(last)) => {
            let lag = last.saturating_sub(progress.position());
            let status = if lag == 0 { "pass" } else { "warn" };
            (
                status,
                format!(
                    "lag {lag} events (applied {} of {last})",
                    progress.position()
                ),
            )
        }
        (None, Err(e)) => ("warn", format!("cannot tell the lag: {}", e.message)),
    };
    HealthItem {
        status: status.into(),
        component_type: "system".into(),
        time: time.to_owned(),
        output: Some(output),
    }
}

/// The gateway's health: NATS, and how far the routing table and the key
/// view are behind their streams. Needs no secret, as in Tyk.
#[utoipa::path(get, path = "/hello", tag = "health",
    responses((status = 200, body = Hello)))]
async fn hello(State(s): State<ApiState>) -> axum::Json<Hello> {
    let time = meridian_kit::time::rfc3339(meridian_kit::time::now_ms());
    let nats = match s.client.connection_state() {
        async_nats::connection::State::Connected => HealthItem {
            status: "pass".into(),
            component_type: "datastore".into(),
            time: time.clone(),
            output: None,
        },
        other => HealthItem {
            status: "fail".into(),
            component_type: "datastore".into(),
            time: time.clone(),
            output: Some(format!("NATS is {other}")),
        },
    };
    let mut details = BTreeMap::new();
    details.insert(
        "apis".to_owned(),
        view_health(&s.js, streams::APIS, &s.apis, &time).await,
    );
    let mut keys = view_health(&s.js, streams::KEYS, &s.keys, &time).await;
    if let Some(away) = s.staleness.unconfirmed_for() {
        keys.status = "warn".into();
        keys.output = Some(format!(
            "unconfirmed: NATS has been away for {} s (longer than {} s); the keys known are still served, and deletions since cannot be seen",
            away.as_secs(),
            s.staleness.after.as_secs()
        ));
    }
    details.insert("keys".to_owned(), keys);
    details.insert("nats".to_owned(), nats);
    let live = s.replicas.live();
    details.insert(
        "replicas".to_owned(),
        HealthItem {
            status: "pass".into(),
            component_type: "system".into(),
            time: time.clone(),
            output: Some(format!(
                "{} live: {}",
                live.len(),
                live.iter()
                    .map(|a| format!("{} (APIS {}, KEYS {})", a.replica, a.apis, a.keys))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        },
    );
    let status = ["fail", "warn"]
        .into_iter()
        .find(|worst| details.values().any(|d| d.status == *worst))
        .unwrap_or("pass");
    axum::Json(Hello {
        status: status.into(),
        version: format!("meridian-{}", env!("CARGO_PKG_VERSION")),
        description: "Meridian gateway".into(),
        details,
    })
}
