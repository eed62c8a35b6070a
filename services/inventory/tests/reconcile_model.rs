//! Property test: for any sequence of sync runs (completed, failed, short,
//! interleaved, duplicated messages, APIs one per message as version 1 wrote
//! them or in chunks), the stored repository equals a simple reference model
//! of the reconciliation rules, however the events are split into
//! transactions, and re-applying them changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meridian_inventory::adapters::store::{
    ApiFilter, PROJECTION_ID, Queries, Repository, StatusFilter, pending_events,
};
use meridian_kit::projection::{StoredEvent, apply_events, digest};
use meridian_kit::store::{Db, Tree};
use meridian_schemas::lifecycle::LifecycleKind;
use meridian_schemas::sync::{ApiDefinition, DiscoveredApi, SyncEvent, SyncEventKind};
use meridian_schemas::{AgentId, ApiId, Envelope, EventMeta, RunId};
use proptest::prelude::*;
use uuid::Uuid;

/// Two providers of one agent, one name a prefix of the other, so every case
/// also checks that a run's end only touches its own provider's APIs.
const PROVIDERS: [&str; 2] = ["tyk", "tyk-2"];
const AGENT: AgentId = AgentId(Uuid::from_u128(42));

#[derive(Clone, Debug)]
enum Op {
    Start(usize),
    Api {
        run: usize,
        api: usize,
        variant: u8,
    },
    /// A chunk of APIs (possibly naming one twice, which counts once).
    Apis {
        run: usize,
        apis: Vec<(usize, u8)>,
    },
    Complete {
        run: usize,
        short: bool,
    },
    Fail(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..6usize).prop_map(Op::Start),
        4 => (0..6usize, 0..5usize, 0..2u8).prop_map(|(run, api, variant)| Op::Api { run, api, variant }),
        2 => (0..6usize, prop::collection::vec((0..5usize, 0..2u8), 1..5)).prop_map(|(run, apis)| Op::Apis { run, apis }),
        2 => (0..6usize, prop::bool::weighted(0.2)).prop_map(|(run, short)| Op::Complete { run, short }),
        1 => (0..6usize).prop_map(Op::Fail),
    ]
}

fn provider_of(run: usize) -> &'static str {
    PROVIDERS[run % 2]
}

fn run_id(run: usize) -> RunId {
    RunId(Uuid::from_u128(1000 + run as u128))
}

fn definition(api: usize, variant: u8) -> ApiDefinition {
    ApiDefinition {
        provider_api_id: format!("api-{api}"),
        name: format!("API {api}"),
        version: format!("v{variant}"),
        ..Default::default()
    }
}

/// Turns ops into the SYNC messages an agent-gateway would have appended.
/// The agent's count is what it sent in the run; `short` lies by one.
fn events(ops: &[Op]) -> Vec<StoredEvent> {
    let mut sent: HashMap<usize, BTreeSet<usize>> = HashMap::new();
    let mut out = Vec::new();
    for op in ops {
        let (run, kind) = match *op {
            Op::Apis { run, ref apis } => {
                let first = sent.get(&run).map_or(0, |s| s.len() as u64);
                sent.entry(run)
                    .or_default()
                    .extend(apis.iter().map(|a| a.0));
                let apis = apis
                    .iter()
                    .map(|&(api, variant)| DiscoveredApi::new(definition(api, variant)))
                    .collect();
                (run, SyncEventKind::Apis { first, apis })
            }
            Op::Start(run) => (
                run,
                SyncEventKind::Started {
                    provider_type: "tyk".into(),
                },
            ),
            Op::Api { run, api, variant } => {
                sent.entry(run).or_default().insert(api);
                let d = definition(api, variant);
                let content_hash = d.content_hash();
                (
                    run,
                    SyncEventKind::Api {
                        definition: d,
                        content_hash,
                    },
                )
            }
            Op::Complete { run, short } => {
                let n = sent.get(&run).map_or(0, |s| s.len() as u64);
                (
                    run,
                    SyncEventKind::Completed {
                        count: if short { n + 1 } else { n },
                    },
                )
            }
            Op::Fail(run) => (
                run,
                SyncEventKind::Failed {
                    reason: "boom".into(),
                },
            ),
        };
        let seq = out.len() as u64 + 1;
        let event = SyncEvent {
            run_id: run_id(run),
            agent_id: AGENT,
            provider: provider_of(run).into(),
            kind,
        };
        let meta = EventMeta {
            occurred_at_ms: seq as i64 * 1000,
            ..Default::default()
        };
        out.push(StoredEvent {
            seq,
            subject: String::new(),
            envelope: Envelope::wrap(&event, meta),
        });
    }
    out
}

#[derive(Default, Debug)]
struct ModelApi {
    deleted: bool,
    variant: u8,
    seen_by: BTreeSet<u64>,
}

#[derive(Default)]
struct Model {
    runs: HashMap<usize, (u64, bool, BTreeSet<usize>)>, // order, ended, seen
    newest_completed: HashMap<&'static str, u64>,
    apis: BTreeMap<(usize, usize), ModelApi>, // (provider index, api)
    emitted: Vec<(u64, ApiId, LifecycleKind)>,
}

