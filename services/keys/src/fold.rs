//! `KEYS` folded in memory by every replica (rebuilt from the log at each
//! start). Readers hold the lock only while they copy what they need.

use std::sync::Arc;

use meridian_kit::writer::{Lock, ReadGuard};

use meridian_kit::projection::EventFold;
use meridian_schemas::keys::KeysEvent;

use crate::state::{CorruptObject, KeysState};

impl EventFold for KeysState {
    type Event = KeysEvent;
    type Corrupt = CorruptObject;

    fn apply_event(&mut self, event: &KeysEvent, seq: u64) -> Result<(), CorruptObject> {
        KeysState::apply(self, event, seq)
    }
}

/// The fold, shared by its runner (the writer), the API and the relay.
pub type Shared = Arc<Lock<KeysState>>;

/// Reads the fold. A panic while applying halts the runner anyway, so a
/// poisoned lock still holds the last consistent state.
pub fn read(state: &Lock<KeysState>) -> ReadGuard<'_, KeysState> {
    state.read().unwrap_or_else(|p| p.into_inner())
}
