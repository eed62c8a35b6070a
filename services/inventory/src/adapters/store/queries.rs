//! Reading the repository: listings, one API, providers, the digest, and an
//! API's definition from the `SYNC` message its record names.

use meridian_kit::store::Tree;
use meridian_schemas::sync::{ApiDefinition, SyncEvent, SyncEventKind};
use meridian_schemas::{AgentId, ApiId};

use super::RepositoryError;
use super::keys::{API_PREFIX, PROVIDER_PREFIX, api_key, provider_key};
use crate::domain::{ApiRecord, ProviderRecord};

/// Reads an API's current definition from the `SYNC` message the record
/// names (one request to the stream): the chunk's API at the record's index,
/// or a version 1 message's one API.
pub async fn definition(
    js: &async_nats::jetstream::Context,
    record: &ApiRecord,
) -> Result<ApiDefinition, DefinitionError> {
    let seq = record.definition.seq;
    let message = js
        .get_stream_no_info(meridian_schemas::streams::SYNC)
        .await
        .map_err(|e| DefinitionError::Read {
            seq,
            source: e.into(),
        })?
        .get_raw_message(seq)
        .await
        .map_err(|e| DefinitionError::Read {
            seq,
            source: e.into(),
        })?;
    let event: SyncEvent = meridian_schemas::Envelope::from_bytes(&message.payload)
        .and_then(|e| e.open())
        .map_err(|source| DefinitionError::Decode { seq, source })?;
    let index = record.definition.index as usize;
    let found = match event.kind {
        SyncEventKind::Api { definition, .. } if index == 0 => Some(definition),
        SyncEventKind::Apis { mut apis, .. } if index < apis.len() => {
            Some(apis.swap_remove(index).definition)
        }
        _ => None,
    };
    match found {
        Some(definition) if definition.provider_api_id == record.provider_api_id => Ok(definition),
        _ => Err(DefinitionError::Missing {
            seq,
            api: record.provider_api_id.clone(),
        }),
    }
}

/// Why an API's definition could not be read from the log.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// NATS did not give the message.
    #[error("reading SYNC message {seq}: {source}")]
    Read {
        /// The message.
        seq: u64,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The message does not decode.
    #[error("SYNC message {seq}: {source}")]
    Decode {
        /// The message.
        seq: u64,
        /// Why.
        #[source]
        source: meridian_schemas::DecodeError,
    },
    /// The message does not carry the API the record names.
    #[error("SYNC message {seq} does not carry API {api:?}; rebuild the repository")]
    Missing {
        /// The message.
        seq: u64,
        /// The provider's id of the API.
        api: String,
    },
}

/// Read access to the repository.
#[derive(Clone)]
pub struct Queries {
    tree: Tree,
}

/// Which APIs a listing wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    /// Not deleted.
    Active,
    /// Deleted.
    Deleted,
    /// Both.
    All,
}

/// A listing request.
#[derive(Clone, Debug)]
pub struct ApiFilter {
    /// Only this provider.
    pub provider: Option<String>,
    /// Only this agent.
    pub agent_id: Option<AgentId>,
    /// Which statuses.
    pub status: StatusFilter,
    /// Case-insensitive substring of the name.
    pub name_contains: Option<String>,
    /// 1-based page.
    pub page: usize,
    /// Page size.
    pub per_page: usize,
}

impl Queries {
    /// Reads `tree`.
    pub fn new(tree: Tree) -> Self {
        Self { tree }
    }

    /// How many APIs are active and how many deleted.
    pub fn counts(&self) -> Result<(usize, usize), RepositoryError> {
        let (mut active, mut deleted) = (0, 0);
        for entry in self.tree.scan_prefix(API_PREFIX) {
            let (_, v) = entry?;
            let rec: ApiRecord = postcard::from_bytes(&v)?;
            if rec.deleted_at_ms.is_some() {
                deleted += 1;
            } else {
                active += 1;
            }
        }
        Ok((active, deleted))
    }

    /// One page of matching APIs (ordered by id) and the total that match.
    pub fn list(&self, filter: &ApiFilter) -> Result<(Vec<ApiRecord>, usize), RepositoryError> {
        let needle = filter.name_contains.as_ref().map(|q| q.to_lowercase());
        let skip = (filter.page - 1) * filter.per_page;
        let mut total = 0usize;
        let mut page = Vec::new();
        for entry in self.tree.scan_prefix(API_PREFIX) {
            let (_, v) = entry?;
            let rec: ApiRecord = postcard::from_bytes(&v)?;
            let status_ok = match filter.status {
                StatusFilter::Active => rec.deleted_at_ms.is_none(),
                StatusFilter::Deleted => rec.deleted_at_ms.is_some(),
                StatusFilter::All => true,
            };
            if !status_ok
                || filter.provider.as_ref().is_some_and(|p| *p != rec.provider)
                || filter.agent_id.is_some_and(|a| a != rec.agent_id)
                || needle
                    .as_ref()
                    .is_some_and(|n| !rec.name.to_lowercase().contains(n))
            {
                continue;
            }
            if total >= skip && page.len() < filter.per_page {
                page.push(rec);
            }
            total += 1;
        }
        Ok((page, total))
    }

    /// One API's record.
    pub fn get(&self, api: ApiId) -> Result<Option<ApiRecord>, RepositoryError> {
        match self.tree.get(api_key(api))? {
            None => Ok(None),
            Some(rec) => Ok(Some(postcard::from_bytes(&rec)?)),
        }
    }

    /// The kind of a provider (empty when unknown).
    pub fn provider_type(&self, agent: AgentId, provider: &str) -> Result<String, RepositoryError> {
        match self.tree.get(provider_key(agent, provider))? {
            Some(v) => Ok(postcard::from_bytes::<ProviderRecord>(&v)?.provider_type),
            None => Ok(String::new()),
        }
    }

    /// Every provider seen in a sync.
    pub fn providers(&self) -> Result<Vec<ProviderRecord>, RepositoryError> {
        self.tree
            .scan_prefix(PROVIDER_PREFIX)
            .map(|e| Ok(postcard::from_bytes(&e?.1)?))
            .collect()
    }

    /// Digest of the repository (see [`meridian_kit::projection::digest`]).
    pub fn digest(&self) -> Result<String, RepositoryError> {
        Ok(meridian_kit::projection::digest(&self.tree)?)
    }
}
