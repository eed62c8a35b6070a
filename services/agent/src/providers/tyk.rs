//! A Tyk Dashboard: `GET /api/apis?p=N` with the Dashboard key raw in
//! `Authorization` (no `Bearer`), every page (ten APIs per page; the answer
//! says how many pages there are). Classic and OAS APIs alike: an OAS API
//! comes with its OpenAPI document under `oas`, which becomes the
//! definition's `openapi`.
//!
//! Meridian's own gateway (and any Tyk Gateway) is read the same way
//! through the Gateway API's `GET /tyk/apis` and `GET /tyk/apis/oas`
//! ([`MeridianGateway`]).

use futures_util::future::BoxFuture;
use meridian_schemas::proto::ApiDefinition;
use serde_json::Value;

use super::{ProviderError, Source};

/// Most pages followed, against a Dashboard that never stops paging.
const MAX_PAGES: usize = 100_000;

/// Reads a Tyk Dashboard.
pub struct TykDashboard {
    /// Base URL.
    pub host: String,
    /// Dashboard key.
    pub key: String,
    /// HTTP client.
    pub http: reqwest::Client,
}

impl Source for TykDashboard {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ApiDefinition>, ProviderError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            let base = self.host.trim_end_matches('/');
            for page in 1..=MAX_PAGES {
                let url = format!("{base}/api/apis?p={page}");
                let body =
                    get_json(&self.http, &url, ("authorization", &self.key), "Dashboard").await?;
                let garbage = |why: String| ProviderError::Garbage {
                    url: url.clone(),
                    why,
                };
                let apis = body["apis"]
                    .as_array()
                    .ok_or_else(|| garbage("no `apis` array in the answer".into()))?;
                for entry in apis {
                    out.push(normalize_tyk(entry).map_err(|e| garbage(e.to_string()))?);
                }
                let pages = body["pages"].as_u64().unwrap_or(1) as usize;
                if page >= pages || apis.is_empty() {
                    return Ok(out);
                }
            }
            Err(ProviderError::EndlessPages {
                url: format!("{base}/api/apis"),
                pages: MAX_PAGES,
            })
        })
    }
}

/// Meridian's own gateway (or any Tyk Gateway): `GET /tyk/apis` with the
/// Gateway API secret in `x-tyk-authorization` (every API, classic
/// definitions), and `GET /tyk/apis/oas` (the Tyk OAS APIs' documents):
/// an OAS API is reported with its OpenAPI document, without the
/// gateway's extension, as a Dashboard reports it. A gateway without the
/// OAS endpoints (404) has no OAS APIs.
pub struct MeridianGateway {
    /// The hub's or the proxy's admin URL.
    pub url: String,
    /// The Gateway API secret.
    pub secret: String,
    /// HTTP client.
    pub http: reqwest::Client,
}

impl Source for MeridianGateway {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ApiDefinition>, ProviderError>> {
        Box::pin(async move {
            let base = self.url.trim_end_matches('/');
            let credential = ("x-tyk-authorization", self.secret.as_str());
            let url = format!("{base}/tyk/apis");
            let body = get_json(&self.http, &url, credential, "Gateway API").await?;
            let garbage = |url: &str, why: String| ProviderError::Garbage {
                url: url.to_owned(),
                why,
            };
            let apis = body.as_array().ok_or_else(|| {
                garbage(&url, "the answer is not a list of API definitions".into())
            })?;
            let oas_url = format!("{base}/tyk/apis/oas");
            let documents = match get_json(&self.http, &oas_url, credential, "Gateway API").await {
                Ok(docs) => docs,
                Err(ProviderError::Status { status, .. })
                    if status == reqwest::StatusCode::NOT_FOUND =>
                {
                    Value::Array(Vec::new())
                }
                Err(e) => return Err(e),
            };
            let documents = documents.as_array().ok_or_else(|| {
                garbage(
                    &oas_url,
                    "the answer is not a list of OpenAPI documents".into(),
                )
            })?;
            let mut by_id: std::collections::HashMap<&str, Value> = documents
                .iter()
                .filter_map(|doc| {
                    let id = doc["x-tyk-api-gateway"]["info"]["id"].as_str()?;
                    let mut public = doc.clone();
                    public.as_object_mut()?.remove("x-tyk-api-gateway");
                    Some((id, public))
                })
                .collect();
            apis.iter()
                .map(|d| {
                    let mut entry = serde_json::json!({ "api_definition": d });
                    if let Some(doc) = d["api_id"].as_str().and_then(|id| by_id.remove(id)) {
                        entry["oas"] = doc;
                    }
                    normalize_tyk(&entry).map_err(|e| garbage(&url, e.to_string()))
                })
                .collect()
        })
    }
}

