//! The view every key-issuer replica (and the proxy, and portal-sync)
//! folds from `KEYS`: keys by hash with their effective sessions, policies,
//! organisation sessions, OAuth clients and live tokens, and the last
//! sequence of every entity's subject (what a writer expects when it
//! publishes the next change).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use meridian_schemas::keys::{CodeRecord, KeysEvent, TokenRecord};
use meridian_schemas::streams::KeysEntity;
use sha2::{Digest, Sha256};

use super::merge::{MergeError, effective};
use super::model::{AccessRights, OAuthClient, Pattern, Policy, Session};

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

/// What the gateway reads for a key on every request, in one lookup.
#[derive(Clone, Debug, PartialEq)]
pub struct Enforced {
    /// The effective session.
    pub effective: Effective,
    /// The key's own `last_updated` (not its policies'): a write that
    /// resets the quota changes it, so a quota counter started before it
    /// is over (see [`crate::limits::Counter`]).
    pub quota_reset: Arc<str>,
}

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
    effective: HashMap<String, Enforced>,
    policies: BTreeMap<String, Entry<Policy>>,
    orgs: BTreeMap<String, Entry<Session>>,
    clients: BTreeMap<String, Entry<OAuthClient>>,
    tokens: HashMap<String, Entry<TokenRecord>>,
    /// The sessions live access tokens carry, by token hash (their
    /// effective sessions are in `effective`, beside the keys').
    token_sessions: HashMap<String, Arc<Session>>,
    /// Live authorization codes, by code hash.
    codes: HashMap<String, Entry<CodeRecord>>,
    /// Policy id → hashes of the keys (and access tokens) that apply it.
    by_policy: HashMap<String, BTreeSet<String>>,
    /// Last sequence on each entity's subject, deletions included.
    last: HashMap<(KeysEntity, String), u64>,
    patterns: Patterns,
    position: u64,
}

/// `allowed_urls` patterns by their text, each compiled once and shared by
/// every key, policy and effective session that names it.
#[derive(Debug, Default)]
struct Patterns {
    compiled: HashMap<String, Pattern>,
    /// How many were left at the last pruning.
    kept: usize,
}

impl Patterns {
    /// Gives every allowed URL in `rights` its compiled pattern.
    fn fill(&mut self, rights: &mut AccessRights) {
        for allowed in rights.values_mut().flat_map(|r| r.allowed_urls.iter_mut()) {
            allowed.pattern = self.get(&allowed.url);
        }
    }

