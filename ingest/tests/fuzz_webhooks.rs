//! Fuzzing Meta's side of ingest with proptest: the webhook parser and the
//! `X-Hub-Signature-256` check. Bounded in CI (proptest's 256 cases per
//! property); for a longer run:
//!
//! ```sh
//! PROPTEST_CASES=200000 cargo test --release -p ingest --test fuzz_webhooks
//! ```

use ingest::meta::payload::WebhookPayload;
use ingest::meta::verify::signature_matches;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// The names Meta's payloads use, so generated objects look like payloads
/// often enough to reach the classifier, not only the JSON parser.
const KEYS: &[&str] = &[
    "object",
    "entry",
    "id",
    "time",
    "messaging",
    "standby",
    "changes",
    "field",
    "value",
    "sender",
    "recipient",
    "timestamp",
    "message",
    "mid",
    "text",
    "attachments",
    "type",
    "payload",
    "url",
    "is_echo",
    "is_deleted",
    "is_unsupported",
    "reaction",
    "action",
    "emoji",
    "postback",
    "title",
    "referral",
    "ref",
    "source",
    "read",
    "reply_to",
    "story",
    "quick_reply",
    "message_edit",
    "num_edit",
    "from",
    "username",
    "media",
    "media_id",
    "media_product_type",
    "parent_id",
    "comment_id",
    "message_edit",
    "num_edit",
    "username",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z0-9_]{0,12}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
        Just(Value::String("instagram".into())),
        Just(Value::String("17841400000000001".into())),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

/// A payload with Meta's outer shape and fuzzed events inside.
fn payload() -> impl Strategy<Value = Value> {
    let field = prop::sample::select(vec!["messages", "comments", "live_comments", "mentions"]);
    (
        prop::collection::vec(value(), 0..4),
        prop::collection::vec((field, value()), 0..3),
    )
        .prop_map(|(events, changes)| {
            json!({"object": "instagram", "entry": [{
                "id": "17841400000000001", "time": 1_731_061_800,
                "messaging": events,
                "changes": changes.into_iter().map(|(f, v)| json!({"field": f, "value": v})).collect::<Vec<_>>(),
            }]})
        })
}

/// Parses like ingest does, then classifies every event: whatever the
/// bytes, an answer (an error or events), never a panic.
fn parse_and_classify(bytes: &[u8]) {
    if let Ok(parsed) = serde_json::from_slice::<WebhookPayload>(bytes) {
        for entry in &parsed.entry {
            for c in entry.events().into_iter().flatten() {
                let _ = c.time;
            }
        }
    }
}

proptest! {
    #[test]
    fn any_bytes_are_parsed_or_refused_without_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_and_classify(&bytes);
    }

    #[test]
    fn any_json_is_parsed_or_refused_without_a_panic(v in value()) {
        parse_and_classify(v.to_string().as_bytes());
    }

    #[test]
    fn payload_shaped_json_is_classified_without_a_panic(v in payload()) {
        parse_and_classify(v.to_string().as_bytes());
    }

    #[test]
    fn the_signature_check_accepts_exactly_the_right_signature(
        secret in "[ -~]{1,64}",
        body in prop::collection::vec(any::<u8>(), 0..256),
        flip in any::<prop::sample::Index>(),
        noise in any::<String>(),
    ) {
        let right = shared::signing::hub_signature(secret.as_bytes(), &body);
        prop_assert!(signature_matches(&secret, &body, &right));
        // One changed byte of the body: refused.
        if !body.is_empty() {
            let mut changed = body.clone();
            changed[flip.index(body.len())] ^= 0x01;
            prop_assert!(!signature_matches(&secret, &changed, &right));
        }
        // Any other header value: refused (and no panic on odd input).
        if noise != right {
            prop_assert!(!signature_matches(&secret, &body, &noise));
        }
        let other_secret = format!("{secret}x");
        prop_assert!(!signature_matches(&other_secret, &body, &right));
    }
}
