//! Records the OAuth tokens the proxy issues: the proxy sends
//! [`RecordTokens`] (hashes only) on [`streams::RECORD_TOKENS_SUBJECT`];
//! one key-issuer replica (a queue group) checks them, appends them to
//! `KEYS` and answers once they are stored, so the proxy can hand a token
//! out knowing every replica will see it, and a revocation here reaches it
//! there.

use futures_util::StreamExt;
use meridian_kit::CancellationToken;
use meridian_kit::time::now_ms;
use meridian_schemas::commands::{self, RecordTokens, RecordTokensReply};
use meridian_schemas::keys::KeysEvent;
use meridian_schemas::streams::{self, KeysEntity};
use uuid::Uuid;

use super::fold::read;
use super::writer::{WriteError, Writer};
use crate::domain::{MAX_ID_BYTES, is_hash};

/// Most tokens one request may record.
pub const MAX_TOKENS: usize = 64;

/// Answers token records until `stop`.
pub async fn serve_until_stopped(
    client: async_nats::Client,
    writer: Writer,
    stop: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut requests = client
        .queue_subscribe(streams::RECORD_TOKENS_SUBJECT, "key-issuer".into())
        .await?;
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            m = requests.next() => match m {
                Some(m) => m,
                None => return Ok(()),
            },
        };
        let reply = match commands::decode::<RecordTokens>(&message.payload) {
            Ok(request) => record(&writer, request).await,
            Err(e) => RecordTokensReply::Refused(format!("malformed request: {e}")),
        };
        if let Some(reply_to) = message.reply
            && let Err(e) = client
                .publish(reply_to, commands::encode(&reply).into())
                .await
        {
            tracing::warn!(error = %e, "could not answer a token record");
        }
    }
}

/// Checks and stores one request's tokens and codes, redeeming first the
/// code or refresh token they were issued for. A retry of a request whose
/// tokens are all stored already answers as the first did.
pub async fn record(writer: &Writer, request: RecordTokens) -> RecordTokensReply {
    if request.tokens.len() + request.codes.len() > MAX_TOKENS {
        return RecordTokensReply::Refused(format!("at most {MAX_TOKENS} tokens per request"));
    }
    let client_of_request = {
        let state = read(writer.state());
        let mut clients = request
            .tokens
            .iter()
            .map(|(h, t)| (h, &t.client_id, t.expires_ms))
            .chain(
                request
                    .codes
                    .iter()
                    .map(|(h, c)| (h, &c.client_id, c.expires_ms)),
            );
        let mut first = None;
        for (hash, client_id, expires_ms) in clients.by_ref() {
            if !is_hash(hash) {
                return RecordTokensReply::Refused(
                    "a token hash is not 64 lower-case hex characters".into(),
                );
            }
            if client_id.len() > MAX_ID_BYTES || state.client(client_id).is_none() {
                return RecordTokensReply::Refused(format!("no OAuth client {client_id:?}"));
            }
            if expires_ms <= now_ms() {
                return RecordTokensReply::Refused("a token has already expired".into());
            }
            if first.get_or_insert(client_id) != &client_id {
                return RecordTokensReply::Refused(
                    "every token of a request is for one client".into(),
                );
            }
        }
        let stored = |h: &String| state.token(h).is_some() || state.code(h).is_some();
        if request
            .tokens
            .iter()
            .map(|(h, _)| h)
            .chain(request.codes.iter().map(|(h, _)| h))
            .all(stored)
            && first.is_some()
        {
            // A retry of a request that was stored: the same answer.
            return RecordTokensReply::Recorded {
                keys_seq: state.position(),
            };
        }
        first.cloned()
    };
    let Some(client_id) = client_of_request else {
        return RecordTokensReply::Refused("nothing to record".into());
    };
    if let Some(redeemed) = &request.redeem {
        match redeem(writer, &request, redeemed, &client_id).await {
            Ok(()) => {}
            Err(reply) => return reply,
        }
    }
    let mut keys_seq = 0;
    let events = request
        .codes
        .iter()
        .map(|(hash, code)| KeysEvent::CodeIssued {
            change_id: Uuid::new_v5(&request.request_id, hash.as_bytes()),
            code_hash: hash.clone(),
            code: code.clone(),
        })
        .chain(
            request
                .tokens
                .iter()
                .map(|(hash, token)| KeysEvent::TokenIssued {
                    change_id: Uuid::new_v5(&request.request_id, hash.as_bytes()),
                    token_hash: hash.clone(),
                    token: token.clone(),
                }),
        );
    for event in events {
        match writer.append(&event).await {
            Ok(seq) => keys_seq = seq,
            Err(e) => {
                tracing::warn!(error = %e, "could not record an OAuth token");
                return RecordTokensReply::Refused(format!("not stored: {e}"));
            }
        }
    }
    RecordTokensReply::Recorded { keys_seq }
}

/// Revokes the code or refresh token `hash` (and the access token issued
/// with a refresh token) as a compare-and-set on its subject, so of two
/// requests redeeming it only one succeeds.
async fn redeem(
    writer: &Writer,
    request: &RecordTokens,
    hash: &str,
    client_id: &str,
) -> Result<(), RecordTokensReply> {
    if !is_hash(hash) {
        return Err(RecordTokensReply::GrantInvalid);
    }
    let now = now_ms();
    let change_id = Uuid::new_v5(&request.request_id, b"redeem");
    let written = writer
        .write(KeysEntity::Token, hash, |state| {
            let live = match (state.code(hash), state.token(hash)) {
                (Some(code), _) => code.value.client_id == client_id && code.value.expires_ms > now,
                (None, Some(token)) => {
                    token.value.refresh
                        && token.value.client_id == client_id
                        && token.value.expires_ms > now
                }
                (None, None) => false,
            };
            if !live {
                return Err(());
            }
            let access = state
                .token(hash)
                .map(|t| t.value.access_hash.clone())
                .filter(|a| state.token(a).is_some());
            Ok((
                KeysEvent::TokenRevoked {
                    token_hash: hash.to_owned(),
                    change_id,
                    at_ms: now,
                },
                access,
            ))
        })
        .await;
    let access = match written {
        Ok((access, _)) => access,
        Err(WriteError::Refused(())) => return Err(RecordTokensReply::GrantInvalid),
        Err(e) => {
            tracing::warn!(error = %e, "could not redeem an OAuth grant");
            return Err(RecordTokensReply::Refused(format!("not stored: {e}")));
        }
    };
    if let Some(access) = access {
        // The access token issued with a used refresh token stops working
        // (Tyk does not keep it after a refresh).
        let event = KeysEvent::TokenRevoked {
            token_hash: access,
            change_id: Uuid::new_v5(&request.request_id, b"redeem-access"),
            at_ms: now,
        };
        if let Err(e) = writer.append(&event).await {
            tracing::warn!(error = %e, "could not revoke the access token of a used refresh token");
            return Err(RecordTokensReply::Refused(format!("not stored: {e}")));
        }
    }
    Ok(())
}
