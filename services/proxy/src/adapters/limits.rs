//! The gateway's side of the shared limit counters (the bucket
//! [`meridian_schemas::streams::LIMITS_BUCKET`], one record per budget, see
//! [`meridian_keys::limits`]): each replica leases blocks of a counter with
//! revision-checked updates and admits from what it holds, with no I/O on
//! the request path while it holds some (the design and its error bound
//! are in [`crate::domain::limits`] and docs/gateway.md).
//!
//! - One fetch per counter at a time on a worker (requests that find the
//!   lease empty wait for it, one round trip); the next block is fetched
//!   ahead when the lease runs low.
//! - An update whose answer is lost (a timeout) has an unknown outcome: the
//!   counter is read back, and the lease counts only if the record names
//!   it. A lost lease is capacity given up, never capacity taken twice.
//! - What a replica holds and stops using is given back (after
//!   [`IDLE_RETURN`]), and everything it holds at a clean stop.
//! - Each gateway worker thread holds leases of its own (a worker is a
//!   replica's share of the counter as a replica is the estate's): taking
//!   from a lease locks nothing another worker touches.
//! - Counter unreachable (NATS away): rate limits count on this replica
//!   alone, at an even share of the limit among the replicas live when a
//!   counter was last reached (in an outage none hears another), and the count is added to the
//!   counter when it is back; a quota admits only what was leased, then
//!   refuses.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::kv;
use meridian_keys::limits::{Counter, Kind, Quota, RateWindow, counter_key};
use meridian_kit::metrics::{Counter as Metric, Gauge, Metrics};
use meridian_kit::writer::Lock;

use super::replicas::Replicas;
use crate::domain::limits::{
    EXHAUSTED_RECHECK, IDLE_RETURN, Lease, LimitHeaders, Take, UNREACHABLE_RETRY, block_size,
    local_limit, next_demand,
};

/// How long one operation on the bucket may take before its outcome is
/// treated as unknown (an update) or the counter as unreachable (a read).
pub const OP_TIMEOUT: Duration = Duration::from_millis(300);

/// Updates that lost a race, in a row, before a fetch gives up for now.
const MAX_ATTEMPTS: usize = 32;

/// Fetches one quota request makes when others drain each block it leased
/// before it could take from it.
const FETCH_ROUNDS: usize = 8;

/// A scope nothing was taken from for this long, holding nothing, is
/// forgotten (its counter stays in the bucket).
const FORGET_AFTER_MS: i64 = 10 * 60 * 1000;

thread_local! {
    /// The gateway worker this thread is (see [`Limiter::set_worker`]); 0
    /// on any other thread.
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// A budget as the limiter counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// A rate limit, in fixed windows.
    Rate(RateWindow),
    /// A quota, in periods.
    Quota(Quota),
}

impl Limit {
    fn max(self) -> u64 {
        match self {
            Self::Rate(w) => w.limit,
            Self::Quota(q) => q.max,
        }
    }
}

/// Why a request does not fit its budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Used up for this window or period.
    Exhausted,
    /// A quota whose counter cannot be reached, with nothing leased left.
    Unavailable,
}

/// The limiter's answer for one request and one budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Admitted, or why not.
    pub admitted: Result<(), Refused>,
    /// The budget as this replica sees it after the request.
    pub headers: LimitHeaders,
}

/// What a fetch knows of the counter, kept between fetches (so a fetch
/// can update without reading first when nobody else wrote).
#[derive(Default)]
struct Known {
    seen: Option<(Counter, u64)>,
    leased_at_ms: i64,
}

struct Scope {
    kind: Kind,
    scope: Box<str>,
    /// The worker thread whose lease this is.
    worker: usize,
    name: String,
    lease: Mutex<Lease>,
    known: Arc<tokio::sync::Mutex<Known>>,
    last_used_ms: AtomicI64,
    warned: AtomicBool,
}

impl Scope {
    fn lease(&self) -> MutexGuard<'_, Lease> {
        self.lease.lock().unwrap_or_else(|p| p.into_inner())
    }
}

enum Written {
    Yes(u64),
    Conflict,
    Unknown,
}

