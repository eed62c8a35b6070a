//! Calls to providers, the way Tyk's developer portal makes them.
//!
//! | | `tyk` (a Tyk Dashboard) | `meridian` (key-issuer, the hub URL) |
//! |---|---|---|
//! | credential | `Authorization: <secret>` | `x-tyk-authorization: <secret>` |
//! | policies | `GET /api/portal/policies?p=N` (`{"Data", "Pages"}`) | `GET /tyk/policies` |
//! | create a policy | `POST /api/portal/policies` | `POST /tyk/policies` |
//! | an API | `GET /api/apis/{id}` | `GET /tyk/apis/{id}` |
//! | create a key | `POST /api/keys` | `POST /tyk/keys/create` |
//! | delete a key | `DELETE /api/keys/{hash}?hashed=true` | `DELETE /tyk/keys/{hash}?hashed=true` |
//!
//! Inside the Dashboard's policy listing an access right names its API
//! `apiid` / `apiname` (not `api_id` / `api_name`); both are read. Nothing
//! here logs a secret or a key, and no error carries one.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::domain::model::{ApiAccess, Limits, Provider, ProviderType};
use crate::domain::sync::RetrievedPolicy;

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// More Dashboard pages than this is taken for a broken answer.
const MAX_PAGES: u64 = 10_000;

/// Why a call to a provider failed. No variant carries a secret or a key.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No answer (refused, timed out, TLS failed).
    #[error("{url} did not answer: {reason}")]
    Unreachable {
        /// What was called.
        url: String,
        /// Why.
        reason: String,
    },
    /// The provider refused the secret.
    #[error("{url} refused the provider's secret ({status})")]
    Unauthorized {
        /// What was called.
        url: String,
        /// 401 or 403.
        status: StatusCode,
    },
    /// Another non-success answer.
    #[error("{url} answered {status}: {excerpt}")]
    Refused {
        /// What was called.
        url: String,
        /// Its status.
        status: StatusCode,
        /// The start of its body.
        excerpt: String,
    },
    /// An answer that is not what the provider's API returns.
    #[error("{url} answered something unreadable: {why}")]
    Garbage {
        /// What was called.
        url: String,
        /// What is wrong with it.
        why: String,
    },
}

impl ProviderError {
    /// Whether the provider refused what was sent (a 4xx other than a bad
    /// secret): the caller's input, not the provider's health.
    pub fn refused_input(&self) -> bool {
        matches!(self, Self::Refused { status, .. } if status.is_client_error())
    }
}

/// What a save's connection test found.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct ConnectionTest {
    /// The provider answered.
    pub reachable: bool,
    /// It accepted the secret.
    pub authenticated: bool,
    /// What happened, for people.
    pub message: String,
}

/// A key the provider issued: the key itself (shown once, never stored)
/// and what the provider deletes it by.
pub struct IssuedKey {
    /// The key.
    pub key: String,
    /// The provider's hash of it (what `DELETE ...?hashed=true` takes).
    pub key_ref: String,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey")
            .field("key", &"<redacted>")
            .field("key_ref", &self.key_ref)
            .finish()
    }
}

/// An API as its provider defines it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiInfo {
    /// Its name.
    pub name: String,
    /// Its authentication method (`auth_token`, `jwt`, `oauth2`, `basic`,
    /// `hmac`, `openid`, `keyless`, ...).
    pub auth_type: String,
}

