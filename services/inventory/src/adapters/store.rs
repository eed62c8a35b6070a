//! The repository in the local store: key layout, the projection of the `SYNC` stream,
//! and the read queries.
//!
//! Keys (one tree; ids are raw 16-byte UUIDs, sequences big-endian):
//! - `a<api>` the [`ApiRecord`]; its definition stays in the `SYNC` log, the
//!   record names the message ([`definition`] reads it)
//! - `p<agent><provider>` the [`ProviderRecord`]
//! - `m<agent><provider>\0<chunk>` a provider's members: the ids of the APIs
//!   it created, in the order it created them, 1024 to a chunk (8 bytes,
//!   [`ProviderRecord::members`] says how many there are), each a list
//!   ([`meridian_kit::projection::items`]). A completion that may delete
//!   reads them and then each member's record. Where an API goes depends only
//!   on the events before it, so any batching builds the same lists. A write
//!   per batch instead of an index entry per API: that second random key per
//!   API was about a quarter of the projection's thread (memtable inserts),
//!   and the record already says what the entry did (the newest run that
//!   saw the API, and whether it is deleted).
//! - `r<run>` the [`RunRecord`]; `s<run><api>` "seen in this run" for the
//!   few APIs a newer run saw first (see [`first_seen_in_run`]), removed when
//!   the run ends
//! - `\xff\xffoutbox/<seq>` lifecycle events not yet published, one entry per
//!   atomic batch (keyed by its first `SYNC` sequence) holding its events in
//!   order; kept out of the digest: publishing is not state
//! - `\xff\xfftrace/<run>` the run's W3C trace context, when it was traced, so
//!   its lifecycle events join the same trace (also out of the digest)

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use meridian_kit::projection::{Ctx, Projection, Scanned, StoredEvent};
use meridian_kit::store::Tree;
use meridian_schemas::lifecycle::{LifecycleEvent, LifecycleKind};
use meridian_schemas::sync::{ApiDefinition, SyncEvent, SyncEventKind};
use meridian_schemas::{AgentId, ApiId, RunId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::domain::{
    self, ApiRecord, HistoryEntry, Observation, ProviderRecord, RunEnd, RunRecord, RunResult,
};

/// Layout version of the repository tree; bump it when a key or record
/// changes shape, and a repository in the old layout is replayed from the log
/// at start (see [`meridian_kit::projection::ensure_format`]). 2: definitions
/// stay in the log; 3: one outbox entry per batch; 4: 20-byte index keys;
/// 5: field fingerprints hash long parts in four lanes; 6: member lists
/// instead of an index entry per API; 7: records name their API's place in
/// a chunk of APIs.
pub const FORMAT: u32 = 7;

/// Prefix of outbox keys.
pub const OUTBOX_PREFIX: &[u8] = b"\xff\xffoutbox/";

/// Where a traced run's `traceparent` is kept.
pub fn trace_key(run: RunId) -> Vec<u8> {
    [b"\xff\xfftrace/".as_slice(), run.0.as_bytes()].concat()
}

fn api_key(api: ApiId) -> Vec<u8> {
    [b"a".as_slice(), api.0.as_bytes()].concat()
}
fn provider_key(agent: AgentId, provider: &str) -> Vec<u8> {
    [b"p".as_slice(), agent.0.as_bytes(), provider.as_bytes()].concat()
}
/// APIs per member list.
const MEMBERS_PER_CHUNK: u64 = 1024;

/// Provider names hold no control characters, so NUL ends one: no prefix of
/// a provider's keys is another provider's.
fn members_prefix(agent: AgentId, provider: &str) -> Vec<u8> {
    [
        b"m".as_slice(),
        agent.0.as_bytes(),
        provider.as_bytes(),
        b"\0",
    ]
    .concat()
}
/// Where a provider's `n`th member (from 0) is listed.
fn members_key(agent: AgentId, provider: &str, n: u64) -> Vec<u8> {
    let chunk = n / MEMBERS_PER_CHUNK;
    [
        members_prefix(agent, provider),
        chunk.to_be_bytes().to_vec(),
    ]
    .concat()
}
fn run_key(run: RunId) -> Vec<u8> {
    [b"r".as_slice(), run.0.as_bytes()].concat()
}
fn seen_prefix(run: RunId) -> Vec<u8> {
    [b"s".as_slice(), run.0.as_bytes()].concat()
}
fn seen_key(run: RunId, api: ApiId) -> Vec<u8> {
    [seen_prefix(run).as_slice(), api.0.as_bytes()].concat()
}
fn outbox_key(batch_start: u64) -> Vec<u8> {
    [OUTBOX_PREFIX, &batch_start.to_be_bytes()].concat()
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("postcard encoding into a Vec cannot fail")
}

fn get<T: DeserializeOwned>(ctx: &Ctx<'_>, key: &[u8]) -> Result<Option<T>, String> {
    match ctx.get(key)? {
        None => Ok(None),
        Some(bytes) => postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|e| format!("corrupt record: {e}")),
    }
}

