//! The Gateway API's key, policy, organisation and OAuth surface, as Tyk
//! answers it (`/tyk/...`, `x-tyk-authorization`, `{"status", "message"}`
//! errors). Handlers check a request, decide the change on the fold and
//! store it through the [`Writer`]; reads come from the fold, after a
//! catch-up with the log before any "not found".
//!
//! Where Meridian differs from Tyk, on purpose (docs/gateway.md keeps the
//! complete list): keys and client secrets are stored only as hashes, so
//! listings show hashes, a client's secret is shown only when it is created
//! or rotated, and a token listing's `code` is the token's hash; bad input
//! is always a 4xx naming the field (Tyk answers some with a 500); a key's
//! own `is_inactive` blocks it even with policies.

mod keys;
mod oauth;
mod orgs;
mod policies;

pub use meridian_kit::tyk::ModifyKey;
use std::time::Duration;

use meridian_keys::limits::{Counter, Kind, counter_key};
use meridian_kit::tyk::{StatusMessage, TykError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;

use crate::adapters::writer::Writer;

/// Handler state.
#[derive(Clone)]
pub struct ApiState {
    /// Stores changes and holds the fold.
    pub writer: Writer,
    /// `HASH_KEYS`: answers carry `key_hash`.
    pub hash_keys: bool,
    /// `ENABLE_HASHED_KEYS_LISTING`: `GET /tyk/keys` lists hashes.
    pub hashed_listing: bool,
    /// `MIN_KEY_LENGTH`: shortest custom key accepted.
    pub min_key_length: usize,
    /// The gateway's APIs (which exist, which take OAuth).
    pub apis: crate::adapters::apis::SharedApis,
    /// The gateway's rate-limit and quota counters (what a key's `GET`
    /// shows as `quota_remaining`).
    pub counters: async_nats::jetstream::kv::Store,
}

/// The routes with their OpenAPI description (behind the secret: see
/// [`crate::App::api`]).
pub fn router(state: ApiState) -> OpenApiRouter {
    keys::routes()
        .merge(policies::routes())
        .merge(orgs::routes())
        .merge(oauth::routes())
        .with_state(state)
}

impl ApiState {
    /// The quota counters of `id` (a key's hash or an organisation id) for
    /// each allowance scope in `scopes`, as the gateway replicas left
    /// them. One that cannot be read is left out (the stored figures are
    /// shown for it).
    async fn quota_counters(
        &self,
        kind: Kind,
        id: &str,
        scopes: &[String],
    ) -> std::collections::HashMap<String, Counter> {
        let mut found = std::collections::HashMap::new();
        for scope in scopes {
            let key = counter_key(kind, id, scope);
            match tokio::time::timeout(Duration::from_millis(500), self.counters.get(&key)).await {
                Ok(Ok(Some(body))) => match serde_json::from_slice::<Counter>(&body) {
                    Ok(c) => {
                        found.insert(scope.clone(), c);
                    }
                    Err(e) => {
                        tracing::warn!(counter = %key, error = %e, "a quota counter does not parse")
                    }
                },
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(counter = %key, error = %e, "cannot read a quota counter: showing the stored quota")
                }
                Err(_) => {
                    tracing::warn!(counter = %key, "reading a quota counter timed out: showing the stored quota")
                }
            }
        }
        found
    }
}

/// Tyk's `ApiAllKeys`: ids or hashes.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AllKeys {
    /// The ids (organisations) or key hashes.
    pub keys: Vec<String>,
}

/// `?filter=`: a prefix the listed ids start with.
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    /// The prefix.
    #[serde(default)]
    pub filter: String,
}

impl ApiState {
    /// Reads the fold with `f`; when it finds nothing, first catches up with
    /// what the log holds now (a write on another replica) and reads again.
    async fn find<T>(&self, f: impl Fn(&crate::domain::KeysState) -> Option<T>) -> Option<T> {
        if let Some(found) = f(&crate::adapters::fold::read(self.writer.state())) {
            return Some(found);
        }
        self.writer.catch_up().await;
        f(&crate::adapters::fold::read(self.writer.state()))
    }
}

/// Random bytes as lower-case hex (generated keys, ids, secrets).
fn random_hex(bytes: usize) -> Result<String, TykError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| TykError::internal("no randomness available", e))?;
    Ok(meridian_kit::hex::encode(&buf))
}

/// Unix seconds and the same instant in RFC 3339.
fn now() -> (i64, String) {
    let ms = meridian_kit::time::now_ms();
    (ms.div_euclid(1000), meridian_kit::time::rfc3339(ms))
}

/// A JSON object for an event (objects always serialize).
fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("objects serialize")
}

fn ok(message: &str) -> axum::Json<StatusMessage> {
    axum::Json(StatusMessage::ok(message))
}
