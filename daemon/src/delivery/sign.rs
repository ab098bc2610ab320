//! Standard Webhooks signatures (symmetric, `v1`): `webhook-signature` is
//! `v1,` + base64(HMAC-SHA256(secret, "{id}.{timestamp}.{body}")), one per
//! secret, space-separated, so a receiver can rotate keys.
//!
//! HMAC comes from `ring`, already in the tree through rustls.

use base64::Engine as _;
use http::HeaderValue;

/// A destination's signing keys (decoded secrets). `Debug` shows only how
/// many there are.
#[derive(Clone, Default)]
pub struct Keys(Vec<ring::hmac::Key>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keys({} redacted)", self.0.len())
    }
}

impl Keys {
    /// Keys from decoded secrets (see [`crate::config::decode_secret`]).
    pub fn new(secrets: &[Vec<u8>]) -> Keys {
        Keys(
            secrets
                .iter()
                .map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s))
                .collect(),
        )
    }

    /// No secret: requests are not signed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `webhook-signature` value for `id`, `timestamp` (Unix seconds)
    /// and the exact body bytes.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> HeaderValue {
        let ts = timestamp.to_string();
        let mut out = String::with_capacity(self.0.len() * 48);
        for key in &self.0 {
            let mut ctx = ring::hmac::Context::with_key(key);
            ctx.update(id.as_bytes());
            ctx.update(b".");
            ctx.update(ts.as_bytes());
            ctx.update(b".");
            ctx.update(body);
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str("v1,");
            base64::engine::general_purpose::STANDARD.encode_string(ctx.sign().as_ref(), &mut out);
        }
        // Only `v1,`, base64 and spaces: always a valid header value.
        let mut v = HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::decode_secret;

    /// The test vector published with the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_test_vector() {
        let secret = decode_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let keys = Keys::new(&[secret]);
        let sig = keys.signature(
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn one_signature_per_secret_space_separated() {
        let a = decode_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let b = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let both = Keys::new(&[a.clone(), b]).signature("id", 1, b"x");
        let one = Keys::new(&[a]).signature("id", 1, b"x");
        let both = both.to_str().unwrap();
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], one.to_str().unwrap());
        assert!(parts[1].starts_with("v1,") && parts[1] != parts[0]);
    }

    #[test]
    fn malformed_secrets_are_refused_without_echoing_them() {
        for bad in [
            "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
        ] {
            let e = decode_secret(bad).unwrap_err();
            assert!(!e.contains(bad) && !e.contains("not base64!x"), "{e}");
        }
    }
}
