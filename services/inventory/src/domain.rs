//! The API Repository's records and reconciliation rules. Pure: no I/O, no
//! clock; time and stream order come in as values.
//!
//! Rules (one provider = one agent's provider):
//! - A run's *order* is the stream sequence of its first message (normally
//!   `started`). Later-started runs are newer.
//! - An `api` message creates the API, updates it (definition hash changed),
//!   or restores it (it was deleted). A message from a run older than the
//!   newest completed run of the provider is stale and changes nothing; a
//!   message older than what the API already shows does not roll its
//!   definition back.
//! - `completed` with a count equal to the distinct APIs the run sent, from a
//!   run that is not older than the newest completed run, deletes every live
//!   API of the provider that neither this run nor a newer one saw. A count
//!   mismatch makes the run *incomplete*; `failed` and incomplete runs delete
//!   nothing.

use meridian_schemas::lifecycle::LifecycleKind;
use meridian_schemas::sync::ApiDefinition;
use meridian_schemas::{AgentId, ApiId, RunId};
use serde::{Deserialize, Serialize};

/// One API in the repository. Its definition stays in the `SYNC` log (which
/// keeps every message, so rebuilds are possible); the record points at the
/// message that carried it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiRecord {
    /// Repository id.
    pub api_id: ApiId,
    /// Reporting agent.
    pub agent_id: AgentId,
    /// Provider name.
    pub provider: String,
    /// The provider's own id.
    pub provider_api_id: String,
    /// Current name.
    pub name: String,
    /// Current version.
    pub version: String,
    /// Hash of the current definition.
    pub content_hash: String,
    /// Where the current definition is, and what it looked like field by
    /// field.
    pub definition: DefinitionRef,
    /// When first seen (ms since epoch).
    pub first_seen_ms: i64,
    /// When last seen.
    pub last_seen_ms: i64,
    /// Order of the newest run that saw it.
    pub last_seen_order: u64,
    /// The newest run that saw it.
    pub last_run: RunId,
    /// When it was deleted, if it is.
    pub deleted_at_ms: Option<i64>,
    /// Every lifecycle change, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// The `SYNC` message that carried an API's current definition, with a
/// fingerprint of each field so that a later update can name the fields it
/// changed without the old definition at hand.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefinitionRef {
    /// Stream sequence of the `SYNC` message (a chunk, or a version 1
    /// `sync.api` message).
    pub seq: u64,
    /// The API's place in that chunk (0 in a version 1 message).
    pub index: u32,
    /// [`fingerprint`] of the definition.
    pub fields: [u64; 9],
}

/// The definition's parts as lifecycle events name them.
pub const FIELDS: [&str; 9] = [
    "name", "version", "paths", "upstream", "auth", "tags", "stages", "spec", "raw",
];

