//! `PORTAL` folded in memory by every replica (rebuilt from the log at each
//! start); the writer decides on it.

use meridian_kit::projection::EventFold;
use meridian_schemas::portal::PortalEvent;

use crate::domain::PortalState;
use crate::domain::state::CorruptObject;

impl EventFold for PortalState {
    type Event = PortalEvent;
    type Corrupt = CorruptObject;

    fn apply_event(&mut self, event: &PortalEvent, seq: u64) -> Result<(), CorruptObject> {
        PortalState::apply(self, event, seq)
    }
}

/// Decides and stores portal changes (compare-and-set per entity).
pub type PortalWriter = meridian_kit::writer::Writer<PortalState>;