/// The replica's leases on every counter it has used; see the module
/// documentation.
pub struct Limiter {
    kv: kv::Store,
    replicas: Replicas,
    me: String,
    next_lease: AtomicU64,
    /// Gateway worker threads, each holding its own leases (1 when the
    /// data plane runs on a shared runtime).
    workers: usize,
    /// The live replicas when a counter was last reached: while NATS is
    /// away no replica hears another, so the even share during an outage
    /// is taken of this, not of the (then lonely) live count.
    sharing: AtomicUsize,
    scopes: Lock<HashMap<Box<str>, Vec<Arc<Scope>>>>,
    leases: Metric,
    unreachable: Metric,
    /// Leases kept (one per counter per worker in use).
    kept: Gauge,
}

/// The period a request at `now_ms` counts in, as far as the lease knows:
/// a rate limit's window (or the later one the lease holds, when another
/// replica's clock moved the counter on), or the quota period the lease
/// holds if it is still running under the same reset marker (else
/// `i64::MIN`: ask the counter).
fn period_of(lease: &Lease, limit: Limit, reset: &str, now_ms: i64) -> i64 {
    match limit {
        Limit::Rate(w) => w.start_ms(now_ms).max(lease.period),
        Limit::Quota(q) => {
            let now_s = now_ms.div_euclid(1000);
            let running = if q.renewal_s > 0 {
                lease.period > 0 && now_s < lease.period
            } else {
                lease.period == 0
            };
            if running && lease.reset == reset {
                lease.period
            } else {
                i64::MIN
            }
        }
    }
}

fn headers(limit: Limit, lease: &Lease) -> LimitHeaders {
    let reset = match limit {
        Limit::Rate(w) => (lease.period + w.window_ms).div_euclid(1000),
        Limit::Quota(_) => lease.period.max(0),
    };
    LimitHeaders {
        limit: i64::try_from(limit.max()).unwrap_or(i64::MAX),
        remaining: i64::try_from(lease.remaining()).unwrap_or(i64::MAX),
        reset,
    }
}

impl Limiter {
    /// A limiter over `kv` for replica `me`, sizing leases by the live
    /// replicas `replicas` knows of and the replica's `workers` (gateway
    /// worker threads; 0 or 1: one set of leases for the whole replica).
    pub fn new(kv: kv::Store, replicas: Replicas, workers: usize, metrics: &Metrics) -> Self {
        let counts = metrics.counters(
            "meridian_gateway_limit_leases",
            "Blocks of rate-limit and quota counters this replica leased (outcome: leased), and counters it could not reach (outcome: unreachable).",
        );
        // One at a time: a family's guard held while another label is
        // created would deadlock.
        let outcome = |o: &str| {
            counts
                .get_or_create(&vec![("outcome", o.to_owned())])
                .clone()
        };
        let leases = outcome("leased");
        let unreachable = outcome("unreachable");
        let kept = metrics.gauge(
            "meridian_gateway_limit_leases_kept",
            "Rate-limit and quota counters this replica keeps a lease on, once per gateway worker thread that uses it (forgotten after 10 minutes unused).",
        );
        Self {
            kv,
            me: replicas.me().to_string(),
            replicas,
            next_lease: AtomicU64::new(0),
            workers: workers.max(1),
            sharing: AtomicUsize::new(1),
            scopes: Lock::default(),
            leases,
            unreachable,
            kept,
        }
    }

    /// Marks the calling thread as gateway worker `n` (of the `workers`
    /// the limiter was made for): its requests take from leases of its own.
    pub fn set_worker(n: usize) {
        WORKER.set(n);
    }

    /// Leases are held per worker: the counter is shared by this many
    /// holders on each live replica.
    fn holders(&self, replicas: usize) -> usize {
        replicas.max(1).saturating_mul(self.workers)
    }

    fn scope(&self, kind: Kind, id: &str, scope: &str) -> Arc<Scope> {
        let worker = WORKER.get() % self.workers;
        let find = |list: &Vec<Arc<Scope>>| {
            list.iter()
                .find(|s| s.kind == kind && s.worker == worker && &*s.scope == scope)
                .cloned()
        };
        if let Some(found) = self
            .scopes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .and_then(find)
        {
            return found;
        }
        let mut all = self.scopes.write().unwrap_or_else(|p| p.into_inner());
        let list = all.entry(id.into()).or_default();
        if let Some(found) = find(list) {
            return found;
        }
        let made = Arc::new(Scope {
            kind,
            scope: scope.into(),
            worker,
            name: counter_key(kind, id, scope),
            lease: Mutex::default(),
            known: Arc::default(),
            last_used_ms: AtomicI64::new(0),
            warned: AtomicBool::new(false),
        });
        list.push(made.clone());
        self.kept.inc();
        made
    }

