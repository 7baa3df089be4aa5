//! Bodies that cross a process boundary: the CRM webhook payload (which is
//! also the body of `<prefix>.inbound.<account_id>`), the account routing kept
//! in the key-value bucket, and the delivery outcome events.
//!
//! These are plain serde types on purpose: they are wire contracts, not
//! database rows and not API objects. Fields may be added, never renamed.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{AccountStatus, CrmWebhookUrl, EventKind};
use crate::subjects::Outcome;

/// What the CRM receives for each Instagram event: the base fields always,
/// and the event's own fields (`reply_to`, `reaction`, ...) when it has them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundMessageWebhook {
    pub event: EventKind,
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
    /// This event's place in its conversation: 1, 2, 3, ... in the order
    /// ingest saved the conversation's events. Deliveries of a conversation
    /// arrive in this order; a CRM can also order by it and notice a gap (an
    /// earlier event still being retried, or dead-lettered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// Every attachment of the message, in Meta's order.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// The message or story this message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
    /// The quick reply the customer tapped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quick_reply: Option<QuickReply>,
    /// For `message.reaction`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<Reaction>,
    /// For `message.postback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postback: Option<Postback>,
    /// For `message.referral` (and messages that carry one): Meta's referral object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referral: Option<serde_json::Value>,
    /// For `message.edited`: how many times the customer has edited the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit_count: Option<u32>,
    /// Until when the business may answer this conversation with a standard
    /// message: 24 h after the customer's last message. Absent when the
    /// customer has not written (as far as the router has seen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_window_ends_at: Option<String>,
    /// Until when a human agent may answer with the `HUMAN_AGENT` tag: 7 days
    /// after the customer's last message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub human_agent_window_ends_at: Option<String>,
    /// For `comment.*`: the comment and the media it is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<Comment>,
}

/// A comment on Instagram media (`instagram_message_id` is its id).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Comment {
    /// The post, reel, ad or live video commented on.
    pub media_id: Option<String>,
    /// `FEED`, `REELS`, `AD`, ... as Meta says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_product_type: Option<String>,
    /// For a reply to a comment: the comment answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// `comments` or `live_comments` (a live video's).
    pub source: String,
}

/// How long after a customer's last message the business may answer with
/// a standard message, and a human agent with the `HUMAN_AGENT` tag.
pub const REPLY_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);
pub const HUMAN_AGENT_WINDOW: chrono::TimeDelta = chrono::TimeDelta::days(7);

