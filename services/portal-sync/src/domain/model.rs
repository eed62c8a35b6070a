//! The portal's entities as they are stored (the JSON inside `PORTAL`
//! events) and the checks on what an admin sends.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What a provider is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    /// A Tyk Dashboard (`/api/portal/policies`, `/api/keys`,
    /// `Authorization: <secret>`).
    #[default]
    Tyk,
    /// Meridian's key-issuer (`/tyk/policies`, `/tyk/keys/create`,
    /// `x-tyk-authorization: <secret>`).
    Meridian,
}

impl ProviderType {
    /// `tyk` or `meridian`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tyk => "tyk",
            Self::Meridian => "meridian",
        }
    }
}

/// A connection to a Tyk Dashboard or to key-issuer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Provider {
    /// Portal id.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// Its kind.
    #[serde(rename = "type")]
    pub kind: ProviderType,
    /// Where its API answers.
    pub url: String,
    /// The secret, sealed (see `adapters::seal`): never in clear on the log.
    pub sealed_secret: String,
    /// The Tyk organisation (may be empty).
    pub org_id: String,
    /// TLS certificates are not checked.
    pub insecure_skip_verify: bool,
    /// Policies carrying any of these tags are synchronised.
    pub policy_tags: Vec<String>,
    /// Where developers send API requests (shown on Products).
    pub baseline_url: String,
    /// When it was created (ms since the epoch).
    pub created_at_ms: i64,
    /// When it last changed (ms since the epoch).
    pub updated_at_ms: i64,
}

/// Where a Product or Plan came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A sync found a tagged policy.
    #[default]
    Sync,
    /// An admin created it in the portal (its policy was created with it).
    Portal,
}

/// One API a Product grants access to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct ApiAccess {
    /// The provider's API id.
    pub api_id: String,
    /// Its name.
    pub api_name: String,
    /// The versions granted (empty: as the policy says, usually `Default`).
    pub versions: Vec<String>,
}

/// What an admin sets on a Product or Plan, kept through hide and restore.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Display {
    /// Shown to developers.
    pub name: String,
    /// A description.
    pub description: String,
    /// Documentation (Markdown).
    pub docs: String,
    /// The catalogues it is listed in.
    pub catalogues: Vec<String>,
    /// Developers see it (a hidden one is never published).
    pub published: bool,
}

/// An API Product: an access policy of one provider.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Product {
    /// Portal id (derived from the provider and the policy id).
    pub id: String,
    /// The provider it belongs to (exactly one).
    pub provider_id: String,
    /// The provider's policy behind it.
    pub policy_id: String,
    /// The policy's name as last synchronised.
    pub policy_name: String,
    /// What the admin set.
    #[serde(flatten)]
    pub display: Display,
    /// The APIs it grants.
    pub apis: Vec<ApiAccess>,
    /// The authentication method all its APIs share (portal-created
    /// Products; empty when not known).
    pub auth_type: String,
    /// Its policy was not retrieved by the last sync.
    pub hidden: bool,
    /// Whether it was published when it was hidden (restored with it).
    pub published_before_hidden: bool,
    /// Made from a partitioned policy: only its access rights are known.
    pub bare_bones: bool,
    /// Where it came from.
    pub origin: Origin,
    /// When it was created (ms since the epoch).
    pub created_at_ms: i64,
    /// When it last changed (ms since the epoch).
    pub updated_at_ms: i64,
}

/// The limits a Plan grants.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Limits {
    /// Requests per `per` seconds (0: none set).
    pub rate: f64,
    /// The rate window in seconds.
    pub per: f64,
    /// Requests per quota period; -1 unlimited.
    pub quota_max: i64,
    /// The quota period in seconds.
    pub quota_renewal_rate: i64,
}