    /// Counts one request at `now_ms` against the budget `limit` of `kind`
    /// for `id` (a key's hash or an organisation id) in allowance scope
    /// `scope`; `reset` is the quota's reset marker (empty for rates).
    pub async fn admit(
        self: &Arc<Self>,
        kind: Kind,
        id: &str,
        scope: &str,
        limit: Limit,
        reset: &str,
        now_ms: i64,
    ) -> Verdict {
        let s = self.scope(kind, id, scope);
        s.last_used_ms.store(now_ms, Ordering::Relaxed);
        if let Some(verdict) = self.try_take(&s, limit, reset, now_ms) {
            return verdict;
        }
        // Waiting for the fetch takes time: it and the next look go by the
        // clock, not the arrival (a window may have ended meanwhile).
        // A quota fetches again when its block was drained first (else it
        // would answer 503 with the counter reachable); a rate limit
        // answers from its one fetch, as it always has (there the drained
        // case is a 429, and the accuracy tests and benchmark measured
        // that behaviour).
        let rounds = match limit {
            Limit::Quota(_) => FETCH_ROUNDS,
            Limit::Rate(_) => 1,
        };
        for _ in 0..rounds {
            {
                let mut known = s.known.lock().await;
                let now_ms = now_ms.max(meridian_kit::time::now_ms());
                self.fetch(&s, &mut known, limit, reset, now_ms).await;
            }
            // The fetch leased, found the budget used up, or found the
            // counter unreachable: the next look decides. Or requests
            // waiting beside this one took everything it leased before it
            // looked: then it fetches again (that is no reason to answer
            // "cannot be checked").
            let now_ms = now_ms.max(meridian_kit::time::now_ms());
            if let Some(verdict) = self.try_take(&s, limit, reset, now_ms) {
                return verdict;
            }
        }
        self.try_take(&s, limit, reset, now_ms.max(meridian_kit::time::now_ms()))
            .unwrap_or_else(|| Verdict {
                admitted: Err(match limit {
                    Limit::Rate(_) => Refused::Exhausted,
                    Limit::Quota(_) => Refused::Unavailable,
                }),
                headers: headers(limit, &s.lease()),
            })
    }

    /// The lease's answer, or `None` when a block must be fetched first.
    fn try_take(
        self: &Arc<Self>,
        s: &Arc<Scope>,
        limit: Limit,
        reset: &str,
        now_ms: i64,
    ) -> Option<Verdict> {
        let mut lease = s.lease();
        let period = period_of(&lease, limit, reset, now_ms);
        let admitted = match lease.take(period, reset, now_ms) {
            Take::Granted { prefetch } => {
                if prefetch {
                    self.prefetch(s, limit, reset);
                }
                Ok(())
            }
            Take::Exhausted => Err(Refused::Exhausted),
            Take::Fetch => match lease.unreachable_until {
                Some(until) if now_ms < until => match limit {
                    Limit::Rate(w) => {
                        let replicas = self
                            .replicas
                            .live_count()
                            .max(self.sharing.load(Ordering::Relaxed));
                        let share = local_limit(w.limit, self.holders(replicas));
                        if lease.take_locally(period, share) {
                            Ok(())
                        } else {
                            Err(Refused::Exhausted)
                        }
                    }
                    Limit::Quota(_) => Err(Refused::Unavailable),
                },
                _ => return None,
            },
        };
        Some(Verdict {
            admitted,
            headers: headers(limit, &lease),
        })
    }

    /// Fetches the next block in the background, unless a fetch is on.
    fn prefetch(self: &Arc<Self>, s: &Arc<Scope>, limit: Limit, reset: &str) {
        let Ok(mut known) = s.known.clone().try_lock_owned() else {
            return;
        };
        let (limiter, s, reset) = (self.clone(), s.clone(), reset.to_owned());
        tokio::spawn(async move {
            let now_ms = meridian_kit::time::now_ms();
            limiter.fetch(&s, &mut known, limit, &reset, now_ms).await;
        });
    }

