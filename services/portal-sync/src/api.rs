//! The admin API under `/portal-api/`, with the resource names of Tyk's
//! Enterprise Developer Portal: `providers` (and their `synchronize`),
//! `products`, `plans`, `apps`, `provisioning-requests` (`approve`,
//! `reject`) and `credentials`. The admin key goes in `X-API-Key` or, as
//! Tyk's portal takes it, in `Authorization`. Errors are
//! `{"error", "message"}` naming the field at fault; a provider's failure
//! is a 502 saying what the provider answered (a provider refusing what was
//! sent is a 400).

mod catalogue;
mod providers;
mod provisioning;

pub use provisioning::recover_until_stopped;

use std::sync::Arc;
use std::time::Duration;

use meridian_kit::http::{ApiError, ErrorCode};
use meridian_kit::metrics::{Counter, Family, Labels};
use meridian_kit::writer::{Expect, WriteError};
use meridian_schemas::portal::{PortalEntity, PortalEvent};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::adapters::fold::PortalWriter;
use crate::adapters::providers::{Connection, ProviderError};
use crate::adapters::seal::Sealer;
use crate::adapters::syncer::Syncer;
use crate::domain::PortalState;
use crate::domain::model::Provider;

/// Handler state.
#[derive(Clone)]
pub struct ApiState {
    /// Stores changes and holds the fold.
    pub writer: PortalWriter,
    /// Seals and opens provider secrets.
    pub sealer: Arc<Sealer>,
    /// Runs syncs on demand.
    pub syncer: Syncer,
    /// `meridian_portal_recoveries_total{action}`.
    pub recoveries: Family<Labels, Counter>,
    /// How long an approval or revocation may stay under way before any
    /// replica finishes or undoes it.
    pub intent_deadline: Duration,
}

/// How long a write whose publish had no answer is retried (the same
/// event, so the same message id: stored once) before the caller is told
/// its outcome is not known yet.
const SETTLE_PATIENCE: Duration = Duration::from_secs(10);

/// Why a settled write stored nothing.
enum Unsettled {
    /// Refused, or no answer within [`SETTLE_PATIENCE`].
    Failed(ApiError),
    /// NATS gave no answer: the event may be stored later.
    Unknown(ApiError),
}

impl Unsettled {
    fn into_error(self) -> ApiError {
        match self {
            Self::Failed(e) | Self::Unknown(e) => e,
        }
    }
}

/// The routes with their OpenAPI description (behind the admin key: see
/// [`crate::App::api`]).
pub fn router(state: ApiState) -> OpenApiRouter {
    providers::routes()
        .merge(catalogue::routes())
        .merge(provisioning::routes())
        .with_state(state)
}

/// A provisioning decision refused: 404 for what is not there, 409 for
/// what was decided already or is under way.
impl From<crate::domain::rules::Refusal> for ApiError {
    fn from(e: crate::domain::rules::Refusal) -> Self {
        match e {
            crate::domain::rules::Refusal::NotFound(m) => ApiError::not_found(m),
            crate::domain::rules::Refusal::Conflict(m) => ApiError::conflict(m),
        }
    }
}

/// A provider's failure while doing `what` for the caller.
fn provider_failed(what: &str, e: &ProviderError) -> ApiError {
    if e.refused_input() {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("the provider refused to {what}: {e}"),
        )
    } else {
        ApiError::new(
            ErrorCode::BadGateway,
            format!("the provider could not {what}: {e}"),
        )
    }
}

/// Milliseconds as RFC 3339 (empty for 0).
fn time(ms: i64) -> String {
    if ms == 0 {
        String::new()
    } else {
        meridian_kit::time::rfc3339(ms)
    }
}

impl ApiState {
    /// Reads the fold with `f`; when it finds nothing, first catches up with
    /// what the log holds now (a write on another replica) and reads again.
    async fn find<T>(&self, f: impl Fn(&PortalState) -> Option<T>) -> Option<T> {
        if let Some(found) = f(&self.writer.read()) {
            return Some(found);
        }
        self.writer.catch_up().await;
        f(&self.writer.read())
    }

    /// A connection to the provider `id` (404 when there is none).
    async fn connect(&self, provider_id: &str) -> Result<(Provider, Connection), ApiError> {
        let provider = self
            .find(|s| s.provider(provider_id).cloned())
            .await
            .ok_or_else(|| ApiError::not_found(format!("no provider {provider_id:?}")))?;
        let secret = self
            .sealer
            .open(&provider.id, &provider.sealed_secret)
            .map_err(|e| ApiError::new(ErrorCode::Conflict, e.to_string()))?;
        let connection =
            Connection::new(&provider, secret).map_err(|e| provider_failed("be reached", &e))?;
        Ok((provider, connection))
    }