/// A Plan: a limit policy of one provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Plan {
    /// Portal id (derived from the provider and the policy id).
    pub id: String,
    /// The provider it belongs to (exactly one).
    pub provider_id: String,
    /// The provider's policy behind it.
    pub policy_id: String,
    /// The policy's name as last synchronised.
    pub policy_name: String,
    /// What the admin set.
    #[serde(flatten)]
    pub display: Display,
    /// Provisioning requests for it are approved without an admin.
    pub auto_approve: bool,
    /// Its limits.
    #[serde(flatten)]
    pub limits: Limits,
    /// Its policy was not retrieved by the last sync.
    pub hidden: bool,
    /// Whether it was published when it was hidden.
    pub published_before_hidden: bool,
    /// Made from a partitioned policy.
    pub bare_bones: bool,
    /// Where it came from.
    pub origin: Origin,
    /// When it was created (ms since the epoch).
    pub created_at_ms: i64,
    /// When it last changed (ms since the epoch).
    pub updated_at_ms: i64,
}

/// A developer's application.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct App {
    /// Portal id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Who owns it (a developer's e-mail or id).
    pub owner: String,
    /// A description.
    pub description: String,
    /// When it was created (ms since the epoch).
    pub created_at_ms: i64,
    /// When it last changed (ms since the epoch).
    pub updated_at_ms: i64,
}

/// Where a provisioning request is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for an admin.
    #[default]
    Pending,
    /// A credential was issued.
    Approved,
    /// Refused.
    Rejected,
}

/// A credential a provider issued: never the key itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Credential {
    /// Portal id.
    pub id: String,
    /// SHA-256 (hex) of the key.
    pub key_hash: String,
    /// What the provider deletes the key by (its key hash).
    pub provider_key_ref: String,
    /// The key's alias in the provider.
    pub alias: String,
    /// The provider's policies the key applies (Product's, then Plan's).
    pub policies: Vec<String>,
    /// When it was issued (ms since the epoch).
    pub issued_at_ms: i64,
    /// When it was revoked (ms since the epoch; 0: live).
    pub revoked_at_ms: i64,
    /// When a revocation was started (its intent, recorded before the key
    /// is deleted in the provider; 0: none under way).
    pub revoking_at_ms: i64,
}

/// An approval under way: recorded on the log before the provider is asked
/// for the key, so that a replica finding it later (the one that started it
/// crashed, or the log was away) finishes it by asking the provider again
/// rather than guessing. The key is the request's own (derived from its id,
/// see `Sealer::credential_key`), so asking again never makes a second one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Issuing {
    /// The key's alias in the provider.
    pub alias: String,
    /// The policies the key applies (Product's, then Plan's).
    pub policies: Vec<String>,
    /// Approved by the Plan's auto-approval.
    pub automatic: bool,
    /// When the approval started (ms since the epoch).
    pub started_at_ms: i64,
}

/// A Product or Plan the portal is creating, with its policy in the
/// provider: recorded before the provider is asked, so that a replica
/// finding it later (the one that started it crashed, or the log was away)
/// asks the provider whether the policy exists (by `meta_data`
/// [`CREATION_MARKER`]) and finishes or undoes it rather than guessing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Creation {
    /// Its id (also the marker in the policy's `meta_data`).
    pub id: String,
    /// `product` or `plan`.
    pub kind: String,
    /// The provider asked.
    pub provider_id: String,
    /// The Product or Plan to store once the policy exists (JSON, without
    /// its id and policy id).
    pub entity: String,
    /// When it started (ms since the epoch).
    pub started_at_ms: i64,
}

/// The `meta_data` field of a policy the portal created, naming its
/// [`Creation`].
pub const CREATION_MARKER: &str = "meridian_portal_creation";

