//! The view every key-issuer replica (and the proxy, and portal-sync)
//! folds from `KEYS`: keys by hash with their effective sessions, policies,
//! organisation sessions, OAuth clients and live tokens, and the last
//! sequence of every entity's subject (what a writer expects when it
//! publishes the next change).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use meridian_schemas::keys::{KeysEvent, TokenRecord};
use meridian_schemas::streams::KeysEntity;
use sha2::{Digest, Sha256};

use super::merge::{MergeError, effective};
use super::model::{OAuthClient, Policy, Session};

/// A stored object and the sequence of the event that stored it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry<T> {
    /// The object.
    pub value: Arc<T>,
    /// Its event's `KEYS` sequence.
    pub seq: u64,
}

/// A key's effective session, or why its policies cannot be applied.
pub type Effective = Result<Arc<Session>, MergeError>;

/// An object in an event that does not parse: the stream holds something
/// this build cannot read (only key-issuer writes it, after parsing).
#[derive(Debug, thiserror::Error)]
#[error("{what} in KEYS at sequence {seq} does not parse: {source}")]
pub struct CorruptObject {
    /// What was being read.
    pub what: &'static str,
    /// The event's sequence.
    pub seq: u64,
    /// Why.
    #[source]
    pub source: serde_json::Error,
}

/// The fold of `KEYS`.
#[derive(Debug, Default)]
pub struct KeysState {
    keys: HashMap<String, Entry<Session>>,
    effective: HashMap<String, Effective>,
    policies: BTreeMap<String, Entry<Policy>>,
    orgs: BTreeMap<String, Entry<Session>>,
    clients: BTreeMap<String, Entry<OAuthClient>>,
    tokens: HashMap<String, Entry<TokenRecord>>,
    /// Policy id → hashes of the keys that apply it.
    by_policy: HashMap<String, BTreeSet<String>>,
    /// Last sequence on each entity's subject, deletions included.
    last: HashMap<(KeysEntity, String), u64>,
    position: u64,
}

fn parse<T: serde::de::DeserializeOwned>(
    what: &'static str,
    json: &str,
    seq: u64,
) -> Result<T, CorruptObject> {
    serde_json::from_str(json).map_err(|source| CorruptObject { what, seq, source })
}

impl KeysState {
    /// Applies the event stored at `seq`. Events at or below the position
    /// already applied change nothing.
    pub fn apply(&mut self, event: &KeysEvent, seq: u64) -> Result<(), CorruptObject> {
        if seq <= self.position {
            return Ok(());
        }
        if let Some((entity, id)) = event.entity() {
            self.last.insert((entity, id.to_owned()), seq);
        }
        match event {
            KeysEvent::KeySaved {
                key_hash, session, ..
            } => {
                let session: Session = parse("a key's session", session, seq)?;
                self.index_policies(key_hash, Some(&session));
                self.keys.insert(
                    key_hash.clone(),
                    Entry {
                        value: Arc::new(session),
                        seq,
                    },
                );
                self.refresh(key_hash);
            }
            KeysEvent::KeyDeleted { key_hash, .. } => {
                self.index_policies(key_hash, None);
                self.keys.remove(key_hash);
                self.effective.remove(key_hash);
            }
            KeysEvent::PolicySaved {
                policy_id, policy, ..
            } => {
                let policy: Policy = parse("a policy", policy, seq)?;
                self.policies.insert(
                    policy_id.clone(),
                    Entry {
                        value: Arc::new(policy),
                        seq,
                    },
                );
                self.refresh_policy(policy_id);
            }
            KeysEvent::PolicyDeleted { policy_id, .. } => {
                self.policies.remove(policy_id);
                self.refresh_policy(policy_id);
            }
            KeysEvent::OrgSaved {
                org_id, session, ..
            } => {
                let session: Session = parse("an organisation session", session, seq)?;
                self.orgs.insert(
                    org_id.clone(),
                    Entry {
                        value: Arc::new(session),
                        seq,
                    },
                );
            }
            KeysEvent::OrgDeleted { org_id, .. } => {
                self.orgs.remove(org_id);
            }
            KeysEvent::ClientSaved {
                client_id, client, ..
            } => {
                let client: OAuthClient = parse("an OAuth client", client, seq)?;
                self.clients.insert(
                    client_id.clone(),
                    Entry {
                        value: Arc::new(client),
                        seq,
                    },
                );
            }
            KeysEvent::ClientDeleted { client_id, .. } => {
                self.clients.remove(client_id);
                self.tokens.retain(|_, t| t.value.client_id != *client_id);
            }
            KeysEvent::TokenIssued {
                token_hash, token, ..
            } => {
                self.tokens.insert(
                    token_hash.clone(),
                    Entry {
                        value: Arc::new(token.clone()),
                        seq,
                    },
                );
            }
            KeysEvent::TokenRevoked { token_hash, .. } => {
                self.tokens.remove(token_hash);
            }
            KeysEvent::ClientTokensRevoked { client_id, .. } => {
                self.tokens.retain(|_, t| t.value.client_id != *client_id);
            }
            KeysEvent::LapsedTokensPurged { at_ms, .. } => {
                self.tokens.retain(|_, t| t.value.expires_ms >= *at_ms);
            }
        }
        self.position = seq;
        Ok(())
    }