/// One 64-bit hash per part of the definition, in [`FIELDS`] order. Stable
/// across builds and platforms (it is stored); it names changed parts, the
/// content hash decides whether anything changed.
pub fn fingerprint(def: &ApiDefinition) -> [u64; FIELDS.len()] {
    fn hash<'a>(parts: impl IntoIterator<Item = &'a str>) -> u64 {
        // Multiply-xorshift mixing of eight bytes per step, each part's
        // length first (so ["ab", "c"] and ["a", "bc"] differ). Long parts
        // (the raw definition) go 32 bytes at a time into four independent
        // lanes, which the processor mixes in parallel; the rest into the
        // first lane.
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let mix = |h: u64, word: u64| {
            let h = (h ^ word).wrapping_mul(K);
            h ^ (h >> 29)
        };
        let word = |w: &[u8]| u64::from_le_bytes(w.try_into().expect("8 bytes"));
        let mut lanes: [u64; 4] = [
            0x243f_6a88_85a3_08d3,
            0x1319_8a2e_0370_7344,
            0xa409_3822_299f_31d0,
            0x082e_fa98_ec4e_6c89,
        ];
        for part in parts {
            lanes[0] = mix(lanes[0], part.len() as u64);
            let mut blocks = part.as_bytes().chunks_exact(32);
            for block in &mut blocks {
                for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(8)) {
                    *lane = mix(*lane, word(w));
                }
            }
            let mut words = blocks.remainder().chunks_exact(8);
            for w in &mut words {
                lanes[0] = mix(lanes[0], word(w));
            }
            let mut tail = [0u8; 8];
            tail[..words.remainder().len()].copy_from_slice(words.remainder());
            lanes[0] = mix(lanes[0], u64::from_le_bytes(tail));
        }
        lanes[1..].iter().fold(lanes[0], |h, &lane| mix(h, lane))
    }
    let one = |s: &String| hash([s.as_str()]);
    let list = |v: &[String]| hash(v.iter().map(String::as_str));
    [
        one(&def.name),
        one(&def.version),
        one(&def.base_path),
        one(&def.upstream_url),
        list(&def.auth_methods),
        list(&def.tags),
        list(&def.stages),
        one(&def.openapi),
        one(&def.raw),
    ]
}

/// One lifecycle change of an API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// What happened.
    pub kind: LifecycleKind,
    /// When (the causing sync message's time).
    pub at_ms: i64,
    /// The run that caused it.
    pub run_id: RunId,
    /// Definition hash after the change.
    pub content_hash: String,
    /// For updates: the fields that changed.
    pub changed: Vec<String>,
    /// The causing sync message's stream sequence.
    pub source_seq: u64,
    /// The API's name after the change.
    pub name: String,
    /// The API's version after the change.
    pub version: String,
}

/// How a run ended (or that it has not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunResult {
    /// Still receiving.
    Running,
    /// Completed with a matching count.
    Completed {
        /// APIs sent.
        count: u64,
        /// APIs this completion deleted.
        deleted: u64,
        /// A newer run had already completed, so it deleted nothing.
        superseded: bool,
    },
    /// The agent's count did not match what arrived; deleted nothing.
    Incomplete {
        /// What the agent said it sent.
        expected: u64,
        /// Distinct APIs that arrived.
        received: u64,
    },
    /// The agent reported failure; deleted nothing.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One sync run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run.
    pub run_id: RunId,
    /// The agent.
    pub agent_id: AgentId,
    /// The provider.
    pub provider: String,
    /// Stream sequence of its first message.
    pub order: u64,
    /// Distinct APIs received.
    pub seen: u64,
    /// When it started.
    pub started_at_ms: i64,
    /// When it ended.
    pub ended_at_ms: Option<i64>,
    /// Its outcome.
    pub result: RunResult,
}

impl RunRecord {
    /// A run that begins at stream sequence `order`.
    pub fn begin(run_id: RunId, agent_id: AgentId, provider: &str, order: u64, at_ms: i64) -> Self {
        Self {
            run_id,
            agent_id,
            provider: provider.to_owned(),
            order,
            seen: 0,
            started_at_ms: at_ms,
            ended_at_ms: None,
            result: RunResult::Running,
        }
    }

    /// Whether it still accepts messages.
    pub fn is_running(&self) -> bool {
        self.result == RunResult::Running
    }
}

/// Per provider: type, counters, newest completed run, last outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRecord {
    /// The agent.
    pub agent_id: Option<AgentId>,
    /// The provider name.
    pub provider: String,
    /// Provider kind (`tyk`, `aws`, ...).
    pub provider_type: String,
    /// Order of the newest completed run (0: none yet).
    pub newest_completed_order: u64,
    /// Live APIs.
    pub active: u64,
    /// Deleted APIs.
    pub deleted: u64,
    /// APIs it ever created (the length of its member lists).
    pub members: u64,
    /// The last run that ended.
    pub last_run: Option<RunRecord>,
}

