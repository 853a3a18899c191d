//! Signing webhook deliveries as the Standard Webhooks specification says
//! (<https://www.standardwebhooks.com>, version 1.0.0): the signed content is
//! `{webhook-id}.{webhook-timestamp}.{body}`, its HMAC-SHA256 goes in `webhook-signature` as
//! `v1,<Base64>`, and while a secret is being rotated the header carries one signature per
//! secret, separated by spaces. Secrets are shown as `whsec_` and the Base64 of 24 to 64 random
//! bytes. No I/O; the delivery engine that uses this is built on top.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a secret as users see it.
pub const SECRET_PREFIX: &str = "whsec_";

/// Key lengths the specification allows, in bytes.
pub const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A signing secret: the key bytes behind `whsec_…`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Why a secret was refused: the sentence for `{"detail"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(pub String);

impl Secret {
    /// A secret from its key bytes (made by the caller from a secure random source).
    pub fn from_key(key: Vec<u8>) -> Result<Secret, SecretError> {
        if !KEY_BYTES.contains(&key.len()) {
            return Err(SecretError(format!(
                "A webhook secret holds {} to {} bytes; this one has {}.",
                KEY_BYTES.start(),
                KEY_BYTES.end(),
                key.len()
            )));
        }
        Ok(Secret(key))
    }

    /// `whsec_<Base64>` as users give it (the prefix may be left out, as the reference
    /// libraries allow).
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let encoded = text.trim();
        let encoded = encoded.strip_prefix(SECRET_PREFIX).unwrap_or(encoded);
        let key = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| {
                SecretError(format!(
                    "A webhook secret is {SECRET_PREFIX} followed by Base64 (standard alphabet, padded)."
                ))
            })?;
        Secret::from_key(key)
    }

    /// The secret as users see it: `whsec_<Base64>`.
    pub fn reveal(&self) -> String {
        format!(
            "{SECRET_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(&self.0)
        )
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<Base64>` signature of one delivery attempt. `body` is the exact bytes sent.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let digest = self.mac(id, timestamp, body).finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    }

    /// Whether any `v1` signature in a `webhook-signature` header is this secret's for the
    /// delivery (compared in constant time). Timestamps are the receiver's to check.
    pub fn verifies(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split(' ').any(|signature| {
            let Some(encoded) = signature.strip_prefix("v1,") else {
                return false;
            };
            let Ok(digest) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
                return false;
            };
            self.mac(id, timestamp, body).verify_slice(&digest).is_ok()
        })
    }
}

/// The `webhook-signature` header for a delivery: one signature per secret in use (the new
/// one and, while a rotation overlaps, the old one), separated by spaces.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| secret.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's reference libraries' own test vectors (Python, JavaScript and Go
    /// share the first; the Rust library has the second).
    const VECTORS: [(&str, &str, i64, &str, &str); 2] = [
        (
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ),
        (
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            r#"{"email":"test@example.com","username":"test_user"}"#,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
        ),
    ];

    #[test]
    fn signatures_match_the_reference_libraries_vectors() {
        for (secret, id, timestamp, body, expected) in VECTORS {
            let secret = Secret::parse(secret).unwrap();
            assert_eq!(secret.sign(id, timestamp, body.as_bytes()), expected);
            assert!(secret.verifies(id, timestamp, body.as_bytes(), expected));
        }
    }

    #[test]
    fn a_changed_byte_anywhere_fails_verification() {
        let (secret, id, timestamp, body, good) = VECTORS[0];
        let secret = Secret::parse(secret).unwrap();
        // The libraries' own negative case: the last character of the signature changed.
        let bad = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=";
        assert!(!secret.verifies(id, timestamp, body.as_bytes(), bad));
        assert!(!secret.verifies("msg_other", timestamp, body.as_bytes(), good));
        assert!(!secret.verifies(id, timestamp + 1, body.as_bytes(), good));
        assert!(!secret.verifies(id, timestamp, br#"{"test": 2432232315}"#, good));
        assert!(!secret.verifies(id, timestamp, body.as_bytes(), "v2,abc"));
        assert!(!secret.verifies(id, timestamp, body.as_bytes(), ""));
    }

    #[test]
    fn during_a_rotation_both_secrets_sign_and_either_verifies() {
        let old = Secret::parse(VECTORS[0].0).unwrap();
        let new = Secret::from_key(vec![7; 32]).unwrap();
        let header = signature_header(&[new.clone(), old.clone()], "msg_1", 1700000000, b"{}");
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        assert!(new.verifies("msg_1", 1700000000, b"{}", &header));
        assert!(old.verifies("msg_1", 1700000000, b"{}", &header));
        let other = Secret::from_key(vec![9; 32]).unwrap();
        assert!(!other.verifies("msg_1", 1700000000, b"{}", &header));
    }

    #[test]
    fn secrets_read_and_show_as_whsec_base64_of_24_to_64_bytes() {
        let secret = Secret::parse(VECTORS[0].0).unwrap();
        assert_eq!(secret.reveal(), VECTORS[0].0);
        // The prefix may be left out.
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            secret
        );
        assert!(Secret::parse("whsec_not base64!").is_err());
        assert!(Secret::from_key(vec![1; 23]).is_err());
        assert!(Secret::from_key(vec![1; 65]).is_err());
        assert!(Secret::from_key(vec![1; 64]).is_ok());
        assert_eq!(format!("{secret:?}"), "Secret(…)", "never printed");
    }
}
