//! The agent registry: records, commands and their rules. Pure.
//!
//! `decide(state, command)` checks a command against the agent's current
//! record and turns it into events; `evolve(state, event)` folds an event into
//! the record. The registry is the fold of the `AGENTS` stream.

use meridian_schemas::AgentId;
use meridian_schemas::agents::{AgentEvent, ProviderRef};
use meridian_schemas::streams::validate_provider_name;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Longest agent name accepted.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest description accepted.
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Most providers one agent may report.
pub const MAX_PROVIDERS: usize = 256;

/// One registered agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent.
    pub id: AgentId,
    /// Display name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// When registered (ms since epoch).
    pub created_at_ms: i64,
    /// Providers as last reported; `None` until the agent first connects.
    pub providers: Option<Vec<ProviderRef>>,
    /// The one valid token, if any.
    pub token: Option<TokenRecord>,
    /// The agent's version string as last reported.
    pub agent_version: String,
    /// When it last opened a health stream.
    pub connected_at_ms: Option<i64>,
    /// The newest fencing token a leading replica presented (0: none yet).
    /// Reset when a new token is issued, since that cuts off every replica
    /// holding the old one.
    pub fencing_token: u64,
}

/// The current token of an agent: its id and expiry, never the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's `jti`.
    pub id: Uuid,
    /// Expiry, ms since epoch.
    pub expires_at_ms: i64,
}

/// What an operator or an agent asks of the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Register a new agent.
    Register {
        /// Display name.
        name: String,
        /// Free text.
        description: String,
    },
    /// Change name and/or description.
    Update {
        /// New name.
        name: Option<String>,
        /// New description.
        description: Option<String>,
        /// Fresh id for deduplication.
        update_id: Uuid,
    },
    /// Remove the agent and its token.
    Delete,
    /// Issue a token, replacing any earlier one.
    IssueToken {
        /// Fresh `jti`.
        token_id: Uuid,
        /// Expiry.
        expires_at_ms: i64,
    },
    /// Revoke the current token.
    RevokeToken,
    /// The agent connected and reported its providers.
    Connect {
        /// Fresh per connection.
        connection_id: Uuid,
        /// As reported.
        providers: Vec<ProviderRef>,
        /// As reported.
        agent_version: String,
    },
    /// A replica opened a sync stream as leader with this fencing token.
    Fence {
        /// The Lease's transition count it presented.
        fencing_token: u64,
    },
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A field is invalid.
    #[error("{field}: {why}")]
    Invalid {
        /// The field.
        field: String,
        /// Why.
        why: String,
    },
    /// No such agent.
    #[error("no agent with id {0}")]
    UnknownAgent(AgentId),
    /// The agent exists already.
    #[error("agent {0} already exists")]
    AlreadyExists(AgentId),
    /// Nothing to revoke.
    #[error("agent {0} has no token")]
    NoToken(AgentId),
    /// A replica that no longer leads (an older fencing token).
    #[error(
        "fencing token {presented} is older than {newest}, the newest seen for this agent: \
         another replica leads now (after a Lease is deleted and recreated, issue a new \
         agent token to reset the fence)"
    )]
    Fenced {
        /// The token presented.
        presented: u64,
        /// The newest seen.
        newest: u64,
    },
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> Rejection {
    Rejection::Invalid {
        field: field.into(),
        why: why.into(),
    }
}

fn check_name(name: &str) -> Result<String, Rejection> {
    let name = name.trim();
    if name.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    Ok(name.to_owned())
}