impl ProviderRecord {
    /// Counts a lifecycle change of one of its APIs; says whether a counter
    /// moved. Deletions are counted when their run ends ([`close`]).
    pub fn count(&mut self, kind: LifecycleKind) -> bool {
        match kind {
            LifecycleKind::Created => self.active += 1,
            LifecycleKind::Restored => {
                self.active += 1;
                self.deleted = self.deleted.saturating_sub(1);
            }
            LifecycleKind::Updated | LifecycleKind::Deleted => return false,
        }
        true
    }
}

/// A run's message is stale when a newer run of its provider has completed.
pub fn is_stale(run: &RunRecord, provider: &ProviderRecord) -> bool {
    run.order < provider.newest_completed_order
}

/// How an `api` message counts towards its run's distinct APIs (`seen`).
///
/// The API's record names the newest run that saw it, and a run's order
/// only grows, so the record answers for that run without a marker per API.
/// Only a run that is not the API's newest needs a "seen in this run" marker
/// (interleaved runs of one provider): the run a newer one displaces from
/// the record while it is still receiving, and an older run that sees an API
/// a newer run saw first. Markers go when their run ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sighting {
    /// A new API: the run counts it.
    New,
    /// The run is the record's newest and saw it already: no count.
    Again,
    /// The run is newer than the record's: it counts the API and takes the
    /// record over; the displaced run gets a marker if it is still receiving.
    Displaces(RunId),
    /// The run is older than the record's: it counts the API unless its
    /// marker exists (and writes one when it does not).
    Older,
}

/// Classifies an `api` message of `run` about an API whose record is
/// `existing` (`None`: new).
pub fn sighting(run: &RunRecord, existing: Option<&ApiRecord>) -> Sighting {
    match existing {
        None => Sighting::New,
        Some(r) if r.last_seen_order == run.order => Sighting::Again,
        Some(r) if r.last_seen_order < run.order => Sighting::Displaces(r.last_run),
        Some(_) => Sighting::Older,
    }
}

/// Whether ending `run` may delete anything, from the committed state before
/// its end. Only a completion deletes, and only the provider's active APIs
/// the run did not see; every API a current run saw is active (only a newer
/// completion could have deleted it, and that makes this run stale), so a
/// run that saw as many APIs as the provider has active leaves none unseen:
/// its end need not read the provider's APIs at all.
pub fn may_delete(run: &RunRecord, provider: &ProviderRecord) -> bool {
    provider.active > run.seen
}

/// One `api` message, as the rules need it.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    /// Derived id.
    pub api_id: ApiId,
    /// The run.
    pub run: &'a RunRecord,
    /// The definition.
    pub definition: &'a ApiDefinition,
    /// Its hash.
    pub content_hash: &'a str,
    /// The message's time.
    pub at_ms: i64,
    /// The message's stream sequence.
    pub seq: u64,
    /// The API's place in the message.
    pub index: u32,
}

/// What an observation changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The record after the observation.
    pub record: ApiRecord,
    /// The lifecycle change, if any (also appended to the record's history).
    pub change: Option<HistoryEntry>,
}

