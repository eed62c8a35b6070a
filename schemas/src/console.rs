//! Events of the `CONSOLE` stream, written by the web console of every hub
//! replica (`meridian up`, `meridian route`): sessions signed out, so that
//! a signed-out session cookie is refused by every replica, not only the
//! one it signed out on. A session is named by the SHA-256 of its cookie
//! value, never the value itself. The stream keeps a revocation only as
//! long as the session could have lasted ([`CONSOLE_RETENTION`]).
//!
//! [`CONSOLE_RETENTION`]: crate::streams::CONSOLE_RETENTION

use serde::{Deserialize, Serialize};

use crate::envelope::Event;
use crate::streams;

/// A change to the console's sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleEvent {
    /// A session was signed out: its cookie is refused from now on.
    SessionRevoked {
        /// SHA-256 (hex) of the session cookie's value.
        session_hash: String,
        /// When the session would have expired (ms since the epoch).
        expires_ms: i64,
        /// When it was signed out (ms since the epoch).
        at_ms: i64,
    },
}

impl Event for ConsoleEvent {
    const SCHEMA_VERSION: u16 = 1;
    const STREAM: &'static str = streams::CONSOLE;

    fn event_type(&self) -> &'static str {
        match self {
            Self::SessionRevoked { .. } => "console.session_revoked",
        }
    }

    fn subject(&self) -> String {
        streams::CONSOLE_REVOKED_SUBJECT.to_owned()
    }

    fn dedup_id(&self) -> String {
        match self {
            Self::SessionRevoked { session_hash, .. } => {
                format!("{}:{session_hash}", self.event_type())
            }
        }
    }
}
