//! Id newtypes. Every id is a UUID; the API id is derived, so replaying the
//! log always yields the same ids.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// Namespace for Meridian's name-based (v5) UUIDs.
pub const MERIDIAN_NAMESPACE: Uuid = Uuid::from_u128(0x6d65_7269_6469_616e_8a1f_4c3b_9e2d_7f10);

macro_rules! uuid_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// Parses the canonical text form of the id.
            pub fn parse(s: &str) -> Result<Self, uuid::Error> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_newtype!(
    /// An agent registered with the hub (random v4, chosen at registration).
    AgentId
);
uuid_newtype!(
    /// An API in the repository; see [`ApiId::derive`].
    ApiId
);
uuid_newtype!(
    /// One sync run of one provider (random v4, chosen by the hub).
    RunId
);

uuid_newtype!(
    /// A scheduled sync job (random v4, chosen at creation).
    JobId
);

impl JobId {
    /// A fresh random job id.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl AgentId {
    /// A fresh random agent id.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl RunId {
    /// A fresh random run id.
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }
}

impl ApiId {
    /// The repository id of an API: UUID v5 of agent, provider and the
    /// provider's own id. NUL separates the parts; provider names cannot
    /// contain control characters, so two different triples never collide.
    pub fn derive(agent: AgentId, provider: &str, provider_api_id: &str) -> Self {
        let mut name = Vec::with_capacity(40 + provider.len() + provider_api_id.len());
        name.extend_from_slice(agent.0.as_bytes());
        name.push(0);
        name.extend_from_slice(provider.as_bytes());
        name.push(0);
        name.extend_from_slice(provider_api_id.as_bytes());
        Self(Uuid::new_v5(&MERIDIAN_NAMESPACE, &name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_id_is_deterministic_and_separates_parts() {
        let agent = AgentId(Uuid::from_u128(7));
        assert_eq!(
            ApiId::derive(agent, "p", "a"),
            ApiId::derive(agent, "p", "a")
        );
        assert_ne!(
            ApiId::derive(agent, "pa", "b"),
            ApiId::derive(agent, "p", "ab")
        );
        assert_ne!(
            ApiId::derive(agent, "p", "a"),
            ApiId::derive(AgentId(Uuid::from_u128(8)), "p", "a")
        );
    }
}