    fn index_policies(&mut self, key_hash: &str, new: Option<&Session>) {
        if let Some(old) = self.keys.get(key_hash) {
            for id in old.value.policy_ids() {
                if let Some(set) = self.by_policy.get_mut(&id) {
                    set.remove(key_hash);
                    if set.is_empty() {
                        self.by_policy.remove(&id);
                    }
                }
            }
        }
        if let Some(new) = new {
            for id in new.policy_ids() {
                self.by_policy
                    .entry(id)
                    .or_default()
                    .insert(key_hash.to_owned());
            }
        }
    }

    fn refresh(&mut self, key_hash: &str) {
        if let Some(key) = self.keys.get(key_hash) {
            let merged = self.merge(&key.value);
            self.effective.insert(key_hash.to_owned(), merged);
        }
    }

    fn refresh_policy(&mut self, policy_id: &str) {
        let keys: Vec<String> = self
            .by_policy
            .get(policy_id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            self.refresh(&key);
        }
    }

    /// `key` merged with the policies as they are now.
    pub fn merge(&self, key: &Session) -> Effective {
        effective(key, |id| self.policies.get(id).map(|e| e.value.as_ref())).map(Arc::new)
    }

    /// The last event applied.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The sequence of the last change of an entity (0: never written),
    /// what the next writer publishes expecting.
    pub fn last_seq(&self, entity: KeysEntity, id: &str) -> u64 {
        self.last
            .get(&(entity, id.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// A key, by the hash of the key.
    pub fn key(&self, hash: &str) -> Option<&Entry<Session>> {
        self.keys.get(hash)
    }

    /// A key's effective session (what the proxy enforces): one hash-map
    /// read, merged when the key or one of its policies changed.
    pub fn effective(&self, hash: &str) -> Option<&Effective> {
        self.effective.get(hash)
    }

    /// Every key hash, sorted.
    pub fn key_hashes(&self) -> Vec<&str> {
        let mut all: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        all.sort_unstable();
        all
    }

    /// How many keys there are.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// A policy.
    pub fn policy(&self, id: &str) -> Option<&Entry<Policy>> {
        self.policies.get(id)
    }

    /// Every policy, by id.
    pub fn policies(&self) -> impl Iterator<Item = &Entry<Policy>> {
        self.policies.values()
    }

    /// An organisation session.
    pub fn org(&self, id: &str) -> Option<&Entry<Session>> {
        self.orgs.get(id)
    }

    /// Every organisation id, sorted.
    pub fn org_ids(&self) -> impl Iterator<Item = &str> {
        self.orgs.keys().map(String::as_str)
    }

    /// An OAuth client.
    pub fn client(&self, id: &str) -> Option<&Entry<OAuthClient>> {
        self.clients.get(id)
    }

    /// The APIs a client's tokens open: its `api_id`, or its policy's.
    pub fn client_apis(&self, client: &OAuthClient) -> Vec<String> {
        if !client.api_id.is_empty() {
            return vec![client.api_id.clone()];
        }
        self.policies
            .get(&client.policy_id)
            .map(|p| p.value.access_rights.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The clients of an API, by client id.
    pub fn clients_of_api(&self, api_id: &str) -> Vec<&Entry<OAuthClient>> {
        self.clients
            .values()
            .filter(|c| self.client_apis(&c.value).iter().any(|a| a == api_id))
            .collect()
    }

    /// A live token, by the hash of the token.
    pub fn token(&self, hash: &str) -> Option<&Entry<TokenRecord>> {
        self.tokens.get(hash)
    }

    /// A client's live tokens not expired at `now_ms`, oldest first.
    pub fn tokens_of_client(&self, client_id: &str, now_ms: i64) -> Vec<(&str, &TokenRecord)> {
        let mut found: Vec<(&str, &Entry<TokenRecord>)> = self
            .tokens
            .iter()
            .filter(|(_, t)| t.value.client_id == client_id && t.value.expires_ms > now_ms)
            .map(|(h, t)| (h.as_str(), t))
            .collect();
        found.sort_by_key(|(h, t)| (t.seq, *h));
        found
            .into_iter()
            .map(|(h, t)| (h, t.value.as_ref()))
            .collect()
    }

    /// SHA-256 (hex) over the whole view in a canonical order: two replicas,
    /// or a replica before and after a rebuild, agree exactly when their
    /// views are equal.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        let mut put = |kind: &str, id: &str, seq: u64, json: String| {
            for part in [kind.as_bytes(), id.as_bytes(), json.as_bytes()] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part);
            }
            h.update(seq.to_le_bytes());
        };
        let mut keys: Vec<_> = self.keys.iter().collect();
        keys.sort_unstable_by_key(|(k, _)| *k);
        for (k, e) in keys {
            put("key", k, e.seq, json(e.value.as_ref()));
        }
        for (k, e) in &self.policies {
            put("policy", k, e.seq, json(e.value.as_ref()));
        }
        for (k, e) in &self.orgs {
            put("org", k, e.seq, json(e.value.as_ref()));
        }
        for (k, e) in &self.clients {
            put("client", k, e.seq, json(e.value.as_ref()));
        }
        let mut tokens: Vec<_> = self.tokens.iter().collect();
        tokens.sort_unstable_by_key(|(k, _)| *k);
        for (k, e) in tokens {
            put("token", k, e.seq, format!("{:?}", e.value));
        }
        let mut out = String::with_capacity(64);
        for b in h.finalize() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// Canonical JSON of a stored object (maps are sorted: serde_json's `Map`
/// is a `BTreeMap` in this build).
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("stored objects serialize")
}
