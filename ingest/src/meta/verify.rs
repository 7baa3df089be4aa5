//! Meta's two checks on the webhook endpoint: the subscription handshake
//! (`hub.verify_token`, set in the app dashboard) and the signature of every
//! delivery (`X-Hub-Signature-256`: HMAC-SHA256 of the raw body with the app
//! secret), always over the bytes as received, never re-serialized JSON.

/// The query of `GET /webhooks/instagram`: `hub.mode`, `hub.verify_token`
/// and `hub.challenge`.
pub struct Handshake {
    pub mode: Option<String>,
    pub verify_token: Option<String>,
    pub challenge: Option<String>,
}

impl Handshake {
    /// The challenge to echo back, when the mode is `subscribe` and the
    /// token is ours (compared in constant time).
    pub fn accept(self, verify_token: &str) -> Option<String> {
        use subtle::ConstantTimeEq as _;
        let token_ok = self
            .verify_token
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(verify_token.as_bytes())));
        (token_ok && self.mode.as_deref() == Some("subscribe"))
            .then_some(self.challenge)
            .flatten()
    }
}

/// Whether `signature` (the header's value) signs `body` with the app secret.
pub fn signature_matches(app_secret: &str, body: &[u8], signature: &str) -> bool {
    shared::signing::verify_hub_signature(app_secret.as_bytes(), body, signature)
}