    /// Stores `body` as entity `(entity, id)` with `change`, decided on the
    /// current fold by `check` (which may refuse), as a compare-and-set;
    /// an entity saved exactly as it is stored appends nothing.
    async fn save<T: serde::Serialize>(
        &self,
        entity: PortalEntity,
        id: &str,
        change: &str,
        decide: impl Fn(&PortalState) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let change_id = Uuid::new_v4();
        self.writer
            .write(|state| {
                let value = decide(state)?;
                let event = PortalEvent::Saved {
                    entity,
                    id: id.to_owned(),
                    body: serde_json::to_string(&value).expect("entities serialize"),
                    change: change.to_owned(),
                    change_id,
                    at_ms: meridian_kit::time::now_ms(),
                };
                let expect = match state.holds(&event) {
                    Some(seq) => Expect::Unchanged(seq),
                    None => Expect::Subject(state.last_seq(entity, id)),
                };
                Ok((event, value, expect))
            })
            .await
            .map(|(value, _)| value)
            .map_err(WriteError::<ApiError>::answer)
    }

    /// Counts one recovery action (`meridian_portal_recoveries_total`).
    fn recovered(&self, action: &str) {
        self.recoveries
            .get_or_create(&vec![("action", action.to_owned())])
            .inc();
    }

    /// Like [`ApiState::save`], for a write whose outcome must be known
    /// before anything is compensated: when NATS gives no answer, the same
    /// event (the same message id, so stored once) is published again
    /// until it answers, for up to [`SETTLE_PATIENCE`]. `done` reads the
    /// outcome from the fold: a refusal or a lost answer whose change is
    /// found there (stored by the first publish, or by another replica
    /// finishing the same work) is a success.
    async fn save_settled<T: serde::Serialize>(
        &self,
        entity: PortalEntity,
        id: &str,
        change: &str,
        decide: impl Fn(&PortalState) -> Result<T, ApiError>,
        done: impl Fn(&PortalState) -> Option<T>,
    ) -> Result<T, Unsettled> {
        let change_id = Uuid::new_v4();
        let deadline = tokio::time::Instant::now() + SETTLE_PATIENCE;
        let mut unknown = false;
        loop {
            let written = self
                .writer
                .write(|state| {
                    let value = decide(state)?;
                    let event = PortalEvent::Saved {
                        entity,
                        id: id.to_owned(),
                        body: serde_json::to_string(&value).expect("entities serialize"),
                        change: change.to_owned(),
                        change_id,
                        at_ms: meridian_kit::time::now_ms(),
                    };
                    Ok((event, value, Expect::Subject(state.last_seq(entity, id))))
                })
                .await;
            let e = match written {
                Ok((value, _)) => {
                    if unknown {
                        self.recovered("settled_unknown");
                        tracing::info!(%id, change, "a write whose publish had no answer is settled: stored once");
                    }
                    return Ok(value);
                }
                Err(e) => e,
            };
            if let Some(value) = done(&self.writer.read()) {
                if unknown {
                    self.recovered("settled_unknown");
                    tracing::info!(%id, change, "a write whose publish had no answer is settled: found on the log");
                }
                return Ok(value);
            }
            match e {
                WriteError::Bus(bus) => {
                    unknown = true;
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(%id, change, error = %bus,
                            "a write's outcome is not known yet; it stays recorded as under way and is finished later");
                        return Err(Unsettled::Unknown(ApiError::unavailable(format!(
                            "the event log did not answer within {SETTLE_PATIENCE:?}, so this change's outcome is not known yet; \
                             nothing was undone, and a portal replica finishes it once the log is back: {bus}"
                        ))));
                    }
                    tracing::debug!(%id, change, error = %bus, "publishing the same event again to settle it");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    self.writer.catch_up().await;
                }
                other => return Err(Unsettled::Failed(WriteError::<ApiError>::answer(other))),
            }
        }
    }

    /// Deletes entity `(entity, id)`; `decide` returns what it was (or
    /// refuses).
    async fn delete<T: serde::Serialize>(
        &self,
        entity: PortalEntity,
        id: &str,
        decide: impl Fn(&PortalState) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let change_id = Uuid::new_v4();
        self.writer
            .write(|state| {
                let value = decide(state)?;
                let event = PortalEvent::Deleted {
                    entity,
                    id: id.to_owned(),
                    body: serde_json::to_string(&value).expect("entities serialize"),
                    change_id,
                    at_ms: meridian_kit::time::now_ms(),
                };
                Ok((event, value, Expect::Subject(state.last_seq(entity, id))))
            })
            .await
            .map(|(value, _)| value)
            .map_err(WriteError::<ApiError>::answer)
    }
}

/// A new portal id.
fn new_id() -> String {
    Uuid::new_v4().to_string()
}
