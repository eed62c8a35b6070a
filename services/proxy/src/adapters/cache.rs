//! The replica's response cache ([`crate::domain::cache`] says what is
//! cached): answers kept in memory up to a byte budget (quick_cache, the
//! least recently and least frequently used go first), looked up by the
//! request's cache key. Concurrent misses for one key go upstream once:
//! the first holds the entry's placeholder, the others wait for what it
//! keeps. When its answer may not be kept (a 500, say), it leaves a
//! short-lived pass mark instead ([`PASS_FOR_MS`], Varnish's hit-for-pass),
//! so the requests waiting, and those in the next moment, go upstream side
//! by side rather than one after another.
//!
//! A purge (`DELETE /tyk/cache/{apiID}`) is sent to every live replica on
//! [`PROXY_CACHE_PURGE_SUBJECT`]; each drops the API's entries and
//! answers with its id, and the call returns once every live replica has.

use std::sync::Arc;

use bytes::Bytes;
use hyper::StatusCode;
use hyper::header::HeaderMap;
use meridian_kit::metrics::{Counter, Metrics};
use meridian_schemas::streams::PROXY_CACHE_PURGE_SUBJECT;
use quick_cache::sync::{Cache, DefaultLifecycle, PlaceholderGuard};

/// A cache key ([`crate::domain::cache::Cache::key`]).
pub type Key = [u8; 32];

/// How long a pass mark sends a key's requests straight upstream.
pub const PASS_FOR_MS: i64 = 1_000;

/// One kept answer.
#[derive(Debug)]
pub struct Entry {
    /// The API it belongs to (for purges).
    pub api_id: String,
    /// Its status.
    pub status: StatusCode,
    /// Its headers as the upstream sent them (hop-by-hop ones removed).
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// When it stops being served, ms since the epoch.
    pub expires_ms: i64,
    /// A pass mark: no answer, requests go upstream uncached.
    pub pass: bool,
}

impl Entry {
    /// A pass mark for `api_id` until `PASS_FOR_MS` after `now_ms`.
    pub fn pass(api_id: &str, now_ms: i64) -> Self {
        Self {
            api_id: api_id.to_owned(),
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            expires_ms: now_ms + PASS_FOR_MS,
            pass: true,
        }
    }
}

/// An entry's cost against the budget: its body, its headers and a little
/// for the bookkeeping.
#[derive(Clone, Copy)]
pub struct Weight;

impl quick_cache::Weighter<Key, Arc<Entry>> for Weight {
    fn weight(&self, _key: &Key, entry: &Arc<Entry>) -> u64 {
        let headers: usize = entry
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        (entry.body.len() + headers + 128) as u64
    }
}

type Store = Cache<Key, Arc<Entry>, Weight, std::collections::hash_map::RandomState>;

/// The placeholder of a miss: keep an answer with [`Miss::keep`], or drop
/// it to let the next waiting request try.
pub struct Miss<'a>(
    PlaceholderGuard<
        'a,
        Key,
        Arc<Entry>,
        Weight,
        std::collections::hash_map::RandomState,
        DefaultLifecycle<Key, Arc<Entry>>,
    >,
);

impl Miss<'_> {
    /// Keeps `entry` and hands it to the requests waiting for it.
    pub fn keep(self, entry: Arc<Entry>) {
        let _ = self.0.insert(entry);
    }
}

/// What a lookup found.
pub enum Lookup<'a> {
    /// A kept answer, still fresh.
    Hit(Arc<Entry>),
    /// Nothing: this request goes upstream (and may keep its answer).
    Miss(Miss<'a>),
    /// A pass mark: this request goes upstream, nothing is kept.
    Pass,
}

/// The replica's cache; see the module documentation.
pub struct ResponseCache {
    store: Store,
    hits: Counter,
    misses: Counter,
}

