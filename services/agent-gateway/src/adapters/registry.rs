//! The registry projection (`AGENTS` folded into a local tree) and command
//! execution.
//!
//! Every replica folds the whole stream into a temporary local tree (deleted
//! when the process ends) at start (the registry is small) and follows it, so any replica can answer
//! and authenticate any agent. A command is decided against the local record,
//! published, and answered once the local projection has applied it, so a
//! caller reads its own write.

use std::time::Duration;

use meridian_kit::bus::{BusError, Publisher};
use meridian_kit::projection::{Ctx, Progress, Projection, StoredEvent};
use meridian_kit::store::{StoreError, Tree};
use meridian_kit::time::now_ms;
use meridian_schemas::agents::AgentEvent;
use meridian_schemas::{AgentId, DecodeError, EventMeta};

use crate::domain::{self, AgentRecord, Command, Rejection};

fn key(id: AgentId) -> Vec<u8> {
    [b"g".as_slice(), id.0.as_bytes()].concat()
}

/// Folds `AGENTS` into agent records.
pub struct RegistryProjection;

/// Why an `AGENTS` message could not be folded.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// The message is not a registry event this build reads.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A stored record does not decode.
    #[error("corrupt agent record: {0}")]
    Corrupt(#[from] postcard::Error),
    /// The local store failed.
    #[error(transparent)]
    Storage(#[from] StoreError),
}

impl Projection for RegistryProjection {
    type Error = FoldError;

    fn apply(&self, ctx: &mut Ctx<'_>, stored: &StoredEvent) -> Result<(), FoldError> {
        let event: AgentEvent = stored.envelope.open()?;
        let k = key(event.agent_id());
        let state: Option<AgentRecord> = match ctx.get(&k)? {
            Some(v) => Some(postcard::from_bytes(&v)?),
            None => None,
        };
        match domain::evolve(state, &event, stored.envelope.occurred_at_ms) {
            Some(r) => ctx.insert(k, postcard::to_allocvec(&r)?),
            None => ctx.remove(k),
        }
        Ok(())
    }
}

/// How long a read waits for the registry to catch up before "not found".
const CATCH_UP: Duration = Duration::from_secs(3);

/// Why a command did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The rules refused it.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Published, but the local registry did not apply it in time.
    #[error("the registry did not catch up in time")]
    Lagging,
}

/// The registry: reads, and commands that go through the log.
#[derive(Clone)]
pub struct Registry {
    tree: Tree,
    publisher: Publisher,
    progress: Progress,
}

impl Registry {
    /// Wraps the projection's tree and progress.
    pub fn new(tree: Tree, publisher: Publisher, progress: Progress) -> Self {
        Self {
            tree,
            publisher,
            progress,
        }
    }

    /// One agent.
    pub fn get(&self, id: AgentId) -> Option<AgentRecord> {
        let v = self.tree.get(key(id)).ok()??;
        postcard::from_bytes(&v).ok()
    }

    /// `get`, served from `cache` while the projection has applied nothing
    /// since the cache was filled (a hot path checks one agent per message).
    pub fn get_cached<'c>(
        &self,
        id: AgentId,
        cache: &'c mut Option<(u64, Option<AgentRecord>)>,
    ) -> Option<&'c AgentRecord> {
        // The position is read before the record, so the cached record is
        // at least as new as the position it is filed under.
        let at = self.progress.position();
        if !matches!(cache, Some((seen, _)) if *seen == at) {
            *cache = Some((at, self.get(id)));
        }
        cache.as_ref().and_then(|(_, r)| r.as_ref())
    }

    /// One agent; when this replica does not know it, first catch up with
    /// everything `AGENTS` holds now (it may have just been registered on
    /// another replica, or this one may still be replaying after a start).
    pub async fn get_fresh(&self, id: AgentId) -> Option<AgentRecord> {
        if let Some(record) = self.get(id) {
            return Some(record);
        }
        self.progress.catch_up(CATCH_UP).await;
        self.get(id)
    }

    /// A receiver that changes whenever the registry applies an event (to
    /// wait for a record without polling).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Every agent, ordered by creation time.
    pub fn list(&self) -> Vec<AgentRecord> {
        let mut all: Vec<AgentRecord> = self
            .tree
            .scan_prefix(b"g")
            .filter_map(|e| postcard::from_bytes(&e.ok()?.1).ok())
            .collect();
        all.sort_by_key(|r| (r.created_at_ms, r.id));
        all
    }

    /// Decides, publishes, waits for the local projection; returns the
    /// record as it now is (`None` after a delete).
    pub async fn execute(
        &self,
        id: AgentId,
        command: Command,
    ) -> Result<Option<AgentRecord>, ExecError> {
        let current = match command {
            Command::Register { .. } => self.get(id),
            _ => self.get_fresh(id).await,
        };
        let events = domain::decide(current.as_ref(), id, command)?;
        let meta = || EventMeta {
            occurred_at_ms: now_ms(),
            ..Default::default()
        };
        let last = self
            .publisher
            .publish_all(events.into_iter().map(|e| (e, meta())))
            .await?;
        if let Some(ack) = last
            && !self
                .progress
                .wait_for(ack.sequence, Duration::from_secs(5))
                .await
        {
            return Err(ExecError::Lagging);
        }
        Ok(self.get(id))
    }
}
