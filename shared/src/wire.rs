//! Bodies that cross a process boundary: the CRM webhook payload (which is
//! also the body of `<prefix>.inbound.<account_id>`), the account routing kept
//! in the key-value bucket, and the delivery outcome events.
//!
//! These are plain serde types on purpose: they are wire contracts, not
//! database rows and not API objects. Fields may be added, never renamed.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::subjects::Outcome;

/// The `event` of a received direct message.
pub const EVENT_MESSAGE_RECEIVED: &str = "message.received";

/// What the CRM receives for each inbound Instagram message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundMessageWebhook {
    pub event: String,
    pub message_id: String,
    pub account_id: String,
    pub sender_id: String,
    pub sender_username: Option<String>,
    /// The text of the message; `null` when it carries only attachments.
    pub message: Option<String>,
    pub message_type: String,
    /// Meta's event time, RFC 3339 UTC.
    pub timestamp: String,
    pub instagram_message_id: String,
    pub conversation_id: String,
    /// Every attachment of the message, in Meta's order.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: Option<String>,
}

/// `conv_<customer id>_<instagram account id>`.
pub fn conversation_id(customer_id: &str, instagram_account_id: &str) -> String {
    format!("conv_{customer_id}_{instagram_account_id}")
}

/// RFC 3339 UTC with second precision, the form the CRM payload uses.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The routing a forwarder needs for one account, kept by ingest in the
/// accounts key-value bucket under the account id.
#[derive(Clone, Serialize, Deserialize)]
pub struct AccountRouting {
    pub account_id: String,
    pub crm_webhook_url: String,
    /// The account's `whsec_…` secret. Never logged: see the Debug impl.
    pub webhook_secret: String,
    pub status: String,
}

impl std::fmt::Debug for AccountRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountRouting")
            .field("account_id", &self.account_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Published by the forwarder on `<prefix>.delivery.<outcome>.<account_id>`
/// after every attempt. Carries no message content and no CRM response body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryOutcome {
    pub message_id: String,
    pub account_id: String,
    pub outcome: Outcome,
    /// The inbound message's sequence in the inbound stream: a replay is a
    /// new sequence, so (sequence, attempt) orders and identifies attempts.
    pub inbound_sequence: u64,
    /// 1 for the first attempt of this publication of the message.
    pub attempt: u32,
    /// The CRM's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// A short, content-free reason: `http_500`, `timeout`, `connect`, ...
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_serializes_with_the_documented_field_names() {
        let w = InboundMessageWebhook {
            event: EVENT_MESSAGE_RECEIVED.into(),
            message_id: "msg_1".into(),
            account_id: "acc_1".into(),
            sender_id: "123".into(),
            sender_username: None,
            message: Some("hi".into()),
            message_type: "text".into(),
            timestamp: "2025-11-08T10:30:00Z".into(),
            instagram_message_id: "mid_1".into(),
            conversation_id: conversation_id("123", "456"),
            attachments: vec![],
        };
        let v = serde_json::to_value(&w).unwrap();
        for key in [
            "event",
            "message_id",
            "account_id",
            "sender_id",
            "sender_username",
            "message",
            "message_type",
            "timestamp",
            "instagram_message_id",
            "conversation_id",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert!(v["sender_username"].is_null());
        assert_eq!(v["conversation_id"], "conv_123_456");
    }

    #[test]
    fn routing_debug_hides_the_secret() {
        let r = AccountRouting {
            account_id: "acc_1".into(),
            crm_webhook_url: "https://crm.example/hook".into(),
            webhook_secret: "whsec_c2VjcmV0".into(),
            status: "active".into(),
        };
        assert!(!format!("{r:?}").contains("whsec_"));
    }
}
