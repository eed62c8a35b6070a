//! Events of the `SYNC` stream: what agents sent during sync runs, as
//! agent-gateway appended it.
//!
//! The APIs of a run travel in chunks ([`SyncEventKind::Apis`]): the gateway
//! gathers the API messages an agent sends in a row into one `SYNC` message
//! of up to [`CHUNK_MAX_APIS`] APIs and [`CHUNK_MAX_BYTES`], so storing,
//! delivering and replaying a large sync costs the bus a message per chunk
//! instead of one per API. Version 1 wrote one message per API
//! ([`SyncEventKind::Api`]); logs holding those still read.

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

/// Most APIs in one [`SyncEventKind::Apis`] chunk.
pub const CHUNK_MAX_APIS: usize = 64;
/// Most bytes of definitions in one chunk (about; an API larger than this
/// travels alone). Far below NATS's 1 MiB default payload limit.
pub const CHUNK_MAX_BYTES: usize = 256 << 10;

/// One discovered API in a chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredApi {
    /// The normalized definition.
    pub definition: ApiDefinition,
    /// [`ApiDefinition::content_hash`] of `definition`.
    pub content_hash: String,
}

impl DiscoveredApi {
    /// The API with its content hash.
    pub fn new(definition: ApiDefinition) -> Self {
        Self {
            content_hash: definition.content_hash(),
            definition,
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
    /// One discovered API, as version 1 wrote them (one per message); still
    /// read, no longer written.
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
    /// APIs the agent sent in a row, in the order it sent them: a chunk.
    /// Last, so that version 1's variants keep their encoding.
    Apis {
        /// How many API messages of the run came before the chunk: names the
        /// chunk within its run.
        first: u64,
        /// The APIs; never empty.
        apis: Vec<DiscoveredApi>,
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
    // 2: APIs in chunks (`Apis`); version 1 messages decode unchanged.
    const SCHEMA_VERSION: u16 = 2;
    const OLDEST_READABLE: u16 = 1;
    const STREAM: &'static str = streams::SYNC;

    fn event_type(&self) -> &'static str {
        match self.kind {
            SyncEventKind::Started { .. } => "sync.started",
            SyncEventKind::Api { .. } => "sync.api",
            SyncEventKind::Apis { .. } => "sync.apis",
            SyncEventKind::Completed { .. } => "sync.completed",
            SyncEventKind::Failed { .. } => "sync.failed",
        }
    }

    fn subject(&self) -> String {
        let part = match self.kind {
            SyncEventKind::Api { .. } | SyncEventKind::Apis { .. } => streams::SyncPart::Api,
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
            // A chunk's place in the run names it: a retried publish repeats it.
            SyncEventKind::Apis { first, .. } => format!("sync:{run}:apis:{first}"),
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
    use crate::envelope::{Envelope, EventMeta};

    /// The `SyncEvent` of version 1, before chunks.
    #[derive(Serialize)]
    #[allow(clippy::large_enum_variant)]
    enum KindV1 {
        Started {
            provider_type: String,
        },
        Api {
            definition: ApiDefinition,
            content_hash: String,
        },
        Completed {
            count: u64,
        },
    }
    #[derive(Serialize)]
    struct EventV1 {
        run_id: RunId,
        agent_id: AgentId,
        provider: String,
        kind: KindV1,
    }

    #[test]
    fn version_1_messages_still_decode_and_chunks_have_their_own_ids() {
        let (run_id, agent_id) = (
            RunId(uuid::Uuid::from_u128(1)),
            AgentId(uuid::Uuid::from_u128(2)),
        );
        let def = ApiDefinition {
            provider_api_id: "a1".into(),
            ..Default::default()
        };
        let v1 = |kind| EventV1 {
            run_id,
            agent_id,
            provider: "tyk".into(),
            kind,
        };
        let current = Envelope::wrap(
            &SyncEvent {
                run_id,
                agent_id,
                provider: "tyk".into(),
                kind: SyncEventKind::Completed { count: 1 },
            },
            EventMeta::default(),
        );
        for (old, expected) in [
            (
                v1(KindV1::Api {
                    content_hash: def.content_hash(),
                    definition: def.clone(),
                }),
                SyncEventKind::Api {
                    content_hash: def.content_hash(),
                    definition: def.clone(),
                },
            ),
            (
                v1(KindV1::Completed { count: 3 }),
                SyncEventKind::Completed { count: 3 },
            ),
            (
                v1(KindV1::Started {
                    provider_type: "tyk".into(),
                }),
                SyncEventKind::Started {
                    provider_type: "tyk".into(),
                },
            ),
        ] {
            let envelope = Envelope {
                schema_version: 1,
                payload: postcard::to_allocvec(&old).unwrap(),
                ..current.clone()
            };
            assert_eq!(envelope.open::<SyncEvent>().unwrap().kind, expected);
        }
        let newer = Envelope {
            schema_version: 3,
            ..current
        };
        assert!(
            newer.open::<SyncEvent>().is_err(),
            "a newer version is refused"
        );

        let chunk = |first| SyncEvent {
            run_id,
            agent_id,
            provider: "tyk".into(),
            kind: SyncEventKind::Apis {
                first,
                apis: vec![DiscoveredApi::new(def.clone())],
            },
        };
        assert_eq!(chunk(0).dedup_id(), chunk(0).dedup_id());
        assert_ne!(chunk(0).dedup_id(), chunk(64).dedup_id());
        assert_eq!(chunk(0).event_type(), "sync.apis");
    }

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
