//! Relays Product, Plan and provisioning changes from `PORTAL` to the public
//! stream as CloudEvents (`io.meridian.product.*`, `io.meridian.plan.*`,
//! `io.meridian.provisioning.*`); see [`meridian_kit::relay`] for how every
//! replica relays without sending anything twice. A provisioning event names
//! the issued key by its hash only.

use meridian_kit::relay::{MapError, Public, RelaySpec};
use meridian_schemas::Envelope;
use meridian_schemas::portal::{PortalEntity, PortalEvent};
use meridian_schemas::public::{CatalogueEventData, ProvisioningEventData, portal_event};
use meridian_schemas::streams;

use crate::domain::model::{Plan, Product, Request, Status};

/// What the relay follows and where its events go.
pub const SPEC: RelaySpec = RelaySpec {
    source: streams::PORTAL,
    public: &streams::PORTAL_EVENTS,
};

fn public<D: serde::Serialize>(
    entity: &str,
    kind: &str,
    scope: &str,
    subject: &str,
    seq: u64,
    at_ms: i64,
    data: D,
) -> Result<Option<Public>, MapError> {
    let event = portal_event(
        entity,
        kind,
        subject,
        seq,
        at_ms,
        serde_json::to_value(data)?,
    );
    Ok(Some((
        streams::portal_event_subject(entity, kind, scope),
        event,
    )))
}

/// The public form of a `PORTAL` event stored at `seq`, if it has one.
pub fn to_public(envelope: &Envelope, seq: u64) -> Result<Option<Public>, MapError> {
    let event: PortalEvent = envelope.open()?;
    let (entity, body, kind, at_ms) = match &event {
        PortalEvent::Saved {
            entity,
            body,
            change,
            at_ms,
            ..
        } => (*entity, body, change.as_str(), *at_ms),
        PortalEvent::Deleted {
            entity,
            body,
            at_ms,
            ..
        } => (*entity, body, "deleted", *at_ms),
        PortalEvent::SyncClaimed { .. } | PortalEvent::SyncFinished { .. } => return Ok(None),
    };
    match entity {
        PortalEntity::Product => {
            let p: Product = serde_json::from_str(body)?;
            let data = CatalogueEventData {
                id: p.id.clone(),
                provider_id: p.provider_id.clone(),
                policy_id: p.policy_id.clone(),
                name: p.display.name.clone(),
                published: p.display.published,
                hidden: p.hidden,
                api_ids: p.apis.iter().map(|a| a.api_id.clone()).collect(),
                sequence: seq,
            };
            public("product", kind, &p.provider_id, &p.id, seq, at_ms, data)
        }
        PortalEntity::Plan => {
            let p: Plan = serde_json::from_str(body)?;
            let data = CatalogueEventData {
                id: p.id.clone(),
                provider_id: p.provider_id.clone(),
                policy_id: p.policy_id.clone(),
                name: p.display.name.clone(),
                published: p.display.published,
                hidden: p.hidden,
                api_ids: Vec::new(),
                sequence: seq,
            };
            public("plan", kind, &p.provider_id, &p.id, seq, at_ms, data)
        }
        PortalEntity::Request if matches!(kind, "approved" | "rejected") => {
            let r: Request = serde_json::from_str(body)?;
            debug_assert!(r.status != Status::Pending);
            let data = ProvisioningEventData {
                request_id: r.id.clone(),
                app_id: r.app_id.clone(),
                product_id: r.product_id.clone(),
                plan_id: r.plan_id.clone(),
                automatic: r.automatic,
                key_hash: r
                    .credential
                    .as_ref()
                    .map(|c| c.key_hash.clone())
                    .unwrap_or_default(),
                sequence: seq,
            };
            public("provisioning", kind, &r.app_id, &r.id, seq, at_ms, data)
        }
        _ => Ok(None),
    }
}
