//! Which proxy replicas are live and what each has applied.
//!
//! Every replica announces on core NATS ([`PROXY_APPLIED_SUBJECT`]) the last
//! `APIS` and `KEYS` sequences its views include: at once after each change
//! it applied, and every [`REPLICA_ANNOUNCE_EVERY_MS`] otherwise, and a last
//! time with `leaving` when it stops. Every replica listens to all of them.
//! A replica heard from within [`REPLICA_LIVE_WITHIN_MS`] is live; one that
//! crashed drops out after that, one that stopped cleanly at once. A
//! blocking reload waits until every live replica announced sequences at
//! least those the streams ended at when it was asked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_kit::CancellationToken;
use meridian_kit::projection::Progress;
use meridian_schemas::apis::{REPLICA_ANNOUNCE_EVERY_MS, REPLICA_LIVE_WITHIN_MS, ReplicaApplied};
use meridian_schemas::streams::PROXY_APPLIED_SUBJECT;
use tokio::sync::watch;
use tokio::time::Instant;
use uuid::Uuid;

/// How far a live replica has applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The replica.
    pub replica: Uuid,
    /// Its `APIS` position.
    pub apis: u64,
    /// Its `KEYS` position.
    pub keys: u64,
}

#[derive(Default)]
struct Seen {
    replicas: HashMap<Uuid, (Applied, Instant)>,
}

/// The replicas heard from; see the module documentation.
#[derive(Clone)]
pub struct Replicas {
    me: Uuid,
    seen: Arc<Mutex<Seen>>,
    heard: watch::Sender<u64>,
}

/// Why a blocking reload gave up.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} of {live} live gateway replicas had not applied APIS {apis} and KEYS {keys} within {waited:?}: {}",
    behind.len(),
    behind.iter().map(|a| format!("{} (APIS {}, KEYS {})", a.replica, a.apis, a.keys)).collect::<Vec<_>>().join(", ")
)]
pub struct NotApplied {
    /// The `APIS` sequence waited for.
    pub apis: u64,
    /// The `KEYS` sequence waited for.
    pub keys: u64,
    /// Live replicas.
    pub live: usize,
    /// Those behind.
    pub behind: Vec<Applied>,
    /// How long it waited.
    pub waited: Duration,
}

fn live_within() -> Duration {
    Duration::from_millis(REPLICA_LIVE_WITHIN_MS)
}

impl Replicas {
    /// The registry of replica `me` (a fresh id per start).
    pub fn new(me: Uuid) -> Self {
        Self {
            me,
            seen: Arc::new(Mutex::new(Seen::default())),
            heard: watch::channel(0).0,
        }
    }

    /// This replica's id.
    pub fn me(&self) -> Uuid {
        self.me
    }

    fn record(&self, a: &ReplicaApplied) {
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if a.leaving {
                seen.replicas.remove(&a.replica);
            } else {
                let applied = Applied {
                    replica: a.replica,
                    apis: a.apis,
                    keys: a.keys,
                };
                seen.replicas.insert(a.replica, (applied, Instant::now()));
            }
        }
        self.heard.send_modify(|n| *n += 1);
    }

    /// The live replicas, this one first when it has been heard.
    pub fn live(&self) -> Vec<Applied> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        seen.replicas
            .retain(|_, (_, at)| now.duration_since(*at) <= live_within());
        let mut live: Vec<Applied> = seen.replicas.values().map(|(a, _)| *a).collect();
        live.sort_by_key(|a| (a.replica != self.me, a.replica));
        live
    }

    /// How many replicas are live (this one counted even before it has
    /// heard itself: at least 1).
    pub fn live_count(&self) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let live = seen
            .replicas
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) <= live_within());
        let (count, me) = live.fold((0, false), |(n, me), (id, _)| (n + 1, me || *id == self.me));
        if me { count } else { count + 1 }
    }

    /// Waits until every live replica (this one included) has applied
    /// `APIS` up to `apis` and `KEYS` up to `keys`; returns how many
    /// replicas that is.
    pub async fn wait_applied(
        &self,
        apis: u64,
        keys: u64,
        patience: Duration,
    ) -> Result<usize, NotApplied> {
        let started = Instant::now();
        let mut heard = self.heard.subscribe();
        loop {
            let live = self.live();
            let behind: Vec<Applied> = live
                .iter()
                .filter(|a| a.apis < apis || a.keys < keys)
                .copied()
                .collect();
            let me_heard = live.iter().any(|a| a.replica == self.me);
            if behind.is_empty() && me_heard {
                return Ok(live.len());
            }
            let waited = started.elapsed();
            if waited >= patience {
                return Err(NotApplied {
                    apis,
                    keys,
                    live: live.len(),
                    behind,
                    waited,
                });
            }
            // Liveness lapses with time, not only with messages: look again
            // at least every 100 ms.
            let _ = tokio::time::timeout(Duration::from_millis(100), heard.changed()).await;
        }
    }

    /// Listens to every replica's announcements until `stop`.
    pub async fn track_until_stopped(
        self,
        mut announcements: async_nats::Subscriber,
        stop: CancellationToken,
    ) {
        use futures_util::StreamExt;
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                m = announcements.next() => match m {
                    Some(m) => m,
                    None => return,
                },
            };
            match serde_json::from_slice::<ReplicaApplied>(&message.payload) {
                Ok(applied) => self.record(&applied),
                Err(e) => tracing::warn!(error = %e, "ignoring a malformed replica announcement"),
            }
        }
    }
}

/// Subscribes to the replicas' announcements (before the first one is sent).
pub async fn subscribe(
    client: &async_nats::Client,
) -> Result<async_nats::Subscriber, async_nats::SubscribeError> {
    client.subscribe(PROXY_APPLIED_SUBJECT).await
}

/// Announces what this replica applied (see the module documentation)
/// until `stop`, then says it is leaving.
pub async fn announce_until_stopped(
    client: async_nats::Client,
    me: Uuid,
    apis: Progress,
    keys: Progress,
    stop: CancellationToken,
) {
    let mut apis_moved = apis.subscribe();
    let mut keys_moved = keys.subscribe();
    let mut every = tokio::time::interval(Duration::from_millis(REPLICA_ANNOUNCE_EVERY_MS));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let announce = |leaving: bool| {
        let applied = ReplicaApplied {
            replica: me,
            apis: apis.position(),
            keys: keys.position(),
            leaving,
        };
        let client = client.clone();
        async move {
            let payload = serde_json::to_vec(&applied).unwrap_or_default();
            if let Err(e) = client.publish(PROXY_APPLIED_SUBJECT, payload.into()).await {
                tracing::debug!(error = %e, "cannot announce what this replica applied");
            }
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = every.tick() => {}
            r = apis_moved.changed() => if r.is_err() { break },
            r = keys_moved.changed() => if r.is_err() { break },
        }
        announce(false).await;
    }
    announce(true).await;
    let _ = client.flush().await;
}