    /// Leases a block of `s`'s counter, or records that it is used up or
    /// unreachable. The caller holds `known` (one fetch at a time).
    async fn fetch(&self, s: &Scope, known: &mut Known, limit: Limit, reset: &str, now_ms: i64) {
        {
            // Another request may have fetched while this one waited.
            let lease = s.lease();
            let period = period_of(&lease, limit, reset, now_ms);
            let current = lease.period == period && lease.reset == reset;
            let settled = lease.exhausted_until.is_some_and(|t| now_ms < t)
                || lease.unreachable_until.is_some_and(|t| now_ms < t);
            // Ahead of need: what is held lasts until the window ends.
            let enough = match limit {
                Limit::Rate(w) => {
                    let left_s = (period + w.window_ms - now_ms).max(0) as f64 / 1000.0;
                    lease.tokens > 0 && lease.tokens as f64 >= lease.demand * left_s
                }
                Limit::Quota(_) => false,
            };
            if current && (lease.tokens > lease.last_block / 2 || settled || enough) {
                return;
            }
        }
        let lease_id = format!(
            "{}:{}",
            self.me,
            self.next_lease.fetch_add(1, Ordering::Relaxed)
        );
        let replicas = self.replicas.live_count();
        let mut seen = known.seen.take();
        for _ in 0..MAX_ATTEMPTS {
            let (stored, revision) = match seen.take() {
                Some((c, rev)) => (Some(c), rev),
                None => match self.read(&s.name).await {
                    Ok(found) => {
                        self.sharing.store(replicas, Ordering::Relaxed);
                        found.map_or((None, 0), |(c, rev)| (Some(c), rev))
                    }
                    Err(why) => return self.unreachable(s, now_ms, &why),
                },
            };
            let counter = match limit {
                Limit::Rate(w) => Counter::rate_window(stored, w, now_ms),
                Limit::Quota(q) => Counter::quota_period(stored, q, reset, now_ms.div_euclid(1000)),
            };
            let (unreported, demand) = {
                let lease = s.lease();
                let unreported = match limit {
                    Limit::Rate(_) => lease.unreported(counter.period),
                    Limit::Quota(_) => 0,
                };
                (unreported, lease.demand)
            };
            let used = counter.used.saturating_add(unreported);
            let remaining = limit.max().saturating_sub(used);
            let window_left = match limit {
                Limit::Rate(w) => Some(Duration::from_millis(
                    (counter.period + w.window_ms - now_ms).max(0) as u64,
                )),
                Limit::Quota(_) => None,
            };
            let block = block_size(demand, remaining, self.holders(replicas), window_left);
            if block == 0 && unreported == 0 {
                s.lease().used_up(
                    counter.period,
                    reset,
                    now_ms + EXHAUSTED_RECHECK.as_millis() as i64,
                );
                known.seen = Some((counter, revision));
                return;
            }
            let next = Counter {
                used: used + block,
                by: lease_id.clone(),
                ..counter
            };
            let written = match self.write(&s.name, &next, revision).await {
                Written::Unknown => {
                    // Settle from the bucket: the lease counts only if the
                    // record names it.
                    match self.read(&s.name).await {
                        Ok(Some((c, rev))) if c.by == lease_id => Some(rev),
                        Ok(other) => {
                            seen = other;
                            None
                        }
                        Err(why) => return self.unreachable(s, now_ms, &why),
                    }
                }
                Written::Yes(rev) => Some(rev),
                Written::Conflict => None,
            };
            let Some(revision) = written else { continue };
            {
                let mut lease = s.lease();
                let elapsed = Duration::from_millis((now_ms - known.leased_at_ms).max(0) as u64);
                lease.demand = next_demand(lease.demand, lease.served, elapsed);
                lease.served = 0;
                if unreported > 0 {
                    lease.local_used = 0;
                }
                if block == 0 {
                    lease.used_up(
                        next.period,
                        reset,
                        now_ms + EXHAUSTED_RECHECK.as_millis() as i64,
                    );
                } else {
                    lease.leased(next.period, reset, block, remaining - block);
                }
            }
            if s.warned.swap(false, Ordering::Relaxed) {
                tracing::info!(counter = %s.name, "limit counter reachable again");
            }
            self.leases.inc();
            known.leased_at_ms = now_ms;
            known.seen = Some((next, revision));
            return;
        }
        // Lost every race: others are leasing hard; try again shortly.
        self.unreachable(s, now_ms, "too many concurrent updates");
    }