/// One provider, ready to call.
pub struct Connection {
    kind: ProviderType,
    base: String,
    secret: String,
    org_id: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("kind", &self.kind)
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection to `provider` with its opened `secret`.
    pub fn new(provider: &Provider, secret: String) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .tls_danger_accept_invalid_certs(provider.insecure_skip_verify)
            .build()
            .map_err(|e| ProviderError::Unreachable {
                url: provider.url.clone(),
                reason: format!("cannot set up the HTTP client: {e}"),
            })?;
        Ok(Self {
            kind: provider.kind,
            base: provider.url.trim_end_matches('/').to_owned(),
            secret,
            org_id: provider.org_id.clone(),
            http,
        })
    }

    fn credential_header(&self) -> &'static str {
        match self.kind {
            ProviderType::Tyk => "authorization",
            ProviderType::Meridian => "x-tyk-authorization",
        }
    }

    /// Calls `path` and reads the JSON answer (`Value::Null` for an empty
    /// body). With `missing_ok`, a 404 is `Ok(None)`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        missing_ok: bool,
    ) -> Result<Option<Value>, ProviderError> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method, &url)
            .header(self.credential_header(), &self.secret);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ProviderError::Unreachable {
                url: url.clone(),
                reason: meridian_kit::report::chain(&e),
            })?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND && missing_ok {
            return Ok(None);
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(ProviderError::Unauthorized { url, status });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ProviderError::Unreachable {
                url: url.clone(),
                reason: meridian_kit::report::chain(&e),
            })?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            let excerpt: String = text.chars().take(300).collect();
            return Err(ProviderError::Refused {
                url,
                status,
                excerpt,
            });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Some(Value::Null));
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ProviderError::Garbage {
                url,
                why: format!("not JSON: {e}"),
            })
    }

    async fn get(&self, path: &str) -> Result<Value, ProviderError> {
        Ok(self
            .call(Method::GET, path, None, false)
            .await?
            .unwrap_or_default())
    }

    /// Every policy, all pages: the whole list or an error (never part of
    /// it).
    pub async fn policies(&self) -> Result<Vec<RetrievedPolicy>, ProviderError> {
        match self.kind {
            ProviderType::Meridian => {
                let path = "/tyk/policies";
                let answer = self.get(path).await?;
                let list = answer
                    .as_array()
                    .ok_or_else(|| self.garbage(path, "not a list of policies"))?;
                list.iter()
                    .map(|p| retrieved(p).map_err(|why| self.garbage(path, &why)))
                    .collect()
            }
            ProviderType::Tyk => {
                let mut out = Vec::new();
                let mut page = 1u64;
                let mut pages = 1u64;
                while page <= pages {
                    let path = format!("/api/portal/policies?p={page}");
                    let answer = self.get(&path).await?;
                    let data = answer
                        .get("Data")
                        .and_then(Value::as_array)
                        .ok_or_else(|| self.garbage(&path, "no \"Data\" list of policies"))?;
                    for p in data {
                        out.push(retrieved(p).map_err(|why| self.garbage(&path, &why))?);
                    }
                    if page == 1 {
                        pages = match answer.get("Pages") {
                            None | Some(Value::Null) => 1,
                            Some(v) => v
                                .as_u64()
                                .or_else(|| v.as_i64().filter(|n| *n <= 0).map(|_| 0))
                                .ok_or_else(|| self.garbage(&path, "\"Pages\" is not a count"))?
                                .max(1),
                        };
                        if pages > MAX_PAGES {
                            return Err(self.garbage(&path, &format!("{pages} pages")));
                        }
                    }
                    page += 1;
                }
                Ok(out)
            }
        }
    }

    fn garbage(&self, path: &str, why: &str) -> ProviderError {
        ProviderError::Garbage {
            url: format!("{}{path}", self.base),
            why: why.to_owned(),
        }
    }

    /// Creates a policy; returns its id in the provider.
    pub async fn create_policy(&self, policy: &Value) -> Result<String, ProviderError> {
        let path = match self.kind {
            ProviderType::Tyk => "/api/portal/policies",
            ProviderType::Meridian => "/tyk/policies",
        };
        let mut policy = policy.clone();
        if !self.org_id.is_empty() {
            policy["org_id"] = json!(self.org_id);
        }
        let answer = self
            .call(Method::POST, path, Some(&policy), false)
            .await?
            .unwrap_or_default();
        // key-issuer: {"key": id}; the Dashboard: {"Status": "OK", "Message": id}.
        ["key", "Message", "_id", "id"]
            .iter()
            .find_map(|f| {
                answer
                    .get(*f)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            })
            .map(str::to_owned)
            .ok_or_else(|| self.garbage(path, "the answer names no policy id"))
    }

    /// Deletes a policy (already gone is fine).
    pub async fn delete_policy(&self, id: &str) -> Result<(), ProviderError> {
        let path = match self.kind {
            ProviderType::Tyk => format!("/api/portal/policies/{}", segment(id)),
            ProviderType::Meridian => format!("/tyk/policies/{}", segment(id)),
        };
        self.call(Method::DELETE, &path, None, true).await.map(drop)
    }

    /// An API by id (`None`: the provider has none).
    pub async fn api(&self, api_id: &str) -> Result<Option<ApiInfo>, ProviderError> {
        let path = match self.kind {
            ProviderType::Tyk => format!("/api/apis/{}", segment(api_id)),
            ProviderType::Meridian => format!("/tyk/apis/{}", segment(api_id)),
        };
        let Some(answer) = self.call(Method::GET, &path, None, true).await? else {
            return Ok(None);
        };
        let definition = answer.get("api_definition").unwrap_or(&answer);
        if !definition.is_object() {
            return Err(self.garbage(&path, "not an API definition"));
        }
        Ok(Some(ApiInfo {
            name: text(definition, &["name"]),
            auth_type: auth_type(definition).to_owned(),
        }))
    }

    /// Creates a key applying `policies`, named `alias`.
    pub async fn create_key(
        &self,
        policies: &[String],
        alias: &str,
        meta: Value,
    ) -> Result<IssuedKey, ProviderError> {
        let path = match self.kind {
            ProviderType::Tyk => "/api/keys",
            ProviderType::Meridian => "/tyk/keys/create",
        };
        let mut session = json!({
            "apply_policies": policies,
            "alias": alias,
            "meta_data": meta,
            "access_rights": {},
        });
        if !self.org_id.is_empty() {
            session["org_id"] = json!(self.org_id);
        }
        let answer = self
            .call(Method::POST, path, Some(&session), false)
            .await?
            .unwrap_or_default();
        let key = ["key", "key_id"]
            .iter()
            .find_map(|f| {
                answer
                    .get(*f)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            })
            .ok_or_else(|| self.garbage(path, "the answer names no key"))?
            .to_owned();
        let key_ref = answer
            .get("key_hash")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                self.garbage(
                    path,
                    "the answer has no key_hash (the provider must hash keys for the portal to revoke them)",
                )
            })?
            .to_owned();
        Ok(IssuedKey { key, key_ref })
    }

    /// Creates the key `key` (a custom key: Tyk's `POST /api/keys/{key}`
    /// and `POST /tyk/keys/{key}`), or writes the same session over it when
    /// it exists: asking twice makes one key.
    pub async fn put_key(
        &self,
        key: &str,
        policies: &[String],
        alias: &str,
        meta: Value,
    ) -> Result<IssuedKey, ProviderError> {
        let path = match self.kind {
            ProviderType::Tyk => format!("/api/keys/{}", segment(key)),
            ProviderType::Meridian => format!("/tyk/keys/{}", segment(key)),
        };
        let mut session = json!({
            "apply_policies": policies,
            "alias": alias,
            "meta_data": meta,
            "access_rights": {},
        });
        if !self.org_id.is_empty() {
            session["org_id"] = json!(self.org_id);
        }
        let answer = self
            .call(Method::POST, &path, Some(&session), false)
            .await?
            .unwrap_or_default();
        let key_ref = answer
            .get("key_hash")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                self.garbage(
                    &path,
                    "the answer has no key_hash (the provider must hash keys for the portal to revoke them)",
                )
            })?
            .to_owned();
        Ok(IssuedKey {
            key: key.to_owned(),
            key_ref,
        })
    }

    /// Deletes a key by its hash (already gone is fine).
    pub async fn delete_key(&self, key_ref: &str) -> Result<(), ProviderError> {
        let path = match self.kind {
            ProviderType::Tyk => format!("/api/keys/{}?hashed=true", segment(key_ref)),
            ProviderType::Meridian => format!("/tyk/keys/{}?hashed=true", segment(key_ref)),
        };
        self.call(Method::DELETE, &path, None, true).await.map(drop)
    }

    /// Deletes the key `key` by the key itself (already gone is fine):
    /// undoing a [`Connection::put_key`] whose answer was lost.
    pub async fn delete_key_itself(&self, key: &str) -> Result<(), ProviderError> {
        let path = match self.kind {
            ProviderType::Tyk => format!("/api/keys/{}", segment(key)),
            ProviderType::Meridian => format!("/tyk/keys/{}", segment(key)),
        };
        self.call(Method::DELETE, &path, None, true).await.map(drop)
    }

    /// Whether the provider answers and accepts the secret (never fails: a
    /// save reports what it finds and stores the provider anyway).
    pub async fn test(&self) -> ConnectionTest {
        let path = match self.kind {
            ProviderType::Tyk => "/api/portal/policies?p=1",
            ProviderType::Meridian => "/tyk/policies",
        };
        match self.get(path).await {
            Ok(_) => ConnectionTest {
                reachable: true,
                authenticated: true,
                message: format!("{}{path} answered", self.base),
            },
            Err(e @ ProviderError::Unreachable { .. }) => ConnectionTest {
                reachable: false,
                authenticated: false,
                message: e.to_string(),
            },
            Err(e @ ProviderError::Unauthorized { .. }) => ConnectionTest {
                reachable: true,
                authenticated: false,
                message: e.to_string(),
            },
            Err(e) => ConnectionTest {
                reachable: true,
                authenticated: false,
                message: e.to_string(),
            },
        }
    }
}