/// `GET url` with one credential header; the JSON answer, or why there is
/// none (`what` names the API in the error: `not a Dashboard answer`).
async fn get_json(
    http: &reqwest::Client,
    url: &str,
    (header, credential): (&str, &str),
    what: &str,
) -> Result<Value, ProviderError> {
    let response = http
        .get(url)
        .header(header, credential)
        .send()
        .await
        .map_err(|source| ProviderError::Unreachable {
            url: url.to_owned(),
            source,
        })?;
    let status = response.status();
    if !status.is_success() {
        return Err(ProviderError::Status {
            url: url.to_owned(),
            status,
            excerpt: String::new(),
        });
    }
    response.json().await.map_err(|e| ProviderError::Garbage {
        url: url.to_owned(),
        why: format!("not a {what} answer: {e}"),
    })
}

/// A Dashboard entry that cannot be normalized.
#[derive(Debug, thiserror::Error)]
#[error("an API without api_id: {excerpt}")]
pub struct MissingApiId {
    /// The start of the entry.
    pub excerpt: String,
}

/// Maps one Dashboard entry (`{"api_definition": {...}, "oas": {...}}`) onto
/// the normalized shape.
pub fn normalize_tyk(entry: &Value) -> Result<ApiDefinition, MissingApiId> {
    let d = &entry["api_definition"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let id = s(&d["api_id"]);
    if id.is_empty() {
        return Err(MissingApiId {
            excerpt: truncate(&d.to_string()).to_owned(),
        });
    }
    let oas = entry.get("oas").filter(|o| o.is_object());
    let mut auth = Vec::new();
    for (flag, name) in [
        ("use_keyless", "keyless"),
        ("use_standard_auth", "authToken"),
        ("enable_jwt", "jwt"),
        ("use_oauth2", "oauth2"),
        ("use_basic_auth", "basic"),
        ("use_openid", "openid"),
        ("enable_signature_checking", "hmac"),
    ] {
        if d[flag].as_bool() == Some(true) {
            auth.push(name.to_owned());
        }
    }
    if let Some(schemes) = oas.and_then(|o| o["components"]["securitySchemes"].as_object()) {
        for name in schemes.keys() {
            if !auth.contains(name) {
                auth.push(name.clone());
            }
        }
    }
    let version = oas
        .map(|o| s(&o["info"]["version"]))
        .filter(|v| !v.is_empty())
        .or_else(|| {
            (d["version_data"]["not_versioned"].as_bool() == Some(false))
                .then(|| s(&d["version_data"]["default_version"]))
        })
        .unwrap_or_default();
    Ok(ApiDefinition {
        provider_api_id: id,
        name: s(&d["name"]),
        version,
        base_path: s(&d["proxy"]["listen_path"]),
        upstream_url: s(&d["proxy"]["target_url"]),
        auth_methods: auth,
        tags: d["tags"]
            .as_array()
            .map(|t| t.iter().map(s).collect())
            .unwrap_or_default(),
        stages: Vec::new(),
        openapi: oas.map(Value::to_string).unwrap_or_default(),
        raw: d.to_string(),
    })
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn classic_and_oas_entries_normalize() {
        let classic = json!({"api_definition": {
            "api_id": "c1", "name": "Classic", "use_standard_auth": true, "tags": ["a"],
            "proxy": {"listen_path": "/c/", "target_url": "http://up"},
            "version_data": {"not_versioned": false, "default_version": "v2"}
        }});
        let c = normalize_tyk(&classic).unwrap();
        assert_eq!(
            (c.provider_api_id.as_str(), c.version.as_str()),
            ("c1", "v2")
        );
        assert_eq!(c.auth_methods, vec!["authToken"]);
        assert!(c.openapi.is_empty());

        let oas = json!({
            "api_definition": {"api_id": "o1", "name": "OAS", "is_oas": true,
                "proxy": {"listen_path": "/o/", "target_url": "http://up2"}},
            "oas": {"openapi": "3.0.3", "info": {"title": "OAS", "version": "1.4.0"},
                "components": {"securitySchemes": {"bearerAuth": {"type": "http"}}}}
        });
        let o = normalize_tyk(&oas).unwrap();
        assert_eq!(o.version, "1.4.0");
        assert_eq!(o.auth_methods, vec!["bearerAuth"]);
        assert_eq!(
            serde_json::from_str::<Value>(&o.openapi).unwrap()["openapi"],
            "3.0.3"
        );
        assert!(normalize_tyk(&json!({"api_definition": {}})).is_err());
    }
}