/// Applies an observation to the API's current record (`None`: new API).
pub fn observe(existing: Option<&ApiRecord>, obs: &Observation<'_>) -> Observed {
    let def = obs.definition;
    let definition = || DefinitionRef {
        seq: obs.seq,
        index: obs.index,
        fields: fingerprint(def),
    };
    let entry = |kind, changed: Vec<String>| HistoryEntry {
        kind,
        at_ms: obs.at_ms,
        run_id: obs.run.run_id,
        content_hash: obs.content_hash.to_owned(),
        changed,
        source_seq: obs.seq,
        name: def.name.clone(),
        version: def.version.clone(),
    };
    let Some(existing) = existing else {
        let change = entry(LifecycleKind::Created, Vec::new());
        let record = ApiRecord {
            api_id: obs.api_id,
            agent_id: obs.run.agent_id,
            provider: obs.run.provider.clone(),
            provider_api_id: def.provider_api_id.clone(),
            name: def.name.clone(),
            version: def.version.clone(),
            content_hash: obs.content_hash.to_owned(),
            definition: definition(),
            first_seen_ms: obs.at_ms,
            last_seen_ms: obs.at_ms,
            last_seen_order: obs.run.order,
            last_run: obs.run.run_id,
            deleted_at_ms: None,
            history: vec![change.clone()],
        };
        return Observed {
            record,
            change: Some(change),
        };
    };
    let mut record = existing.clone();
    if obs.run.order < existing.last_seen_order {
        // An older run than the one the record already reflects: it counts as
        // seen by that run, but does not roll the definition back.
        return Observed {
            record,
            change: None,
        };
    }
    record.last_seen_ms = obs.at_ms;
    record.last_seen_order = obs.run.order;
    record.last_run = obs.run.run_id;
    let hash_changed = existing.content_hash != obs.content_hash;
    if hash_changed {
        record.name = def.name.clone();
        record.version = def.version.clone();
        record.content_hash = obs.content_hash.to_owned();
        record.definition = definition();
    }
    let change = if existing.deleted_at_ms.is_some() {
        record.deleted_at_ms = None;
        Some(entry(LifecycleKind::Restored, Vec::new()))
    } else if hash_changed {
        let changed = changed_fields(&existing.definition, &record.definition);
        Some(entry(LifecycleKind::Updated, changed))
    } else {
        None
    };
    if let Some(c) = &change {
        record.history.push(c.clone());
    }
    Observed { record, change }
}

/// Which parts of a definition differ, named as in lifecycle events.
pub fn changed_fields(old: &DefinitionRef, new: &DefinitionRef) -> Vec<String> {
    FIELDS
        .iter()
        .zip(old.fields.iter().zip(&new.fields))
        .filter(|(_, (a, b))| a != b)
        .map(|(name, _)| (*name).to_owned())
        .collect()
}

/// How a run ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// `completed` with the count the agent sent.
    Completed {
        /// The agent's count.
        count: u64,
    },
    /// `failed`.
    Failed {
        /// Why.
        reason: String,
    },
}

/// The consequence of a run's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finish {
    /// The run's result (deleted count still 0; the caller fills it in).
    pub result: RunResult,
    /// When set, live APIs of the provider whose last-seen order is below it
    /// are deleted, and it becomes the provider's newest completed order.
    pub delete_below: Option<u64>,
}

/// Decides what ending `run` means for its provider.
pub fn finish(run: &RunRecord, provider: &ProviderRecord, end: RunEnd) -> Finish {
    match end {
        RunEnd::Failed { reason } => Finish {
            result: RunResult::Failed { reason },
            delete_below: None,
        },
        RunEnd::Completed { count } if count != run.seen => Finish {
            result: RunResult::Incomplete {
                expected: count,
                received: run.seen,
            },
            delete_below: None,
        },
        RunEnd::Completed { count } => {
            let superseded = is_stale(run, provider);
            Finish {
                result: RunResult::Completed {
                    count,
                    deleted: 0,
                    superseded,
                },
                delete_below: (!superseded).then_some(run.order),
            }
        }
    }
}

/// Whether a completion that deletes below `delete_below` deletes this API.
pub fn should_delete(last_seen_order: u64, deleted: bool, delete_below: u64) -> bool {
    !deleted && last_seen_order < delete_below
}

/// Applies a completion that deletes below `delete_below` to one of the
/// provider's APIs: deletes it (returning the change) when neither the run
/// nor a newer one saw it.
pub fn reconcile(
    record: &mut ApiRecord,
    run: &RunRecord,
    delete_below: u64,
    at_ms: i64,
    seq: u64,
) -> Option<HistoryEntry> {
    let deleted = record.deleted_at_ms.is_some();
    should_delete(record.last_seen_order, deleted, delete_below)
        .then(|| delete(record, run, at_ms, seq))
}