/// A path segment: ids are sent percent-encoded.
fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn text(v: &Value, fields: &[&str]) -> String {
    fields
        .iter()
        .find_map(|f| v.get(*f).and_then(Value::as_str))
        .unwrap_or_default()
        .to_owned()
}

fn flag(v: &Value, field: &str) -> bool {
    v.get(field).and_then(Value::as_bool).unwrap_or(false)
}

fn number(v: &Value, field: &str) -> f64 {
    v.get(field).and_then(Value::as_f64).unwrap_or(0.0)
}

fn integer(v: &Value, field: &str, default: i64) -> i64 {
    v.get(field)
        .and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
        .unwrap_or(default)
}

/// A classic API definition's authentication method.
pub fn auth_type(definition: &Value) -> &'static str {
    if flag(definition, "use_keyless") {
        "keyless"
    } else if flag(definition, "use_oauth2") {
        "oauth2"
    } else if flag(definition, "enable_jwt") {
        "jwt"
    } else if flag(definition, "use_openid") {
        "openid"
    } else if flag(definition, "use_basic_auth") {
        "basic"
    } else if flag(definition, "enable_signature_checking") {
        "hmac"
    } else if flag(definition, "use_mutual_tls_auth") {
        "mtls"
    } else {
        "auth_token"
    }
}

