//! Provider secrets are needed in clear to call the provider, so they
//! cannot be stored hashed; they are sealed instead (AES-256-GCM from
//! aws-lc-rs, the crypto library every TLS connection here already uses)
//! before they enter `PORTAL`, and opened only to make a call. The key is
//! `SEAL_KEY`, or one derived from the admin key when that is not set.
//!
//! A sealed secret is `v1:` and the hex of a random 96-bit nonce, the
//! ciphertext and the tag; the provider id is the associated data, so a
//! sealed secret copied onto another provider does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

/// Seals and opens provider secrets, and derives the keys of credentials.
pub struct Sealer {
    key: LessSafeKey,
    credentials: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

/// A sealed secret that does not open: another key sealed it, or it was
/// changed.
#[derive(Debug, thiserror::Error)]
#[error(
    "the provider's secret cannot be opened (sealed under another SEAL_KEY or admin key?); save the provider again with its secret"
)]
pub struct CannotOpen;

impl Sealer {
    /// A sealer whose key is derived from `material` (the configured
    /// `SEAL_KEY`, or the admin key).
    pub fn new(material: &str) -> Self {
        let mut h = Sha256::new();
        h.update(b"meridian portal-sync provider secrets v1\0");
        h.update(material.as_bytes());
        let key = UnboundKey::new(&AES_256_GCM, &h.finalize()).expect("a 32-byte key");
        let mut h = Sha256::new();
        h.update(b"meridian portal-sync credential keys v1\0");
        h.update(material.as_bytes());
        Self {
            key: LessSafeKey::new(key),
            credentials: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &h.finalize()),
        }
    }

    /// The key of the credential a provisioning request's approval issues:
    /// HMAC-SHA256 of the request id under a key derived from the same
    /// material as the seal (128 bits, hex). Asking the provider for it
    /// again (after a crash, a retry, a log outage) never makes a second
    /// key, and only who holds `SEAL_KEY` (or the admin key) can derive it.
    pub fn credential_key(&self, request_id: &str) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.credentials, request_id.as_bytes());
        meridian_kit::hex::encode(&tag.as_ref()[..16])
    }

    /// Seals `secret` for provider `provider_id`.
    pub fn seal(&self, provider_id: &str, secret: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random source");
        let mut data = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(provider_id.as_bytes()),
                &mut data,
            )
            .expect("AES-GCM seals any length we store");
        format!(
            "v1:{}{}",
            meridian_kit::hex::encode(&nonce),
            meridian_kit::hex::encode(&data)
        )
    }

    /// Opens what [`Sealer::seal`] sealed for `provider_id`.
    pub fn open(&self, provider_id: &str, sealed: &str) -> Result<String, CannotOpen> {
        let raw = sealed
            .strip_prefix("v1:")
            .and_then(meridian_kit::hex::decode)
            .ok_or(CannotOpen)?;
        if raw.len() < NONCE_LEN {
            return Err(CannotOpen);
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let mut data = rest.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CannotOpen)?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(provider_id.as_bytes()), &mut data)
            .map_err(|_| CannotOpen)?;
        String::from_utf8(plain.to_vec()).map_err(|_| CannotOpen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_secret_opens_only_with_its_key_and_provider() {
        let sealer = Sealer::new("the admin key");
        let sealed = sealer.seal("p1", "dashboard-secret");
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("dashboard-secret"));
        assert_ne!(
            sealed,
            sealer.seal("p1", "dashboard-secret"),
            "nonces repeat"
        );
        assert_eq!(sealer.open("p1", &sealed).unwrap(), "dashboard-secret");
        assert!(sealer.open("p2", &sealed).is_err());
        assert!(Sealer::new("another key").open("p1", &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('0');
        assert!(sealer.open("p1", &tampered).is_err() || tampered == sealed);
        assert!(sealer.open("p1", "garbage").is_err());
    }

    #[test]
    fn a_credential_key_is_the_same_for_a_request_and_secret_to_others() {
        let sealer = Sealer::new("the admin key");
        let k = sealer.credential_key("request-1");
        assert_eq!(
            k,
            sealer.credential_key("request-1"),
            "asked again: the same key"
        );
        assert_eq!(k.len(), 32);
        assert_ne!(k, sealer.credential_key("request-2"));
        assert_ne!(k, Sealer::new("another key").credential_key("request-1"));
    }
}
