//! The health stream: the agent's hello (its providers, into `AGENTS`),
//! then heartbeats (into `AGENT_HEARTBEATS`), each checked against the
//! agent's current token.

use std::time::Duration;

use meridian_kit::bus::BusError;
use meridian_kit::time::now_ms;
use meridian_schemas::agents::{Heartbeat, ProviderRef};
use meridian_schemas::proto::{HealthMessage, HealthReply, Hello, health_message};
use meridian_schemas::{AgentId, EventMeta};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::{BoxStream, Hub, inbound_failure};
use crate::adapters::registry::ExecError;
use crate::domain::{Command, Rejection};

/// How long a new health stream may take to say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(30);

/// Opens a health stream: authenticates, takes the hello, answers with the
/// heartbeat interval, then follows the heartbeats in the background.
pub(super) async fn open(
    hub: &Hub,
    req: Request<Streaming<HealthMessage>>,
) -> Result<Response<BoxStream<HealthReply>>, Status> {
    let (agent, jti) = hub.authenticate(&req)?;
    let mut inbound = req.into_inner();
    let first = tokio::time::timeout(HELLO_WITHIN, inbound.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no hello within 30 s"))?
        .map_err(|status| inbound_failure("health", &status).unwrap_or(status))?;
    let Some(HealthMessage {
        kind: Some(health_message::Kind::Hello(hello)),
    }) = first
    else {
        return Err(Status::invalid_argument(
            "the first message on the health stream must be hello",
        ));
    };
    announce(hub, agent, hello).await?;
    tracing::info!(%agent, "agent connected (health stream)");
    let (tx, rx) = mpsc::channel(4);
    let interval = hub.settings.heartbeat_interval.as_secs().max(1) as u32;
    let _ = tx
        .send(Ok(HealthReply {
            heartbeat_interval_seconds: interval,
        }))
        .await;
    let hub = hub.clone();
    tokio::spawn(async move {
        let reason = follow(&hub, agent, jti, &mut inbound, &tx).await;
        tracing::info!(%agent, %reason, "agent health stream ended");
    });
    Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
}

/// Handles the stream's messages after the hello until it ends; returns why.
async fn follow(
    hub: &Hub,
    agent: AgentId,
    jti: Uuid,
    inbound: &mut Streaming<HealthMessage>,
    tx: &mpsc::Sender<Result<HealthReply, Status>>,
) -> String {
    loop {
        let message = tokio::select! {
            m = inbound.message() => m,
            () = tx.closed() => return "hub side closed".to_owned(),
        };
        let result = match message {
            Ok(Some(HealthMessage {
                kind: Some(health_message::Kind::Heartbeat(_)),
            })) => match hub.still_valid(hub.registry.get(agent).as_ref(), jti, None) {
                Err(status) => Err(status),
                Ok(()) => beat(hub, agent)
                    .await
                    .map_err(|e| Status::unavailable(e.to_string())),
            },
            Ok(Some(HealthMessage {
                kind: Some(health_message::Kind::Hello(hello)),
            })) => announce(hub, agent, hello).await,
            Ok(Some(HealthMessage { kind: None })) => Err(Status::invalid_argument(
                "health message without hello or heartbeat",
            )),
            Ok(None) => return "agent closed the stream".to_owned(),
            // Garbage or an oversized frame is the agent's error, said so;
            // anything else (the agent went away) needs no answer.
            Err(status) => match inbound_failure("health", &status) {
                Some(answer) => Err(answer),
                None => return format!("stream error: {}", status.message()),
            },
        };
        if let Err(status) = result {
            let reason = status.message().to_owned();
            let _ = tx.send(Err(status)).await;
            return reason;
        }
    }
}

/// Records a heartbeat: the agent counts as active until it misses enough.
async fn beat(hub: &Hub, agent: AgentId) -> Result<(), BusError> {
    let at_ms = now_ms();
    let window = hub.settings.heartbeat_interval * hub.settings.missed_heartbeats;
    let beat = Heartbeat {
        agent_id: agent,
        at_ms,
        active_until_ms: at_ms + window.as_millis() as i64,
    };
    hub.publisher
        .publish(
            &beat,
            EventMeta {
                occurred_at_ms: at_ms,
                ..Default::default()
            },
        )
        .await
        .map(|_| ())
}

/// Records the providers a hello reports, and a first heartbeat.
async fn announce(hub: &Hub, agent: AgentId, hello: Hello) -> Result<(), Status> {
    let providers: Vec<ProviderRef> = hello
        .providers
        .into_iter()
        .map(|p| ProviderRef {
            name: p.name,
            provider_type: p.r#type,
        })
        .collect();
    let command = Command::Connect {
        connection_id: Uuid::new_v4(),
        providers,
        agent_version: hello.agent_version,
    };
    match hub.registry.execute(agent, command).await {
        Ok(_) => {}
        Err(ExecError::Rejected(Rejection::Invalid { field, why })) => {
            return Err(Status::invalid_argument(format!("hello.{field}: {why}")));
        }
        Err(ExecError::Rejected(e)) => return Err(Status::unauthenticated(e.to_string())),
        Err(e) => return Err(Status::unavailable(e.to_string())),
    }
    beat(hub, agent)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))
}