/// Reads one policy of either provider's listing.
pub fn retrieved(p: &Value) -> Result<RetrievedPolicy, String> {
    if !p.is_object() {
        return Err("a policy that is not an object".into());
    }
    // The Dashboard's policies are known by `_id`; key-issuer's by `id`.
    let id = text(p, &["_id", "id"]);
    if id.is_empty() {
        return Err(format!("a policy without an id ({})", text(p, &["name"])));
    }
    let tags = match p.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tags)) => tags
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(_) => return Err(format!("policy {id}: tags is not a list")),
    };
    let apis = match p.get("access_rights") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(rights)) => rights
            .iter()
            .map(|(key, right)| {
                let api_id = Some(text(right, &["apiid", "api_id"]))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| key.clone());
                ApiAccess {
                    api_id,
                    api_name: text(right, &["apiname", "api_name"]),
                    versions: right
                        .get("versions")
                        .and_then(Value::as_array)
                        .map(|v| {
                            v.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect(),
        Some(_) => return Err(format!("policy {id}: access_rights is not an object")),
    };
    let partitions = p.get("partitions").cloned().unwrap_or_default();
    Ok(RetrievedPolicy {
        id,
        name: text(p, &["name"]),
        tags,
        apis,
        limits: Limits {
            rate: number(p, "rate"),
            per: number(p, "per"),
            quota_max: integer(p, "quota_max", -1),
            quota_renewal_rate: integer(p, "quota_renewal_rate", 0),
        },
        acl: flag(&partitions, "acl"),
        quota: flag(&partitions, "quota"),
        rate_limit: flag(&partitions, "rate_limit"),
        creation: p
            .get("meta_data")
            .and_then(|m| m.get(crate::domain::model::CREATION_MARKER))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboard_spelling_and_the_gateway_spelling_both_read() {
        let dashboard = json!({
            "_id": "5f1", "name": "Gold", "tags": ["portal"], "rate": 10, "per": 1,
            "quota_max": -1,
            "access_rights": {"k": {"apiid": "a1", "apiname": "Orders", "versions": ["Default"]}}
        });
        let p = retrieved(&dashboard).unwrap();
        assert_eq!(p.id, "5f1");
        assert_eq!(p.apis[0].api_id, "a1");
        assert_eq!(p.apis[0].api_name, "Orders");
        let gateway = json!({
            "id": "gold", "tags": null, "partitions": {"acl": true},
            "access_rights": {"a2": {"api_id": "a2", "api_name": "Pets", "versions": []}}
        });
        let p = retrieved(&gateway).unwrap();
        assert_eq!((p.id.as_str(), p.acl), ("gold", true));
        assert_eq!(p.apis[0].api_name, "Pets");
        assert!(retrieved(&json!({"name": "no id"})).is_err());
        assert!(retrieved(&json!({"id": "x", "tags": "portal"})).is_err());
        assert!(retrieved(&json!("text")).is_err());
    }

    #[test]
    fn auth_types_come_from_the_definition() {
        assert_eq!(auth_type(&json!({})), "auth_token");
        assert_eq!(auth_type(&json!({"use_keyless": true})), "keyless");
        assert_eq!(auth_type(&json!({"enable_jwt": true})), "jwt");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
