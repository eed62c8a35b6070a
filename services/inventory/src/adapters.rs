//! Adapters: storage of the repository, the lifecycle outbox publisher,
//! and the public stream (relay, agent status watcher, reads).

pub mod outbox;
pub mod public;
pub mod store;

use meridian_kit::bus::BusError;
use meridian_schemas::DecodeError;

/// Why publishing lifecycle events, relaying them, or watching agents
/// failed (the loops log it and start over).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A message of the log does not decode.
    #[error("undecodable message: {0}")]
    Decode(#[from] DecodeError),
    /// A public event does not parse.
    #[error("unreadable public event: {0}")]
    Json(#[from] serde_json::Error),
    /// The outbox could not be read or cleared.
    #[error(transparent)]
    Outbox(#[from] store::RepositoryError),
    /// A consumer's message stream ended.
    #[error("{0}")]
    Ended(&'static str),
}