/// An app's request for a Product with a Plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Request {
    /// Portal id.
    pub id: String,
    /// The app asking.
    pub app_id: String,
    /// The Product asked for.
    pub product_id: String,
    /// The Plan asked for.
    pub plan_id: String,
    /// Their provider.
    pub provider_id: String,
    /// Where it is.
    pub status: Status,
    /// Approved by its Plan's auto-approval.
    pub automatic: bool,
    /// Why it was rejected.
    pub reason: String,
    /// The credential its approval issued.
    pub credential: Option<Credential>,
    /// When it was made (ms since the epoch).
    pub created_at_ms: i64,
    /// When it was approved or rejected (ms since the epoch; 0: not yet).
    pub decided_at_ms: i64,
    /// An approval under way (pending requests only).
    pub issuing: Option<Issuing>,
}

pub use meridian_kit::invalid::Invalid;

/// A 400 naming `field`.
pub fn invalid(field: &str, why: impl Into<String>) -> Invalid {
    Invalid::new(field, why)
}

/// Parses policy tags as Tyk documents them: comma-separated, no spaces
/// after the commas (`tag1,tag2`), no empty tag.
pub fn parse_policy_tags(raw: &str) -> Result<Vec<String>, Invalid> {
    const FIELD: &str = "policy_tags";
    if raw.is_empty() {
        return Err(invalid(
            FIELD,
            "must name at least one tag (comma-separated, no spaces: tag1,tag2)",
        ));
    }
    raw.split(',')
        .map(|tag| {
            if tag.is_empty() {
                Err(invalid(
                    FIELD,
                    format!("{raw:?} has an empty tag (comma-separated, no spaces: tag1,tag2)"),
                ))
            } else if tag.starts_with(char::is_whitespace) || tag.ends_with(char::is_whitespace) {
                Err(invalid(
                    FIELD,
                    format!(
                        "{raw:?}: no spaces around the commas (write tag1,tag2, not tag1, tag2)"
                    ),
                ))
            } else if tag.chars().any(char::is_control) {
                Err(invalid(FIELD, "must not contain control characters"))
            } else {
                Ok(tag.to_owned())
            }
        })
        .collect()
}

/// Checks a URL the portal calls or shows: `http` or `https`, with a host.
pub fn check_url(field: &str, raw: &str, required: bool) -> Result<(), Invalid> {
    if raw.is_empty() {
        return if required {
            Err(invalid(field, "must not be empty"))
        } else {
            Ok(())
        };
    }
    let rest = raw
        .strip_prefix("http://")
        .or_else(|| raw.strip_prefix("https://"))
        .ok_or_else(|| {
            invalid(
                field,
                format!("{raw:?} must start with http:// or https://"),
            )
        })?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(invalid(field, format!("{raw:?} has no host")));
    }
    Ok(())
}

/// Checks a required name-like field (1 to 256 bytes, no control characters).
pub fn check_name(field: &str, raw: &str) -> Result<(), Invalid> {
    if raw.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if raw.len() > 256 {
        return Err(invalid(field, "must be at most 256 bytes"));
    }
    if raw.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_tags_are_read_exactly_as_tyk_documents_them() {
        assert_eq!(parse_policy_tags("tag1,tag2").unwrap(), ["tag1", "tag2"]);
        assert_eq!(parse_policy_tags("portal").unwrap(), ["portal"]);
        for bad in [
            "",
            "tag1, tag2",
            "tag1,,tag2",
            "tag1,",
            " tag1",
            "tag1 ,tag2",
        ] {
            let e = parse_policy_tags(bad).unwrap_err();
            assert_eq!(e.field, "policy_tags", "{bad:?}");
        }
        assert!(
            parse_policy_tags("tag1, tag2")
                .unwrap_err()
                .message
                .contains("no spaces")
        );
    }

    #[test]
    fn urls_need_a_scheme_and_a_host() {
        assert!(check_url("url", "http://127.0.0.1:3000", true).is_ok());
        assert!(check_url("url", "https://dash.example.com/base", true).is_ok());
        assert!(check_url("baseline_url", "", false).is_ok());
        for bad in ["", "dash.example.com", "ftp://x", "http://", "http:// x"] {
            assert_eq!(check_url("url", bad, true).unwrap_err().field, "url");
        }
    }
}
