//! The portal as a fold of `PORTAL`: every entity with the sequence of its
//! newest change (what a compare-and-set write expects), and each
//! provider's sync claim and last report.

use std::collections::BTreeMap;

use meridian_schemas::portal::{PortalEntity, PortalEvent};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::model::{App, Creation, Plan, Product, Provider, Request};

/// An entity and the sequence of its newest change.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    /// The entity.
    pub value: T,
    /// Its newest change's sequence.
    pub seq: u64,
}

/// What one provider sync reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct SyncReport {
    /// The provider.
    pub provider_id: String,
    /// Its name.
    pub name: String,
    /// `ok` or `failed`.
    pub status: String,
    /// Why it failed (empty when ok).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Products and Plans created from new policies.
    pub new: u32,
    /// Products and Plans whose policy changed.
    pub updated: u32,
    /// Products and Plans hidden (their policy was not retrieved).
    pub hidden: u32,
    /// Products and Plans shown again (their policy came back).
    pub restored: u32,
    /// Tagged policies retrieved.
    pub policies: u32,
    /// The replica that ran it.
    pub replica: String,
    /// The run.
    pub run_id: String,
    /// When it finished (RFC 3339).
    pub finished_at: String,
}

impl SyncReport {
    /// Whether it succeeded.
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }
}

/// A provider's sync: who holds it and how the last one ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SyncSlot {
    /// Sequence of the newest claim or report (what a claim expects).
    pub seq: u64,
    /// The run in progress, if any: its id, replica and lease end.
    pub claim: Option<(Uuid, String, i64)>,
    /// The last report.
    pub last: Option<SyncReport>,
    /// When the last sync finished (ms since the epoch).
    pub finished_at_ms: i64,
}

impl SyncSlot {
    /// The claim still held at `now_ms`.
    pub fn running(&self, now_ms: i64) -> Option<&(Uuid, String, i64)> {
        self.claim.as_ref().filter(|(_, _, until)| *until > now_ms)
    }
}

/// The whole portal.
#[derive(Clone, Debug, Default)]
pub struct PortalState {
    providers: BTreeMap<String, Versioned<Provider>>,
    products: BTreeMap<String, Versioned<Product>>,
    plans: BTreeMap<String, Versioned<Plan>>,
    apps: BTreeMap<String, Versioned<App>>,
    requests: BTreeMap<String, Versioned<Request>>,
    creations: BTreeMap<String, Versioned<Creation>>,
    /// Newest sequence of every entity subject, deleted ones included.
    last: BTreeMap<(PortalEntity, String), u64>,
    syncs: BTreeMap<String, SyncSlot>,
    position: u64,
}

/// An event whose JSON does not parse (the fold halts on it).
#[derive(Debug, thiserror::Error)]
#[error("{entity:?} {id:?}: {source}")]
pub struct CorruptObject {
    entity: PortalEntity,
    id: String,
    #[source]
    source: serde_json::Error,
}

fn parse<T: DeserializeOwned>(
    entity: PortalEntity,
    id: &str,
    body: &str,
) -> Result<T, CorruptObject> {
    serde_json::from_str(body).map_err(|source| CorruptObject {
        entity,
        id: id.to_owned(),
        source,
    })
}

fn put<T>(map: &mut BTreeMap<String, Versioned<T>>, id: &str, value: T, seq: u64) {
    map.insert(id.to_owned(), Versioned { value, seq });
}

