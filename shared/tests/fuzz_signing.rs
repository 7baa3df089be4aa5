//! Fuzzing the signatures the forwarder puts on every delivery (what a CRM
//! checks) with proptest: the right one verifies, anything else does not,
//! and several space-separated signatures (a rotation) verify if one does.
//! For a longer run: `PROPTEST_CASES=200000 cargo test --release -p
//! router-shared --test fuzz_signing`.

use proptest::prelude::*;
use shared::signing::{WebhookSecret, verify_hub_signature};

proptest! {
    #[test]
    fn standard_signatures_verify_exactly(
        id in "msg_[a-z0-9]{1,26}",
        timestamp in 0i64..4_000_000_000,
        body in prop::collection::vec(any::<u8>(), 0..256),
        noise in any::<String>(),
    ) {
        let secret = WebhookSecret::generate();
        let other = WebhookSecret::generate();
        let right = secret.standard_signature(&id, timestamp, &body);
        prop_assert!(secret.verify_standard(&id, timestamp, &body, &right));
        prop_assert!(!other.verify_standard(&id, timestamp, &body, &right));
        prop_assert!(!secret.verify_standard(&id, timestamp + 1, &body, &right));
        let other_id = format!("{id}x");
        prop_assert!(!secret.verify_standard(&other_id, timestamp, &body, &right));
        let mut longer = body.clone();
        longer.push(b' ');
        prop_assert!(!secret.verify_standard(&id, timestamp, &longer, &right));
        if noise != right {
            prop_assert!(!secret.verify_standard(&id, timestamp, &body, &noise));
        }
        // During a rotation the header carries both; either key verifies.
        let both = format!("{} {right}", other.standard_signature(&id, timestamp, &body));
        prop_assert!(secret.verify_standard(&id, timestamp, &body, &both));
        prop_assert!(other.verify_standard(&id, timestamp, &body, &both));
    }

    #[test]
    fn hub_signatures_verify_exactly(
        key in prop::collection::vec(any::<u8>(), 1..64),
        body in prop::collection::vec(any::<u8>(), 0..256),
        noise in any::<String>(),
    ) {
        let secret = WebhookSecret::generate();
        let right = secret.hub_signature(&body);
        prop_assert!(right.starts_with("sha256="));
        let raw = shared::signing::hub_signature(&key, &body);
        prop_assert!(verify_hub_signature(&key, &body, &raw));
        if noise != raw {
            prop_assert!(!verify_hub_signature(&key, &body, &noise));
        }
        prop_assert!(!verify_hub_signature(&key, &[body.as_slice(), b"x"].concat(), &raw));
    }
}