fn check_description(d: &str) -> Result<String, Rejection> {
    if d.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(invalid(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(d.to_owned())
}

/// Checks reported providers: valid, unique names and a type each.
pub fn check_providers(providers: &[ProviderRef]) -> Result<(), Rejection> {
    if providers.len() > MAX_PROVIDERS {
        return Err(invalid(
            "providers",
            format!("at most {MAX_PROVIDERS} providers per agent"),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, p) in providers.iter().enumerate() {
        validate_provider_name(&p.name)
            .map_err(|why| invalid(format!("providers[{i}].name"), why.to_string()))?;
        if p.provider_type.trim().is_empty() {
            return Err(invalid(format!("providers[{i}].type"), "must not be empty"));
        }
        if !names.insert(p.name.as_str()) {
            return Err(invalid(
                format!("providers[{i}].name"),
                format!("{:?} is reported twice", p.name),
            ));
        }
    }
    Ok(())
}

/// Turns a command into events, or refuses it.
pub fn decide(
    state: Option<&AgentRecord>,
    agent_id: AgentId,
    command: Command,
) -> Result<Vec<AgentEvent>, Rejection> {
    match (state, command) {
        (Some(_), Command::Register { .. }) => Err(Rejection::AlreadyExists(agent_id)),
        (None, Command::Register { name, description }) => Ok(vec![AgentEvent::Registered {
            agent_id,
            name: check_name(&name)?,
            description: check_description(&description)?,
        }]),
        (None, _) => Err(Rejection::UnknownAgent(agent_id)),
        (
            Some(rec),
            Command::Update {
                name,
                description,
                update_id,
            },
        ) => Ok(vec![AgentEvent::Updated {
            agent_id,
            name: name
                .as_deref()
                .map(check_name)
                .transpose()?
                .unwrap_or_else(|| rec.name.clone()),
            description: description
                .as_deref()
                .map(check_description)
                .transpose()?
                .unwrap_or_else(|| rec.description.clone()),
            update_id,
        }]),
        (Some(_), Command::Delete) => Ok(vec![AgentEvent::Deleted { agent_id }]),
        (
            Some(_),
            Command::IssueToken {
                token_id,
                expires_at_ms,
            },
        ) => Ok(vec![AgentEvent::TokenIssued {
            agent_id,
            token_id,
            expires_at_ms,
        }]),
        (Some(rec), Command::RevokeToken) => match rec.token {
            Some(t) => Ok(vec![AgentEvent::TokenRevoked {
                agent_id,
                token_id: t.id,
            }]),
            None => Err(Rejection::NoToken(agent_id)),
        },
        (
            Some(_),
            Command::Connect {
                connection_id,
                providers,
                agent_version,
            },
        ) => {
            check_providers(&providers)?;
            Ok(vec![AgentEvent::Connected {
                agent_id,
                connection_id,
                providers,
                agent_version,
            }])
        }
        (Some(rec), Command::Fence { fencing_token }) => {
            check_fence(rec, fencing_token)?;
            Ok(if fencing_token > rec.fencing_token {
                vec![AgentEvent::LeaderFenced {
                    agent_id,
                    fencing_token,
                }]
            } else {
                Vec::new()
            })
        }
    }
}

/// Refuses a fencing token older than the newest seen for the agent.
pub fn check_fence(record: &AgentRecord, fencing_token: u64) -> Result<(), Rejection> {
    if fencing_token < record.fencing_token {
        return Err(Rejection::Fenced {
            presented: fencing_token,
            newest: record.fencing_token,
        });
    }
    Ok(())
}

/// Folds one event into the agent's record (`None`: no such agent).
pub fn evolve(state: Option<AgentRecord>, event: &AgentEvent, at_ms: i64) -> Option<AgentRecord> {
    match (state, event) {
        (
            None,
            AgentEvent::Registered {
                agent_id,
                name,
                description,
            },
        ) => Some(AgentRecord {
            id: *agent_id,
            name: name.clone(),
            description: description.clone(),
            created_at_ms: at_ms,
            providers: None,
            token: None,
            agent_version: String::new(),
            connected_at_ms: None,
            fencing_token: 0,
        }),
        (state @ Some(_), AgentEvent::Registered { .. }) => state,
        (None, _) => None,
        (Some(_), AgentEvent::Deleted { .. }) => None,
        (
            Some(mut r),
            AgentEvent::Updated {
                name, description, ..
            },
        ) => {
            r.name.clone_from(name);
            r.description.clone_from(description);
            Some(r)
        }
        (
            Some(mut r),
            AgentEvent::TokenIssued {
                token_id,
                expires_at_ms,
                ..
            },
        ) => {
            r.token = Some(TokenRecord {
                id: *token_id,
                expires_at_ms: *expires_at_ms,
            });
            r.fencing_token = 0;
            Some(r)
        }
        (Some(mut r), AgentEvent::TokenRevoked { token_id, .. }) => {
            if r.token.is_some_and(|t| t.id == *token_id) {
                r.token = None;
            }
            Some(r)
        }
        (
            Some(mut r),
            AgentEvent::Connected {
                providers,
                agent_version,
                ..
            },
        ) => {
            r.providers = Some(providers.clone());
            r.agent_version.clone_from(agent_version);
            r.connected_at_ms = Some(at_ms);
            Some(r)
        }
        (Some(mut r), AgentEvent::LeaderFenced { fencing_token, .. }) => {
            r.fencing_token = r.fencing_token.max(*fencing_token);
            Some(r)
        }
    }
}

/// Whether a presented token (`jti`) is the agent's current, unexpired one.
pub fn token_valid(state: Option<&AgentRecord>, token_id: Uuid, now_ms: i64) -> bool {
    state
        .and_then(|r| r.token)
        .is_some_and(|t| t.id == token_id && now_ms < t.expires_at_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// given(events).when(command) -> events
    fn given(events: &[AgentEvent]) -> Option<AgentRecord> {
        events.iter().fold(None, |s, e| evolve(s, e, 1))
    }

    const A: AgentId = AgentId(Uuid::from_u128(1));

    fn registered() -> AgentEvent {
        AgentEvent::Registered {
            agent_id: A,
            name: "a".into(),
            description: String::new(),
        }
    }

    #[test]
    fn register_validates_the_name() {
        assert!(
            decide(
                None,
                A,
                Command::Register {
                    name: "  ".into(),
                    description: String::new()
                }
            )
            .is_err()
        );
        let e = decide(
            None,
            A,
            Command::Register {
                name: " x ".into(),
                description: "d".into(),
            },
        )
        .unwrap();
        assert_eq!(
            e,
            vec![AgentEvent::Registered {
                agent_id: A,
                name: "x".into(),
                description: "d".into()
            }]
        );
        let s = given(&[registered()]);
        assert_eq!(
            decide(
                s.as_ref(),
                A,
                Command::Register {
                    name: "x".into(),
                    description: String::new()
                }
            ),
            Err(Rejection::AlreadyExists(A))
        );
    }

    #[test]
    fn a_new_token_replaces_the_old_and_revocation_ends_it() {
        let (t1, t2) = (Uuid::from_u128(10), Uuid::from_u128(11));
        let s = given(&[
            registered(),
            AgentEvent::TokenIssued {
                agent_id: A,
                token_id: t1,
                expires_at_ms: 100,
            },
            AgentEvent::TokenIssued {
                agent_id: A,
                token_id: t2,
                expires_at_ms: 100,
            },
        ]);
        assert!(!token_valid(s.as_ref(), t1, 50));
        assert!(token_valid(s.as_ref(), t2, 50));
        assert!(!token_valid(s.as_ref(), t2, 100), "expired");
        let revoke = decide(s.as_ref(), A, Command::RevokeToken).unwrap();
        let s = revoke.iter().fold(s, |s, e| evolve(s, e, 2));
        assert!(!token_valid(s.as_ref(), t2, 50));
        assert_eq!(
            decide(s.as_ref(), A, Command::RevokeToken),
            Err(Rejection::NoToken(A))
        );
    }

    #[test]
    fn older_fencing_tokens_are_refused_until_a_new_token_is_issued() {
        let s = given(&[registered()]);
        let fence = |s: Option<AgentRecord>, t: u64| {
            let events = decide(s.as_ref(), A, Command::Fence { fencing_token: t })?;
            Ok::<_, Rejection>(events.iter().fold(s, |s, e| evolve(s, e, 2)))
        };
        let s = fence(s, 3).unwrap();
        assert_eq!(s.as_ref().unwrap().fencing_token, 3);
        // The same token again changes nothing and publishes nothing.
        assert_eq!(
            decide(s.as_ref(), A, Command::Fence { fencing_token: 3 }),
            Ok(vec![])
        );
        assert_eq!(
            decide(s.as_ref(), A, Command::Fence { fencing_token: 2 }),
            Err(Rejection::Fenced {
                presented: 2,
                newest: 3
            })
        );
        assert!(check_fence(s.as_ref().unwrap(), 2).is_err());
        assert!(check_fence(s.as_ref().unwrap(), 4).is_ok());
        // A replayed older LeaderFenced never lowers the fence.
        let s = evolve(
            s,
            &AgentEvent::LeaderFenced {
                agent_id: A,
                fencing_token: 1,
            },
            3,
        );
        assert_eq!(s.as_ref().unwrap().fencing_token, 3);
        // A new agent token cuts off every old replica, so the fence restarts.
        let s = evolve(
            s,
            &AgentEvent::TokenIssued {
                agent_id: A,
                token_id: Uuid::from_u128(12),
                expires_at_ms: 100,
            },
            4,
        );
        assert!(fence(s, 0).is_ok());
    }

    #[test]
    fn deleting_an_agent_revokes_its_token() {
        let t = Uuid::from_u128(10);
        let s = given(&[
            registered(),
            AgentEvent::TokenIssued {
                agent_id: A,
                token_id: t,
                expires_at_ms: 100,
            },
        ]);
        let s = evolve(s, &AgentEvent::Deleted { agent_id: A }, 3);
        assert!(s.is_none());
        assert!(!token_valid(s.as_ref(), t, 50));
        assert_eq!(
            decide(None, A, Command::Delete),
            Err(Rejection::UnknownAgent(A))
        );
    }

    #[test]
    fn reported_providers_are_checked() {
        let s = given(&[registered()]);
        let p = |n: &str, t: &str| ProviderRef {
            name: n.into(),
            provider_type: t.into(),
        };
        for (bad, field) in [
            (vec![p("", "tyk")], "providers[0].name"),
            (vec![p("ok", "")], "providers[0].type"),
            (vec![p("x", "tyk"), p("x", "aws")], "providers[1].name"),
            (vec![p("line\nbreak", "tyk")], "providers[0].name"),
            (vec![p(&"x".repeat(129), "tyk")], "providers[0].name"),
        ] {
            let cmd = Command::Connect {
                connection_id: Uuid::nil(),
                providers: bad,
                agent_version: String::new(),
            };
            match decide(s.as_ref(), A, cmd) {
                Err(Rejection::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected invalid {field}, got {other:?}"),
            }
        }
        // Names as users write them: dots, spaces, any UTF-8.
        let cmd = Command::Connect {
            connection_id: Uuid::nil(),
            providers: vec![p("tyk.eu prod", "tyk"), p("Production APIs", "aws")],
            agent_version: String::new(),
        };
        assert!(decide(s.as_ref(), A, cmd).is_ok());
    }
}
