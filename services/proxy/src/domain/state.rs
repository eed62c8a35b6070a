//! The fold of `APIS` every proxy replica keeps: definitions by id as
//! stored, and the routing table of the active ones, rebuilt on each change
//! and swapped whole (a request holds an `Arc` of the table it started with,
//! so a change never shows half-applied).

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_schemas::apis::ApisEvent;

use super::apidef::{ApiDefinition, normalize_listen_path};
use super::routes::{Route, RouteTable, compile};

/// A stored definition and the sequence of the event that stored it.
#[derive(Clone, Debug)]
pub struct StoredApi {
    /// The definition as sent (normalised by serde: unknown fields kept).
    pub definition: Arc<ApiDefinition>,
    /// Its `APIS` sequence.
    pub seq: u64,
    /// The definition compiled for the data plane, once, when it was
    /// stored (every table rebuilt after it reuses it).
    route: Arc<Route>,
    /// For a Tyk OAS API: its OpenAPI document as stored (`definition` is
    /// what it converts to).
    pub document: Option<Arc<serde_json::Value>>,
}

/// A definition in `APIS` that no longer parses or compiles: the stream
/// holds something this build cannot read (only the proxy writes it, after
/// checking). The fold halts rather than serve a partial table.
#[derive(Debug, thiserror::Error)]
#[error("API {api_id:?} in APIS at sequence {seq} cannot be read: {reason}")]
pub struct CorruptDefinition {
    /// The API.
    pub api_id: String,
    /// The event's sequence.
    pub seq: u64,
    /// Why.
    pub reason: String,
}

/// The fold of `APIS`.
#[derive(Debug, Default)]
pub struct ApisState {
    apis: BTreeMap<String, StoredApi>,
    table: Arc<RouteTable>,
    position: u64,
}

impl ApisState {
    /// Applies the event stored at `seq` (at or below the position: no-op).
    pub fn apply(&mut self, event: &ApisEvent, seq: u64) -> Result<(), CorruptDefinition> {
        if seq <= self.position {
            return Ok(());
        }
        // A save, read as the definition served, its route and (Tyk OAS)
        // the document; `None` for a deletion.
        let saved = match event {
            ApisEvent::ApiSaved { definition, .. } => Some(
                serde_json::from_str::<ApiDefinition>(definition)
                    .map_err(|e| e.to_string())
                    .and_then(|def| {
                        let route = compile(&def).map_err(|e| e.to_string())?;
                        Ok((def, route, None))
                    }),
            ),
            ApisEvent::OasSaved { document, .. } => Some(
                serde_json::from_str::<serde_json::Value>(document)
                    .map_err(|e| e.to_string())
                    .and_then(|doc| {
                        let (def, route) = super::oas::compile(&doc).map_err(|e| e.to_string())?;
                        Ok((def, route, Some(Arc::new(doc))))
                    }),
            ),
            ApisEvent::ApiDeleted { .. } => None,
        };
        let api_id = event.api_id();
        match saved {
            Some(read) => {
                let (def, route, document) = read.map_err(|reason| CorruptDefinition {
                    api_id: api_id.to_owned(),
                    seq,
                    reason,
                })?;
                self.apis.insert(
                    api_id.to_owned(),
                    StoredApi {
                        definition: Arc::new(def),
                        seq,
                        route: Arc::new(route),
                        document,
                    },
                );
            }
            None => {
                self.apis.remove(api_id);
            }
        }
        self.position = seq;
        self.table = Arc::new(self.build_table());
        Ok(())
    }

    fn build_table(&self) -> RouteTable {
        RouteTable::new(
            self.apis
                .values()
                .filter(|a| a.definition.active)
                .map(|a| a.route.clone()),
        )
    }

    /// The routing table of the active APIs.
    pub fn table(&self) -> &Arc<RouteTable> {
        &self.table
    }

    /// The last event applied: what the next write expects the stream to
    /// end at.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// One definition.
    pub fn get(&self, api_id: &str) -> Option<&StoredApi> {
        self.apis.get(api_id)
    }

