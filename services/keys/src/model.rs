//! The Gateway API's objects (Tyk's `SessionState`, `Policy`, OAuth client)
//! as Meridian reads them. Every field a client sends is kept: the fields
//! Meridian uses are typed, the rest ride along in `other` and come back as
//! they were sent. `null` where Tyk allows it (lists, maps) reads as empty.

use std::collections::BTreeMap;
use std::sync::Arc;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Fields Meridian does not interpret, kept as sent.
pub type Other = Map<String, Value>;

/// Reads `null` as the type's default (Tyk sends `null` for empty lists and maps).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Rate, quota and throttle limits: a session's own, a policy's, or one
/// API's within a session (Tyk's `APILimit`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limit {
    /// Requests allowed per `per` seconds (0: no rate limit).
    pub rate: f64,
    /// The rate window, in seconds.
    pub per: f64,
    /// Requests per quota period; -1 is unlimited, 0 none set.
    pub quota_max: i64,
    /// Requests left in the current quota period.
    pub quota_remaining: i64,
    /// Length of a quota period, in seconds.
    pub quota_renewal_rate: i64,
    /// When the current quota period ends (Unix seconds).
    pub quota_renews: i64,
    /// Seconds between retries when throttled.
    pub throttle_interval: f64,
    /// Retries when throttled.
    pub throttle_retry_limit: i64,
    /// GraphQL query depth limit (0: none).
    pub max_query_depth: i64,
    /// Anything else sent (`smoothing`, ...).
    #[serde(flatten)]
    pub other: Other,
}

impl Limit {
    /// Tyk's `IsEmpty`: no limit of any kind is set.
    pub fn is_empty(&self) -> bool {
        self.rate == 0.0
            && self.per == 0.0
            && self.quota_max == 0
            && self.quota_remaining == 0
            && self.quota_renewal_rate == 0
            && self.quota_renews == 0
            && self.throttle_interval == 0.0
            && self.throttle_retry_limit == 0
            && self.max_query_depth == 0
    }

    /// Seconds between two requests at this rate; 0 when no rate is set.
    pub fn interval(&self) -> f64 {
        if self.rate <= 0.0 || self.per <= 0.0 {
            0.0
        } else {
            self.per / self.rate
        }
    }
}

/// An `allowed_urls` pattern, compiled once when the key or policy holding
/// it is folded (see [`crate::state::KeysState`]); the proxy matches with
/// it, never compiling on a request.
#[derive(Clone, Default)]
pub struct Pattern(pub(crate) Option<Arc<Regex>>);

impl Pattern {
    /// Compiles `url` as Tyk reads it: a regular expression, unanchored.
    pub fn compile(url: &str) -> Result<Self, regex::Error> {
        Regex::new(url).map(|r| Self(Some(Arc::new(r))))
    }

    /// Whether the pattern matches `path`. Not compiled (a pattern stored
    /// before patterns were checked on write, that does not compile)
    /// matches nothing: the request is refused, as Tyk refuses it.
    pub fn is_match(&self, path: &str) -> bool {
        self.0.as_ref().is_some_and(|r| r.is_match(path))
    }

    /// Whether the pattern is compiled.
    pub fn is_compiled(&self) -> bool {
        self.0.is_some()
    }

    /// Whether anything but this handle holds the compiled pattern.
    pub(crate) fn is_shared(&self) -> bool {
        self.0.as_ref().is_some_and(|r| Arc::strong_count(r) > 1)
    }
}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(r) => write!(f, "Pattern({:?})", r.as_str()),
            None => f.write_str("Pattern(not compiled)"),
        }
    }
}

/// Two patterns are equal when both are compiled from the same text, or
/// neither is compiled.
impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_ref().map(|r| r.as_str()) == other.0.as_ref().map(|r| r.as_str())
    }
}