fn put<T: Serialize>(ctx: &mut Ctx<'_>, key: &[u8], v: &T) {
    // Encoded into one reused buffer and copied once into the stored value:
    // encoding into a fresh Vec grew it several times per record.
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        let encoded = postcard::to_extend(v, std::mem::take(scratch))
            .expect("postcard encoding into a Vec cannot fail");
        ctx.insert(key, &encoded[..]);
        *scratch = encoded;
    });
}

/// Where an outbox entry sorts: (causing `SYNC` sequence, API id). The
/// lifecycle stream holds events in this order.
pub type OutboxMark = (u64, [u8; 16]);

/// The projection of `SYNC` into the repository. One value serves one tree.
#[derive(Debug, Default)]
pub struct Repository {
    /// The newest lifecycle event already in the stream when the projection
    /// started: changes at or below it were published before (by this
    /// process, before a crash, or before a rebuild), so they skip the
    /// outbox. A `rebuild` thereby writes no outbox at all.
    published: Option<OutboxMark>,
    /// Every API that has a record, loaded from the tree before the first
    /// batch and grown as records are written (before their batch commits,
    /// so after a failed batch it may hold a few more: those cost a lookup,
    /// nothing else). An API not in it is new and needs no index lookup,
    /// which is most of a first sync and of a `rebuild`. 16 bytes and a
    /// hash-table slot per API.
    known: Mutex<Option<HashSet<ApiId>>>,
    /// Run and provider records as the current batch left them: most events
    /// of a sync change both, so each is decoded once per batch and written
    /// once, when the batch ends ([`Projection::finish`]). Emptied before
    /// every batch, so a failed batch leaves nothing behind.
    working: Mutex<Working>,
}

/// Records read or changed in the current batch; `true` when changed.
#[derive(Debug, Default)]
struct Working {
    runs: HashMap<RunId, (RunRecord, bool)>,
    providers: HashMap<Vec<u8>, (ProviderRecord, bool)>,
}

impl Repository {
    /// A projection whose lifecycle events up to `published` are already in
    /// the stream.
    pub fn after(published: Option<OutboxMark>) -> Self {
        Self {
            published,
            known: Mutex::default(),
            working: Mutex::default(),
        }
    }

    fn working(&self) -> std::sync::MutexGuard<'_, Working> {
        // A panic mid-batch fails the batch, and the next one empties it.
        self.working.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The run's record as this batch sees it.
    fn run_record(&self, ctx: &Ctx<'_>, run_id: RunId) -> Result<Option<RunRecord>, String> {
        let mut working = self.working();
        if let Some((run, _)) = working.runs.get(&run_id) {
            return Ok(Some(run.clone()));
        }
        let run: Option<RunRecord> = get(ctx, &run_key(run_id))?;
        if let Some(run) = &run {
            working.runs.insert(run_id, (run.clone(), false));
        }
        Ok(run)
    }

