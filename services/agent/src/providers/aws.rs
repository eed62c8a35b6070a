//! AWS API Gateway in one region, read-only, signed with SigV4:
//! - REST APIs (v1): `GET /restapis` paged by `position`; for each, its
//!   resources with their methods (`GET /restapis/{id}/resources?embed=methods`,
//!   paged), its stages, and the OpenAPI export of the first deployed stage;
//! - HTTP and WebSocket APIs (v2): `GET /v2/apis` paged by `nextToken`, with
//!   their stages.
//!
//! `endpoint` points it at another server (moto in tests, private endpoints).

use futures_util::future::BoxFuture;
use meridian_schemas::proto::ApiDefinition;
use serde_json::{Value, json};

use super::sigv4::Signer;
use super::{ProviderError, Source};

/// Items asked for per page (API Gateway allows up to 500).
const PAGE: usize = 100;
/// Most pages followed per listing.
const MAX_PAGES: usize = 10_000;

/// Reads API Gateway.
pub struct AwsApiGateway {
    /// Signs every request.
    pub signer: Signer,
    /// Base URL, `https://apigateway.<region>.amazonaws.com` unless set.
    pub endpoint: String,
    /// HTTP client.
    pub http: reqwest::Client,
}

impl AwsApiGateway {
    /// A reader of `region` (through `endpoint` when given).
    pub fn new(
        region: &str,
        access_key_id: &str,
        secret: &str,
        session_token: Option<String>,
        endpoint: Option<String>,
        http: reqwest::Client,
    ) -> Self {
        Self {
            signer: Signer::new(access_key_id, secret, session_token, region, "apigateway"),
            endpoint: endpoint
                .unwrap_or_else(|| format!("https://apigateway.{region}.amazonaws.com"))
                .trim_end_matches('/')
                .to_owned(),
            http,
        }
    }

    /// A signed GET of `path` with `query` pairs; the answer's JSON.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ProviderError> {
        let encoded: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{}={}", uri_encode(k), uri_encode(v)))
            .collect();
        let url = match encoded.is_empty() {
            true => format!("{}{path}", self.endpoint),
            false => format!("{}{path}?{}", self.endpoint, encoded.join("&")),
        };
        let accept = ("accept", "application/json");
        let signed = self
            .signer
            .sign("GET", &url, &[accept], b"", std::time::SystemTime::now())?;
        let mut request = self.http.get(&url).header(accept.0, accept.1);
        for (k, v) in signed {
            request = request.header(k, v);
        }
        let unreachable = |source| ProviderError::Unreachable {
            url: url.clone(),
            source,
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let text = response.text().await.map_err(unreachable)?;
        if !status.is_success() {
            let excerpt: String = text.chars().take(200).collect();
            return Err(ProviderError::Status {
                url,
                status,
                excerpt: format!(": {excerpt}"),
            });
        }
        serde_json::from_str(&text).map_err(|e| ProviderError::Garbage {
            url,
            why: format!("not JSON: {e}"),
        })
    }

