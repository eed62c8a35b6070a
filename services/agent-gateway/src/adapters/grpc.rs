//! The agent-facing gRPC service: health and sync streams.
//!
//! Protocol: the agent opens the health stream, says `Hello` with its
//! providers, waits for the first `HealthReply`, then opens the sync stream.
//! Opening the sync stream triggers an initial sync of every provider.
//!
//! A replica of an agent that elects a leader opens the sync stream with its
//! fencing token (`x-meridian-fencing-token`) and puts it on every message:
//! opening raises the agent's fence through `AGENTS` (so every gateway
//! replica sees it), and a message or stream with an older token is refused
//! with `FailedPrecondition`, failing its open runs: a deposed leader cannot
//! finish a run.
//!
//! Modules: [`health`] (hello and heartbeats), [`sync`] (sync requests to
//! the agent and its runs back into `SYNC`, checked by
//! [`crate::domain::runs`]), [`chunks`] (a run's APIs gathered into `SYNC`
//! messages of up to 64).

mod chunks;
mod health;
mod sync;

use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use meridian_kit::bus::Publisher;
use meridian_kit::metrics::{Counter, Family, Labels, Metrics};
use meridian_kit::time::now_ms;
use meridian_schemas::proto::agent_hub_server::AgentHub;
use meridian_schemas::proto::{HealthMessage, HealthReply, SyncMessage, SyncRequest};
use meridian_schemas::{AgentId, FENCING_TOKEN_METADATA};
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};
use uuid::Uuid;

use super::registry::{ExecError, Registry};
use super::tokens::{TokenError, Tokens};
use crate::domain::{self, AgentRecord, Command, Rejection};

/// Protocol settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often agents must send a heartbeat.
    pub heartbeat_interval: Duration,
    /// Missed heartbeats before an agent counts as `INACTIVE`.
    pub missed_heartbeats: u32,
    /// Largest encoded `ApiDefinition` accepted.
    pub max_api_bytes: usize,
    /// Publishes (mostly chunks of APIs) kept in flight per sync stream.
    pub publish_window: usize,
    /// Longest an API waits in a chunk that is not full.
    pub chunk_linger: Duration,
}

/// The service.
#[derive(Clone)]
pub struct Hub {
    registry: Registry,
    tokens: Tokens,
    publisher: Publisher,
    client: async_nats::Client,
    settings: Settings,
    /// `meridian_sync_runs_total{result}`: runs that ended, as agents
    /// reported them (or as a broken stream left them).
    sync_runs: Family<Labels, Counter>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Hub {
    /// Builds the service.
    pub fn new(
        registry: Registry,
        tokens: Tokens,
        publisher: Publisher,
        client: async_nats::Client,
        settings: Settings,
        metrics: &Metrics,
    ) -> Self {
        let sync_runs = metrics.counters(
            "meridian_sync_runs",
            "Sync runs ended, by result (completed, failed)",
        );
        Self {
            registry,
            tokens,
            publisher,
            client,
            settings,
            sync_runs,
        }
    }

    fn sync_runs(&self, result: &str) -> Counter {
        self.sync_runs
            .get_or_create_owned(&vec![("result", result.to_owned())])
    }

    /// Checks `authorization: Bearer <token>` against signature, expiry and
    /// the registry's current token for the agent.
    fn authenticate<T>(&self, req: &Request<T>) -> Result<(AgentId, Uuid), Status> {
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing authorization metadata (expected `Bearer <token>`)")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        let (agent, jti) = self.tokens.verify(token.trim()).map_err(|e| match e {
            TokenError::Expired => Status::unauthenticated("token expired"),
            TokenError::Invalid(_) => Status::unauthenticated("token is not valid"),
        })?;
        self.still_valid(self.registry.get(agent).as_ref(), jti, None)?;
        Ok((agent, jti))
    }

    /// The token is still the agent's current one (`record` is the agent's
    /// registry record) and, for a leading replica, its fencing token is not
    /// older than the newest seen.
    fn still_valid(
        &self,
        record: Option<&AgentRecord>,
        jti: Uuid,
        fencing_token: Option<u64>,
    ) -> Result<(), Status> {
        let Some(record) = record else {
            return Err(Status::unauthenticated("unknown agent (deleted?)"));
        };
        if !domain::token_valid(Some(record), jti, now_ms()) {
            return Err(Status::unauthenticated(
                "token revoked, replaced or expired",
            ));
        }
        if let Some(token) = fencing_token {
            domain::check_fence(record, token)
                .map_err(|e| Status::failed_precondition(e.to_string()))?;
        }
        Ok(())
    }

    /// Reads the opener's fencing token and raises the agent's fence to it
    /// (through the log, so every replica refuses the older leader).
    async fn fence(&self, agent: AgentId, metadata: &MetadataMap) -> Result<Option<u64>, Status> {
        let Some(value) = metadata.get(FENCING_TOKEN_METADATA) else {
            return Ok(None);
        };
        let token: u64 = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{FENCING_TOKEN_METADATA}: must be a non-negative integer"
                ))
            })?;
        match self
            .registry
            .execute(
                agent,
                Command::Fence {
                    fencing_token: token,
                },
            )
            .await
        {
            Ok(_) => Ok(Some(token)),
            Err(ExecError::Rejected(r @ Rejection::Fenced { .. })) => {
                Err(Status::failed_precondition(r.to_string()))
            }
            Err(ExecError::Rejected(r)) => Err(Status::unauthenticated(r.to_string())),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}

#[tonic::async_trait]
impl AgentHub for Hub {
    type HealthStream = BoxStream<HealthReply>;
    type SyncStream = BoxStream<SyncRequest>;

    async fn health(
        &self,
        req: Request<Streaming<HealthMessage>>,
    ) -> Result<Response<Self::HealthStream>, Status> {
        health::open(self, req).await
    }

    async fn sync(
        &self,
        req: Request<Streaming<SyncMessage>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        sync::open(self, req).await
    }
}

/// The status a broken inbound stream ends with: a message that cannot be
/// decoded is the agent's error (`InvalidArgument`), one over the size
/// limit `ResourceExhausted`; anything else (the agent went away) needs no
/// answer.
pub(super) fn inbound_failure(stream: &str, status: &Status) -> Option<Status> {
    match status.code() {
        Code::OutOfRange | Code::ResourceExhausted => Some(Status::resource_exhausted(format!(
            "{stream} stream: a message is too large: {}",
            crate::domain::runs::quote(status.message())
        ))),
        Code::Internal if status.message().contains("decode") => {
            Some(Status::invalid_argument(format!(
                "{stream} stream: a message could not be decoded: {}",
                crate::domain::runs::quote(status.message())
            )))
        }
        _ => None,
    }
}