    /// The sequence at which the table already holds what `event` would
    /// store (the same definition saved again), if it does.
    pub fn holds(&self, event: &ApisEvent) -> Option<u64> {
        let same = match event {
            ApisEvent::ApiSaved {
                api_id, definition, ..
            } => {
                let stored = self.apis.get(api_id)?;
                stored.document.is_none()
                    && serde_json::to_string(&*stored.definition).is_ok_and(|s| s == *definition)
            }
            ApisEvent::OasSaved {
                api_id, document, ..
            } => {
                let stored = self.apis.get(api_id)?.document.as_ref()?;
                serde_json::from_str::<serde_json::Value>(document).is_ok_and(|d| d == **stored)
            }
            ApisEvent::ApiDeleted { .. } => false,
        };
        same.then(|| self.apis.get(event.api_id()).map(|a| a.seq))?
    }

    /// Every definition, by id.
    pub fn all(&self) -> impl Iterator<Item = &StoredApi> {
        self.apis.values()
    }

    /// The active API other than `api_id` already answering on `listen_path`
    /// (compared without trailing `/`), if any.
    pub fn listen_path_taken(&self, listen_path: &str, api_id: &str) -> Option<&ApiDefinition> {
        let wanted = normalize_listen_path(listen_path);
        self.apis.values().map(|a| a.definition.as_ref()).find(|d| {
            d.active && d.api_id != api_id && normalize_listen_path(&d.proxy.listen_path) == wanted
        })
    }

    /// The route of an active API (the one the table serves).
    pub fn route(&self, listen_path: &str) -> Option<&Arc<Route>> {
        self.table.lookup(listen_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn saved(id: &str, listen: &str, active: bool) -> ApisEvent {
        ApisEvent::ApiSaved {
            api_id: id.into(),
            definition: serde_json::json!({
                "api_id": id, "active": active,
                "proxy": {"listen_path": listen, "target_url": "http://up:1"},
                "version_data": {"not_versioned": true},
                "custom_middleware": {"pre": [{"name": "kept"}]},
            })
            .to_string(),
            created: true,
            change_id: Uuid::new_v4(),
            at_ms: 0,
        }
    }

    #[test]
    fn a_definition_saved_again_unchanged_is_held_already() {
        let def: ApiDefinition = serde_json::from_value(serde_json::json!({
            "api_id": "a", "name": "a",
            "proxy": {"listen_path": "/a/", "target_url": "http://up:1"},
            "custom_middleware": {"pre": [{"name": "kept"}]},
        }))
        .unwrap();
        let event = |d: &ApiDefinition| ApisEvent::ApiSaved {
            api_id: "a".into(),
            definition: serde_json::to_string(d).unwrap(),
            created: false,
            change_id: Uuid::new_v4(),
            at_ms: 0,
        };
        let mut s = ApisState::default();
        assert_eq!(s.holds(&event(&def)), None, "not stored yet");
        s.apply(&event(&def), 3).unwrap();
        assert_eq!(s.holds(&event(&def)), Some(3));
        let mut renamed = def.clone();
        renamed.name = "b".into();
        assert_eq!(s.holds(&event(&renamed)), None);
        let delete = ApisEvent::ApiDeleted {
            api_id: "a".into(),
            change_id: Uuid::new_v4(),
            at_ms: 0,
        };
        assert_eq!(s.holds(&delete), None, "a delete is always stored");
    }

    #[test]
    fn the_table_follows_saves_deletes_and_active() {
        let mut s = ApisState::default();
        s.apply(&saved("a", "/a/", true), 1).unwrap();
        s.apply(&saved("b", "/b/", false), 2).unwrap();
        assert_eq!(s.table().len(), 1);
        assert!(s.route("/a/x").is_some());
        assert!(s.route("/b/x").is_none());
        assert_eq!(s.listen_path_taken("/a", "z").unwrap().api_id, "a");
        assert!(s.listen_path_taken("/a", "a").is_none());
        assert!(
            s.listen_path_taken("/b/", "z").is_none(),
            "inactive APIs do not hold a path"
        );
        // Replays of old sequences change nothing.
        let delete_a = ApisEvent::ApiDeleted {
            api_id: "a".into(),
            change_id: Uuid::new_v4(),
            at_ms: 0,
        };
        s.apply(&delete_a, 2).unwrap();
        assert!(s.route("/a/x").is_some());
        s.apply(&delete_a, 3).unwrap();
        assert!(s.route("/a/x").is_none());
        assert_eq!(s.position(), 3);
        let b = s.get("b").unwrap();
        assert_eq!(b.seq, 2);
        assert!(b.definition.other.contains_key("custom_middleware"));
    }
}