    /// Every item of a paged listing (`item`/`position` for v1,
    /// `items`/`nextToken` for v2).
    async fn all(&self, path: &str, v2: bool) -> Result<Vec<Value>, ProviderError> {
        let (items_key, token_key, token_param, size_param) = if v2 {
            ("items", "nextToken", "nextToken", "maxResults")
        } else {
            ("item", "position", "position", "limit")
        };
        let size = PAGE.to_string();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut query = vec![(size_param, size.as_str())];
            if let Some(t) = &token {
                query.push((token_param, t.as_str()));
            }
            if path.ends_with("/resources") {
                query.push(("embed", "methods"));
            }
            let page = self.get(path, &query).await?;
            if let Some(items) = page[items_key].as_array() {
                out.extend(items.iter().cloned());
            }
            match page[token_key].as_str() {
                Some(next) if !next.is_empty() && token.as_deref() != Some(next) => {
                    token = Some(next.to_owned());
                }
                _ => return Ok(out),
            }
        }
        Err(ProviderError::EndlessPages {
            url: format!("{}{path}", self.endpoint),
            pages: MAX_PAGES,
        })
    }

    async fn rest_api(&self, api: &Value) -> Result<ApiDefinition, ProviderError> {
        let id = api["id"].as_str().ok_or_else(|| ProviderError::Garbage {
            url: format!("{}/restapis", self.endpoint),
            why: "a REST API without id".into(),
        })?;
        let resources = self
            .all(&format!("/restapis/{id}/resources"), false)
            .await?;
        let stages = self.all(&format!("/restapis/{id}/stages"), false).await?;
        let stage_names: Vec<String> = stages
            .iter()
            .filter_map(|s| s["stageName"].as_str().map(str::to_owned))
            .collect();
        let mut auth: Vec<String> = Vec::new();
        for resource in &resources {
            if let Some(methods) = resource["resourceMethods"].as_object() {
                for method in methods.values() {
                    if let Some(kind) = method["authorizationType"].as_str()
                        && !auth.iter().any(|a| a == kind)
                    {
                        auth.push(kind.to_owned());
                    }
                    if method["apiKeyRequired"].as_bool() == Some(true)
                        && !auth.iter().any(|a| a == "API_KEY")
                    {
                        auth.push("API_KEY".into());
                    }
                }
            }
        }
        let openapi = match stage_names.first() {
            Some(stage) => self
                .get(&format!("/restapis/{id}/stages/{stage}/exports/oas30"), &[])
                .await?
                .to_string(),
            None => String::new(),
        };
        let region = self.signer.region();
        Ok(ApiDefinition {
            provider_api_id: id.to_owned(),
            name: text(&api["name"]),
            version: text(&api["version"]),
            base_path: stage_names
                .first()
                .map(|s| format!("/{s}"))
                .unwrap_or_else(|| "/".into()),
            upstream_url: format!("https://{id}.execute-api.{region}.amazonaws.com"),
            auth_methods: auth,
            tags: tags(&api["tags"]),
            stages: stage_names,
            openapi,
            raw: json!({"api": api, "resources": resources, "stages": stages}).to_string(),
        })
    }

    async fn http_api(&self, api: &Value) -> Result<ApiDefinition, ProviderError> {
        let id = api["apiId"]
            .as_str()
            .ok_or_else(|| ProviderError::Garbage {
                url: format!("{}/v2/apis", self.endpoint),
                why: "an HTTP API without apiId".into(),
            })?;
        let stages = self.all(&format!("/v2/apis/{id}/stages"), true).await?;
        let stage_names: Vec<String> = stages
            .iter()
            .filter_map(|s| s["stageName"].as_str().map(str::to_owned))
            .collect();
        Ok(ApiDefinition {
            provider_api_id: id.to_owned(),
            name: text(&api["name"]),
            version: text(&api["version"]),
            base_path: "/".into(),
            upstream_url: text(&api["apiEndpoint"]),
            auth_methods: Vec::new(),
            tags: tags(&api["tags"]),
            stages: stage_names,
            openapi: String::new(),
            raw: json!({"api": api, "stages": stages}).to_string(),
        })
    }
}

/// RFC 3986 encoding of a query key or value, as SigV4 canonicalizes it
/// (so what is sent is what was signed).
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// `{"team": "a"}` becomes `["team=a"]`, sorted.
fn tags(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", text(v))).collect())
        .unwrap_or_default();
    out.sort();
    out
}

impl Source for AwsApiGateway {
    fn list(&self) -> BoxFuture<'_, Result<Vec<ApiDefinition>, ProviderError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for api in self.all("/restapis", false).await? {
                out.push(self.rest_api(&api).await?);
            }
            for api in self.all("/v2/apis", true).await? {
                out.push(self.http_api(&api).await?);
            }
            Ok(out)
        })
    }
}
