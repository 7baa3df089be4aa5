//! The Rust verification example from the README, kept here so that the
//! end-to-end tests run it against real deliveries.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Checks both signatures of a delivery and that it is no older than 5 minutes.
pub fn verify_delivery(
    secret: &str,            // the account's whsec_… secret
    body: &[u8],             // the raw request body, before any JSON parsing
    hub_signature: &str,     // X-Hub-Signature-256
    webhook_id: &str,        // webhook-id
    webhook_timestamp: &str, // webhook-timestamp
    webhook_signature: &str, // webhook-signature
    now_unix: i64,
) -> bool {
    // X-Hub-Signature-256: HMAC-SHA256 of the body, keyed with the whole secret string.
    let hub_ok = hub_signature
        .strip_prefix("sha256=")
        .and_then(|h| hex::decode(h).ok())
        .is_some_and(|sig| {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(body);
            mac.verify_slice(&sig).is_ok() // constant-time comparison
        });

    // Standard Webhooks: HMAC-SHA256 of "<id>.<timestamp>.<body>", keyed with
    // the base64-decoded part after "whsec_".
    let Ok(ts) = webhook_timestamp.parse::<i64>() else {
        return false;
    };
    let fresh = (now_unix - ts).abs() <= 300;
    let key = B64
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap_or_default();
    let standard_ok = webhook_signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| B64.decode(s).ok())
        .any(|sig| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
            mac.update(format!("{webhook_id}.{ts}.").as_bytes());
            mac.update(body);
            mac.verify_slice(&sig).is_ok()
        });

    hub_ok && fresh && standard_ok
}
