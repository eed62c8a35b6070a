//! Relays key, policy and OAuth client changes from `KEYS` to the public
//! stream as CloudEvents (`io.meridian.key.*`, `io.meridian.policy.*`,
//! `io.meridian.oauth_client.*`). Never a key or a secret: a key is named
//! by its hash. Every replica relays; [`meridian_kit::relay`] makes sure
//! nothing is sent twice.

use meridian_kit::relay::{MapError, RelaySpec};
use meridian_schemas::keys::KeysEvent;
use meridian_schemas::public::{
    AccessEntity, KeyEventData, OAuthClientEventData, PolicyEventData, access_event,
};
use meridian_schemas::{Envelope, streams};

use crate::domain::{OAuthClient, Policy, Session};

/// What the relay follows and where its events go.
pub const SPEC: RelaySpec = RelaySpec {
    source: streams::KEYS,
    public: &streams::ACCESS_EVENTS,
};

/// An object inside a `KEYS` event that does not parse.
pub type RelayError = serde_json::Error;

/// The relay's mapping: a stored `KEYS` change to its public form.
pub fn map(envelope: &Envelope, seq: u64) -> Result<Option<meridian_kit::relay::Public>, MapError> {
    let event: KeysEvent = envelope.open()?;
    let Some(public) = to_public(&event, seq, envelope.occurred_at_ms)? else {
        return Ok(None);
    };
    Ok(Some(match public {
        Public::Key(subject, e) => (subject, json_event(e)?),
        Public::Policy(subject, e) => (subject, json_event(e)?),
        Public::Client(subject, e) => (subject, json_event(e)?),
    }))
}

fn json_event<D: serde::Serialize>(
    e: Cloud<D>,
) -> Result<Cloud<serde_json::Value>, serde_json::Error> {
    Ok(Cloud {
        specversion: e.specversion,
        id: e.id,
        source: e.source,
        event_type: e.event_type,
        subject: e.subject,
        time: e.time,
        datacontenttype: e.datacontenttype,
        traceparent: e.traceparent,
        data: serde_json::to_value(e.data)?,
    })
}

type Cloud<D> = meridian_schemas::public::CloudEvent<D>;

/// A public event and its subject.
pub enum Public {
    /// `io.meridian.key.*`
    Key(String, Cloud<KeyEventData>),
    /// `io.meridian.policy.*`
    Policy(String, Cloud<PolicyEventData>),
    /// `io.meridian.oauth_client.*`
    Client(String, Cloud<OAuthClientEventData>),
}

fn kind(created: bool) -> &'static str {
    if created { "created" } else { "updated" }
}

/// The public form of a `KEYS` event stored at `seq`, if it has one
/// (tokens have none).
pub fn to_public(event: &KeysEvent, seq: u64, at_ms: i64) -> Result<Option<Public>, RelayError> {
    Ok(Some(match event {
        KeysEvent::KeySaved {
            key_hash,
            session,
            created,
            ..
        } => {
            let s: Session = serde_json::from_str(session)?;
            key_event(
                key_hash,
                kind(*created),
                seq,
                at_ms,
                &s.org_id,
                &s.alias,
                &s,
            )
        }
        KeysEvent::KeyDeleted {
            key_hash,
            org_id,
            alias,
            ..
        } => key_event(
            key_hash,
            "deleted",
            seq,
            at_ms,
            org_id,
            alias,
            &Session::default(),
        ),
        KeysEvent::PolicySaved {
            policy_id,
            policy,
            created,
            ..
        } => {
            let p: Policy = serde_json::from_str(policy)?;
            policy_event(policy_id, kind(*created), seq, at_ms, &p.org_id, &p)
        }
        KeysEvent::PolicyDeleted {
            policy_id, org_id, ..
        } => policy_event(policy_id, "deleted", seq, at_ms, org_id, &Policy::default()),
        KeysEvent::ClientSaved {
            client_id,
            client,
            created,
            rotated,
            ..
        } => {
            let c: OAuthClient = serde_json::from_str(client)?;
            let change = match (created, rotated) {
                (true, _) => "created",
                (false, true) => "secret_rotated",
                (false, false) => "updated",
            };
            client_event(client_id, kind(*created), change, seq, at_ms, &c)
        }
        KeysEvent::ClientDeleted {
            client_id, api_id, ..
        } => {
            let gone = OAuthClient {
                api_id: api_id.clone(),
                ..OAuthClient::default()
            };
            client_event(client_id, "deleted", "deleted", seq, at_ms, &gone)
        }
        KeysEvent::OrgSaved { .. }
        | KeysEvent::OrgDeleted { .. }
        | KeysEvent::TokenIssued { .. }
        | KeysEvent::TokenRevoked { .. }
        | KeysEvent::ClientTokensRevoked { .. }
        | KeysEvent::LapsedTokensPurged { .. }
        | KeysEvent::CodeIssued { .. } => return Ok(None),
    }))
}

fn key_event(
    hash: &str,
    kind: &str,
    seq: u64,
    at_ms: i64,
    org: &str,
    alias: &str,
    s: &Session,
) -> Public {
    let data = KeyEventData {
        key_hash: hash.to_owned(),
        alias: alias.to_owned(),
        org_id: org.to_owned(),
        policies: s.policy_ids(),
        api_ids: s.access_rights.keys().cloned().collect(),
        sequence: seq,
    };
    Public::Key(
        streams::access_event_subject(AccessEntity::Key.as_str(), kind, org),
        access_event(AccessEntity::Key, kind, hash, seq, at_ms, data),
    )
}

fn policy_event(id: &str, kind: &str, seq: u64, at_ms: i64, org: &str, p: &Policy) -> Public {
    let data = PolicyEventData {
        policy_id: id.to_owned(),
        name: p.name.clone(),
        org_id: org.to_owned(),
        api_ids: p.access_rights.keys().cloned().collect(),
        sequence: seq,
    };
    Public::Policy(
        streams::access_event_subject(AccessEntity::Policy.as_str(), kind, org),
        access_event(AccessEntity::Policy, kind, id, seq, at_ms, data),
    )
}

fn client_event(
    id: &str,
    kind: &str,
    change: &str,
    seq: u64,
    at_ms: i64,
    c: &OAuthClient,
) -> Public {
    let data = OAuthClientEventData {
        client_id: id.to_owned(),
        api_id: c.api_id.clone(),
        policy_id: c.policy_id.clone(),
        change: change.to_owned(),
        sequence: seq,
    };
    Public::Client(
        streams::access_event_subject(AccessEntity::OAuthClient.as_str(), kind, &c.api_id),
        access_event(AccessEntity::OAuthClient, kind, id, seq, at_ms, data),
    )
}
