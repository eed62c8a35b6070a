//! The gateway's API definitions as key-issuer needs them, folded in
//! memory from `APIS` (written by the proxy's admin side; read here only):
//! which APIs exist and which take OAuth 2.0, so that an OAuth client is
//! refused for an API that does not exist or does not use OAuth, as Tyk
//! refuses it.

use std::collections::HashMap;
use std::sync::Arc;

use meridian_kit::writer::Lock;
use std::time::Duration;

use meridian_kit::projection::{Fold, Progress, StoredEvent};
use meridian_schemas::DecodeError;
use meridian_schemas::apis::ApisEvent;

/// What key-issuer knows of one gateway API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApiFacts {
    /// `use_oauth2`.
    pub oauth2: bool,
    /// `enable_jwt` (Tyk lets a policy's OAuth client cover JWT APIs).
    pub jwt: bool,
}

/// The gateway's APIs by id.
#[derive(Debug, Default)]
pub struct GatewayApis {
    apis: HashMap<String, ApiFacts>,
}

impl GatewayApis {
    /// Applies one change of `APIS`.
    pub fn apply(&mut self, event: &ApisEvent) {
        match event {
            ApisEvent::ApiSaved {
                api_id, definition, ..
            }
            | ApisEvent::OasSaved {
                api_id, definition, ..
            } => {
                // The proxy checked the definition before storing it; a
                // field that does not read as a bool is false.
                let def: serde_json::Value = serde_json::from_str(definition).unwrap_or_default();
                let flag =
                    |name: &str| def.get(name).and_then(serde_json::Value::as_bool) == Some(true);
                self.apis.insert(
                    api_id.clone(),
                    ApiFacts {
                        oauth2: flag("use_oauth2"),
                        jwt: flag("enable_jwt"),
                    },
                );
            }
            ApisEvent::ApiDeleted { api_id, .. } => {
                self.apis.remove(api_id);
            }
        }
    }

    /// The API, if the gateway has it.
    pub fn get(&self, api_id: &str) -> Option<ApiFacts> {
        self.apis.get(api_id).copied()
    }
}

impl Fold for GatewayApis {
    type Error = DecodeError;

    fn apply(&mut self, stored: &StoredEvent) -> Result<(), DecodeError> {
        GatewayApis::apply(self, &stored.envelope.open()?);
        Ok(())
    }
}

/// The fold, shared by its runner and the handlers, with its progress.
#[derive(Clone)]
pub struct SharedApis {
    state: Arc<Lock<GatewayApis>>,
    progress: Progress,
}

impl SharedApis {
    /// Wraps a fold and its runner's progress.
    pub fn new(state: Arc<Lock<GatewayApis>>, progress: Progress) -> Self {
        Self { state, progress }
    }

    /// The API; before "there is none", catches up with `APIS` as it is now
    /// (the proxy may have just stored it).
    pub async fn find(&self, api_id: &str) -> Option<ApiFacts> {
        if let Some(found) = self.read(api_id) {
            return Some(found);
        }
        self.progress.catch_up(Duration::from_secs(5)).await;
        self.read(api_id)
    }

    fn read(&self, api_id: &str) -> Option<ApiFacts> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(api_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn saved(id: &str, def: &str) -> ApisEvent {
        ApisEvent::ApiSaved {
            api_id: id.into(),
            definition: def.into(),
            created: true,
            change_id: Uuid::nil(),
            at_ms: 0,
        }
    }

    #[test]
    fn apis_are_known_with_their_oauth_and_forgotten_when_deleted() {
        let mut apis = GatewayApis::default();
        apis.apply(&saved("a", r#"{"api_id": "a", "use_oauth2": true}"#));
        apis.apply(&saved("b", r#"{"api_id": "b"}"#));
        apis.apply(&saved("c", r#"{"api_id": "c", "enable_jwt": true}"#));
        assert_eq!(
            apis.get("a"),
            Some(ApiFacts {
                oauth2: true,
                jwt: false
            })
        );
        assert_eq!(apis.get("b"), Some(ApiFacts::default()));
        assert_eq!(
            apis.get("c"),
            Some(ApiFacts {
                oauth2: false,
                jwt: true
            })
        );
        apis.apply(&ApisEvent::ApiDeleted {
            api_id: "a".into(),
            change_id: Uuid::nil(),
            at_ms: 0,
        });
        assert_eq!(apis.get("a"), None);
    }
}
