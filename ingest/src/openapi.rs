//! The OpenAPI document, generated from the handlers' own types, plus the
//! description of the webhook the CRM receives (`message.received`). The
//! committed copy under `openapi/` is checked against this by a test.

use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApiService, Tags, Webhook};

use crate::accounts::AccountsApi;
use crate::dead_letters::DeadLettersApi;
use crate::health::HealthApi;
use crate::messages::MessagesApi;

#[derive(Tags)]
pub enum ApiTags {
    /// Connected Instagram accounts and where their messages go.
    Accounts,
    /// Stored messages and where each stands on its way to the CRM.
    Messages,
    /// Messages the CRM refused or that ran out of retries: list, replay, discard.
    DeadLetters,
    /// Liveness and readiness.
    Health,
}

/// An attachment of a received message.
#[derive(Debug, Object)]
#[oai(rename = "Attachment")]
pub struct AttachmentDoc {
    /// `image`, `video`, `audio`, `file`, `share`, `story_mention`, `reel`, `unsupported`.
    #[oai(rename = "type")]
    pub kind: String,
    /// Meta's CDN URL of the media; it expires after a while.
    pub url: Option<String>,
}

/// The body of every `message.received` delivery to the CRM. The wire type is
/// `shared::wire::InboundMessageWebhook`; a test keeps the two in step.
#[derive(Debug, Object)]
#[oai(rename = "InboundMessageWebhook")]
pub struct InboundMessageWebhookDoc {
    /// `message.received`.
    pub event: String,
    /// Our id of the message, `msg_…`; also the `webhook-id` header. Use it to deduplicate.
    pub message_id: String,
    /// Our id of the account, `acc_…`.
    pub account_id: String,
    /// Instagram-scoped id of the customer who wrote.
    pub sender_id: String,
    /// The customer's username, when known.
    pub sender_username: Option<String>,
    /// The text; `null` when the message has only attachments.
    pub message: Option<String>,
    /// `text`, `image`, `video`, `audio`, `file`, `share`, `story_mention`, `story_reply`, `reel`, `unsupported`; more may be added.
    pub message_type: String,
    /// Meta's event time, RFC 3339 UTC.
    pub timestamp: String,
    /// Meta's `mid`.
    pub instagram_message_id: String,
    /// `conv_<customer id>_<instagram account id>`.
    pub conversation_id: String,
    /// Every attachment, in order; empty for text.
    pub attachments: Vec<AttachmentDoc>,
}

/// Webhooks the forwarder sends to each account's `crm_webhook_url`.
///
/// Verify either signature with the account's `webhook_secret`; answer 2xx
/// to acknowledge. Any other answer, a timeout (10 s) or a redirect counts as
/// a failure.
#[Webhook]
#[allow(dead_code)]
pub trait CrmWebhooks {
    /// A customer sent a direct message
    #[oai(
        name = "message.received",
        method = "post",
        operation_id = "message_received"
    )]
    fn message_received(
        &self,
        /// `sha256=<lowercase hex HMAC-SHA256(key = webhook_secret as UTF-8, raw body)>`
        #[oai(name = "X-Hub-Signature-256")]
        hub_signature: Header<String>,
        /// The message id: the same on every retry or replay, so use it to drop repeats.
        #[oai(name = "webhook-id")]
        webhook_id: Header<String>,
        /// Unix seconds of this attempt; reject old ones to stop replays.
        #[oai(name = "webhook-timestamp")]
        webhook_timestamp: Header<i64>,
        /// `v1,<base64 HMAC-SHA256 over "<webhook-id>.<webhook-timestamp>.<body>">`, keyed with the base64-decoded part of the secret after `whsec_`.
        #[oai(name = "webhook-signature")]
        webhook_signature: Header<String>,
        body: Json<InboundMessageWebhookDoc>,
    );
}

pub type ApiService =
    OpenApiService<(AccountsApi, MessagesApi, DeadLettersApi, HealthApi), &'static dyn CrmWebhooks>;

pub fn service() -> ApiService {
    OpenApiService::new(
        (AccountsApi, MessagesApi, DeadLettersApi, HealthApi),
        "Instagram → CRM message router",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "The ingest API: connect Instagram accounts and route their direct messages to your CRM. \
         Every /api/v1 route needs `Authorization: Bearer <token>`. Errors are JSON `{code, message}`.",
    )
    .webhooks::<&'static dyn CrmWebhooks>()
}

/// The document as committed under `openapi/openapi.json`.
pub fn spec_json() -> String {
    service().spec()
}
