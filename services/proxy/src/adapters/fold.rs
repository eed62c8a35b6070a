//! `APIS` folded in memory by every replica, rebuilt from the log at each
//! start. `KEYS` is folded by key-issuer's own fold
//! ([`meridian_keys::fold`]), in this process too.

use std::sync::Arc;

use meridian_kit::writer::{Lock, ReadGuard};

use meridian_kit::projection::EventFold;
use meridian_schemas::apis::ApisEvent;

use crate::domain::ApisState;
use crate::domain::state::CorruptDefinition;

impl EventFold for ApisState {
    type Event = ApisEvent;
    type Corrupt = CorruptDefinition;

    fn apply_event(&mut self, event: &ApisEvent, seq: u64) -> Result<(), CorruptDefinition> {
        ApisState::apply(self, event, seq)
    }
}

/// The fold, shared by its runner, the writer, the API and the data plane.
pub type SharedApis = Arc<Lock<ApisState>>;

/// Reads the fold (a poisoned lock still holds the last consistent state:
/// a panic while applying halts the runner).
pub fn read(state: &Lock<ApisState>) -> ReadGuard<'_, ApisState> {
    state.read().unwrap_or_else(|p| p.into_inner())
}