fn api_id(provider: &str, api: usize) -> ApiId {
    ApiId::derive(AGENT, provider, &format!("api-{api}"))
}

impl Model {
    /// Run `r` reports `items` in the message at `seq`; `ignored`: the run
    /// ended or is stale.
    fn see(
        &mut self,
        r: usize,
        seq: u64,
        items: &[(usize, u8)],
        sent: &mut HashMap<usize, BTreeSet<usize>>,
        ignored: bool,
    ) {
        let provider = provider_of(r);
        let p = r % 2;
        let order = self.runs[&r].0;
        for &(api, variant) in items {
            sent.entry(r).or_default().insert(api);
            if ignored {
                continue;
            }
            self.runs.get_mut(&r).unwrap().2.insert(api);
            let id = api_id(provider, api);
            match self.apis.get_mut(&(p, api)) {
                None => {
                    let mut a = ModelApi {
                        variant,
                        ..Default::default()
                    };
                    a.seen_by.insert(order);
                    self.apis.insert((p, api), a);
                    self.emitted.push((seq, id, LifecycleKind::Created));
                }
                Some(a) => {
                    let newest_seen = a.seen_by.iter().next_back().copied().unwrap_or(0);
                    a.seen_by.insert(order);
                    if order < newest_seen {
                        continue;
                    }
                    if a.deleted {
                        a.deleted = false;
                        a.variant = variant;
                        self.emitted.push((seq, id, LifecycleKind::Restored));
                    } else if a.variant != variant {
                        a.variant = variant;
                        self.emitted.push((seq, id, LifecycleKind::Updated));
                    }
                }
            }
        }
    }

    fn run(ops: &[Op]) -> Self {
        let mut m = Model::default();
        let mut sent: HashMap<usize, BTreeSet<usize>> = HashMap::new();
        for (i, op) in ops.iter().enumerate() {
            let seq = i as u64 + 1;
            let r = match *op {
                Op::Start(r)
                | Op::Api { run: r, .. }
                | Op::Apis { run: r, .. }
                | Op::Complete { run: r, .. }
                | Op::Fail(r) => r,
            };
            let provider = provider_of(r);
            let p = r % 2;
            let (order, ended, _) = *m.runs.entry(r).or_insert((seq, false, BTreeSet::new()));
            let stale = order < m.newest_completed.get(provider).copied().unwrap_or(0);
            match *op {
                Op::Start(_) => {}
                Op::Api { api, variant, .. } => {
                    m.see(r, seq, &[(api, variant)], &mut sent, ended || stale)
                }
                Op::Apis { ref apis, .. } => {
                    // In id order; an API twice in one chunk counts once (the first).
                    let mut items: Vec<(usize, u8)> = Vec::new();
                    for &(api, variant) in apis {
                        if !items.iter().any(|i| i.0 == api) {
                            items.push((api, variant));
                        }
                    }
                    items.sort_by_key(|&(api, _)| *api_id(provider, api).0.as_bytes());
                    m.see(r, seq, &items, &mut sent, ended || stale);
                }
                Op::Complete { .. } | Op::Fail(_) => {
                    if ended {
                        continue;
                    }
                    m.runs.get_mut(&r).unwrap().1 = true;
                    let Op::Complete { short, .. } = *op else {
                        continue;
                    };
                    let seen = &m.runs[&r].2;
                    let count = sent.get(&r).map_or(0, |s| s.len()) + usize::from(short);
                    if count != seen.len() || stale {
                        continue;
                    }
                    m.newest_completed.insert(provider, order);
                    // Delete what neither this run nor a newer one saw.
                    let mut doomed: Vec<ApiId> = Vec::new();
                    for (&(ap, api), a) in m.apis.iter_mut() {
                        if ap == p && !a.deleted && !a.seen_by.iter().any(|&o| o >= order) {
                            a.deleted = true;
                            doomed.push(api_id(provider, api));
                        }
                    }
                    doomed.sort_by_key(|id| *id.0.as_bytes());
                    m.emitted.extend(
                        doomed
                            .into_iter()
                            .map(|id| (seq, id, LifecycleKind::Deleted)),
                    );
                }
            }
        }
        m
    }
}

fn repository_state(tree: &Tree) -> BTreeMap<ApiId, (bool, String)> {
    let filter = ApiFilter {
        provider: None,
        agent_id: None,
        status: StatusFilter::All,
        name_contains: None,
        page: 1,
        per_page: usize::MAX,
    };
    let (records, _) = Queries::new(tree.clone()).list(&filter).unwrap();
    records
        .into_iter()
        .map(|r| (r.api_id, (r.deleted_at_ms.is_some(), r.version)))
        .collect()
}

fn outbox(tree: &Tree) -> Vec<(u64, ApiId, LifecycleKind)> {
    pending_events(tree)
        .unwrap()
        .into_iter()
        .map(|ev| (ev.source_seq, ev.api_id, ev.kind))
        .collect()
}

