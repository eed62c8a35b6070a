//! `APIS` folded in memory by every replica, rebuilt from the log at each
//! start. `KEYS` is folded by key-issuer's own fold
//! ([`meridian_keys::fold`]), in this process too.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use meridian_kit::projection::{Fold, StoredEvent};
use meridian_schemas::DecodeError;
use meridian_schemas::apis::ApisEvent;

use crate::domain::ApisState;
use crate::domain::state::CorruptDefinition;

/// Why an event of `APIS` could not be applied (the fold halts).
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// The envelope or event does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A definition inside does not parse or compile.
    #[error(transparent)]
    Corrupt(#[from] CorruptDefinition),
}

impl Fold for ApisState {
    type Error = FoldError;

    fn apply(&mut self, stored: &StoredEvent) -> Result<(), FoldError> {
        let event: ApisEvent = stored.envelope.open()?;
        ApisState::apply(self, &event, stored.seq)?;
        Ok(())
    }
}

/// The fold, shared by its runner, the writer, the API and the data plane.
pub type SharedApis = Arc<RwLock<ApisState>>;

/// Reads the fold (a poisoned lock still holds the last consistent state:
/// a panic while applying halts the runner).
pub fn read(state: &RwLock<ApisState>) -> RwLockReadGuard<'_, ApisState> {
    state.read().unwrap_or_else(|p| p.into_inner())
}