impl InboundMessageWebhook {
    /// Sets the reply windows from the customer's last message in the
    /// conversation, if there is one.
    pub fn set_reply_windows(&mut self, customer_wrote_at: Option<DateTime<Utc>>) {
        self.reply_window_ends_at = customer_wrote_at.map(|t| rfc3339(t + REPLY_WINDOW));
        self.human_agent_window_ends_at =
            customer_wrote_at.map(|t| rfc3339(t + HUMAN_AGENT_WINDOW));
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplyTo {
    /// The `mid` of the message answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mid: Option<String>,
    /// The story answered (`message_type` is then `story_reply`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub story: Option<StoryRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoryRef {
    pub id: Option<String>,
    pub url: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuickReply {
    pub payload: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reaction {
    /// `react` or `unreact`.
    pub action: String,
    /// Meta's name of the reaction (`love`, ...), when reacting.
    pub reaction: Option<String>,
    pub emoji: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Postback {
    pub title: Option<String>,
    pub payload: Option<String>,
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

/// The names of an account's sealed fields, which bind each sealed value to
/// its field (with its account: [`crate::secrets::context`]).
pub mod fields {
    pub const WEBHOOK_SECRET: &str = "webhook_secret";
    pub const PREVIOUS_WEBHOOK_SECRET: &str = "previous_webhook_secret";
    pub const INSTAGRAM_ACCESS_TOKEN: &str = "instagram_access_token";
}

/// The routing a forwarder needs for one account, kept by ingest in the
/// accounts key-value bucket under the account id.
#[derive(Clone, Serialize, Deserialize)]
pub struct AccountRouting {
    pub account_id: String,
    pub crm_webhook_url: CrmWebhookUrl,
    /// The account's `whsec_…` secret. Never logged: see the Debug impl.
    pub webhook_secret: String,
    /// The secret before the last rotation (sealed like the current one),
    /// while its grace period lasts: deliveries are signed with both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_webhook_secret: Option<String>,
    /// When the previous secret stops signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub status: AccountStatus,
    /// Deliveries in flight at once for this account; `None` for the
    /// forwarder's default (`FORWARDER_ACCOUNT_IN_FLIGHT`).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// An operator paused the account's deliveries through the API.
    #[serde(default)]
    pub deliveries_paused: bool,
    /// When an operator last resumed them: this also ends a pause of the
    /// circuit breaker that began earlier.
    #[serde(default)]
    pub deliveries_resumed_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for AccountRouting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountRouting")
            .field("account_id", &self.account_id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// How an account's CRM is doing, as its circuit breaker sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// The last attempt reached the CRM.
    Healthy,
    /// Attempts failed in a row, fewer than the breaker's threshold.
    Degraded,
    /// The breaker opened: deliveries wait in order, one probe at a time.
    Paused,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Paused => "paused",
        }
    }
}

/// An account's entry in the delivery-health bucket, written by the
/// forwarder serving the account whenever an attempt fails or the state
/// changes; ingest shows it in the account API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryHealth {
    pub state: HealthState,
    /// When the account entered this state.
    pub since: DateTime<Utc>,
    /// Failed attempts in a row (timeouts, connection errors, 408, 5xx).
    pub consecutive_failures: u32,
    /// The last failure's short reason (`http_503`, `timeout`, ...).
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    /// While paused: when the next probe delivery is tried.
    pub next_probe_at: Option<DateTime<Utc>>,
    /// While paused: probes that failed so far (the interval doubles with each).
    #[serde(default)]
    pub failed_probes: u32,
    /// When the last pause ended. A message's 24 h retry limit counts from
    /// here when it is later than the message, so time paused never
    /// dead-letters a message.
    pub resumed_at: Option<DateTime<Utc>>,
}

impl DeliveryHealth {
    pub fn healthy(now: DateTime<Utc>) -> Self {
        Self {
            state: HealthState::Healthy,
            since: now,
            consecutive_failures: 0,
            last_error: None,
            last_error_at: None,
            next_probe_at: None,
            failed_probes: 0,
            resumed_at: None,
        }
    }
}

/// A conversation held behind one of its messages that waits on the server
/// for a retry: no later message of the conversation is delivered before
/// it. Kept in the holds bucket under `<account_id>.<conversation key>`
/// while the message is failing, removed once it is delivered or dead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationHold {
    pub message_id: String,
    /// The held message's sequence in the inbound stream.
    pub stream_sequence: u64,
    /// Its failed attempts, probes not counted: its place in the retry schedule.
    pub failures: u32,
    /// When it is due again.
    pub retry_at: DateTime<Utc>,
    pub first_failed_at: DateTime<Utc>,
}

/// The timestamp form operators read on NATS, as in the API: RFC 3339 UTC
/// with `Z`, to the millisecond. Reading takes any RFC 3339 time.
pub mod millis {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        DateTime::<Utc>::deserialize(d)
    }

    /// The same for an optional time.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            t: &Option<DateTime<Utc>>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match t {
                Some(t) => super::serialize(t, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Option::<DateTime<Utc>>::deserialize(d)
        }
    }
}

/// Published on `<prefix>.alerts.crm.<account_id>` when an account's
/// deliveries pause or resume, for alerting from NATS.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrmAlert {
    /// `deliveries_paused` or `deliveries_resumed`.
    pub event: String,
    pub account_id: String,
    #[serde(with = "millis")]
    pub at: DateTime<Utc>,
    /// Why: `circuit_breaker` or `operator` (paused); `probe_succeeded`,
    /// `delivery_succeeded` or `operator` (resumed).
    pub cause: String,
    /// Paused by the breaker: the failures in a row and the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "millis::option"
    )]
    pub next_probe_at: Option<DateTime<Utc>>,
    /// Resumed: when the pause began.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "millis::option"
    )]
    pub paused_since: Option<DateTime<Utc>>,
}

