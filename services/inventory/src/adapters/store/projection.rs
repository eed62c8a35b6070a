//! The projection of `SYNC` into the repository: it reads and writes the
//! records the rules of [`crate::domain`] need, in the layout of [`super`],
//! and queues the lifecycle events they produce in the outbox.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};

use meridian_kit::projection::{Ctx, Projection, Scanned, StoredEvent};
use meridian_kit::store::Tree;
use meridian_schemas::lifecycle::LifecycleEvent;
use meridian_schemas::sync::{ApiDefinition, SyncEvent, SyncEventKind};
use meridian_schemas::{ApiId, RunId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::RepositoryError;
use super::keys::{
    API_PREFIX, OUTBOX_PREFIX, api_key, members_key, members_prefix, outbox_key, provider_key,
    run_key, seen_key, seen_prefix, trace_key,
};
use crate::domain::{
    self, ApiRecord, HistoryEntry, Observation, ProviderRecord, RunEnd, RunRecord, Sighting,
};

/// The projection's stable id (also its durable consumer's name).
pub const PROJECTION_ID: &str = "inventory-repository";

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("postcard encoding into a Vec cannot fail")
}

fn get<T: DeserializeOwned>(ctx: &Ctx<'_>, key: &[u8]) -> Result<Option<T>, RepositoryError> {
    match ctx.get(key)? {
        None => Ok(None),
        Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
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
    /// nothing else). An API not in it is new and needs no record lookup,
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
    fn run_record(
        &self,
        ctx: &Ctx<'_>,
        run_id: RunId,
    ) -> Result<Option<RunRecord>, RepositoryError> {
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
    ) -> Result<RunRecord, RepositoryError> {
        Ok(self.run_record(ctx, event.run_id)?.unwrap_or_else(|| {
            RunRecord::begin(event.run_id, event.agent_id, &event.provider, seq, at)
        }))
    }

    /// Stores the run's record when the batch ends.
    fn put_run(&self, run: RunRecord) {
        self.working().runs.insert(run.run_id, (run, true));
    }

    /// The provider's record, or a new one.
    fn load_provider(
        &self,
        ctx: &Ctx<'_>,
        event: &SyncEvent,
    ) -> Result<ProviderRecord, RepositoryError> {
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

    /// Queues the lifecycle event of `change` in this batch's outbox entry,
    /// unless the stream already holds it.
    fn emit(
        &self,
        ctx: &mut Ctx<'_>,
        record: &ApiRecord,
        change: &HistoryEntry,
        provider_type: &str,
    ) -> Result<(), RepositoryError> {
        let mark = (change.source_seq, *record.api_id.0.as_bytes());
        if self.published.is_some_and(|published| mark <= published) {
            return Ok(());
        }
        let event = lifecycle_event(record, change, provider_type);
        Ok(ctx.append(outbox_key(ctx.batch_start()), &encode(&event))?)
    }
}

impl Projection for Repository {
    type Error = RepositoryError;

    fn prepare(&self, committed: &Tree) -> Result<(), RepositoryError> {
        *self.working() = Working::default();
        let mut known = self.known();
        if known.is_none() {
            let mut ids = HashSet::new();
            for key in committed.keys_with_prefix(API_PREFIX) {
                let key = key?;
                let id = uuid::Uuid::from_slice(&key[API_PREFIX.len()..]).map_err(|_| {
                    RepositoryError::Inconsistent("an API record key is not a UUID")
                })?;
                ids.insert(ApiId(id));
            }
            *known = Some(ids);
        }
        Ok(())
    }

    fn finish(&self, ctx: &mut Ctx<'_>) -> Result<(), RepositoryError> {
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
    fn scan(&self, committed: &Tree, stored: &StoredEvent) -> Result<Scanned, RepositoryError> {
        let event: SyncEvent = stored.envelope.open()?;
        let seen = committed.scan_prefix(&seen_prefix(event.run_id));
        let rows: Result<Scanned, _> = if may_delete(committed, &event)? {
            seen.chain(committed.scan_prefix(&members_prefix(event.agent_id, &event.provider)))
                .collect()
        } else {
            seen.collect()
        };
        Ok(rows?)
    }

    fn apply(&self, ctx: &mut Ctx<'_>, stored: &StoredEvent) -> Result<(), RepositoryError> {
        let event: SyncEvent = stored.envelope.open()?;
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

/// Whether ending the run may delete an API ([`domain::may_delete`]), read
/// from the committed state before its end. When a record is missing it
/// says yes, and the end decides.
fn may_delete(committed: &Tree, event: &SyncEvent) -> Result<bool, RepositoryError> {
    if !matches!(event.kind, SyncEventKind::Completed { .. }) {
        return Ok(false);
    }
    let (Some(run), Some(provider)) = (
        committed.get(run_key(event.run_id))?,
        committed.get(provider_key(event.agent_id, &event.provider))?,
    ) else {
        return Ok(true);
    };
    let run: RunRecord = postcard::from_bytes(&run)?;
    let provider: ProviderRecord = postcard::from_bytes(&provider)?;
    Ok(domain::may_delete(&run, &provider))
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
) -> Result<(), RepositoryError> {
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
    if counts_for_run(ctx, repo, &run, existing.as_ref(), api_id)? {
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
        provider_changed |= provider.count(change.kind);
        repo.emit(ctx, &observed.record, &change, &provider.provider_type)?;
    }
    if provider_changed {
        repo.put_provider(event, provider);
    }
    Ok(())
}

/// Whether this message counts towards the run's distinct APIs, keeping the
/// markers [`domain::Sighting`] asks for.
fn counts_for_run(
    ctx: &mut Ctx<'_>,
    repo: &Repository,
    run: &RunRecord,
    existing: Option<&ApiRecord>,
    api_id: ApiId,
) -> Result<bool, RepositoryError> {
    Ok(match domain::sighting(run, existing) {
        Sighting::New => true,
        Sighting::Again => false,
        Sighting::Displaces(displaced) => {
            if repo
                .run_record(ctx, displaced)?
                .is_some_and(|r| r.is_running())
            {
                ctx.insert(seen_key(displaced, api_id), &[][..]);
            }
            true
        }
        Sighting::Older => {
            let seen = seen_key(run.run_id, api_id);
            if ctx.get(&seen)?.is_some() {
                false
            } else {
                ctx.insert(seen, &[][..]);
                true
            }
        }
    })
}

fn end_run(
    ctx: &mut Ctx<'_>,
    repo: &Repository,
    event: &SyncEvent,
    end: RunEnd,
    at: i64,
    seq: u64,
) -> Result<(), RepositoryError> {
    let mut run = repo.load_run(ctx, event, seq, at)?;
    if !run.is_running() {
        return Ok(());
    }
    let mut provider = repo.load_provider(ctx, event)?;
    let done = domain::finish(&run, &provider, end);
    // `scanned` holds this run's seen-markers, then the provider's members.
    let scanned = ctx.scanned;
    let (seen, members): (Vec<_>, Vec<_>) = scanned.iter().partition(|(k, _)| k.starts_with(b"s"));
    for (key, _) in seen {
        ctx.remove(key.to_vec());
    }
    let mut deleted = 0u64;
    if let Some(delete_below) = done.delete_below {
        // In id order: lifecycle events of one message go out sorted by API
        // id (see `OutboxMark`).
        let mut ids = Vec::new();
        for (_, list) in members {
            for item in meridian_kit::projection::items(list) {
                let id = uuid::Uuid::from_slice(item?)
                    .map_err(|_| RepositoryError::Inconsistent("a member list holds a short id"))?;
                ids.push(ApiId(id));
            }
        }
        ids.sort_unstable();
        ids.dedup();
        for api_id in ids {
            let mut record: ApiRecord = get(ctx, &api_key(api_id))?.ok_or(
                RepositoryError::Inconsistent("a member list names a missing API"),
            )?;
            if let Some(change) = domain::reconcile(&mut record, &run, delete_below, at, seq) {
                put(ctx, &api_key(api_id), &record);
                repo.emit(ctx, &record, &change, &provider.provider_type)?;
                deleted += 1;
            }
        }
    }
    domain::close(&mut run, &mut provider, done, deleted, at);
    repo.put_run(run);
    repo.put_provider(event, provider);
    Ok(())
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
pub fn outbox_entry(value: &[u8]) -> Result<Vec<LifecycleEvent>, RepositoryError> {
    meridian_kit::projection::items(value)
        .map(|item| Ok(postcard::from_bytes(item?)?))
        .collect()
}

/// Every lifecycle event waiting in the outbox, in publishing order.
pub fn pending_events(tree: &Tree) -> Result<Vec<LifecycleEvent>, RepositoryError> {
    let mut out = Vec::new();
    for entry in tree.scan_prefix(OUTBOX_PREFIX) {
        let (_, value) = entry?;
        out.extend(outbox_entry(&value)?);
    }
    Ok(out)
}