/// One allowed URL of an API, with its methods (Tyk's `AccessSpec`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AllowedUrl {
    /// A path or regular expression.
    pub url: String,
    /// HTTP methods allowed on it.
    #[serde(deserialize_with = "nullable")]
    pub methods: Vec<String>,
    /// `url` compiled (set by the fold; not part of the JSON).
    #[serde(skip)]
    pub pattern: Pattern,
    /// Anything else sent.
    #[serde(flatten)]
    pub other: Other,
}

/// Access to one API (Tyk's `AccessDefinition`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccessRight {
    /// The API id.
    pub api_id: String,
    /// The API's name (informational).
    pub api_name: String,
    /// Versions allowed.
    #[serde(deserialize_with = "nullable")]
    pub versions: Vec<String>,
    /// URLs allowed (empty: every URL).
    #[serde(deserialize_with = "nullable")]
    pub allowed_urls: Vec<AllowedUrl>,
    /// Per-API limits (empty: the session's).
    #[serde(deserialize_with = "nullable")]
    pub limit: Limit,
    /// Whose budget requests to this API count against (set by the merge).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub allowance_scope: String,
    /// Anything else sent (`endpoints`, GraphQL rights, ...).
    #[serde(flatten)]
    pub other: Other,
}

/// Access rights by API id.
pub type AccessRights = BTreeMap<String, AccessRight>;

/// A key's session, or an organisation's (Tyk's `SessionState`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Session {
    /// Requests per `per` seconds.
    pub rate: f64,
    /// The rate window, in seconds.
    pub per: f64,
    /// Tyk's rate-limiter allowance (kept, not interpreted).
    pub allowance: f64,
    /// Requests per quota period; -1 is unlimited.
    pub quota_max: i64,
    /// Requests left in the current quota period.
    pub quota_remaining: i64,
    /// Length of a quota period, in seconds.
    pub quota_renewal_rate: i64,
    /// When the current quota period ends (Unix seconds).
    pub quota_renews: i64,
    /// Seconds between retries when throttled.
    pub throttle_interval: f64,
    /// Retries when throttled.
    pub throttle_retry_limit: i64,
    /// GraphQL query depth limit.
    pub max_query_depth: i64,
    /// Access by API id.
    #[serde(deserialize_with = "nullable")]
    pub access_rights: AccessRights,
    /// Policies applied, in order.
    #[serde(deserialize_with = "nullable")]
    pub apply_policies: Vec<String>,
    /// The single policy of older clients (used when `apply_policies` is empty).
    pub apply_policy_id: String,
    /// When the key expires (Unix seconds; 0 never).
    pub expires: i64,
    /// Blocks the key (or, for an organisation, every key of it).
    pub is_inactive: bool,
    /// The organisation.
    pub org_id: String,
    /// Tags.
    #[serde(deserialize_with = "nullable")]
    pub tags: Vec<String>,
    /// Free-form metadata.
    #[serde(deserialize_with = "nullable")]
    pub meta_data: Map<String, Value>,
    /// A human name for the key, shown instead of it in logs and events.
    pub alias: String,
    /// When it was created (RFC 3339).
    pub date_created: String,
    /// When it last changed (Unix seconds, as a string, as Tyk writes it).
    pub last_updated: String,
    /// Anything else sent (`hmac_enabled`, `jwt_data`, `monitor`, ...).
    #[serde(flatten)]
    pub other: Other,
}

impl Session {
    /// The policies applied: `apply_policies`, or the legacy single one.
    pub fn policy_ids(&self) -> Vec<String> {
        if !self.apply_policies.is_empty() {
            self.apply_policies.clone()
        } else if !self.apply_policy_id.is_empty() {
            vec![self.apply_policy_id.clone()]
        } else {
            Vec::new()
        }
    }

    /// The session's own limits (root level).
    pub fn limit(&self) -> Limit {
        Limit {
            rate: self.rate,
            per: self.per,
            quota_max: self.quota_max,
            quota_remaining: self.quota_remaining,
            quota_renewal_rate: self.quota_renewal_rate,
            quota_renews: self.quota_renews,
            throttle_interval: self.throttle_interval,
            throttle_retry_limit: self.throttle_retry_limit,
            max_query_depth: self.max_query_depth,
            other: Other::new(),
        }
    }
}