    fn get(&mut self, url: &str) -> Pattern {
        if let Some(found) = self.compiled.get(url) {
            return found.clone();
        }
        // Drop the patterns nothing holds any more once the table has
        // doubled since the last pruning: amortised O(1) per new pattern.
        if self.compiled.len() >= 2 * self.kept.max(64) {
            self.compiled.retain(|_, p| p.is_shared());
            self.kept = self.compiled.len();
        }
        // Checked on write; one stored before that which does not compile
        // matches nothing.
        let pattern = Pattern::compile(url).unwrap_or_default();
        self.compiled.insert(url.to_owned(), pattern.clone());
        pattern
    }
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
                let mut session: Session = parse("a key's session", session, seq)?;
                self.patterns.fill(&mut session.access_rights);
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
                let mut policy: Policy = parse("a policy", policy, seq)?;
                self.patterns.fill(&mut policy.access_rights);
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
                self.drop_tokens(|t| t.client_id == *client_id, |c| c.client_id == *client_id);
            }
            KeysEvent::TokenIssued {
                token_hash, token, ..
            } => {
                let session = self.token_session(token).map(Arc::new);
                self.tokens.insert(
                    token_hash.clone(),
                    Entry {
                        value: Arc::new(token.clone()),
                        seq,
                    },
                );
                if let Some(session) = session {
                    self.index_policies(token_hash, Some(&session));
                    self.token_sessions.insert(token_hash.clone(), session);
                    self.refresh(token_hash);
                }
            }
            KeysEvent::CodeIssued {
                code_hash, code, ..
            } => {
                self.codes.insert(
                    code_hash.clone(),
                    Entry {
                        value: Arc::new(code.clone()),
                        seq,
                    },
                );
            }
            KeysEvent::TokenRevoked { token_hash, .. } => self.drop_token(token_hash),
            KeysEvent::ClientTokensRevoked { client_id, .. } => {
                self.drop_tokens(|t| t.client_id == *client_id, |_| false);
            }
            KeysEvent::LapsedTokensPurged { at_ms, .. } => {
                self.drop_tokens(|t| t.expires_ms < *at_ms, |c| c.expires_ms < *at_ms);
            }
        }
        self.position = seq;
        Ok(())
    }

    /// The session an access token carries, built when it is issued as Tyk
    /// builds it: its user's session (the password grant) or else one
    /// applying its client's policy; expiring with the token, naming the
    /// client (`oauth_client_id`), with the client's metadata under the
    /// session's own. `None` for a refresh token, or when the client (or
    /// the user, or the client's policy) is gone: the token opens nothing.
    fn token_session(&self, token: &TokenRecord) -> Option<Session> {
        if token.refresh {
            return None;
        }
        let client = &self.clients.get(&token.client_id)?.value;
        let mut session = if token.key_hash.is_empty() {
            if client.policy_id.is_empty() {
                return None;
            }
            Session {
                apply_policies: vec![client.policy_id.clone()],
                ..Session::default()
            }
        } else {
            let mut user = self.keys.get(&token.key_hash)?.value.as_ref().clone();
            user.other.remove("basic_auth_data");
            user
        };
        session.expires = token.expires_ms.div_euclid(1000);
        session.other.insert(
            "oauth_client_id".into(),
            serde_json::Value::String(token.client_id.clone()),
        );
        if let serde_json::Value::Object(meta) = &client.meta_data {
            for (k, v) in meta {
                session
                    .meta_data
                    .entry(k.clone())
                    .or_insert_with(|| v.clone());
            }
        }
        Some(session)
    }

    /// Forgets a token or code (and the session a token carried).
    fn drop_token(&mut self, hash: &str) {
        self.tokens.remove(hash);
        self.codes.remove(hash);
        if self.token_sessions.contains_key(hash) {
            self.index_policies(hash, None);
            self.token_sessions.remove(hash);
            self.effective.remove(hash);
        }
    }

    /// Forgets every token and code that matches.
    fn drop_tokens(
        &mut self,
        token: impl Fn(&TokenRecord) -> bool,
        code: impl Fn(&CodeRecord) -> bool,
    ) {
        let tokens = self.tokens.iter().filter(|(_, t)| token(&t.value));
        let codes = self.codes.iter().filter(|(_, c)| code(&c.value));
        let gone: Vec<String> = tokens
            .map(|(h, _)| h.clone())
            .chain(codes.map(|(h, _)| h.clone()))
            .collect();
        for hash in gone {
            self.drop_token(&hash);
        }
    }

    /// The session stored under `hash`: a key's, or an access token's.
    fn stored_session(&self, hash: &str) -> Option<&Arc<Session>> {
        self.keys
            .get(hash)
            .map(|k| &k.value)
            .or_else(|| self.token_sessions.get(hash))
    }

    fn index_policies(&mut self, key_hash: &str, new: Option<&Session>) {
        let old = self.stored_session(key_hash).map(|s| s.policy_ids());
        for id in old.unwrap_or_default() {
            if let Some(set) = self.by_policy.get_mut(&id) {
                set.remove(key_hash);
                if set.is_empty() {
                    self.by_policy.remove(&id);
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
        if let Some(session) = self.stored_session(key_hash) {
            let enforced = Enforced {
                effective: self.merge(session),
                quota_reset: Arc::from(session.last_updated.as_str()),
            };
            self.effective.insert(key_hash.to_owned(), enforced);
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

    /// Where the log already holds what `event` would store: the sequence
    /// of the entity's last change when it saves a key, policy or
    /// organisation exactly as stored now (a write that changes nothing,
    /// which the writer then does not append). Any other event, or one
    /// whose JSON does not parse, is a change.
    pub fn holds(&self, event: &KeysEvent) -> Option<u64> {
        fn same<T: serde::de::DeserializeOwned + PartialEq>(
            stored: Option<&Entry<T>>,
            json: &str,
        ) -> bool {
            stored.is_some_and(|e| serde_json::from_str::<T>(json).is_ok_and(|v| v == *e.value))
        }
        let unchanged = match event {
            KeysEvent::KeySaved {
                key_hash,
                session,
                created: false,
                ..
            } => same(self.key(key_hash), session),
            KeysEvent::PolicySaved {
                policy_id,
                policy,
                created: false,
                ..
            } => same(self.policy(policy_id), policy),
            KeysEvent::OrgSaved {
                org_id,
                session,
                created: false,
                ..
            } => same(self.org(org_id), session),
            _ => false,
        };
        let (entity, id) = event.entity()?;
        unchanged.then(|| self.last_seq(entity, id))
    }

    /// A key, by the hash of the key.
    pub fn key(&self, hash: &str) -> Option<&Entry<Session>> {
        self.keys.get(hash)
    }

    /// A key's effective session (what the proxy enforces): one hash-map
    /// read, merged when the key or one of its policies changed.
    pub fn effective(&self, hash: &str) -> Option<&Effective> {
        self.effective.get(hash).map(|e| &e.effective)
    }

    /// A key's effective session and its quota's reset marker, in one
    /// hash-map read (the gateway's per-request lookup).
    pub fn enforced(&self, hash: &str) -> Option<&Enforced> {
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

    /// A live authorization code, by the hash of the code.
    pub fn code(&self, hash: &str) -> Option<&Entry<CodeRecord>> {
        self.codes.get(hash)
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
}

/// Canonical JSON of a stored object (maps are sorted: serde_json's `Map`
/// is a `BTreeMap` in this build).
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("stored objects serialize")
}

impl meridian_kit::projection::Digested for KeysState {
    /// SHA-256 (hex) over the whole view in a canonical order: two replicas,
    /// or a replica before and after a rebuild, agree exactly when their
    /// views are equal.
    fn digest(&self) -> String {
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
        let mut codes: Vec<_> = self.codes.iter().collect();
        codes.sort_unstable_by_key(|(k, _)| *k);
        for (k, e) in codes {
            put("code", k, e.seq, format!("{:?}", e.value));
        }
        let mut out = String::with_capacity(64);
        for b in h.finalize() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    fn position(&self) -> u64 {
        KeysState::position(self)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    /// A change to keys and policies, over small pools of each so that
    /// keys share policies and policies come and go under them.
    #[derive(Clone, Debug)]
    enum Op {
        SaveKey {
            key: u8,
            policies: Vec<u8>,
            rate: u8,
        },
        DeleteKey {
            key: u8,
        },
        SavePolicy {
            policy: u8,
            rate: u8,
            quota: i8,
            apis: Vec<u8>,
            partitioned: bool,
            per_api: bool,
        },
        DeletePolicy {
            policy: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..6u8, proptest::collection::vec(0..4u8, 0..3), 0..50u8)
                .prop_map(|(key, policies, rate)| Op::SaveKey { key, policies, rate }),
            1 => (0..6u8).prop_map(|key| Op::DeleteKey { key }),
            3 => (0..4u8, 0..50u8, -1..20i8, proptest::collection::vec(0..3u8, 0..3), any::<bool>(), any::<bool>())
                .prop_map(|(policy, rate, quota, apis, partitioned, per_api)| Op::SavePolicy {
                    policy, rate, quota, apis, partitioned, per_api,
                }),
            1 => (0..4u8).prop_map(|policy| Op::DeletePolicy { policy }),
        ]
    }

    fn access(apis: &[u8]) -> serde_json::Value {
        let rights: serde_json::Map<String, serde_json::Value> = apis
            .iter()
            .map(|a| {
                let id = format!("api{a}");
                (id.clone(), json!({"api_id": id, "versions": ["Default"]}))
            })
            .collect();
        serde_json::Value::Object(rights)
    }

    fn event(op: &Op) -> KeysEvent {
        let change_id = Uuid::nil();
        match op {
            Op::SaveKey { key, policies, rate } => KeysEvent::KeySaved {
                key_hash: format!("key{key}"),
                session: json!({
                    "rate": rate, "per": 10,
                    "apply_policies": policies.iter().map(|p| format!("pol{p}")).collect::<Vec<_>>(),
                    "access_rights": access(&[0]),
                })
                .to_string(),
                created: true,
                change_id,
                at_ms: 0,
            },
            Op::DeleteKey { key } => KeysEvent::KeyDeleted {
                key_hash: format!("key{key}"),
                org_id: String::new(),
                alias: String::new(),
                change_id,
                at_ms: 0,
            },
            Op::SavePolicy { policy, rate, quota, apis, partitioned, per_api } => {
                let mut rights = access(apis);
                if *per_api {
                    for right in rights.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
                        right["limit"] = json!({"rate": rate, "per": 5, "quota_max": quota});
                    }
                }
                KeysEvent::PolicySaved {
                    policy_id: format!("pol{policy}"),
                    policy: json!({
                        "id": format!("pol{policy}"),
                        "rate": rate, "per": 10, "quota_max": quota, "quota_renewal_rate": 60,
                        "access_rights": rights,
                        "partitions": {"rate_limit": partitioned, "per_api": per_api},
                    })
                    .to_string(),
                    created: true,
                    change_id,
                    at_ms: 0,
                }
            }
            Op::DeletePolicy { policy } => KeysEvent::PolicyDeleted {
                policy_id: format!("pol{policy}"),
                org_id: String::new(),
                change_id,
                at_ms: 0,
            },
        }
    }

    fn key_with_urls(hash: &str, urls: &[&str], seq: u64, state: &mut KeysState) {
        let allowed: Vec<_> = urls
            .iter()
            .map(|u| json!({"url": u, "methods": ["GET"]}))
            .collect();
        let session = json!({"access_rights": {"a": {"api_id": "a", "allowed_urls": allowed}}});
        let event = KeysEvent::KeySaved {
            key_hash: hash.into(),
            session: session.to_string(),
            created: true,
            change_id: Uuid::nil(),
            at_ms: 0,
        };
        state.apply(&event, seq).expect("valid JSON");
    }

    fn pattern(state: &KeysState, hash: &str, i: usize) -> Pattern {
        let session = state.effective(hash).unwrap().as_ref().unwrap();
        session.access_rights["a"].allowed_urls[i].pattern.clone()
    }

    #[test]
    fn allowed_urls_are_compiled_once_when_folded() {
        let mut state = KeysState::default();
        key_with_urls("k1", &["^/pets/[0-9]+$", "/owners("], 1, &mut state);
        key_with_urls("k2", &["^/pets/[0-9]+$"], 2, &mut state);
        let first = pattern(&state, "k1", 0);
        assert!(first.is_match("/pets/12") && !first.is_match("/pets/x"));
        // One compiled pattern, shared by both keys and their sessions.
        let (Some(a), Some(b)) = (&first.0, &pattern(&state, "k2", 0).0) else {
            panic!("compiled")
        };
        assert!(Arc::ptr_eq(a, b));
        // Stored before patterns were checked on write: matches nothing.
        let broken = pattern(&state, "k1", 1);
        assert!(!broken.is_compiled() && !broken.is_match("/owners("));
    }

    #[test]
    fn patterns_nothing_holds_are_dropped_as_the_table_grows() {
        let mut state = KeysState::default();
        for i in 0..1000u64 {
            // One key, its pattern replaced each time.
            key_with_urls("k", &[&format!("^/v{i}/")], i + 1, &mut state);
        }
        let table = state.patterns.compiled.len();
        assert!(table <= 128, "{table} patterns kept for one live one");
        assert!(pattern(&state, "k", 0).is_match("/v999/x"));
    }

    #[test]
    fn access_tokens_carry_their_clients_policy_until_revoked() {
        let mut state = KeysState::default();
        let policy = json!({"id": "gold", "rate": 5, "per": 1,
            "access_rights": {"pets": {"api_id": "pets", "versions": ["Default"]}}});
        let client = json!({"client_id": "app", "secret_hash": "x", "api_id": "pets",
            "policy_id": "gold", "meta_data": {"team": "blue"}});
        let token = |refresh: bool, key_hash: &str| TokenRecord {
            client_id: "app".into(),
            api_id: "pets".into(),
            refresh,
            expires_ms: 7_200_000,
            issued_ms: 0,
            key_hash: key_hash.into(),
            access_hash: String::new(),
        };
        let events = [
            KeysEvent::PolicySaved {
                policy_id: "gold".into(),
                policy: policy.to_string(),
                created: true,
                change_id: Uuid::new_v4(),
                at_ms: 0,
            },
            KeysEvent::ClientSaved {
                client_id: "app".into(),
                client: client.to_string(),
                created: true,
                rotated: false,
                change_id: Uuid::new_v4(),
                at_ms: 0,
            },
            KeysEvent::TokenIssued {
                token_hash: "a".repeat(64),
                token: token(false, ""),
                change_id: Uuid::new_v4(),
            },
            KeysEvent::TokenIssued {
                token_hash: "b".repeat(64),
                token: token(true, ""),
                change_id: Uuid::new_v4(),
            },
        ];
        for (i, e) in events.iter().enumerate() {
            state.apply(e, i as u64 + 1).unwrap();
        }
        let access = state.effective(&"a".repeat(64)).unwrap().as_ref().unwrap();
        assert_eq!((access.rate, access.expires), (5.0, 7_200));
        assert_eq!(access.meta_data["team"], "blue");
        assert_eq!(access.other["oauth_client_id"], "app");
        assert!(access.access_rights.contains_key("pets"));
        assert!(
            state.effective(&"b".repeat(64)).is_none(),
            "a refresh token opens nothing"
        );
        assert_eq!(state.key_count(), 0, "tokens are not keys");
        // The policy changes: the token follows; it goes: the token opens nothing.
        let mut faster = policy.clone();
        faster["rate"] = json!(9);
        let saved = KeysEvent::PolicySaved {
            policy_id: "gold".into(),
            policy: faster.to_string(),
            created: false,
            change_id: Uuid::new_v4(),
            at_ms: 0,
        };
        state.apply(&saved, 5).unwrap();
        let access = state.effective(&"a".repeat(64)).unwrap().as_ref().unwrap();
        assert_eq!(access.rate, 9.0);
        let deleted = KeysEvent::PolicyDeleted {
            policy_id: "gold".into(),
            org_id: String::new(),
            change_id: Uuid::new_v4(),
            at_ms: 0,
        };
        state.apply(&deleted, 6).unwrap();
        assert!(state.effective(&"a".repeat(64)).unwrap().is_err());
        let revoked = KeysEvent::TokenRevoked {
            token_hash: "a".repeat(64),
            change_id: Uuid::new_v4(),
            at_ms: 0,
        };
        state.apply(&revoked, 7).unwrap();
        assert!(state.effective(&"a".repeat(64)).is_none());
        assert!(state.token(&"a".repeat(64)).is_none());
        assert!(state.by_policy.is_empty(), "nothing left indexed");
    }

    #[test]
    fn a_save_of_what_is_stored_is_held_and_anything_else_is_a_change() {
        let mut state = KeysState::default();
        let saved = |session: serde_json::Value, created: bool| KeysEvent::KeySaved {
            key_hash: "k".into(),
            session: session.to_string(),
            created,
            change_id: Uuid::new_v4(),
            at_ms: 0,
        };
        let session = json!({"rate": 5, "per": 1, "access_rights": access(&[0])});
        assert_eq!(state.holds(&saved(session.clone(), true)), None, "new");
        state.apply(&saved(session.clone(), true), 7).unwrap();
        assert_eq!(
            state.holds(&saved(session.clone(), false)),
            Some(7),
            "the same session, another change id, field order aside"
        );
        let mut other = session.clone();
        other["rate"] = json!(6);
        assert_eq!(state.holds(&saved(other, false)), None, "a changed field");
        assert_eq!(state.holds(&saved(json!("not a session"), false)), None);
        let policy = |rate: u32| KeysEvent::PolicySaved {
            policy_id: "p".into(),
            policy: json!({"id": "p", "rate": rate, "per": 1, "last_updated": "100"}).to_string(),
            created: false,
            change_id: Uuid::new_v4(),
            at_ms: 0,
        };
        state.apply(&policy(1), 8).unwrap();
        assert_eq!(state.holds(&policy(1)), Some(8));
        assert_eq!(state.holds(&policy(2)), None);
        let deleted = KeysEvent::KeyDeleted {
            key_hash: "k".into(),
            org_id: String::new(),
            alias: String::new(),
            change_id: Uuid::new_v4(),
            at_ms: 0,
        };
        assert_eq!(state.holds(&deleted), None, "only saves are compared");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

        /// The effective sessions kept current event by event equal every
        /// key merged from scratch with the policies as they are then.
        #[test]
        fn effective_index_equals_a_merge_from_scratch(ops in proptest::collection::vec(op(), 1..40)) {
            let mut state = KeysState::default();
            for (i, op) in ops.iter().enumerate() {
                state.apply(&event(op), i as u64 + 1).expect("valid JSON");
                let hashes = state.key_hashes();
                prop_assert_eq!(state.effective.len(), hashes.len(), "one effective session per key");
                for hash in hashes {
                    let key = state.key(hash).expect("listed");
                    let from_scratch = state.merge(&key.value);
                    prop_assert_eq!(
                        state.effective(hash), Some(&from_scratch),
                        "key {} after {:?}", hash, op
                    );
                }
            }
        }
    }
}