/// Ends `run` as `done` decided, after its completion deleted `deleted`
/// APIs, and records it on its provider.
pub fn close(
    run: &mut RunRecord,
    provider: &mut ProviderRecord,
    done: Finish,
    deleted: u64,
    at_ms: i64,
) {
    run.result = done.result;
    run.ended_at_ms = Some(at_ms);
    if let RunResult::Completed { deleted: d, .. } = &mut run.result {
        *d = deleted;
    }
    if let Some(delete_below) = done.delete_below {
        provider.newest_completed_order = delete_below;
        provider.active = provider.active.saturating_sub(deleted);
        provider.deleted += deleted;
    }
    provider.last_run = Some(run.clone());
}

/// Marks a record deleted by `run` and returns the history entry.
pub fn delete(record: &mut ApiRecord, run: &RunRecord, at_ms: i64, seq: u64) -> HistoryEntry {
    record.deleted_at_ms = Some(at_ms);
    let entry = HistoryEntry {
        kind: LifecycleKind::Deleted,
        at_ms,
        run_id: run.run_id,
        content_hash: record.content_hash.clone(),
        changed: Vec::new(),
        source_seq: seq,
        name: record.name.clone(),
        version: record.version.clone(),
    };
    record.history.push(entry.clone());
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn run(order: u64) -> RunRecord {
        RunRecord::begin(
            RunId(Uuid::from_u128(order as u128)),
            AgentId(Uuid::nil()),
            "p",
            order,
            1000,
        )
    }

    fn def(name: &str) -> ApiDefinition {
        ApiDefinition {
            provider_api_id: "x".into(),
            name: name.into(),
            ..Default::default()
        }
    }

    fn see(existing: Option<&ApiRecord>, r: &RunRecord, d: &ApiDefinition) -> Observed {
        let hash = d.content_hash();
        observe(
            existing,
            &Observation {
                api_id: ApiId(Uuid::nil()),
                run: r,
                definition: d,
                content_hash: &hash,
                at_ms: 5,
                seq: r.order + 1,
                index: 0,
            },
        )
    }

    #[test]
    fn created_then_unchanged_then_updated_with_fields() {
        let (r1, r2) = (run(1), run(5));
        let a = see(None, &r1, &def("a"));
        assert_eq!(a.change.as_ref().unwrap().kind, LifecycleKind::Created);
        let same = see(Some(&a.record), &r2, &def("a"));
        assert!(same.change.is_none());
        assert_eq!(same.record.last_seen_order, 5);
        let b = see(Some(&same.record), &run(9), &def("b"));
        let change = b.change.unwrap();
        assert_eq!(change.kind, LifecycleKind::Updated);
        assert_eq!(change.changed, vec!["name".to_string()]);
        assert_eq!(b.record.history.len(), 2);
        assert_eq!(
            b.record.definition.seq, 10,
            "points at the message with the new definition"
        );
        assert_eq!(
            same.record.definition.seq, 2,
            "an unchanged definition keeps its message"
        );
    }

    const PINNED: u64 = 4_401_113_452_207_031_996;

    #[test]
    fn every_part_of_a_definition_is_named_when_it_changes() {
        let base = ApiDefinition {
            provider_api_id: "x".into(),
            name: "n".into(),
            version: "v1".into(),
            base_path: "/a/".into(),
            upstream_url: "http://a".into(),
            auth_methods: vec!["jwt".into()],
            tags: vec!["t".into()],
            stages: vec!["prod".into()],
            openapi: "{}".into(),
            raw: "{\"a\":1}".into(),
        };
        type Edit = fn(&mut ApiDefinition);
        let edits: [(&str, Edit); 9] = [
            ("name", |d| d.name.push('!')),
            ("version", |d| d.version = "v2".into()),
            ("paths", |d| d.base_path = "/b/".into()),
            ("upstream", |d| d.upstream_url = "http://b".into()),
            ("auth", |d| d.auth_methods.push("key".into())),
            ("tags", |d| d.tags = vec!["t".into(), String::new()]),
            ("stages", |d| d.stages.clear()),
            ("spec", |d| d.openapi = "{\"openapi\":\"3.0.0\"}".into()),
            ("raw", |d| d.raw = "{\"a\":2}".into()),
        ];
        let of = |d: &ApiDefinition| DefinitionRef {
            seq: 1,
            index: 0,
            fields: fingerprint(d),
        };
        for (name, edit) in edits {
            let mut changed = base.clone();
            edit(&mut changed);
            assert_eq!(
                changed_fields(&of(&base), &of(&changed)),
                vec![name.to_owned()]
            );
        }
        // Moving a character between list items is a change too.
        let mut a = base.clone();
        a.tags = vec!["ab".into(), "c".into()];
        let mut b = base.clone();
        b.tags = vec!["a".into(), "bc".into()];
        assert_eq!(changed_fields(&of(&a), &of(&b)), vec!["tags".to_owned()]);
        assert!(changed_fields(&of(&base), &of(&base.clone())).is_empty());
        // Fingerprints are stored: changing the function needs a new layout.
        assert_eq!(
            fingerprint(&base)[0],
            PINNED,
            "fingerprint of the name changed"
        );
        assert_eq!(
            fingerprint(&base)[4..7],
            [
                4_612_540_580_814_869_217,
                1_477_192_453_352_440_216,
                2_496_179_292_355_817_089
            ],
            "fingerprint of a list (auth, tags, stages) changed"
        );
        let mut long = base.clone();
        long.raw = (0..100u8).map(char::from).collect();
        assert_eq!(
            fingerprint(&long)[8],
            2_378_588_391_813_371_777,
            "fingerprint of a long part changed"
        );
        // A long part is not its blocks in another order.
        let mut swapped = long.clone();
        swapped.raw = long.raw[32..64].to_owned() + &long.raw[..32] + &long.raw[64..];
        assert_ne!(fingerprint(&swapped)[8], fingerprint(&long)[8]);
    }

    #[test]
    fn an_older_run_never_rolls_a_definition_back() {
        let newer = see(None, &run(9), &def("new"));
        let older = see(Some(&newer.record), &run(3), &def("old"));
        assert!(older.change.is_none());
        assert_eq!(older.record.name, "new");
    }

    #[test]
    fn deleted_api_seen_again_is_restored() {
        let r1 = run(1);
        let mut rec = see(None, &r1, &def("a")).record;
        delete(&mut rec, &r1, 7, 3);
        let back = see(Some(&rec), &run(10), &def("a"));
        assert_eq!(back.change.unwrap().kind, LifecycleKind::Restored);
        assert_eq!(back.record.deleted_at_ms, None);
    }

    #[test]
    fn only_a_consistent_newest_completion_deletes() {
        let mut r = run(10);
        r.seen = 2;
        let p = ProviderRecord::default();
        assert_eq!(
            finish(&r, &p, RunEnd::Completed { count: 2 }).delete_below,
            Some(10)
        );
        assert_eq!(
            finish(&r, &p, RunEnd::Completed { count: 3 }).delete_below,
            None
        );
        assert_eq!(
            finish(&r, &p, RunEnd::Failed { reason: "x".into() }).delete_below,
            None
        );
        let newer_done = ProviderRecord {
            newest_completed_order: 20,
            ..Default::default()
        };
        let f = finish(&r, &newer_done, RunEnd::Completed { count: 2 });
        assert_eq!(f.delete_below, None);
        assert!(matches!(
            f.result,
            RunResult::Completed {
                superseded: true,
                ..
            }
        ));
        assert!(should_delete(3, false, 10));
        assert!(!should_delete(10, false, 10));
        assert!(!should_delete(3, true, 10));
    }

    #[test]
    fn sightings_count_each_api_once_per_run() {
        let (old, new) = (run(1), run(5));
        assert_eq!(sighting(&old, None), Sighting::New);
        let rec = see(None, &old, &def("a")).record;
        assert_eq!(sighting(&old, Some(&rec)), Sighting::Again);
        assert_eq!(sighting(&new, Some(&rec)), Sighting::Displaces(old.run_id));
        let rec = see(Some(&rec), &new, &def("a")).record;
        assert_eq!(sighting(&old, Some(&rec)), Sighting::Older);
    }

    #[test]
    fn provider_counters_follow_changes_and_run_ends() {
        let mut p = ProviderRecord::default();
        assert!(p.count(LifecycleKind::Created));
        assert!(p.count(LifecycleKind::Created));
        assert!(!p.count(LifecycleKind::Updated));
        assert_eq!((p.active, p.deleted), (2, 0));
        let mut r = run(10);
        r.seen = 1;
        assert!(may_delete(&r, &p));
        let done = finish(&r, &p, RunEnd::Completed { count: 1 });
        close(&mut r, &mut p, done, 1, 99);
        assert_eq!((p.active, p.deleted, p.newest_completed_order), (1, 1, 10));
        assert_eq!(
            r.result,
            RunResult::Completed {
                count: 1,
                deleted: 1,
                superseded: false
            }
        );
        assert_eq!(p.last_run.as_ref().unwrap().ended_at_ms, Some(99));
        assert!(p.count(LifecycleKind::Restored));
        assert_eq!((p.active, p.deleted), (2, 0));
        // A failure records the run and moves nothing else.
        let mut f = run(20);
        let failed = finish(&f, &p, RunEnd::Failed { reason: "x".into() });
        close(&mut f, &mut p, failed, 0, 100);
        assert_eq!((p.active, p.deleted, p.newest_completed_order), (2, 0, 10));
        assert_eq!(p.last_run.unwrap().run_id, f.run_id);
    }

    /// The reconciliation rules on one provider, driven as the store drives
    /// them but with the state in plain maps: no database.
    mod model {
        use super::*;
        use proptest::prelude::*;
        use std::collections::{BTreeMap, HashMap, HashSet};

        #[derive(Clone, Debug)]
        enum Op {
            Start(u8),
            Api { run: u8, api: u8, variant: u8 },
            Complete { run: u8, short: bool },
            Fail(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                1 => (0..5u8).prop_map(Op::Start),
                5 => (0..5u8, 0..6u8, 0..2u8).prop_map(|(run, api, variant)| Op::Api { run, api, variant }),
                2 => (0..5u8, prop::bool::weighted(0.2)).prop_map(|(run, short)| Op::Complete { run, short }),
                1 => (0..5u8).prop_map(Op::Fail),
            ]
        }

        #[derive(Default)]
        struct Provider {
            record: ProviderRecord,
            runs: HashMap<u8, RunRecord>,
            apis: BTreeMap<u8, ApiRecord>,
            markers: HashSet<(u8, u8)>,
            /// What each run really sent (while it counted), for the checks.
            sent: HashMap<u8, HashSet<u8>>,
            seq: u64,
        }

        fn id(run: u8) -> RunId {
            RunId(Uuid::from_u128(u128::from(run) + 1))
        }

        impl Provider {
            fn run(&mut self, r: u8) -> RunRecord {
                let seq = self.seq;
                self.runs
                    .entry(r)
                    .or_insert_with(|| RunRecord::begin(id(r), AgentId(Uuid::nil()), "p", seq, 0))
                    .clone()
            }

            fn apply(&mut self, op: &Op) {
                self.seq += 1;
                match *op {
                    Op::Start(r) => {
                        self.run(r);
                    }
                    Op::Api {
                        run: r,
                        api,
                        variant,
                    } => self.api(r, api, variant),
                    Op::Complete { run: r, short } => {
                        let seen = self.run(r).seen;
                        self.end(
                            r,
                            RunEnd::Completed {
                                count: seen + u64::from(short),
                            },
                        );
                    }
                    Op::Fail(r) => self.end(r, RunEnd::Failed { reason: "x".into() }),
                }
            }

            fn api(&mut self, r: u8, api: u8, variant: u8) {
                let mut run = self.run(r);
                if !run.is_running() || is_stale(&run, &self.record) {
                    return;
                }
                let existing = self.apis.get(&api);
                let counts = match sighting(&run, existing) {
                    Sighting::New => true,
                    Sighting::Again => false,
                    Sighting::Displaces(displaced) => {
                        let d = self.runs.iter().find(|(_, x)| x.run_id == displaced);
                        if let Some((&d, x)) = d
                            && x.is_running()
                        {
                            self.markers.insert((d, api));
                        }
                        true
                    }
                    Sighting::Older => self.markers.insert((r, api)),
                };
                if counts {
                    run.seen += 1;
                }
                self.sent.entry(r).or_default().insert(api);
                let definition = ApiDefinition {
                    provider_api_id: api.to_string(),
                    name: format!("v{variant}"),
                    ..Default::default()
                };
                let hash = definition.content_hash();
                let observed = observe(
                    existing,
                    &Observation {
                        api_id: ApiId(Uuid::from_u128(u128::from(api))),
                        run: &run,
                        definition: &definition,
                        content_hash: &hash,
                        at_ms: 0,
                        seq: self.seq,
                        index: 0,
                    },
                );
                if let Some(change) = &observed.change {
                    self.record.count(change.kind);
                }
                self.apis.insert(api, observed.record);
                self.runs.insert(r, run);
            }

            fn end(&mut self, r: u8, end: RunEnd) {
                let mut run = self.run(r);
                if !run.is_running() {
                    return;
                }
                let may = may_delete(&run, &self.record);
                let done = finish(&run, &self.record, end);
                self.markers.retain(|(m, _)| *m != r);
                let mut deleted = 0;
                if let Some(below) = done.delete_below {
                    for record in self.apis.values_mut() {
                        if reconcile(record, &run, below, 1, self.seq).is_some() {
                            assert!(
                                may,
                                "may_delete said no, yet {} went",
                                record.provider_api_id
                            );
                            deleted += 1;
                        }
                    }
                }
                close(&mut run, &mut self.record, done, deleted, 1);
                self.runs.insert(r, run);
            }

            fn check(&self) {
                let active = self
                    .apis
                    .values()
                    .filter(|a| a.deleted_at_ms.is_none())
                    .count();
                assert_eq!(self.record.active as usize, active, "active counter");
                assert_eq!(
                    self.record.deleted as usize,
                    self.apis.len() - active,
                    "deleted counter"
                );
                for (r, run) in &self.runs {
                    let sent = self.sent.get(r).map_or(0, HashSet::len);
                    assert_eq!(
                        run.seen as usize, sent,
                        "run {r} counted {} of {sent}",
                        run.seen
                    );
                }
                // The newest completed run's APIs, and those of every newer
                // run, are all active.
                let newest = self.record.newest_completed_order;
                for (r, run) in &self.runs {
                    if newest > 0 && run.order >= newest {
                        for api in self.sent.get(r).into_iter().flatten() {
                            assert!(
                                self.apis[api].deleted_at_ms.is_none(),
                                "api {api} seen by run {r} (order {}) was deleted (newest completed {newest})",
                                run.order
                            );
                        }
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

            #[test]
            fn counts_are_exact_and_nothing_a_newer_run_saw_is_deleted(ops in prop::collection::vec(op(), 1..60)) {
                let mut provider = Provider::default();
                for op in &ops {
                    provider.apply(op);
                    provider.check();
                }
            }
        }
    }
}
