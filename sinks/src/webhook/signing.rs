//! Standard Webhooks signatures (<https://www.standardwebhooks.com>): a request carries
//! `webhook-id`, `webhook-timestamp` (epoch seconds) and `webhook-signature`, which holds
//! `v1,<base64 of HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>` per active secret,
//! separated by spaces (two while a secret is rotated).

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// The shortest and longest key a secret may hold (the specification's 24 to 64 bytes).
const KEY_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Why a secret is refused; the message never repeats the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the secret is empty (an unset variable?): give `whsec_<base64>`")]
    Empty,
    #[error("the secret is not `whsec_` followed by base64 (standard alphabet, padded)")]
    NotBase64,
    #[error("the secret's key is {0} bytes; Standard Webhooks keys are 24 to 64 bytes")]
    Length(usize),
}

/// A signing key, decoded from `whsec_<base64>`. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Secret {
    /// Decodes `whsec_<base64>` (the prefix may be left out, as the reference libraries
    /// allow); the error says what is wrong without repeating the value.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SecretError::Empty);
        }
        let b64 = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SecretError::NotBase64)?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Secret(key))
    }

    /// The key's bytes.
    pub fn key(&self) -> &[u8] {
        &self.0
    }

    /// `v1,<base64 signature>` of a request.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC takes keys of any length: `new_from_slice` cannot fail
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        )
    }
}

/// The `webhook-signature` value: one `v1,` entry per secret, space-separated.
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks reference libraries' tests (and of Svix's
    /// documentation): this secret, id, timestamp and payload give this signature.
    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = s.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // without the prefix: the same key
        assert_eq!(
            Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            s
        );
    }

    #[test]
    fn two_secrets_give_two_space_separated_signatures() {
        let a = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = Secret(vec![7; 32]);
        let h = signature_header(&[a.clone(), b.clone()], "msg_1", 10, b"[]");
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(
            parts,
            [a.sign("msg_1", 10, b"[]"), b.sign("msg_1", 10, b"[]")]
        );
        assert_ne!(parts[0], parts[1]);
        // any change of id, timestamp or body changes the signature
        assert_ne!(a.sign("msg_2", 10, b"[]"), parts[0]);
        assert_ne!(a.sign("msg_1", 11, b"[]"), parts[0]);
        assert_ne!(a.sign("msg_1", 10, b"[ ]"), parts[0]);
    }

    #[test]
    fn bad_secrets_are_refused_without_echoing_them() {
        for bad in ["", "   ", "whsec_not base64!", "whsec_c2hvcnQ="] {
            let e = Secret::parse(bad).unwrap_err().to_string();
            assert!(
                !bad.trim().is_empty() && !e.contains(bad.trim()) || bad.trim().is_empty(),
                "{e}"
            );
        }
        assert_eq!(
            Secret::parse("whsec_c2hvcnQ=").unwrap_err(),
            SecretError::Length(5)
        );
        assert_eq!(Secret::parse(" ").unwrap_err(), SecretError::Empty);
        assert!(Secret::parse("whsec_c2hvcnQ=")
            .unwrap_err()
            .to_string()
            .contains("5 bytes"));
        assert_eq!(
            format!(
                "{:?}",
                Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()
            ),
            "Secret(***)"
        );
    }
}
