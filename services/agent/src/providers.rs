//! Providers: where an agent discovers APIs. Read-only: the agent never
//! writes to a provider. Each normalizes to the one definition shape of
//! `agent.proto`.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use meridian_schemas::proto::ApiDefinition;

pub mod aws;
pub mod sigv4;
pub mod tyk;

/// Why a provider's APIs could not be listed (the run fails with it as the
/// reason, and only that run).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The request did not get an answer (unreachable, timed out, TLS).
    #[error("GET {url}: {}", meridian_kit::report::chain(source))]
    Unreachable {
        /// What was asked.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The provider answered with an error status.
    #[error("GET {url}: HTTP {status}{excerpt}")]
    Status {
        /// What was asked.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
        /// The start of the answer's body (`: ...`), when it has one.
        excerpt: String,
    },
    /// The answer is not what the provider's API returns.
    #[error("GET {url}: {why}")]
    Garbage {
        /// What was asked.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// A listing never ended.
    #[error("{url}: gave up after {pages} pages")]
    EndlessPages {
        /// The listing.
        url: String,
        /// Pages followed.
        pages: usize,
    },
    /// A request could not be signed.
    #[error(transparent)]
    Sign(#[from] sigv4::SignError),
    /// The provider cannot list now, for the reason given (sources that
    /// only have a message, such as an in-memory one).
    #[error("{0}")]
    Unavailable(String),
}

/// Where a provider's APIs come from.
pub trait Source: Send + Sync + 'static {
    /// Lists every API, or says why it cannot.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ApiDefinition>, ProviderError>>;
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