/// Which parts of a key a policy sets (Tyk's `partitions`); none set means all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Partitions {
    /// Quota.
    pub quota: bool,
    /// Rate limit and throttling.
    pub rate_limit: bool,
    /// Access rights.
    pub acl: bool,
    /// GraphQL complexity.
    pub complexity: bool,
    /// Limits per API, taken from each access right's `limit`.
    pub per_api: bool,
    /// Anything else sent.
    #[serde(flatten)]
    pub other: Other,
}

impl Partitions {
    /// Whether any of quota, rate limit, ACL or complexity is set.
    pub fn any(&self) -> bool {
        self.quota || self.rate_limit || self.acl || self.complexity
    }
}

/// A policy (Tyk's `Policy`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// The id keys refer to it by.
    pub id: String,
    /// A display name.
    pub name: String,
    /// The organisation.
    pub org_id: String,
    /// Requests per `per` seconds.
    pub rate: f64,
    /// The rate window, in seconds.
    pub per: f64,
    /// Requests per quota period; -1 is unlimited.
    pub quota_max: i64,
    /// Length of a quota period, in seconds.
    pub quota_renewal_rate: i64,
    /// Seconds between retries when throttled.
    pub throttle_interval: f64,
    /// Retries when throttled.
    pub throttle_retry_limit: i64,
    /// GraphQL query depth limit.
    pub max_query_depth: i64,
    /// Access by API id.
    #[serde(deserialize_with = "nullable")]
    pub access_rights: AccessRights,
    /// Which parts of a key it sets.
    #[serde(deserialize_with = "nullable")]
    pub partitions: Partitions,
    /// Tags given to keys.
    #[serde(deserialize_with = "nullable")]
    pub tags: Vec<String>,
    /// Blocks every key that applies it.
    pub is_inactive: bool,
    /// Lifetime of keys created from it (portal), in seconds; 0 forever.
    pub key_expires_in: i64,
    /// Metadata given to keys.
    #[serde(deserialize_with = "nullable")]
    pub meta_data: Map<String, Value>,
    /// Whether it is offered (portal).
    pub active: bool,
    /// When it last changed (Unix seconds, as a string).
    pub last_updated: String,
    /// Anything else sent (`_id`, `hmac_enabled`, `graphql_access_rights`, ...).
    #[serde(flatten)]
    pub other: Other,
}

impl Policy {
    /// The policy's limits, as Tyk's `Policy.APILimit()`.
    pub fn limit(&self) -> Limit {
        Limit {
            rate: self.rate,
            per: self.per,
            quota_max: self.quota_max,
            quota_renewal_rate: self.quota_renewal_rate,
            throttle_interval: self.throttle_interval,
            throttle_retry_limit: self.throttle_retry_limit,
            max_query_depth: self.max_query_depth,
            ..Limit::default()
        }
    }
}

/// An OAuth client as stored: the secret only as its hash.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OAuthClient {
    /// The client id.
    pub client_id: String,
    /// SHA-256 (hex) of the secret.
    pub secret_hash: String,
    /// Where authorisation answers go.
    pub redirect_uri: String,
    /// The API it belongs to (may be empty when `policy_id` names the APIs).
    pub api_id: String,
    /// The policy its tokens get.
    pub policy_id: String,
    /// A description.
    pub description: String,
    /// Free-form metadata: any JSON (Tyk's `interface{}`; `{}` when none).
    #[serde(default = "empty_object", deserialize_with = "null_as_empty_object")]
    pub meta_data: Value,
}

/// `{}`: the metadata of a client that was given none.
pub fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// Reads `null` as `{}` and any other JSON as it is.
pub fn null_as_empty_object<'de, D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => empty_object(),
        other => other,
    })
}
