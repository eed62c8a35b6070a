//! A run's APIs gathered into `SYNC` messages ([`SyncEventKind::Apis`]): one
//! message per up to [`CHUNK_MAX_APIS`] APIs or [`CHUNK_MAX_BYTES`] that an
//! agent sent in a row, so a large sync costs the bus a publish per chunk,
//! not per API. Runs never share a chunk.
//!
//! [`SyncEventKind::Apis`]: meridian_schemas::sync::SyncEventKind::Apis

use std::sync::Arc;
use std::time::Duration;

use meridian_schemas::RunId;
use meridian_schemas::sync::{CHUNK_MAX_APIS, CHUNK_MAX_BYTES, DiscoveredApi};

use crate::domain::runs::RunFacts;

/// An API message accepted into its run.
pub(super) struct AcceptedApi {
    pub(super) run_id: RunId,
    /// Its run's provider and trace context.
    pub(super) run: Arc<RunFacts>,
    /// API messages of the run before it.
    pub(super) number: u64,
    /// Its encoded size.
    pub(super) bytes: usize,
    pub(super) api: DiscoveredApi,
}

/// APIs of one run waiting to be published together.
pub(super) struct Chunk {
    pub(super) run_id: RunId,
    pub(super) run: Arc<RunFacts>,
    /// API messages of the run before the chunk's first.
    pub(super) first: u64,
    pub(super) apis: Vec<DiscoveredApi>,
    pub(super) bytes: usize,
    /// When it is published even if not full.
    pub(super) due: tokio::time::Instant,
}

/// Removes and returns the chunks that match, keeping the others in order.
pub(super) fn drain_where(chunks: &mut Vec<Chunk>, matches: impl Fn(&Chunk) -> bool) -> Vec<Chunk> {
    let (taken, kept) = std::mem::take(chunks).into_iter().partition(matches);
    *chunks = kept;
    taken
}

/// Adds an API to its run's chunk, opening one when there is none;
/// returns a chunk that is ready to publish: the run's, once full, or the
/// one the API would have overfilled (the API then opens the next).
pub(super) fn add_to_chunk(
    chunks: &mut Vec<Chunk>,
    api: AcceptedApi,
    linger: Duration,
) -> Option<Chunk> {
    let position = chunks.iter().position(|c| c.run_id == api.run_id);
    let mut ready = None;
    if let Some(i) = position
        && chunks[i].bytes + api.bytes > CHUNK_MAX_BYTES
    {
        ready = Some(chunks.swap_remove(i));
    }
    let i = match chunks.iter().position(|c| c.run_id == api.run_id) {
        Some(i) => i,
        None => {
            chunks.push(Chunk {
                run_id: api.run_id,
                run: api.run,
                first: api.number,
                apis: Vec::with_capacity(CHUNK_MAX_APIS),
                bytes: 0,
                due: tokio::time::Instant::now() + linger,
            });
            chunks.len() - 1
        }
    };
    let chunk = &mut chunks[i];
    chunk.apis.push(api.api);
    chunk.bytes += api.bytes;
    if ready.is_none() && chunk.apis.len() >= CHUNK_MAX_APIS {
        ready = Some(chunks.swap_remove(i));
    }
    ready
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_schemas::sync::ApiDefinition;

    fn api(run: RunId, number: u64, bytes: usize) -> AcceptedApi {
        AcceptedApi {
            run_id: run,
            run: Arc::new(RunFacts {
                provider: "p".into(),
                provider_type: "tyk".into(),
                traceparent: None,
            }),
            number,
            bytes,
            api: DiscoveredApi::new(ApiDefinition {
                provider_api_id: format!("api-{number}"),
                ..Default::default()
            }),
        }
    }

    /// A chunk is ready when full, or when the next API would overfill it
    /// by bytes (that API opens the next chunk); runs never share one.
    #[test]
    fn chunks_fill_per_run_by_count_and_by_bytes() {
        let linger = Duration::from_millis(5);
        let (a, b) = (RunId::new_random(), RunId::new_random());
        let mut chunks = Vec::new();
        for n in 0..CHUNK_MAX_APIS as u64 - 1 {
            assert!(add_to_chunk(&mut chunks, api(a, n, 100), linger).is_none());
        }
        assert!(add_to_chunk(&mut chunks, api(b, 0, 100), linger).is_none());
        let full = add_to_chunk(&mut chunks, api(a, 63, 100), linger).expect("64 APIs");
        assert_eq!(
            (full.run_id, full.first, full.apis.len()),
            (a, 0, CHUNK_MAX_APIS)
        );
        assert_eq!(chunks.len(), 1, "run b's chunk stays open");

        let big = CHUNK_MAX_BYTES / 2 - 10;
        assert!(add_to_chunk(&mut chunks, api(a, 64, big), linger).is_none());
        assert!(add_to_chunk(&mut chunks, api(a, 65, big), linger).is_none());
        let over = add_to_chunk(&mut chunks, api(a, 66, big), linger).expect("over the bytes");
        assert_eq!((over.first, over.apis.len()), (64, 2));
        let next = chunks.iter().find(|c| c.run_id == a).unwrap();
        assert_eq!((next.first, next.apis.len()), (66, 1));
    }
}
