//! Relays key, policy and OAuth client changes from `KEYS` to the public
//! stream as CloudEvents (`io.meridian.key.*`, `io.meridian.policy.*`,
//! `io.meridian.oauth_client.*`). Never a key or a secret: a key is named
//! by its hash.
//!
//! Every replica relays. Each event's id derives from its `KEYS` sequence
//! and travels as `Nats-Msg-Id`, so when two replicas send the same change
//! the public stream stores it once; and each relay starts (and, every few
//! hundred messages, resumes) after the newest change the public stream
//! already has, read from its `data.sequence`, so a restart sends nothing
//! twice and a replica that lags behind another skips what is there.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;
use meridian_kit::CancellationToken;
use meridian_kit::bus::{AckWindow, BusContext, BusError, PUBLISH_WINDOW, send_public};
use meridian_kit::retry::{Backoff, retry};
use meridian_schemas::keys::KeysEvent;
use meridian_schemas::public::{
    AccessEntity, KeyEventData, OAuthClientEventData, PolicyEventData, access_event,
};
use meridian_schemas::{DecodeError, Envelope, streams};
use serde::Deserialize;

use crate::domain::{OAuthClient, Policy, Session};

/// Messages relayed between two reads of the public stream's high water.
const RESYNC_EVERY: u64 = 512;

/// Between attempts after a failure.
const BACKOFF: Backoff = Backoff::forever(Duration::from_millis(200), Duration::from_secs(5));

/// Why the relay starts over.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// NATS failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// An event of `KEYS` does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// An object inside an event, or a public event, does not parse.
    #[error("unreadable object: {0}")]
    Json(#[from] serde_json::Error),
    /// The consumer ended (NATS reconnected, or the stream went away).
    #[error("{0}")]
    Ended(&'static str),
}

/// Relays until `stop`, starting over after any failure.
pub async fn relay_until_stopped(js: jetstream::Context, stop: CancellationToken) {
    let what = "relaying key-issuer changes to the public stream";
    let _ = retry(what, BACKOFF, &stop, || relay(&js)).await;
}

#[derive(Deserialize)]
struct Sequenced {
    data: SequencedData,
}

#[derive(Deserialize)]
struct SequencedData {
    sequence: u64,
}

/// The `KEYS` sequence of the newest change the public stream holds (0: none).
pub async fn high_water(js: &jetstream::Context) -> Result<u64, RelayError> {
    let stream = js
        .get_stream_no_info(streams::EVENTS)
        .await
        .bus("getting the public stream")?;
    let mut newest = 0;
    for filter in streams::ACCESS_EVENTS {
        match stream.get_last_raw_message_by_subject(filter).await {
            Ok(message) => {
                let event: Sequenced = serde_json::from_slice(&message.payload)?;
                newest = newest.max(event.data.sequence);
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(e).bus("reading the public stream's newest key event")?,
        }
    }
    Ok(newest)
}

async fn relay(js: &jetstream::Context) -> Result<(), RelayError> {
    let mut published = high_water(js).await?;
    let stream = js
        .get_stream(streams::KEYS)
        .await
        .bus("getting the KEYS stream")?;
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: published + 1,
            },
            ..Default::default()
        })
        .await
        .bus("following KEYS for the public stream")?
        .messages()
        .await
        .bus("following KEYS for the public stream")?;
    let client = js.client();
    let reconnected = meridian_kit::bus::reconnected(&client);
    tokio::pin!(reconnected);
    let mut since_resync = 0u64;
    let mut window = AckWindow::new(PUBLISH_WINDOW);
    loop {
        let next = tokio::select! {
            () = &mut reconnected => return Err(RelayError::Ended("NATS reconnected; recreating the consumer")),
            next = tokio::time::timeout(Duration::from_millis(50), messages.next()) => next,
        };
        let message = match next {
            Err(_) => {
                // Idle: make sure what was sent is stored before waiting on.
                window.flush().await?;
                continue;
            }
            Ok(None) => return Err(RelayError::Ended("the KEYS consumer ended")),
            Ok(Some(m)) => m.bus("reading KEYS")?,
        };
        let seq = message
            .info()
            .map_err(|e| BusError::Nats {
                what: "reading a KEYS message's info".into(),
                source: e,
            })?
            .stream_sequence;
        since_resync += 1;
        if since_resync >= RESYNC_EVERY {
            window.flush().await?;
            published = published.max(high_water(js).await?);
            since_resync = 0;
        }
        if seq <= published {
            continue;
        }
        let envelope = Envelope::from_bytes(&message.payload)?;
        let event: KeysEvent = envelope.open()?;
        if let Some(public) = to_public(&event, seq, envelope.occurred_at_ms)? {
            let ack = match public {
                Public::Key(subject, mut e) => {
                    e.traceparent.clone_from(&envelope.traceparent);
                    send_public(js, &subject, &e, None).await?
                }
                Public::Policy(subject, mut e) => {
                    e.traceparent.clone_from(&envelope.traceparent);
                    send_public(js, &subject, &e, None).await?
                }
                Public::Client(subject, mut e) => {
                    e.traceparent.clone_from(&envelope.traceparent);
                    send_public(js, &subject, &e, None).await?
                }
            };
            window.push_future("events.key-issuer", ack).await?;
        }
    }
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
        | KeysEvent::LapsedTokensPurged { .. } => return Ok(None),
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
