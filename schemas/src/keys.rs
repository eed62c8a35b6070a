//! Events of the `KEYS` stream, written only by key-issuer: API keys
//! (sessions), policies, organisation sessions, OAuth clients and the OAuth
//! tokens the proxy issued.
//!
//! Objects travel as the JSON the Gateway API takes and returns (Tyk's
//! `SessionState`, `Policy`, ...), in a string: every field a client sent is
//! kept, including those Meridian does not read yet. A secret never travels:
//! a key and a token are named by the SHA-256 (hex) of their value, an OAuth
//! client's secret is in its JSON as a hash.
//!
//! Every change carries a `change_id` chosen once per request, so a retried
//! publish has the same `Nats-Msg-Id` and is stored once. Each entity has its
//! own subject ([`streams::keys_subject`]) and writers publish expecting its
//! last sequence, so two replicas updating one key cannot lose an update.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::envelope::Event;
use crate::streams::{self, KeysEntity};

/// A change to keys, policies, organisations, OAuth clients or tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeysEvent {
    /// A key was created or replaced.
    KeySaved {
        /// SHA-256 (hex) of the key.
        key_hash: String,
        /// The session, as Gateway API JSON.
        session: String,
        /// `true` when the key did not exist before.
        created: bool,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// A key was deleted.
    KeyDeleted {
        /// SHA-256 (hex) of the key.
        key_hash: String,
        /// The deleted key's organisation (for the public event).
        org_id: String,
        /// The deleted key's alias (for the public event).
        alias: String,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// A policy was created or replaced.
    PolicySaved {
        /// The policy id.
        policy_id: String,
        /// The policy, as Gateway API JSON.
        policy: String,
        /// `true` when the policy did not exist before.
        created: bool,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// A policy was deleted.
    PolicyDeleted {
        /// The policy id.
        policy_id: String,
        /// The deleted policy's organisation (for the public event).
        org_id: String,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// An organisation session was created or replaced.
    OrgSaved {
        /// The organisation id.
        org_id: String,
        /// The session, as Gateway API JSON.
        session: String,
        /// `true` when it did not exist before.
        created: bool,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// An organisation session was deleted.
    OrgDeleted {
        /// The organisation id.
        org_id: String,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// An OAuth client was created, changed or given a new secret.
    ClientSaved {
        /// The client id.
        client_id: String,
        /// The client as JSON, its secret as `secret_hash`.
        client: String,
        /// `true` when it did not exist before.
        created: bool,
        /// `true` when the change is a new secret.
        rotated: bool,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// An OAuth client was deleted (its tokens with it).
    ClientDeleted {
        /// The client id.
        client_id: String,
        /// The API it belonged to (for the public event; may be empty).
        api_id: String,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// The proxy issued an OAuth token.
    TokenIssued {
        /// SHA-256 (hex) of the token.
        token_hash: String,
        /// The token's details.
        token: TokenRecord,
        /// See the module documentation.
        change_id: Uuid,
    },
    /// One token was revoked.
    TokenRevoked {
        /// SHA-256 (hex) of the token.
        token_hash: String,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// Every token of a client issued up to now was revoked.
    ClientTokensRevoked {
        /// The client id.
        client_id: String,
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// Every token that expired before `at_ms` was dropped.
    LapsedTokensPurged {
        /// See the module documentation.
        change_id: Uuid,
        /// When (ms since the epoch).
        at_ms: i64,
    },
    /// The proxy issued an OAuth authorization code (the authorization-code
    /// grant); a [`KeysEvent::TokenRevoked`] of its hash redeems it.
    CodeIssued {
        /// SHA-256 (hex) of the code.
        code_hash: String,
        /// The code's details.
        code: CodeRecord,
        /// See the module documentation.
        change_id: Uuid,
    },
}

/// An OAuth token as the proxy issued it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The client it was issued to.
    pub client_id: String,
    /// The API it was issued for.
    pub api_id: String,
    /// `true` for a refresh token, `false` for an access token.
    pub refresh: bool,
    /// When it expires (ms since the epoch).
    pub expires_ms: i64,
    /// When it was issued (ms since the epoch).
    pub issued_ms: i64,
    /// SHA-256 (hex) of the key whose session the token carries (a user of
    /// the password grant); empty: the session of the client's policy.
    pub key_hash: String,
    /// For a refresh token: SHA-256 (hex) of the access token issued with
    /// it (revoked when the refresh token is used); empty otherwise.
    ///
    /// Added with the gateway's token endpoint: no component issued a
    /// token before it, so no `KEYS` stream holds a `TokenIssued` without it.
    pub access_hash: String,
}

/// An OAuth authorization code as the proxy issued it (`/tyk/oauth/authorize-client/`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRecord {
    /// The client it was issued to.
    pub client_id: String,
    /// The API it was issued for.
    pub api_id: String,
    /// The redirect URI it was issued for: the token request must name the same.
    pub redirect_uri: String,
    /// When it expires (ms since the epoch).
    pub expires_ms: i64,
    /// When it was issued (ms since the epoch).
    pub issued_ms: i64,
}

impl KeysEvent {
    /// The entity the change is about and its id (`None`: a purge).
    pub fn entity(&self) -> Option<(KeysEntity, &str)> {
        Some(match self {
            Self::KeySaved { key_hash, .. } | Self::KeyDeleted { key_hash, .. } => {
                (KeysEntity::Key, key_hash)
            }
            Self::PolicySaved { policy_id, .. } | Self::PolicyDeleted { policy_id, .. } => {
                (KeysEntity::Policy, policy_id)
            }
            Self::OrgSaved { org_id, .. } | Self::OrgDeleted { org_id, .. } => {
                (KeysEntity::Org, org_id)
            }
            Self::ClientSaved { client_id, .. }
            | Self::ClientDeleted { client_id, .. }
            | Self::ClientTokensRevoked { client_id, .. } => (KeysEntity::Client, client_id),
            Self::TokenIssued { token_hash, .. } | Self::TokenRevoked { token_hash, .. } => {
                (KeysEntity::Token, token_hash)
            }
            Self::CodeIssued { code_hash, .. } => (KeysEntity::Token, code_hash),
            Self::LapsedTokensPurged { .. } => return None,
        })
    }

    fn change_id(&self) -> Uuid {
        match self {
            Self::KeySaved { change_id, .. }
            | Self::KeyDeleted { change_id, .. }
            | Self::PolicySaved { change_id, .. }
            | Self::PolicyDeleted { change_id, .. }
            | Self::OrgSaved { change_id, .. }
            | Self::OrgDeleted { change_id, .. }
            | Self::ClientSaved { change_id, .. }
            | Self::ClientDeleted { change_id, .. }
            | Self::TokenIssued { change_id, .. }
            | Self::TokenRevoked { change_id, .. }
            | Self::ClientTokensRevoked { change_id, .. }
            | Self::LapsedTokensPurged { change_id, .. }
            | Self::CodeIssued { change_id, .. } => *change_id,
        }
    }
}

impl Event for KeysEvent {
    const SCHEMA_VERSION: u16 = 1;
    const STREAM: &'static str = streams::KEYS;

    fn event_type(&self) -> &'static str {
        match self {
            Self::KeySaved { .. } => "keys.key_saved",
            Self::KeyDeleted { .. } => "keys.key_deleted",
            Self::PolicySaved { .. } => "keys.policy_saved",
            Self::PolicyDeleted { .. } => "keys.policy_deleted",
            Self::OrgSaved { .. } => "keys.org_saved",
            Self::OrgDeleted { .. } => "keys.org_deleted",
            Self::ClientSaved { .. } => "keys.client_saved",
            Self::ClientDeleted { .. } => "keys.client_deleted",
            Self::TokenIssued { .. } => "keys.token_issued",
            Self::TokenRevoked { .. } => "keys.token_revoked",
            Self::ClientTokensRevoked { .. } => "keys.client_tokens_revoked",
            Self::LapsedTokensPurged { .. } => "keys.lapsed_tokens_purged",
            Self::CodeIssued { .. } => "keys.code_issued",
        }
    }

    fn subject(&self) -> String {
        match self.entity() {
            Some((entity, id)) => streams::keys_subject(entity, id),
            None => streams::KEYS_PURGE_SUBJECT.to_owned(),
        }
    }

    fn dedup_id(&self) -> String {
        format!("{}:{}", self.event_type(), self.change_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Envelope, EventMeta};

    #[test]
    fn events_round_trip_and_name_their_entity() {
        let event = KeysEvent::KeySaved {
            key_hash: "ab".repeat(32),
            session: r#"{"rate":10}"#.into(),
            created: true,
            change_id: Uuid::from_u128(7),
            at_ms: 1,
        };
        let envelope = Envelope::wrap(&event, EventMeta::default());
        let back: KeysEvent = Envelope::from_bytes(&envelope.to_bytes())
            .unwrap()
            .open()
            .unwrap();
        assert_eq!(back, event);
        assert_eq!(event.subject(), format!("keys.key.{}", "ab".repeat(32)));
        let policy = KeysEvent::PolicyDeleted {
            policy_id: "gold.tier *".into(),
            org_id: String::new(),
            change_id: Uuid::from_u128(8),
            at_ms: 1,
        };
        assert_eq!(policy.subject(), "keys.policy.gold%2Etier%20%2A");
        assert_ne!(event.dedup_id(), policy.dedup_id());
    }
}
