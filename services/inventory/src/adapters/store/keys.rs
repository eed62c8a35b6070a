//! Where each record lives in the tree (see the layout in [`super`]).

use meridian_schemas::{AgentId, ApiId, RunId};

/// Prefix of API records.
pub(super) const API_PREFIX: &[u8] = b"a";
/// Prefix of provider records.
pub(super) const PROVIDER_PREFIX: &[u8] = b"p";
/// Prefix of outbox keys.
pub const OUTBOX_PREFIX: &[u8] = b"\xff\xffoutbox/";
/// APIs per member list.
const MEMBERS_PER_CHUNK: u64 = 1024;

/// Where a traced run's `traceparent` is kept.
pub fn trace_key(run: RunId) -> Vec<u8> {
    [b"\xff\xfftrace/".as_slice(), run.0.as_bytes()].concat()
}

pub(super) fn api_key(api: ApiId) -> Vec<u8> {
    [API_PREFIX, api.0.as_bytes()].concat()
}

pub(super) fn provider_key(agent: AgentId, provider: &str) -> Vec<u8> {
    [PROVIDER_PREFIX, agent.0.as_bytes(), provider.as_bytes()].concat()
}

/// Provider names hold no control characters, so NUL ends one: no prefix of
/// a provider's keys is another provider's.
pub(super) fn members_prefix(agent: AgentId, provider: &str) -> Vec<u8> {
    [
        b"m".as_slice(),
        agent.0.as_bytes(),
        provider.as_bytes(),
        b"\0",
    ]
    .concat()
}

/// Where a provider's `n`th member (from 0) is listed.
pub(super) fn members_key(agent: AgentId, provider: &str, n: u64) -> Vec<u8> {
    let chunk = n / MEMBERS_PER_CHUNK;
    [
        members_prefix(agent, provider),
        chunk.to_be_bytes().to_vec(),
    ]
    .concat()
}

pub(super) fn run_key(run: RunId) -> Vec<u8> {
    [b"r".as_slice(), run.0.as_bytes()].concat()
}

pub(super) fn seen_prefix(run: RunId) -> Vec<u8> {
    [b"s".as_slice(), run.0.as_bytes()].concat()
}

pub(super) fn seen_key(run: RunId, api: ApiId) -> Vec<u8> {
    [seen_prefix(run).as_slice(), api.0.as_bytes()].concat()
}

pub(super) fn outbox_key(batch_start: u64) -> Vec<u8> {
    [OUTBOX_PREFIX, &batch_start.to_be_bytes()].concat()
}