    /// The run's record, or a new one beginning at this event.
    fn load_run(
        &self,
        ctx: &Ctx<'_>,
        event: &SyncEvent,
        seq: u64,
        at: i64,
    ) -> Result<RunRecord, String> {
        Ok(self.run_record(ctx, event.run_id)?.unwrap_or_else(|| {
            RunRecord::begin(event.run_id, event.agent_id, &event.provider, seq, at)
        }))
    }

    /// Stores the run's record when the batch ends.
    fn put_run(&self, run: RunRecord) {
        self.working().runs.insert(run.run_id, (run, true));
    }

    /// The provider's record, or a new one.
    fn load_provider(&self, ctx: &Ctx<'_>, event: &SyncEvent) -> Result<ProviderRecord, String> {
        let key = provider_key(event.agent_id, &event.provider);
        let mut working = self.working();
        if let Some((provider, _)) = working.providers.get(&key) {
            return Ok(provider.clone());
        }
        let provider = match get::<ProviderRecord>(ctx, &key)? {
            Some(stored) => {
                working.providers.insert(key, (stored.clone(), false));
                stored
            }
            None => ProviderRecord {
                agent_id: Some(event.agent_id),
                provider: event.provider.clone(),
                ..Default::default()
            },
        };
        Ok(provider)
    }

