//! Webhook signatures, both directions.
//!
//! * Meta → ingest: `X-Hub-Signature-256: sha256=<hex>` with the app secret.
//! * forwarder → CRM: the same header with the account's webhook secret, plus
//!   Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
//!
//! Verification always goes through `Mac::verify_slice`, which compares in
//! constant time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

pub const HUB_SIGNATURE_HEADER: &str = "x-hub-signature-256";
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const WEBHOOK_SIGNATURE_HEADER: &str = "webhook-signature";
const WHSEC_PREFIX: &str = "whsec_";

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// `sha256=<lowercase hex HMAC-SHA256(key, body)>`.
pub fn hub_signature(key: &[u8], body: &[u8]) -> String {
    let mut m = mac(key);
    m.update(body);
    format!("sha256={}", hex::encode(m.finalize().into_bytes()))
}

/// Checks an `X-Hub-Signature-256` header value against the raw body.
pub fn verify_hub_signature(key: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig) else {
        return false;
    };
    let mut m = mac(key);
    m.update(body);
    m.verify_slice(&sig).is_ok()
}

/// A CRM webhook secret: `whsec_<base64 of the signing key>`.
#[derive(Clone)]
pub struct WebhookSecret {
    full: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum InvalidSecret {
    #[error("webhook_secret must start with \"whsec_\"")]
    MissingPrefix,
    #[error("webhook_secret must be whsec_ followed by standard base64")]
    NotBase64,
    #[error("webhook_secret must encode between 24 and 64 bytes")]
    BadLength,
}

impl WebhookSecret {
    /// What [`Self::parse`] accepts, as a regular expression for the OpenAPI
    /// document: `whsec_` and canonical, padded standard base64 of 24 to 64
    /// bytes (8 to 21 groups of four characters, then an optional padded
    /// tail whose last character leaves no stray bits).
    pub const PATTERN: &'static str = concat!(
        "^whsec_(?:",
        "(?:[A-Za-z0-9+/]{4}){8,20}(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?",
        "|(?:[A-Za-z0-9+/]{4}){21}(?:[A-Za-z0-9+/][AQgw]==)?",
        ")$"
    );

    /// A fresh secret from 32 random bytes of the OS generator.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        getrandom(&mut key);
        Self {
            full: format!("{WHSEC_PREFIX}{}", B64.encode(key)),
            key: key.to_vec(),
        }
    }

    pub fn parse(s: &str) -> Result<Self, InvalidSecret> {
        let encoded = s
            .strip_prefix(WHSEC_PREFIX)
            .ok_or(InvalidSecret::MissingPrefix)?;
        let key = B64.decode(encoded).map_err(|_| InvalidSecret::NotBase64)?;
        if !(24..=64).contains(&key.len()) {
            return Err(InvalidSecret::BadLength);
        }
        Ok(Self {
            full: s.to_owned(),
            key,
        })
    }

    /// The whole `whsec_…` string, to show the user once or to store.
    pub fn expose(&self) -> &str {
        &self.full
    }

    /// `X-Hub-Signature-256` value: the key is the whole secret string as UTF-8.
    pub fn hub_signature(&self, body: &[u8]) -> String {
        hub_signature(self.full.as_bytes(), body)
    }

    /// `webhook-signature` value: `v1,<base64 HMAC over "<id>.<timestamp>.<body>">`,
    /// keyed with the decoded bytes after `whsec_`.
    pub fn standard_signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        format!(
            "v1,{}",
            B64.encode(
                self.standard_mac(id, timestamp, body)
                    .finalize()
                    .into_bytes()
            )
        )
    }

    /// The Standard Webhooks MAC over `"<id>.<timestamp>.<body>"`.
    fn standard_mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut m = mac(&self.key);
        m.update(id.as_bytes());
        m.update(b".");
        m.update(timestamp.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        m
    }

    /// Checks a `webhook-signature` header, which may list several
    /// space-separated signatures (during secret rotation).
    pub fn verify_standard(&self, id: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
        header.split(' ').any(|candidate| {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                return false;
            };
            let Ok(sig) = B64.decode(encoded) else {
                return false;
            };
            self.standard_mac(id, timestamp, body)
                .verify_slice(&sig)
                .is_ok()
        })
    }
}

/// The secrets an account's deliveries are signed with: its current one
/// and, while a rotation's grace period lasts, the one before it.
///
/// During the grace period `webhook-signature` lists both signatures
/// (current first, space-separated, as Standard Webhooks allows), so a CRM
/// that checks either secret accepts the delivery; `X-Hub-Signature-256`,
/// which has room for one, keeps the previous secret until the period ends,
/// so a CRM that has not switched yet keeps verifying.
#[derive(Clone, Debug)]
pub struct SigningKeys {
    pub current: WebhookSecret,
    /// The secret before the last rotation, and until when it still signs.
    pub previous: Option<(WebhookSecret, chrono::DateTime<chrono::Utc>)>,
}

