//! Events of the `SYNC` stream: what agents sent during sync runs, as
//! agent-gateway appended it.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::envelope::Event;
use crate::ids::{AgentId, RunId};
use crate::streams;

/// One API as discovered, normalized across provider kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiDefinition {
    /// The provider's own identifier of the API.
    pub provider_api_id: String,
    /// Display name.
    pub name: String,
    /// Version label, empty when the provider has none.
    pub version: String,
    /// Base or listen path.
    pub base_path: String,
    /// Upstream or target URL.
    pub upstream_url: String,
    /// Authentication methods, for example `authToken`, `jwt`, `iam`.
    pub auth_methods: Vec<String>,
    /// Tags or labels.
    pub tags: Vec<String>,
    /// Deployment stages.
    pub stages: Vec<String>,
    /// OpenAPI document as JSON, empty when the provider has none.
    pub openapi: String,
    /// The provider's raw definition as JSON.
    pub raw: String,
}

impl ApiDefinition {
    /// SHA-256 of the definition's canonical (postcard) encoding, hex.
    pub fn content_hash(&self) -> String {
        /// Feeds the encoding straight into the hash (no 2 KB buffer).
        struct Hashing(Sha256);
        impl postcard::ser_flavors::Flavor for Hashing {
            type Output = Sha256;
            fn try_push(&mut self, data: u8) -> postcard::Result<()> {
                self.0.update([data]);
                Ok(())
            }
            fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
                self.0.update(data);
                Ok(())
            }
            fn finalize(self) -> postcard::Result<Sha256> {
                Ok(self.0)
            }
        }
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = postcard::serialize_with_flavor(self, Hashing(Sha256::new()))
            .expect("hashing cannot fail")
            .finalize();
        let mut hex = String::with_capacity(2 * digest.len());
        for b in digest {
            hex.push(char::from(HEX[usize::from(b >> 4)]));
            hex.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        hex
    }
}

impl From<crate::proto::ApiDefinition> for ApiDefinition {
    fn from(p: crate::proto::ApiDefinition) -> Self {
        Self {
            provider_api_id: p.provider_api_id,
            name: p.name,
            version: p.version,
            base_path: p.base_path,
            upstream_url: p.upstream_url,
            auth_methods: p.auth_methods,
            tags: p.tags,
            stages: p.stages,
            openapi: p.openapi,
            raw: p.raw,
        }
    }
}

impl From<ApiDefinition> for crate::proto::ApiDefinition {
    fn from(d: ApiDefinition) -> Self {
        Self {
            provider_api_id: d.provider_api_id,
            name: d.name,
            version: d.version,
            base_path: d.base_path,
            upstream_url: d.upstream_url,
            auth_methods: d.auth_methods,
            tags: d.tags,
            stages: d.stages,
            openapi: d.openapi,
            raw: d.raw,
        }
    }
}

/// What happened in a run.
// The `Api` variant is much larger than the others. Each value is built once
// and moved once per message; boxing it would add an allocation per API on
// the hottest path for no saving.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncEventKind {
    /// The agent began syncing the provider.
    Started {
        /// Provider kind as reported in the agent's hello.
        provider_type: String,
    },
    /// One discovered API.
    Api {
        /// The normalized definition.
        definition: ApiDefinition,
        /// [`ApiDefinition::content_hash`] of `definition`.
        content_hash: String,
    },
    /// The agent finished and sent `count` APIs.
    Completed {
        /// Number of api messages the agent says it sent.
        count: u64,
    },
    /// The run failed; nothing is deleted because of it.
    Failed {
        /// Why, in words.
        reason: String,
    },
}

/// One message of a sync run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncEvent {
    /// The run.
    pub run_id: RunId,
    /// The agent that ran it.
    pub agent_id: AgentId,
    /// The provider synced; passed [`streams::validate_provider_name`].
    pub provider: String,
    /// What happened.
    pub kind: SyncEventKind,
}

impl Event for SyncEvent {
    const SCHEMA_VERSION: u16 = 1;
    const STREAM: &'static str = streams::SYNC;

    fn event_type(&self) -> &'static str {
        match self.kind {
            SyncEventKind::Started { .. } => "sync.started",
            SyncEventKind::Api { .. } => "sync.api",
            SyncEventKind::Completed { .. } => "sync.completed",
            SyncEventKind::Failed { .. } => "sync.failed",
        }
    }

    fn subject(&self) -> String {
        let part = match self.kind {
            SyncEventKind::Api { .. } => streams::SyncPart::Api,
            _ => streams::SyncPart::Run,
        };
        streams::sync_subject(self.agent_id, &self.provider, part)
    }

    fn dedup_id(&self) -> String {
        let run = self.run_id;
        match &self.kind {
            SyncEventKind::Started { .. } => format!("sync:{run}:started"),
            // An API sent twice in one run is stored once.
            SyncEventKind::Api { definition, .. } => {
                format!("sync:{run}:api:{}", definition.provider_api_id)
            }
            // A run ends once: completed and failed share one id.
            SyncEventKind::Completed { .. } | SyncEventKind::Failed { .. } => {
                format!("sync:{run}:end")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_sha256_of_the_postcard_encoding_in_lowercase_hex() {
        let def = ApiDefinition {
            provider_api_id: "a1".into(),
            name: "Pets".into(),
            version: "v1".into(),
            auth_methods: vec!["jwt".into()],
            raw: "x".repeat(3000),
            ..Default::default()
        };
        let bytes = postcard::to_allocvec(&def).unwrap();
        let expected: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(def.content_hash(), expected);
        assert_eq!(expected.len(), 64);
    }
}