pub const ALERT_DELIVERIES_PAUSED: &str = "deliveries_paused";
pub const ALERT_DELIVERIES_RESUMED: &str = "deliveries_resumed";

/// Published on `<prefix>.alerts.credentials.<account_id>` when an account's
/// Instagram access token is refreshed, cannot be refreshed, or becomes
/// invalid. Never carries the token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CredentialsAlert {
    /// `token_refreshed`, `token_expiring` or `token_invalid`.
    pub event: String,
    pub account_id: String,
    #[serde(with = "millis")]
    pub at: DateTime<Utc>,
    /// The account's `credentials.state` now.
    pub state: crate::model::CredentialsState,
    /// When the token expires, when known.
    #[serde(default, with = "millis::option")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Why, for `token_expiring` and `token_invalid`: `meta_190` (Meta
    /// refused the token), `expired`, `meta_<code>`, `timeout`, `unreachable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub const ALERT_TOKEN_REFRESHED: &str = "token_refreshed";
pub const ALERT_TOKEN_EXPIRING: &str = "token_expiring";
pub const ALERT_TOKEN_INVALID: &str = "token_invalid";

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
    /// JetStream's delivery count for this publication of the message: 1 for
    /// the first attempt, higher for each later one (and for each time it
    /// waited behind an earlier message of its conversation), so it orders
    /// and identifies the attempts of a publication.
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
    fn alerts_write_their_times_in_utc_with_z_to_the_millisecond() {
        let at: DateTime<Utc> = "2026-11-30T10:30:00.123456789Z".parse().unwrap();
        let alert = CredentialsAlert {
            event: ALERT_TOKEN_REFRESHED.into(),
            account_id: "acc_1".into(),
            at,
            state: crate::model::CredentialsState::Valid,
            expires_at: Some(at),
            error: None,
        };
        let json = serde_json::to_value(&alert).unwrap();
        assert_eq!(json["at"], "2026-11-30T10:30:00.123Z");
        assert_eq!(json["expires_at"], "2026-11-30T10:30:00.123Z");
        let back: CredentialsAlert = serde_json::from_value(json).unwrap();
        assert_eq!(back.at.timestamp_millis(), at.timestamp_millis());
    }

    #[test]
    fn payload_serializes_with_the_documented_field_names() {
        let w = InboundMessageWebhook {
            event: EventKind::MessageReceived,
            message_id: "msg_1".into(),
            account_id: "acc_1".into(),
            sender_id: "123".into(),
            sender_username: None,
            message: Some("hi".into()),
            message_type: "text".into(),
            timestamp: "2025-11-08T10:30:00Z".into(),
            instagram_message_id: "mid_1".into(),
            conversation_id: conversation_id("123", "456"),
            sequence: Some(1),
            attachments: vec![],
            reply_to: None,
            quick_reply: None,
            reaction: None,
            postback: None,
            referral: None,
            edit_count: None,
            reply_window_ends_at: None,
            human_agent_window_ends_at: None,
            comment: None,
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
            "sequence",
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
            crm_webhook_url: CrmWebhookUrl::parse("https://crm.example/hook").unwrap(),
            webhook_secret: "whsec_c2VjcmV0".into(),
            previous_webhook_secret: Some("whsec_b2xkc2VjcmV0".into()),
            previous_secret_until: None,
            status: AccountStatus::Active,
            max_in_flight: None,
            deliveries_paused: false,
            deliveries_resumed_at: None,
        };
        assert!(!format!("{r:?}").contains("whsec_"));
    }
}