impl SigningKeys {
    fn previous_at(&self, now: chrono::DateTime<chrono::Utc>) -> Option<&WebhookSecret> {
        self.previous
            .as_ref()
            .filter(|(_, until)| now < *until)
            .map(|(secret, _)| secret)
    }

    /// `X-Hub-Signature-256` at `now`.
    pub fn hub_signature(&self, body: &[u8], now: chrono::DateTime<chrono::Utc>) -> String {
        self.previous_at(now)
            .unwrap_or(&self.current)
            .hub_signature(body)
    }

    /// `webhook-signature` at `now`: one signature, or two during a grace period.
    pub fn standard_signature(
        &self,
        id: &str,
        timestamp: i64,
        body: &[u8],
        now: chrono::DateTime<chrono::Utc>,
    ) -> String {
        let current = self.current.standard_signature(id, timestamp, body);
        match self.previous_at(now) {
            Some(previous) => format!(
                "{current} {}",
                previous.standard_signature(id, timestamp, body)
            ),
            None => current,
        }
    }
}

fn getrandom(buf: &mut [u8]) {
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(buf)
        .expect("the operating system's random generator is available");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn during_a_grace_period_both_secrets_sign() {
        let (old, new) = (WebhookSecret::generate(), WebhookSecret::generate());
        let now = chrono::Utc::now();
        let keys = SigningKeys {
            current: new.clone(),
            previous: Some((old.clone(), now + chrono::TimeDelta::hours(1))),
        };
        let header = keys.standard_signature("msg_1", 1700000000, b"{}", now);
        assert_eq!(header.split(' ').count(), 2);
        for secret in [&old, &new] {
            assert!(secret.verify_standard("msg_1", 1700000000, b"{}", &header));
        }
        let hub = keys.hub_signature(b"{}", now);
        assert!(verify_hub_signature(old.expose().as_bytes(), b"{}", &hub));

        let after = now + chrono::TimeDelta::hours(2);
        let header = keys.standard_signature("msg_1", 1700000000, b"{}", after);
        assert!(new.verify_standard("msg_1", 1700000000, b"{}", &header));
        assert!(!old.verify_standard("msg_1", 1700000000, b"{}", &header));
        let hub = keys.hub_signature(b"{}", after);
        assert!(verify_hub_signature(new.expose().as_bytes(), b"{}", &hub));
    }

    #[test]
    fn hub_signature_matches_a_known_vector() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog")
        let sig = hub_signature(b"key", b"The quick brown fox jumps over the lazy dog");
        assert_eq!(
            sig,
            "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
        );
        assert!(verify_hub_signature(
            b"key",
            b"The quick brown fox jumps over the lazy dog",
            &sig
        ));
        assert!(!verify_hub_signature(b"key", b"the quick brown fox", &sig));
        assert!(!verify_hub_signature(
            b"other",
            b"The quick brown fox jumps over the lazy dog",
            &sig
        ));
        assert!(!verify_hub_signature(b"key", b"x", "sha1=abcd"));
        assert!(!verify_hub_signature(b"key", b"x", "sha256=zz"));
    }

    #[test]
    fn standard_webhooks_reference_vector() {
        // The example from the Standard Webhooks specification.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = secret.standard_signature(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(secret.verify_standard(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
            &format!("v1,bm90LXRoaXM= {sig}")
        ));
        assert!(!secret.verify_standard("msg_other", 1614265330, br#"{"test": 2432232314}"#, &sig));
    }

    #[test]
    fn generated_secrets_have_the_documented_form() {
        let s = WebhookSecret::generate();
        assert!(s.expose().starts_with("whsec_"));
        assert_eq!(B64.decode(&s.expose()[6..]).unwrap().len(), 32);
        assert_ne!(s.expose(), WebhookSecret::generate().expose());
        assert!(!format!("{s:?}").contains(&s.expose()[6..]));
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert_eq!(
            WebhookSecret::parse("abc").unwrap_err(),
            InvalidSecret::MissingPrefix
        );
        assert_eq!(
            WebhookSecret::parse("whsec_***").unwrap_err(),
            InvalidSecret::NotBase64
        );
        assert_eq!(
            WebhookSecret::parse("whsec_YWJj").unwrap_err(),
            InvalidSecret::BadLength
        );
    }
}