    /// Stores the provider's record when the batch ends.
    fn put_provider(&self, event: &SyncEvent, provider: ProviderRecord) {
        let key = provider_key(event.agent_id, &event.provider);
        self.working().providers.insert(key, (provider, true));
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Option<HashSet<ApiId>>> {
        // Poisoned only by a panic in the two lines below; the set is still
        // a superset then.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the API may have a record (false: it certainly has none).
    fn may_exist(&self, api: ApiId) -> bool {
        self.known()
            .as_ref()
            .is_none_or(|known| known.contains(&api))
    }

    fn remember(&self, api: ApiId) {
        if let Some(known) = self.known().as_mut() {
            known.insert(api);
        }
    }
}

/// The projection's stable id (also its durable consumer's name).
pub const PROJECTION_ID: &str = "inventory-repository";

impl Projection for Repository {
    fn prepare(&self, committed: &Tree) -> Result<(), String> {
        *self.working() = Working::default();
        let mut known = self.known();
        if known.is_none() {
            let mut ids = HashSet::new();
            for key in committed.keys_with_prefix(b"a") {
                let key = key.map_err(|e| e.to_string())?;
                let id = uuid::Uuid::from_slice(&key[1..])
                    .map_err(|_| "corrupt record key".to_owned())?;
                ids.insert(ApiId(id));
            }
            *known = Some(ids);
        }
        Ok(())
    }

    fn finish(&self, ctx: &mut Ctx<'_>) -> Result<(), String> {
        let working = std::mem::take(&mut *self.working());
        for (run_id, (run, changed)) in working.runs {
            if changed {
                put(ctx, &run_key(run_id), &run);
            }
        }
        for (key, (provider, changed)) in working.providers {
            if changed {
                put(ctx, &key, &provider);
            }
        }
        Ok(())
    }

    fn is_barrier(&self, event: &StoredEvent) -> bool {
        matches!(
            event.envelope.event_type.as_str(),
            "sync.completed" | "sync.failed"
        )
    }

    /// A run's end needs the run's seen-markers (to remove them) and, when
    /// it may delete, the provider's members (to find what to delete).
    fn scan(&self, committed: &Tree, stored: &StoredEvent) -> Result<Scanned, String> {
        let event: SyncEvent = stored.envelope.open().map_err(|e| e.to_string())?;
        let seen = committed.scan_prefix(&seen_prefix(event.run_id));
        let rows: Result<Scanned, _> = if may_delete(committed, &event)? {
            seen.chain(committed.scan_prefix(&members_prefix(event.agent_id, &event.provider)))
                .collect()
        } else {
            seen.collect()
        };
        rows.map_err(|e| e.to_string())
    }

    fn apply(&self, ctx: &mut Ctx<'_>, stored: &StoredEvent) -> Result<(), String> {
        let event: SyncEvent = stored.envelope.open().map_err(|e| e.to_string())?;
        let at = stored.envelope.occurred_at_ms;
        let seq = stored.seq;
        let traceparent = stored.envelope.traceparent.as_deref();
        match &event.kind {
            SyncEventKind::Started { provider_type } => {
                if let Some(tp) = traceparent {
                    ctx.insert(trace_key(event.run_id), tp.as_bytes());
                }
                if self.run_record(ctx, event.run_id)?.is_some() {
                    return Ok(()); // the run already began (implicitly or by a duplicate)
                }
                let run = RunRecord::begin(event.run_id, event.agent_id, &event.provider, seq, at);
                self.put_run(run);
                let mut provider = self.load_provider(ctx, &event)?;
                if provider.provider_type != *provider_type {
                    provider.provider_type.clone_from(provider_type);
                    self.put_provider(&event, provider);
                }
                Ok(())
            }
            SyncEventKind::Api {
                definition,
                content_hash,
            } => {
                let api_id =
                    ApiId::derive(event.agent_id, &event.provider, &definition.provider_api_id);
                let place = Place { seq, index: 0, at };
                apply_api(ctx, self, &event, api_id, definition, content_hash, place)
            }
            SyncEventKind::Apis { apis, .. } => {
                // In id order, like every message's lifecycle events (see
                // `OutboxMark`); an API twice in one chunk counts once (the
                // gateway never writes that, the log could still hold it).
                let mut order: Vec<(ApiId, u32)> = apis
                    .iter()
                    .zip(0u32..)
                    .map(|(api, index)| {
                        let pid = &api.definition.provider_api_id;
                        (ApiId::derive(event.agent_id, &event.provider, pid), index)
                    })
                    .collect();
                order.sort_unstable_by_key(|(id, index)| (*id.0.as_bytes(), *index));
                order.dedup_by_key(|(id, _)| *id);
                for (api_id, index) in order {
                    let api = &apis[index as usize];
                    let place = Place { seq, index, at };
                    apply_api(
                        ctx,
                        self,
                        &event,
                        api_id,
                        &api.definition,
                        &api.content_hash,
                        place,
                    )?;
                }
                Ok(())
            }
            SyncEventKind::Completed { count } => {
                let end = RunEnd::Completed { count: *count };
                reconcile_span(&event, traceparent)
                    .in_scope(|| end_run(ctx, self, &event, end, at, seq))
            }
            SyncEventKind::Failed { reason } => {
                let end = RunEnd::Failed {
                    reason: reason.clone(),
                };
                reconcile_span(&event, traceparent)
                    .in_scope(|| end_run(ctx, self, &event, end, at, seq))
            }
        }
    }
}

/// Whether ending the run may delete an API, read from the committed state
/// before its end. Only a completion deletes, and only the provider's active
/// APIs that the run did not see. Every API a current run saw is active (only
/// a newer completion could have deleted it, and that makes this run stale),
/// so a run that saw as many APIs as the provider has active leaves none
/// unseen, and its end need not read the provider's members: the common case
/// of a sync where nothing went away, which would otherwise read every
/// member's record. When a record is missing it says yes, and the end decides.
fn may_delete(committed: &Tree, event: &SyncEvent) -> Result<bool, String> {
    if !matches!(event.kind, SyncEventKind::Completed { .. }) {
        return Ok(false);
    }
    let read = |key: &[u8]| committed.get(key).map_err(|e| e.to_string());
    let (Some(run), Some(provider)) = (
        read(&run_key(event.run_id))?,
        read(&provider_key(event.agent_id, &event.provider))?,
    ) else {
        return Ok(true);
    };
    let corrupt = |e: postcard::Error| format!("corrupt record: {e}");
    let run: RunRecord = postcard::from_bytes(&run).map_err(corrupt)?;
    let provider: ProviderRecord = postcard::from_bytes(&provider).map_err(corrupt)?;
    Ok(provider.active > run.seen)
}

/// The span of a run's reconciliation, in the run's trace when it has one.
fn reconcile_span(event: &SyncEvent, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        "inventory.reconcile",
        service = "inventory",
        run_id = %event.run_id,
        provider = %event.provider,
    );
    meridian_kit::telemetry::follow(&span, traceparent);
    span
}

/// Where an API's definition is in the log, and when it was sent.
#[derive(Clone, Copy)]
struct Place {
    seq: u64,
    index: u32,
    at: i64,
}

fn apply_api(
    ctx: &mut Ctx<'_>,
    repo: &Repository,
    event: &SyncEvent,
    api_id: ApiId,
    definition: &ApiDefinition,
    content_hash: &str,
    Place { seq, index, at }: Place,
) -> Result<(), String> {
    let mut run = repo.load_run(ctx, event, seq, at)?;
    if !run.is_running() {
        return Ok(()); // a late message of an ended run
    }
    let mut provider = repo.load_provider(ctx, event)?;
    if domain::is_stale(&run, &provider) {
        return Ok(());
    }
    let existing: Option<ApiRecord> = match repo.may_exist(api_id) {
        true => get(ctx, &api_key(api_id))?,
        false => None,
    };
    if first_seen_in_run(ctx, repo, &run, existing.as_ref(), api_id)? {
        run.seen += 1;
        repo.put_run(run.clone());
    }
    let obs = Observation {
        api_id,
        run: &run,
        definition,
        content_hash,
        at_ms: at,
        seq,
        index,
    };
    let observed = domain::observe(existing.as_ref(), &obs);
    put(ctx, &api_key(api_id), &observed.record);
    repo.remember(api_id);
    let mut provider_changed = false;
    if existing.is_none() {
        let members = members_key(event.agent_id, &event.provider, provider.members);
        ctx.append(members, api_id.0.as_bytes())?;
        provider.members += 1;
        provider_changed = true;
    }
    if let Some(change) = observed.change {
        match change.kind {
            LifecycleKind::Created => provider.active += 1,
            LifecycleKind::Restored => {
                provider.active += 1;
                provider.deleted = provider.deleted.saturating_sub(1);
            }
            LifecycleKind::Updated | LifecycleKind::Deleted => {}
        }
        provider_changed |= change.kind != LifecycleKind::Updated;
        repo.emit(ctx, &observed.record, &change, &provider.provider_type)?;
    }
    if provider_changed {
        repo.put_provider(event, provider);
    }
    Ok(())
}

/// Whether this is the first message of `run` about the API, counting
/// distinct APIs per run without a marker per API. The API's record names the
/// newest run that saw it, and its order only grows, so it answers for that
/// run. Only runs that are not the newest need a `s<run><api>` marker
/// (interleaved runs of one provider): one is written when an older run sees
/// an API a newer run already saw, and for the run a newer one displaces
/// from the record while it is still receiving. Markers go when their run ends.
fn first_seen_in_run(
    ctx: &mut Ctx<'_>,
    repo: &Repository,
    run: &RunRecord,
    existing: Option<&ApiRecord>,
    api_id: ApiId,
) -> Result<bool, String> {
    let Some(existing) = existing else {
        return Ok(true);
    };
    if existing.last_seen_order == run.order {
        return Ok(false);
    }
    if existing.last_seen_order < run.order {
        // This run becomes the record's run; remember that the displaced one
        // saw the API, if it is still counting.
        let displaced = repo.run_record(ctx, existing.last_run)?;
        if displaced.is_some_and(|r| r.is_running()) {
            ctx.insert(seen_key(existing.last_run, api_id), &[][..]);
        }
        return Ok(true);
    }
    let seen = seen_key(run.run_id, api_id);
    if ctx.get(&seen)?.is_some() {
        return Ok(false);
    }
    ctx.insert(seen, &[][..]);
    Ok(true)
}

fn end_run(
    ctx: &mut Ctx<'_>,
    repo: &Repository,
    event: &SyncEvent,
    end: RunEnd,
    at: i64,
    seq: u64,
) -> Result<(), String> {
    let mut run = repo.load_run(ctx, event, seq, at)?;
    if !run.is_running() {
        return Ok(());
    }
    let mut provider = repo.load_provider(ctx, event)?;
    let finish = domain::finish(&run, &provider, end);
    run.result = finish.result;
    run.ended_at_ms = Some(at);
    // `scanned` holds this run's seen-markers, then the provider's members.
    let scanned = ctx.scanned;
    let (seen, members): (Vec<_>, Vec<_>) = scanned.iter().partition(|(k, _)| k.starts_with(b"s"));
    for (key, _) in seen {
        ctx.remove(key.to_vec());
    }
    if let Some(delete_below) = finish.delete_below {
        provider.newest_completed_order = delete_below;
        // In id order: lifecycle events of one message go out sorted by API
        // id (see `OutboxMark`).
        let mut ids = Vec::new();
        for (_, list) in members {
            for item in meridian_kit::projection::items(list) {
                let id = uuid::Uuid::from_slice(item?).map_err(|_| "corrupt member list")?;
                ids.push(ApiId(id));
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let mut deleted = 0u64;
        for api_id in ids {
            let mut record: ApiRecord =
                get(ctx, &api_key(api_id))?.ok_or("a member list names a missing API")?;
            let deleted_already = record.deleted_at_ms.is_some();
            if !domain::should_delete(record.last_seen_order, deleted_already, delete_below) {
                continue;
            }
            let change = domain::delete(&mut record, &run, at, seq);
            put(ctx, &api_key(api_id), &record);
            repo.emit(ctx, &record, &change, &provider.provider_type)?;
            deleted += 1;
        }
        provider.active = provider.active.saturating_sub(deleted);
        provider.deleted += deleted;
        if let RunResult::Completed { deleted: d, .. } = &mut run.result {
            *d = deleted;
        }
    }
    provider.last_run = Some(run.clone());
    repo.put_run(run);
    repo.put_provider(event, provider);
    Ok(())
}

impl Repository {
    fn emit(
        &self,
        ctx: &mut Ctx<'_>,
        record: &ApiRecord,
        change: &HistoryEntry,
        provider_type: &str,
    ) -> Result<(), String> {
        let mark = (change.source_seq, *record.api_id.0.as_bytes());
        if self.published.is_some_and(|published| mark <= published) {
            return Ok(());
        }
        let event = lifecycle_event(record, change, provider_type);
        ctx.append(outbox_key(ctx.batch_start()), &encode(&event))
    }
}

/// The lifecycle event of one history entry of an API: what the outbox
/// publishes when the change happens, and what the history shows later.
pub fn lifecycle_event(
    record: &ApiRecord,
    change: &HistoryEntry,
    provider_type: &str,
) -> LifecycleEvent {
    LifecycleEvent {
        api_id: record.api_id,
        kind: change.kind,
        agent_id: record.agent_id,
        provider: record.provider.clone(),
        provider_type: provider_type.to_owned(),
        name: change.name.clone(),
        version: change.version.clone(),
        content_hash: change.content_hash.clone(),
        run_id: change.run_id,
        changed: change.changed.clone(),
        source_seq: change.source_seq,
        at_ms: change.at_ms,
    }
}

/// The lifecycle events of one outbox entry, in order.
pub fn outbox_entry(value: &[u8]) -> Result<Vec<LifecycleEvent>, String> {
    meridian_kit::projection::items(value)
        .map(|item| postcard::from_bytes(item?).map_err(|e| format!("corrupt outbox entry: {e}")))
        .collect()
}

/// Every lifecycle event waiting in the outbox, in publishing order.
pub fn pending_events(tree: &Tree) -> Result<Vec<LifecycleEvent>, String> {
    let mut out = Vec::new();
    for entry in tree.scan_prefix(OUTBOX_PREFIX) {
        let (_, value) = entry.map_err(|e| e.to_string())?;
        out.extend(outbox_entry(&value)?);
    }
    Ok(out)
}

/// Reads an API's current definition from the `SYNC` message the record
/// names (one request to the stream): the chunk's API at the record's index,
/// or a version 1 message's one API.
pub async fn definition(
    js: &async_nats::jetstream::Context,
    record: &ApiRecord,
) -> Result<ApiDefinition, String> {
    let seq = record.definition.seq;
    let message = js
        .get_stream_no_info(meridian_schemas::streams::SYNC)
        .await
        .map_err(|e| e.to_string())?
        .get_raw_message(seq)
        .await
        .map_err(|e| format!("SYNC message {seq}: {e}"))?;
    let event: SyncEvent = meridian_schemas::Envelope::from_bytes(&message.payload)
        .and_then(|e| e.open())
        .map_err(|e| format!("SYNC message {seq}: {e}"))?;
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
        _ => Err(format!(
            "SYNC message {seq} does not carry API {:?}; rebuild the repository",
            record.provider_api_id
        )),
    }
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
    pub fn counts(&self) -> Result<(usize, usize), String> {
        let (mut active, mut deleted) = (0, 0);
        for entry in self.tree.scan_prefix(b"a") {
            let (_, v) = entry.map_err(|e| e.to_string())?;
            let rec: ApiRecord = postcard::from_bytes(&v).map_err(|e| e.to_string())?;
            if rec.deleted_at_ms.is_some() {
                deleted += 1;
            } else {
                active += 1;
            }
        }
        Ok((active, deleted))
    }

    /// One page of matching APIs (ordered by id) and the total that match.
    pub fn list(&self, filter: &ApiFilter) -> Result<(Vec<ApiRecord>, usize), String> {
        let needle = filter.name_contains.as_ref().map(|q| q.to_lowercase());
        let skip = (filter.page - 1) * filter.per_page;
        let mut total = 0usize;
        let mut page = Vec::new();
        for entry in self.tree.scan_prefix(b"a") {
            let (_, v) = entry.map_err(|e| e.to_string())?;
            let rec: ApiRecord = postcard::from_bytes(&v).map_err(|e| e.to_string())?;
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
    pub fn get(&self, api: ApiId) -> Result<Option<ApiRecord>, String> {
        match self.tree.get(api_key(api)).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some(rec) => postcard::from_bytes(&rec)
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }

    /// The kind of a provider (empty when unknown).
    pub fn provider_type(&self, agent: AgentId, provider: &str) -> Result<String, String> {
        match self
            .tree
            .get(provider_key(agent, provider))
            .map_err(|e| e.to_string())?
        {
            Some(v) => postcard::from_bytes::<ProviderRecord>(&v)
                .map(|p| p.provider_type)
                .map_err(|e| e.to_string()),
            None => Ok(String::new()),
        }
    }

    /// Every provider seen in a sync.
    pub fn providers(&self) -> Result<Vec<ProviderRecord>, String> {
        self.tree
            .scan_prefix(b"p")
            .map(|e| {
                let (_, v) = e.map_err(|e| e.to_string())?;
                postcard::from_bytes(&v).map_err(|e| e.to_string())
            })
            .collect()
    }

    /// Digest of the repository (see [`meridian_kit::projection::digest`]).
    pub fn digest(&self) -> Result<String, String> {
        meridian_kit::projection::digest(&self.tree).map_err(|e| e.to_string())
    }
}