impl PortalState {
    /// Applies one event stored at `seq`. Applying an event twice (a
    /// redelivery at or below the position) changes nothing.
    pub fn apply(&mut self, event: &PortalEvent, seq: u64) -> Result<(), CorruptObject> {
        if seq <= self.position {
            return Ok(());
        }
        match event {
            PortalEvent::Saved {
                entity, id, body, ..
            } => {
                match entity {
                    PortalEntity::Provider => {
                        put(&mut self.providers, id, parse(*entity, id, body)?, seq);
                    }
                    PortalEntity::Product => {
                        put(&mut self.products, id, parse(*entity, id, body)?, seq);
                    }
                    PortalEntity::Plan => put(&mut self.plans, id, parse(*entity, id, body)?, seq),
                    PortalEntity::App => put(&mut self.apps, id, parse(*entity, id, body)?, seq),
                    PortalEntity::Request => {
                        put(&mut self.requests, id, parse(*entity, id, body)?, seq);
                    }
                    PortalEntity::Creation => {
                        put(&mut self.creations, id, parse(*entity, id, body)?, seq);
                    }
                }
                self.last.insert((*entity, id.clone()), seq);
            }
            PortalEvent::Deleted { entity, id, .. } => {
                match entity {
                    PortalEntity::Provider => drop(self.providers.remove(id)),
                    PortalEntity::Product => drop(self.products.remove(id)),
                    PortalEntity::Plan => drop(self.plans.remove(id)),
                    PortalEntity::App => drop(self.apps.remove(id)),
                    PortalEntity::Request => drop(self.requests.remove(id)),
                    PortalEntity::Creation => drop(self.creations.remove(id)),
                }
                self.last.insert((*entity, id.clone()), seq);
            }
            PortalEvent::SyncClaimed {
                provider_id,
                run_id,
                replica,
                lease_until_ms,
                ..
            } => {
                let slot = self.syncs.entry(provider_id.clone()).or_default();
                slot.seq = seq;
                slot.claim = Some((*run_id, replica.clone(), *lease_until_ms));
            }
            PortalEvent::SyncFinished {
                provider_id,
                report,
                at_ms,
                ..
            } => {
                let report: SyncReport =
                    serde_json::from_str(report).map_err(|source| CorruptObject {
                        entity: PortalEntity::Provider,
                        id: provider_id.clone(),
                        source,
                    })?;
                let slot = self.syncs.entry(provider_id.clone()).or_default();
                slot.seq = seq;
                slot.claim = None;
                slot.last = Some(report);
                slot.finished_at_ms = *at_ms;
            }
        }
        self.position = seq;
        Ok(())
    }

    /// Where the log already holds what `event` would store: the entity's
    /// last sequence when it saves an entity exactly as stored now (a write
    /// that changes nothing, which the API then does not append). Anything
    /// else, or a body that does not parse, is a change.
    pub fn holds(&self, event: &PortalEvent) -> Option<u64> {
        fn same<T: DeserializeOwned + PartialEq>(
            map: &BTreeMap<String, Versioned<T>>,
            id: &str,
            body: &str,
        ) -> bool {
            map.get(id)
                .is_some_and(|v| serde_json::from_str::<T>(body).is_ok_and(|b| b == v.value))
        }
        let PortalEvent::Saved {
            entity, id, body, ..
        } = event
        else {
            return None;
        };
        let unchanged = match entity {
            PortalEntity::Provider => same(&self.providers, id, body),
            PortalEntity::Product => same(&self.products, id, body),
            PortalEntity::Plan => same(&self.plans, id, body),
            PortalEntity::App => same(&self.apps, id, body),
            PortalEntity::Request => same(&self.requests, id, body),
            PortalEntity::Creation => same(&self.creations, id, body),
        };
        unchanged.then(|| self.last_seq(*entity, id))
    }

