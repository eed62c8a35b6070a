//! Agent tokens: HS256 JWTs carrying the agent id (`sub`) and a token id
//! (`jti`). The registry keeps only the current `jti` and expiry, so issuing a
//! new token revokes the previous one and the token itself is never stored.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use meridian_schemas::AgentId;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const ISSUER: &str = "meridian-agent-gateway";
/// Shortest signing secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    jti: String,
    iss: String,
    iat: i64,
    exp: i64,
}

/// Why a presented token is refused (before the registry is asked).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Expired.
    #[error("token expired")]
    Expired,
    /// Bad signature, wrong issuer, malformed.
    #[error("token is not valid: {0}")]
    Invalid(String),
}

/// The signing secret is too short.
#[derive(Debug, thiserror::Error)]
#[error("the JWT secret must be at least {MIN_SECRET_BYTES} bytes")]
pub struct ShortSecret;

/// Signs and verifies agent tokens.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl Tokens {
    /// From the hub secret (at least [`MIN_SECRET_BYTES`]).
    pub fn new(secret: &[u8]) -> Result<Self, ShortSecret> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(ShortSecret);
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        validation.leeway = 0;
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        })
    }

    /// A signed token for `agent` with id `token_id`, expiring at `expires_at_ms`.
    pub fn issue(&self, agent: AgentId, token_id: Uuid, now_ms: i64, expires_at_ms: i64) -> String {
        let claims = Claims {
            sub: agent.to_string(),
            jti: token_id.to_string(),
            iss: ISSUER.into(),
            iat: now_ms / 1000,
            exp: expires_at_ms / 1000,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing with a valid key cannot fail")
    }

    /// Checks signature, issuer and expiry; returns the agent and token id.
    pub fn verify(&self, token: &str) -> Result<(AgentId, Uuid), TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })?;
        let agent = AgentId::parse(&data.claims.sub)
            .map_err(|_| TokenError::Invalid("bad subject".into()))?;
        let jti = Uuid::parse_str(&data.claims.jti)
            .map_err(|_| TokenError::Invalid("bad token id".into()))?;
        Ok((agent, jti))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let t = Tokens::new(&[7u8; 32]).unwrap();
        let agent = AgentId(Uuid::from_u128(5));
        let now = meridian_kit::time::now_ms();
        let tok = t.issue(agent, Uuid::from_u128(9), now, now + 60_000);
        assert_eq!(t.verify(&tok).unwrap(), (agent, Uuid::from_u128(9)));
        let other = Tokens::new(&[8u8; 32]).unwrap();
        assert!(matches!(other.verify(&tok), Err(TokenError::Invalid(_))));
        let old = t.issue(agent, Uuid::from_u128(9), now - 120_000, now - 60_000);
        assert!(matches!(t.verify(&old), Err(TokenError::Expired)));
        assert!(Tokens::new(b"short").is_err());
    }
}