/// A tree in a fresh temporary database, deleted when the tree is dropped.
fn fresh_tree() -> Tree {
    Db::temporary().unwrap().open_tree("repository").unwrap()
}

fn apply_in_chunks(events: &[StoredEvent], chunk: usize) -> Tree {
    let tree = fresh_tree();
    for part in events.chunks(chunk.max(1)) {
        apply_events(&tree, &Repository::default(), PROJECTION_ID, part).unwrap();
    }
    tree
}

/// A provider's member lists hold 1024 APIs each: a completion deletes the
/// APIs it did not see from every list, and only those, whatever the
/// batching; the other provider (whose name the first one's begins with)
/// keeps its own.
#[test]
fn a_completion_deletes_from_every_member_list() {
    let n = 2 * 1024 + 5;
    let gone = [3, 1024, 1500, n - 1];
    // In chunks of 64 as the gateway writes them, or one per message.
    let sync = |run: usize, skip: &[usize], chunked: bool| {
        let apis: Vec<usize> = (0..n).filter(|api| !skip.contains(api)).collect();
        let mut ops = vec![Op::Start(run)];
        if chunked {
            ops.extend(apis.chunks(64).map(|c| Op::Apis {
                run,
                apis: c.iter().map(|&api| (api, 0)).collect(),
            }));
        } else {
            ops.extend(apis.iter().map(|&api| Op::Api {
                run,
                api,
                variant: 0,
            }));
        }
        ops.push(Op::Complete { run, short: false });
        ops
    };
    // Runs 0 and 2 are the first provider's, run 1 the other's.
    let ops = [
        sync(0, &[], true),
        sync(1, &[], false),
        sync(2, &gone, true),
    ]
    .concat();
    let events = events(&ops);
    let model = Model::run(&ops);
    let deleted: Vec<ApiId> = model
        .emitted
        .iter()
        .filter(|e| e.2 == LifecycleKind::Deleted)
        .map(|e| e.1)
        .collect();
    let mut expected: Vec<ApiId> = gone.iter().map(|&api| api_id(PROVIDERS[0], api)).collect();
    expected.sort();
    assert_eq!(deleted, expected, "the model deletes what run 2 missed");
    for chunk in [1000, 333] {
        let tree = apply_in_chunks(&events, chunk);
        let state = repository_state(&tree);
        assert_eq!(state.len(), 2 * n);
        for api in 0..n {
            let missing = gone.contains(&api);
            assert_eq!(state[&api_id(PROVIDERS[0], api)].0, missing, "api-{api}");
            assert!(
                !state[&api_id(PROVIDERS[1], api)].0,
                "the other provider's api-{api}"
            );
        }
        assert_eq!(outbox(&tree), model.emitted, "batches of {chunk}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn repository_matches_reference_model(
        ops in prop::collection::vec(op(), 0..60),
        chunk in 1usize..20,
        published in 0usize..40,
    ) {
        let events = events(&ops);
        let model = Model::run(&ops);
        let tree = apply_in_chunks(&events, chunk);

        let expected: BTreeMap<ApiId, (bool, String)> = model
            .apis
            .iter()
            .map(|(&(p, api), a)| (api_id(PROVIDERS[p], api), (a.deleted, format!("v{}", a.variant))))
            .collect();
        prop_assert_eq!(repository_state(&tree), expected);
        prop_assert_eq!(outbox(&tree), model.emitted.clone());

        // Another batching, and a redelivery of everything, give the same state.
        let other = apply_in_chunks(&events, 1000);
        apply_events(&other, &Repository::default(), PROJECTION_ID, &events).unwrap();
        prop_assert_eq!(digest(&tree).unwrap(), digest(&other).unwrap());
        prop_assert_eq!(outbox(&other), model.emitted.clone());

        // Started after some lifecycle events were published (a restart, a
        // rebuild): the same repository, and only the rest in the outbox.
        let cut = published.min(model.emitted.len());
        let mark = model.emitted[..cut].last().map(|&(seq, id, _)| (seq, *id.0.as_bytes()));
        let resumed = fresh_tree();
        apply_events(&resumed, &Repository::after(mark), PROJECTION_ID, &events).unwrap();
        prop_assert_eq!(digest(&tree).unwrap(), digest(&resumed).unwrap());
        prop_assert_eq!(outbox(&resumed), model.emitted[cut..].to_vec());
    }

    #[test]
    fn never_deletes_what_the_newest_completed_run_saw(ops in prop::collection::vec(op(), 0..60)) {
        let events = events(&ops);
        let model = Model::run(&ops);
        let tree = apply_in_chunks(&events, 7);
        let state = repository_state(&tree);
        for (&provider_run, &(order, _, ref seen)) in &model.runs {
            let provider = provider_of(provider_run);
            if model.newest_completed.get(provider) == Some(&order) {
                for &api in seen {
                    prop_assert_eq!(state[&api_id(provider, api)].0, false, "newest completed run saw api-{}", api);
                }
            }
        }
    }
}