    /// The sequence a write of `(entity, id)` expects (0: never written).
    pub fn last_seq(&self, entity: PortalEntity, id: &str) -> u64 {
        self.last
            .get(&(entity, id.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// The last stream sequence folded.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// A provider.
    pub fn provider(&self, id: &str) -> Option<&Provider> {
        self.providers.get(id).map(|v| &v.value)
    }
    /// Every provider, by id.
    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.providers.values().map(|v| &v.value)
    }
    /// A Product.
    pub fn product(&self, id: &str) -> Option<&Product> {
        self.products.get(id).map(|v| &v.value)
    }
    /// Every Product, by id.
    pub fn products(&self) -> impl Iterator<Item = &Product> {
        self.products.values().map(|v| &v.value)
    }
    /// A Plan.
    pub fn plan(&self, id: &str) -> Option<&Plan> {
        self.plans.get(id).map(|v| &v.value)
    }
    /// Every Plan, by id.
    pub fn plans(&self) -> impl Iterator<Item = &Plan> {
        self.plans.values().map(|v| &v.value)
    }
    /// An app.
    pub fn app(&self, id: &str) -> Option<&App> {
        self.apps.get(id).map(|v| &v.value)
    }
    /// Every app, by id.
    pub fn apps(&self) -> impl Iterator<Item = &App> {
        self.apps.values().map(|v| &v.value)
    }
    /// A provisioning request.
    pub fn request(&self, id: &str) -> Option<&Request> {
        self.requests.get(id).map(|v| &v.value)
    }
    /// Every provisioning request, by id.
    pub fn requests(&self) -> impl Iterator<Item = &Request> {
        self.requests.values().map(|v| &v.value)
    }
    /// A Product or Plan being created, by its creation id.
    pub fn creation(&self, id: &str) -> Option<&Creation> {
        self.creations.get(id).map(|v| &v.value)
    }
    /// Every creation under way, by id.
    pub fn creations(&self) -> impl Iterator<Item = &Creation> {
        self.creations.values().map(|v| &v.value)
    }
    /// A provider's sync slot.
    pub fn sync(&self, provider_id: &str) -> SyncSlot {
        self.syncs.get(provider_id).cloned().unwrap_or_default()
    }
}

impl meridian_kit::projection::Digested for PortalState {
    /// SHA-256 over every entity, sync slot and the position: equal on
    /// every replica that folded the same log.
    fn digest(&self) -> String {
        let mut h = Sha256::new();
        let mut part = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        fn each<T: Serialize>(
            part: &mut impl FnMut(&[u8]),
            kind: &str,
            map: &BTreeMap<String, Versioned<T>>,
        ) {
            for (id, v) in map {
                part(kind.as_bytes());
                part(id.as_bytes());
                part(&serde_json::to_vec(&v.value).expect("entities serialize"));
                part(&v.seq.to_le_bytes());
            }
        }
        each(&mut part, "provider", &self.providers);
        each(&mut part, "product", &self.products);
        each(&mut part, "plan", &self.plans);
        each(&mut part, "app", &self.apps);
        each(&mut part, "request", &self.requests);
        each(&mut part, "creation", &self.creations);
        for ((entity, id), seq) in &self.last {
            part(entity.as_str().as_bytes());
            part(id.as_bytes());
            part(&seq.to_le_bytes());
        }
        for (id, slot) in &self.syncs {
            part(id.as_bytes());
            part(&slot.seq.to_le_bytes());
            part(format!("{:?}", slot.claim).as_bytes());
            part(&serde_json::to_vec(&slot.last).expect("reports serialize"));
        }
        part(&self.position.to_le_bytes());
        format!("{:x}", h.finalize())
    }

    fn position(&self) -> u64 {
        PortalState::position(self)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn saved(body: serde_json::Value) -> PortalEvent {
        PortalEvent::Saved {
            entity: PortalEntity::App,
            id: "a1".into(),
            body: body.to_string(),
            change: "updated".into(),
            change_id: Uuid::new_v4(),
            at_ms: 0,
        }
    }

    #[test]
    fn a_save_of_what_is_stored_is_held_and_anything_else_is_a_change() {
        let mut state = PortalState::default();
        let app = json!({"id": "a1", "name": "Shop", "owner": "dev@example", "updated_at_ms": 5});
        assert_eq!(state.holds(&saved(app.clone())), None, "not stored yet");
        state.apply(&saved(app.clone()), 3).unwrap();
        assert_eq!(state.holds(&saved(app.clone())), Some(3));
        let mut renamed = app.clone();
        renamed["name"] = json!("Shop 2");
        assert_eq!(state.holds(&saved(renamed)), None);
        assert_eq!(state.holds(&saved(json!([1, 2]))), None, "does not parse");
        let deleted = PortalEvent::Deleted {
            entity: PortalEntity::App,
            id: "a1".into(),
            body: app.to_string(),
            change_id: Uuid::new_v4(),
            at_ms: 0,
        };
        assert_eq!(state.holds(&deleted), None, "only saves are compared");
    }
}