impl ResponseCache {
    /// A cache holding up to `max_bytes` of answers.
    pub fn new(max_bytes: u64, metrics: &Metrics) -> Self {
        let lookups = metrics.counters(
            "meridian_gateway_cache_lookups",
            "Requests to cached paths, by outcome (hit: answered from this replica's cache; miss: sent upstream).",
        );
        let outcome = |o: &str| {
            lookups
                .get_or_create(&vec![("outcome", o.to_owned())])
                .clone()
        };
        let (hits, misses) = (outcome("hit"), outcome("miss"));
        Self {
            store: Cache::with(
                usize::try_from(max_bytes / 4096).unwrap_or(1 << 20).max(16),
                max_bytes.max(1),
                Weight,
                std::collections::hash_map::RandomState::new(),
                DefaultLifecycle::default(),
            ),
            hits,
            misses,
        }
    }

    /// The kept answer for `key` at `now_ms`, or the placeholder to fill.
    pub async fn lookup(&self, key: &Key, now_ms: i64) -> Lookup<'_> {
        loop {
            match self.store.get_value_or_guard_async(key).await {
                Ok(entry) if entry.expires_ms > now_ms => {
                    if entry.pass {
                        self.misses.inc();
                        return Lookup::Pass;
                    }
                    self.hits.inc();
                    return Lookup::Hit(entry);
                }
                Ok(_) => {
                    // Expired: gone, and looked up again (one request
                    // then holds the placeholder).
                    self.store.remove(key);
                }
                Err(guard) => {
                    self.misses.inc();
                    return Lookup::Miss(Miss(guard));
                }
            }
        }
    }

    /// Drops every answer kept for `api_id`.
    pub fn purge(&self, api_id: &str) {
        self.store.retain(|_, entry| entry.api_id != api_id);
    }
}

/// Answers purges sent to every replica until the subscription ends.
pub async fn answer_purges(
    client: async_nats::Client,
    mut purges: async_nats::Subscriber,
    cache: Arc<ResponseCache>,
    replica: uuid::Uuid,
) {
    use futures_util::StreamExt as _;
    while let Some(msg) = purges.next().await {
        let api_id = String::from_utf8_lossy(&msg.payload).into_owned();
        cache.purge(&api_id);
        tracing::info!(api = %api_id, "response cache purged");
        if let Some(reply) = msg.reply
            && let Err(e) = client.publish(reply, replica.to_string().into()).await
        {
            tracing::warn!(error = %e, "a cache purge could not be confirmed");
        }
    }
}

/// Subscribes to purges (before the replica announces itself, so that
/// none sent once it is live is missed).
pub async fn subscribe(
    client: &async_nats::Client,
) -> Result<async_nats::Subscriber, async_nats::SubscribeError> {
    client.subscribe(PROXY_CACHE_PURGE_SUBJECT).await
}

/// Sends a purge of `api_id` to every replica and waits until each of
/// `live` answered, or `within` passed; gives those that did not.
pub async fn purge_everywhere(
    client: &async_nats::Client,
    api_id: &str,
    live: Vec<uuid::Uuid>,
    within: std::time::Duration,
) -> Result<(), Vec<uuid::Uuid>> {
    use futures_util::StreamExt as _;
    let inbox = client.new_inbox();
    let Ok(mut answers) = client.subscribe(inbox.clone()).await else {
        return Err(live);
    };
    if client
        .publish_with_reply(PROXY_CACHE_PURGE_SUBJECT, inbox, api_id.to_owned().into())
        .await
        .is_err()
        || client.flush().await.is_err()
    {
        return Err(live);
    }
    let mut waiting = live;
    let deadline = tokio::time::Instant::now() + within;
    while !waiting.is_empty() {
        match tokio::time::timeout_at(deadline, answers.next()).await {
            Ok(Some(msg)) => {
                let from = String::from_utf8_lossy(&msg.payload);
                waiting.retain(|r| r.to_string() != from);
            }
            _ => return Err(waiting),
        }
    }
    Ok(())
}
