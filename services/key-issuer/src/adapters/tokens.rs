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
use meridian_schemas::streams;
use uuid::Uuid;

use super::fold::read;
use super::writer::Writer;
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

/// Checks and stores one request's tokens.
pub async fn record(writer: &Writer, request: RecordTokens) -> RecordTokensReply {
    if request.tokens.len() > MAX_TOKENS {
        return RecordTokensReply::Refused(format!("at most {MAX_TOKENS} tokens per request"));
    }
    {
        let state = read(writer.state());
        for (hash, token) in &request.tokens {
            if !is_hash(hash) {
                return RecordTokensReply::Refused(
                    "a token hash is not 64 lower-case hex characters".into(),
                );
            }
            if token.client_id.len() > MAX_ID_BYTES || state.client(&token.client_id).is_none() {
                return RecordTokensReply::Refused(format!(
                    "no OAuth client {:?}",
                    token.client_id
                ));
            }
            if token.expires_ms <= now_ms() {
                return RecordTokensReply::Refused("a token has already expired".into());
            }
        }
    }
    for (hash, token) in request.tokens {
        let event = KeysEvent::TokenIssued {
            change_id: Uuid::new_v5(&request.request_id, hash.as_bytes()),
            token_hash: hash,
            token,
        };
        if let Err(e) = writer.append(&event).await {
            tracing::warn!(error = %e, "could not record an OAuth token");
            return RecordTokensReply::Refused(format!("not stored: {e}"));
        }
    }
    RecordTokensReply::Recorded
}
