//! Playing Meta: signed webhooks in the documented Instagram payload shape.

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

/// `sha256=<hex HMAC-SHA256>` as Meta sends it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One `messaging[]` event: a customer's text message to the business.
pub fn text_event(
    business_id: &str,
    customer_id: &str,
    mid: &str,
    text: &str,
    millis: i64,
) -> Value {
    json!({
        "sender": { "id": customer_id },
        "recipient": { "id": business_id },
        "timestamp": millis,
        "message": { "mid": mid, "text": text }
    })
}

/// One `entry[]` for the business account with the given events.
pub fn entry(business_id: &str, events: Vec<Value>) -> Value {
    json!({ "id": business_id, "time": 1_731_061_800, "messaging": events })
}

/// One `entry[]` for the business account with field changes (comments,
/// mentions), each `(field, value)`.
pub fn changes_entry(business_id: &str, changes: Vec<(&str, Value)>) -> Value {
    let changes: Vec<Value> = changes
        .into_iter()
        .map(|(field, value)| json!({ "field": field, "value": value }))
        .collect();
    json!({ "id": business_id, "time": 1_762_597_800_000i64, "changes": changes })
}

/// A whole webhook body.
pub fn payload(entries: Vec<Value>) -> Value {
    json!({ "object": "instagram", "entry": entries })
}

/// The common case: one text message in one entry.
pub fn text_message(business_id: &str, customer_id: &str, mid: &str, text: &str) -> Value {
    payload(vec![entry(
        business_id,
        vec![text_event(
            business_id,
            customer_id,
            mid,
            text,
            1_762_597_800_000,
        )],
    )])
}
