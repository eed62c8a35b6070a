//! `PORTAL` folded in memory by every replica (rebuilt from the log at each
//! start); the writer decides on it.

use meridian_kit::projection::{Fold, StoredEvent};
use meridian_schemas::DecodeError;
use meridian_schemas::portal::PortalEvent;

use crate::domain::PortalState;
use crate::domain::state::CorruptObject;

/// Why an event of `PORTAL` could not be applied (the fold halts).
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// The envelope or event does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// An entity inside the event does not parse.
    #[error(transparent)]
    Corrupt(#[from] CorruptObject),
}

impl Fold for PortalState {
    type Error = FoldError;

    fn apply(&mut self, stored: &StoredEvent) -> Result<(), FoldError> {
        let event: PortalEvent = stored.envelope.open()?;
        PortalState::apply(self, &event, stored.seq)?;
        Ok(())
    }
}

/// Decides and stores portal changes (compare-and-set per entity).
pub type PortalWriter = meridian_kit::writer::Writer<PortalState>;
