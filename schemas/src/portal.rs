//! Events of the `PORTAL` stream, written only by portal-sync: the developer
//! portal's API providers, Products, Plans, applications, provisioning
//! requests (with the credentials they were issued), and the claims and
//! reports of provider syncs.
//!
//! An entity travels as its JSON in a string, so fields are added without a
//! new schema version. A secret never travels in clear: a provider's secret
//! is sealed (AES-256-GCM, the key in portal-sync's configuration) and a
//! credential is named by the SHA-256 of the key the provider issued.
//!
//! Each entity has its own subject ([`streams::portal_subject`]) and writers
//! publish expecting its last sequence, so two replicas cannot lose each
//! other's update. A provider's sync is claimed the same way on
//! [`streams::portal_sync_subject`]: of several replicas, one runs it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::Event;
use crate::streams;

/// What a `PORTAL` entity is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PortalEntity {
    /// A connection to a Tyk Dashboard or to Meridian's key-issuer.
    Provider,
    /// An API Product: an access policy of a provider.
    Product,
    /// A Plan: a limit policy of a provider.
    Plan,
    /// A developer's application.
    App,
    /// A request of an app for a Product with a Plan, and the credential its
    /// approval issued.
    Request,
    /// A Product or Plan the portal is creating: recorded before its policy
    /// is created in the provider, deleted once the Product or Plan is
    /// stored (or the creation undone).
    Creation,
}

impl PortalEntity {
    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provider => "provider",
            Self::Product => "product",
            Self::Plan => "plan",
            Self::App => "app",
            Self::Request => "request",
            Self::Creation => "creation",
        }
    }
}

/// A change to the portal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortalEvent {
    /// An entity was created or changed.
    Saved {
        /// What it is.
        entity: PortalEntity,
        /// Its id.
        id: String,
        /// The entity, as JSON.
        body: String,
        /// Why: `created`, `updated`, `hidden`, `restored` (Products and
        /// Plans after a sync), `approved`, `rejected`, `revoked` (requests).
        change: String,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// An entity was deleted.
    Deleted {
        /// What it was.
        entity: PortalEntity,
        /// Its id.
        id: String,
        /// The entity as it was, as JSON (for the public event).
        body: String,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// A replica took a provider's sync.
    SyncClaimed {
        /// The provider.
        provider_id: String,
        /// This run.
        run_id: Uuid,
        /// The replica running it.
        replica: String,
        /// After this instant (ms since the epoch) another replica may take
        /// the sync over: the claimant died or hung.
        lease_until_ms: i64,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// A provider's sync ended.
    SyncFinished {
        /// The provider.
        provider_id: String,
        /// The run (as claimed).
        run_id: Uuid,
        /// The report, as JSON: ok with counts, or failed with the reason.
        report: String,
        /// When (ms since the epoch).
        at_ms: i64,
    },
}

impl PortalEvent {
    /// The subject the event is stored on.
    fn subject_of(&self) -> String {
        match self {
            Self::Saved { entity, id, .. } | Self::Deleted { entity, id, .. } => {
                streams::portal_subject(*entity, id)
            }
            Self::SyncClaimed { provider_id, .. } | Self::SyncFinished { provider_id, .. } => {
                streams::portal_sync_subject(provider_id)
            }
        }
    }
}

impl Event for PortalEvent {
    const SCHEMA_VERSION: u16 = 1;
    const STREAM: &'static str = streams::PORTAL;

    fn event_type(&self) -> &'static str {
        match self {
            Self::Saved { .. } => "portal.saved",
            Self::Deleted { .. } => "portal.deleted",
            Self::SyncClaimed { .. } => "portal.sync_claimed",
            Self::SyncFinished { .. } => "portal.sync_finished",
        }
    }

    fn subject(&self) -> String {
        self.subject_of()
    }

    fn dedup_id(&self) -> String {
        match self {
            Self::Saved { change_id, .. } | Self::Deleted { change_id, .. } => {
                format!("{}:{change_id}", self.event_type())
            }
            Self::SyncClaimed { run_id, .. } | Self::SyncFinished { run_id, .. } => {
                format!("{}:{run_id}", self.event_type())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Envelope, EventMeta};

    #[test]
    fn events_round_trip_and_name_their_entity() {
        let event = PortalEvent::Saved {
            entity: PortalEntity::Product,
            id: "p.1 *".into(),
            body: r#"{"name":"Gold"}"#.into(),
            change: "hidden".into(),
            change_id: Uuid::from_u128(3),
            at_ms: 1,
        };
        let envelope = Envelope::wrap(&event, EventMeta::default());
        let back: PortalEvent = Envelope::from_bytes(&envelope.to_bytes())
            .unwrap()
            .open()
            .unwrap();
        assert_eq!(back, event);
        assert_eq!(event.subject(), "portal.product.p%2E1%20%2A");
        let claim = PortalEvent::SyncClaimed {
            provider_id: "prov".into(),
            run_id: Uuid::from_u128(4),
            replica: "r1".into(),
            lease_until_ms: 10,
            at_ms: 1,
        };
        assert_eq!(claim.subject(), "portal.sync.prov");
        assert_ne!(claim.dedup_id(), event.dedup_id());
    }
}
