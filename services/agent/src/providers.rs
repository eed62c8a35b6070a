//! Providers: where an agent discovers APIs. Read-only: the agent never
//! writes to a provider. Each normalizes to the one definition shape of
//! `agent.proto`.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use meridian_schemas::proto::ApiDefinition;

pub mod aws;
pub mod sigv4;
pub mod tyk;

/// Where a provider's APIs come from.
pub trait Source: Send + Sync + 'static {
    /// Lists every API, or says why it cannot (the run then fails, and only
    /// that run).
    fn list(&self) -> BoxFuture<'_, Result<Vec<ApiDefinition>, String>>;
}

/// One provider of the agent.
#[derive(Clone)]
pub struct ProviderConfig {
    /// Name reported to the hub.
    pub name: String,
    /// Kind reported to the hub.
    pub provider_type: String,
    /// Where its APIs come from.
    pub source: Arc<dyn Source>,
}
