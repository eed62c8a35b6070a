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

use std::sync::Arc;

use meridian_kit::http::{ApiError, ErrorCode};
use meridian_kit::writer::{Expect, WriteError};
use meridian_schemas::portal::{PortalEntity, PortalEvent};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;

use crate::adapters::fold::PortalWriter;
use crate::adapters::providers::{Connection, ProviderError};
use crate::adapters::seal::Sealer;
use crate::adapters::syncer::Syncer;
use crate::domain::PortalState;
use crate::domain::model::{Invalid, Provider};

/// Handler state.
#[derive(Clone)]
pub struct ApiState {
    /// Stores changes and holds the fold.
    pub writer: PortalWriter,
    /// Seals and opens provider secrets.
    pub sealer: Arc<Sealer>,
    /// Runs syncs on demand.
    pub syncer: Syncer,
}

/// The routes with their OpenAPI description (behind the admin key: see
/// [`crate::App::api`]).
pub fn router(state: ApiState) -> OpenApiRouter {
    providers::routes()
        .merge(catalogue::routes())
        .merge(provisioning::routes())
        .with_state(state)
}

fn invalid(e: Invalid) -> ApiError {
    ApiError::invalid_field(&e.field, e.why)
}

/// A write's failure as answered.
fn write_failed(e: WriteError<ApiError>) -> ApiError {
    match e {
        WriteError::Refused(e) => e,
        WriteError::Conflict => {
            ApiError::conflict(format!("{e}: another admin keeps changing it, try again"))
        }
        WriteError::Bus(e) => ApiError::unavailable(format!("the event log is not available: {e}")),
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
    /// current fold by `check` (which may refuse), as a compare-and-set.
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
                Ok((event, value, Expect::Subject(state.last_seq(entity, id))))
            })
            .await
            .map(|(value, _)| value)
            .map_err(write_failed)
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
            .map_err(write_failed)
    }
}

/// A new portal id.
fn new_id() -> String {
    Uuid::new_v4().to_string()
}