    fn unreachable(&self, s: &Scope, now_ms: i64, why: &str) {
        s.lease().unreachable_until = Some(now_ms + UNREACHABLE_RETRY.as_millis() as i64);
        self.unreachable.inc();
        if !s.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(counter = %s.name, error = why, "limit counter unreachable: rate limits count on this replica alone, quotas admit only what was leased");
        }
    }

    async fn read(&self, name: &str) -> Result<Option<(Counter, u64)>, String> {
        let entry = match tokio::time::timeout(OP_TIMEOUT, self.kv.entry(name)).await {
            Err(_) => return Err("timed out".into()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(entry)) => entry,
        };
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(None);
        };
        match serde_json::from_slice::<Counter>(&entry.value) {
            Ok(c) => Ok(Some((c, entry.revision))),
            Err(e) => {
                // Only replicas write it; overwrite what cannot be read.
                tracing::warn!(counter = name, error = %e, "a limit counter does not parse; starting it over");
                Ok(Some((Counter::default(), entry.revision)))
            }
        }
    }

    async fn write(&self, name: &str, next: &Counter, revision: u64) -> Written {
        let body = serde_json::to_vec(next).unwrap_or_default().into();
        if revision == 0 {
            match tokio::time::timeout(OP_TIMEOUT, self.kv.create(name, body)).await {
                Ok(Ok(rev)) => Written::Yes(rev),
                Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => Written::Conflict,
                _ => Written::Unknown,
            }
        } else {
            match tokio::time::timeout(OP_TIMEOUT, self.kv.update(name, body, revision)).await {
                Ok(Ok(rev)) => Written::Yes(rev),
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    Written::Conflict
                }
                _ => Written::Unknown,
            }
        }
    }

    /// Gives back what leases unused for [`IDLE_RETURN`] hold (everything
    /// with `all`), and forgets scopes long unused. Run every few hundred
    /// milliseconds, and once with `all` at a clean stop.
    pub async fn give_back(&self, now_ms: i64, all: bool) {
        let scopes: Vec<Arc<Scope>> = self
            .scopes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .cloned()
            .collect();
        for s in scopes {
            let idle_for = now_ms - s.last_used_ms.load(Ordering::Relaxed);
            if !all && idle_for < IDLE_RETURN.as_millis() as i64 {
                continue;
            }
            let Ok(mut known) = s.known.clone().try_lock_owned() else {
                continue;
            };
            let held = {
                let mut lease = s.lease();
                let held = std::mem::take(&mut lease.tokens);
                (held > 0).then(|| (lease.period, lease.reset.clone(), held))
            };
            if let Some((period, reset, held)) = held {
                self.give_back_one(&s, &mut known, period, &reset, held)
                    .await;
            }
        }
        let mut all_scopes = self.scopes.write().unwrap_or_else(|p| p.into_inner());
        all_scopes.retain(|_, list| {
            list.retain(|s| {
                let keep = now_ms - s.last_used_ms.load(Ordering::Relaxed) < FORGET_AFTER_MS
                    || s.lease().tokens > 0;
                if !keep {
                    self.kept.dec();
                }
                keep
            });
            !list.is_empty()
        });
    }

    async fn give_back_one(
        &self,
        s: &Scope,
        known: &mut Known,
        period: i64,
        reset: &str,
        held: u64,
    ) {
        let mut seen = known.seen.take();
        for _ in 0..MAX_ATTEMPTS {
            let (stored, revision) = match seen.take() {
                Some(found) => found,
                None => match self.read(&s.name).await {
                    Ok(Some(found)) => found,
                    // Gone or unreachable: what was held is lost, which
                    // never lets more through.
                    _ => return,
                },
            };
            if stored.period != period || stored.reset != reset {
                // That window or period is over: nothing to give back to.
                known.seen = Some((stored, revision));
                return;
            }
            let next = Counter {
                used: stored.used.saturating_sub(held),
                by: String::new(),
                ..stored
            };
            match self.write(&s.name, &next, revision).await {
                Written::Yes(rev) => {
                    known.seen = Some((next, rev));
                    return;
                }
                Written::Conflict => {}
                // Unknown: given back or not, never more than the limit.
                Written::Unknown => return,
            }
        }
    }
}
