//! `KEYS` folded in memory by every replica (rebuilt from the log at each
//! start). Readers hold the lock only while they copy what they need.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use meridian_kit::projection::{Fold, StoredEvent};
use meridian_schemas::DecodeError;
use meridian_schemas::keys::KeysEvent;

use crate::state::{CorruptObject, KeysState};

/// Why an event of `KEYS` could not be applied (the fold halts).
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// The envelope or event does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// An object inside the event does not parse.
    #[error(transparent)]
    Corrupt(#[from] CorruptObject),
}

impl Fold for KeysState {
    type Error = FoldError;

    fn apply(&mut self, stored: &StoredEvent) -> Result<(), FoldError> {
        let event: KeysEvent = stored.envelope.open()?;
        KeysState::apply(self, &event, stored.seq)?;
        Ok(())
    }
}

/// The fold, shared by its runner (the writer), the API and the relay.
pub type Shared = Arc<RwLock<KeysState>>;

/// Reads the fold. A panic while applying halts the runner anyway, so a
/// poisoned lock still holds the last consistent state.
pub fn read(state: &RwLock<KeysState>) -> RwLockReadGuard<'_, KeysState> {
    state.read().unwrap_or_else(|p| p.into_inner())
}
