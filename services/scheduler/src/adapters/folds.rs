//! The scheduler's state: three in-memory folds, rebuilt from the log at
//! every start (`SCHEDULE`, `AGENTS`, and the run starts and ends of `SYNC`).

use std::sync::Arc;

use meridian_kit::writer::{Lock, ReadGuard};

use meridian_kit::projection::{Fold, StoredEvent};
use meridian_schemas::DecodeError;
use meridian_schemas::agents::AgentEvent;
use meridian_schemas::schedule::ScheduleEvent;
use meridian_schemas::sync::SyncEvent;

use crate::domain::{Agents, Jobs, Runs};

impl Fold for Jobs {
    type Error = DecodeError;

    fn apply(&mut self, stored: &StoredEvent) -> Result<(), DecodeError> {
        let event: ScheduleEvent = stored.envelope.open()?;
        Jobs::apply(self, event, stored.seq);
        Ok(())
    }
}

impl Fold for Agents {
    type Error = DecodeError;

    fn apply(&mut self, stored: &StoredEvent) -> Result<(), DecodeError> {
        let event: AgentEvent = stored.envelope.open()?;
        Agents::apply(self, event);
        Ok(())
    }
}

impl Fold for Runs {
    type Error = DecodeError;

    fn apply(&mut self, stored: &StoredEvent) -> Result<(), DecodeError> {
        let event: SyncEvent = stored.envelope.open()?;
        Runs::apply(self, &event);
        Ok(())
    }
}

/// The three folds, shared between their runners (the writers), the firing
/// loop and the API (readers hold a lock only while they copy what they need).
#[derive(Clone, Default)]
pub struct State {
    /// Jobs and their firings.
    pub jobs: Arc<Lock<Jobs>>,
    /// Registered agents and their providers.
    pub agents: Arc<Lock<Agents>>,
    /// Sync runs.
    pub runs: Arc<Lock<Runs>>,
}

/// Reads a fold. A panic while a fold was being applied halts its runner
/// anyway, so a poisoned lock still holds the last consistent state.
pub fn read<T>(lock: &Lock<T>) -> ReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}
