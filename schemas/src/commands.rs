//! Commands sent between services over core NATS request/reply (not stored).

use serde::{Deserialize, Serialize};

use crate::ids::RunId;

/// Ask the agent-gateway replica holding an agent's sync stream to start
/// runs. Sent on [`crate::streams::sync_request_subject`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerSync {
    /// One provider, or every provider the agent reported when `None`.
    pub provider: Option<String>,
}

/// One run started by [`TriggerSync`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStarted {
    /// The provider.
    pub provider: String,
    /// The run id the agent will echo.
    pub run_id: RunId,
}

/// The answer to [`TriggerSync`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TriggerSyncReply {
    /// Requests were pushed to the agent.
    Started(Vec<RunStarted>),
    /// The agent did not report that provider.
    UnknownProvider(String),
    /// The agent's health stream is up but its sync stream is not.
    SyncStreamDown,
}

/// Why a [`TriggerSync`] started no run, as the gateway replica answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SyncRefused {
    /// The agent did not report the provider.
    #[error("the agent has not reported a provider named {0:?}")]
    UnknownProvider(String),
    /// The agent's sync stream closed while the request was on its way.
    #[error("the agent is not connected (its sync stream just closed)")]
    SyncStreamDown,
}

impl TriggerSyncReply {
    /// The runs started, or why none was.
    pub fn into_runs(self) -> Result<Vec<RunStarted>, SyncRefused> {
        match self {
            Self::Started(runs) => Ok(runs),
            Self::UnknownProvider(p) => Err(SyncRefused::UnknownProvider(p)),
            Self::SyncStreamDown => Err(SyncRefused::SyncStreamDown),
        }
    }
}

/// Asks the agent-gateway replicas holding an agent's sync streams whether
/// one of them holds `run_id`. Sent on
/// [`crate::streams::run_probe_subject`]; only a holder answers (`true`),
/// so no responder, or no answer in time, means the run has no holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunProbe {
    /// The run asked about.
    pub run_id: RunId,
}

/// The proxy records the OAuth tokens and authorization codes it issued
/// (the token itself stays with the client: only its hash is sent),
/// redeeming the code or refresh token they were issued for. Sent on
/// [`crate::streams::RECORD_TOKENS_SUBJECT`]; any key-issuer replica
/// answers once they are in `KEYS`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordTokens {
    /// Chosen once by the sender: a retry of the same request stores nothing twice.
    pub request_id: uuid::Uuid,
    /// SHA-256 (hex) of each token, with its details.
    pub tokens: Vec<(String, crate::keys::TokenRecord)>,
    /// SHA-256 (hex) of each authorization code, with its details.
    pub codes: Vec<(String, crate::keys::CodeRecord)>,
    /// SHA-256 (hex) of the authorization code or refresh token exchanged
    /// for `tokens`: it must be live and the same client's, and it is
    /// revoked before they are stored (once, whichever replica asks first).
    pub redeem: Option<String>,
}

/// The answer to [`RecordTokens`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordTokensReply {
    /// Everything is stored; `keys_seq` is the `KEYS` sequence that
    /// includes it (what a gateway replica must have folded to know it).
    Recorded {
        /// The sequence.
        keys_seq: u64,
    },
    /// Nothing was stored, and why (an unknown client, a malformed hash).
    Refused(String),
    /// The code or refresh token to redeem is unknown, expired, already
    /// used or another client's (OAuth's `invalid_grant`); nothing stored.
    GrantInvalid,
}

/// Encodes a command or reply (postcard).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("postcard encoding into a Vec cannot fail")
}

/// Decodes a command or reply (postcard).
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}
