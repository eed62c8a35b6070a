//! Tyk's classic API definition: the fields the gateway reads, typed, and
//! every other field kept as sent (later middleware reads them; a client
//! gets back what it stored).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// Fields Meridian keeps without reading them.
pub type Other = Map<String, Value>;

/// Reads `null` as the type's default (Tyk writes `null` for empty maps and
/// lists).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn yes() -> bool {
    true
}

/// The header a key is read from when `auth.auth_header_name` is empty.
pub const DEFAULT_AUTH_HEADER: &str = "Authorization";

/// An API definition (Tyk's `APIDefinition`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiDefinition {
    /// The API's id (generated when a `POST` has none).
    pub api_id: String,
    /// A human name.
    pub name: String,
    /// The owning organisation.
    pub org_id: String,
    /// Served by the gateway. Absent means `true`: a definition posted
    /// without it is live, as a Tyk Gateway loads it.
    #[serde(default = "yes")]
    pub active: bool,
    /// No key needed.
    pub use_keyless: bool,
    /// Keys' rate limits are not enforced on this API.
    pub disable_rate_limit: bool,
    /// Keys' quotas are not enforced on this API.
    pub disable_quota: bool,
    /// Where the key is read from.
    #[serde(deserialize_with = "nullable")]
    pub auth: Auth,
    /// Listen path and upstream.
    #[serde(deserialize_with = "nullable")]
    pub proxy: Proxy,
    /// Where a request names its version (`location`, `key`).
    #[serde(deserialize_with = "nullable")]
    pub definition: VersionDefinition,
    /// The versions.
    #[serde(deserialize_with = "nullable")]
    pub version_data: VersionData,
    /// Anything else sent (`CORS`, `extended_paths`, `global_rate_limit`, ...).
    #[serde(flatten)]
    pub other: Other,
}

/// Tyk's `AuthConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Auth {
    /// The header carrying the key (default [`DEFAULT_AUTH_HEADER`]).
    pub auth_header_name: String,
    /// Anything else sent.
    #[serde(flatten)]
    pub other: Other,
}

/// Tyk's `ProxyConfig`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Proxy {
    /// The path prefix the API answers on (`/pets/`).
    pub listen_path: String,
    /// The upstream: `http://`, `https://`, or `h2c://` for HTTP/2 without
    /// TLS.
    pub target_url: String,
    /// Remove the listen path before forwarding.
    pub strip_listen_path: bool,
    /// Forward the client's `Host` instead of the upstream's.
    pub preserve_host_header: bool,
    /// Anything else sent.
    #[serde(flatten)]
    pub other: Other,
}

/// Tyk's `VersionDefinition`: where a request names its version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VersionDefinition {
    /// `header`, `url-param` or `url`.
    pub location: String,
    /// The header or query parameter (default `x-api-version`).
    pub key: String,
    /// With `url`: remove the version segment before forwarding.
    pub strip_path: bool,
    /// Remove the version (header, parameter or segment) before forwarding.
    pub strip_versioning_data: bool,
    /// Anything else sent.
    #[serde(flatten)]
    pub other: Other,
}

/// Tyk's `VersionData`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VersionData {
    /// One version for every request: no version is read.
    pub not_versioned: bool,
    /// The version of a request that names none.
    pub default_version: String,
    /// Versions by name.
    #[serde(deserialize_with = "nullable")]
    pub versions: BTreeMap<String, VersionInfo>,
    /// Anything else sent.
    #[serde(flatten)]
    pub other: Other,
}

/// Tyk's `VersionInfo` (the fields read here; the rest kept).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VersionInfo {
    /// The version's name.
    pub name: String,
    /// When it stops being served (`2006-01-02 15:04`, UTC); empty: never.
    pub expires: String,
    /// Anything else sent (`extended_paths`, `global_headers`, ...).
    #[serde(flatten)]
    pub other: Other,
}

impl ApiDefinition {
    /// The header a key is read from.
    pub fn auth_header(&self) -> &str {
        if self.auth.auth_header_name.is_empty() {
            DEFAULT_AUTH_HEADER
        } else {
            &self.auth.auth_header_name
        }
    }
}

/// A listen path as routes compare it: without trailing `/` (so `/pets/`
/// and `/pets` are one path, and `/` is the empty prefix that matches
/// everything).
pub fn normalize_listen_path(path: &str) -> &str {
    path.trim_end_matches('/')
}
