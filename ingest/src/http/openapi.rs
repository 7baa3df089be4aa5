//! The OpenAPI document, generated from the handlers' own types, plus the
//! description of the webhook the CRM receives (`message.received`). The
//! committed copy under `openapi/` is checked against this by a test.

use poem_openapi::param::Header;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApiService, Webhook};

mod rules;

pub use rules::Limits;

use super::accounts::AccountsApi;
use super::accounts::deliveries::DeliveriesApi;
use super::comments::CommentsApi;
use super::dead_letters::DeadLettersApi;
use super::health::HealthApi;
use super::messages::MessagesApi;
use super::profile::ProfileApi;
use super::refused_events::RefusedEventsApi;
use super::tokens::TokensApi;
use super::webhooks::MetaWebhooksApi;

/// An attachment of a received message.
#[derive(Debug, Object)]
#[oai(rename = "Attachment")]
pub struct AttachmentDoc {
    /// `image`, `video`, `audio`, `file`, `share`, `story_mention`, `reel`, `unsupported`.
    #[oai(rename = "type")]
    pub kind: String,
    /// Meta's CDN URL of the media; it expires after a while.
    #[oai(nullable)]
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
    #[oai(nullable)]
    pub sender_username: Option<String>,
    /// The text; `null` when the message has only attachments.
    #[oai(nullable)]
    pub message: Option<String>,
    /// `text`, `image`, `video`, `audio`, `file`, `share`, `story_mention`, `story_reply`, `reel`, `unsupported`; more may be added.
    pub message_type: String,
    /// Meta's event time, RFC 3339 UTC.
    pub timestamp: String,
    /// Meta's `mid`.
    pub instagram_message_id: String,
    /// `conv_<customer id>_<instagram account id>`.
    pub conversation_id: String,
    /// This event's place in its conversation: 1, 2, 3, ... in the order ingest
    /// saved them. Deliveries of one conversation arrive in this order; a gap
    /// means an earlier event is still being retried or was dead-lettered.
    pub sequence: u64,
    /// Every attachment, in order; empty for text.
    pub attachments: Vec<AttachmentDoc>,
    /// The message or story this message answers.
    #[oai(skip_serializing_if_is_none)]
    pub reply_to: Option<ReplyToDoc>,
    /// The quick reply the customer tapped.
    #[oai(skip_serializing_if_is_none)]
    pub quick_reply: Option<QuickReplyDoc>,
    /// `message.reaction`: what the customer did.
    #[oai(skip_serializing_if_is_none)]
    pub reaction: Option<ReactionDoc>,
    /// `message.postback`: the button tapped.
    #[oai(skip_serializing_if_is_none)]
    pub postback: Option<PostbackDoc>,
    /// `message.referral` (or a message opened from one): Meta's referral object as sent (`ref`, `source`, `type`, ...).
    #[oai(skip_serializing_if_is_none)]
    pub referral: Option<serde_json::Value>,
    /// `message.edited`: how many times the customer has edited the message
    /// (`message` is the new text).
    #[oai(skip_serializing_if_is_none)]
    pub edit_count: Option<u32>,
    /// Until when the business may still answer with a standard message: 24 h
    /// after the customer's last message in this conversation (RFC 3339 UTC), as
    /// of when ingest saved this event. Absent while the customer has not written.
    #[oai(skip_serializing_if_is_none)]
    pub reply_window_ends_at: Option<String>,
    /// Until when a human agent may answer with the `HUMAN_AGENT` tag: 7 days
    /// after the customer's last message.
    #[oai(skip_serializing_if_is_none)]
    pub human_agent_window_ends_at: Option<String>,
    /// `comment.created`, `comment.mentioned`: the comment and its media
    /// (`instagram_message_id` is the comment's id, `message` its text).
    #[oai(skip_serializing_if_is_none)]
    pub comment: Option<CommentDoc>,
}

#[derive(Debug, Object)]
#[oai(rename = "Comment")]
pub struct CommentDoc {
    /// The post, reel, ad or live video commented on.
    #[oai(nullable)]
    pub media_id: Option<String>,
    /// `FEED`, `REELS`, `AD`, ... as Meta says.
    #[oai(skip_serializing_if_is_none)]
    pub media_product_type: Option<String>,
    /// For a reply to a comment: the comment answered.
    #[oai(skip_serializing_if_is_none)]
    pub parent_id: Option<String>,
    /// `comments`, `live_comments` (a live video's) or `mentions`.
    pub source: String,
}

#[derive(Debug, Object)]
#[oai(rename = "ReplyTo")]
pub struct ReplyToDoc {
    /// The `mid` of the message answered.
    #[oai(nullable)]
    pub mid: Option<String>,
    /// The story answered (`message_type` is `story_reply`).
    #[oai(nullable)]
    pub story: Option<StoryRefDoc>,
}

#[derive(Debug, Object)]
#[oai(rename = "StoryRef")]
pub struct StoryRefDoc {
    #[oai(nullable)]
    pub id: Option<String>,
    /// The story's CDN URL; it expires.
    #[oai(nullable)]
    pub url: Option<String>,
}

#[derive(Debug, Object)]
#[oai(rename = "QuickReply")]
pub struct QuickReplyDoc {
    pub payload: String,
}

#[derive(Debug, Object)]
#[oai(rename = "Reaction")]
pub struct ReactionDoc {
    /// `react` or `unreact`.
    pub action: String,
    /// Meta's reaction name, e.g. `love`.
    #[oai(nullable)]
    pub reaction: Option<String>,
    #[oai(nullable)]
    pub emoji: Option<String>,
}

#[derive(Debug, Object)]
#[oai(rename = "Postback")]
pub struct PostbackDoc {
    #[oai(nullable)]
    pub title: Option<String>,
    #[oai(nullable)]
    pub payload: Option<String>,
}

/// One CRM webhook per event. poem-openapi keeps one operation per HTTP
/// method in a webhook trait, so each event has a trait of its own and
/// [`CrmWebhooks`] lists them all.
macro_rules! crm_webhook {
    ($trait_name:ident, $name:literal, $op:ident, $doc:literal) => {
        #[Webhook]
        #[allow(dead_code)]
        pub trait $trait_name {
            #[doc = $doc]
            ///
            /// Headers: `X-Hub-Signature-256` is `sha256=<lowercase hex HMAC-SHA256(key = webhook_secret
            /// as UTF-8, raw body)>`; `webhook-id` is the `message_id`, the same on every retry or
            /// replay (use it to drop repeats); `webhook-timestamp` is the attempt's Unix seconds;
            /// `webhook-signature` is `v1,<base64 HMAC-SHA256 over "<webhook-id>.<webhook-timestamp>.<body>">`
            /// keyed with the base64-decoded part of the secret after `whsec_`. Answer 2xx to
            /// acknowledge; any other answer, a timeout (10 s) or a redirect is a failure.
            #[oai(name = $name, method = "post", operation_id = $name)]
            fn $op(
                &self,
                #[oai(name = "X-Hub-Signature-256")] hub_signature: Header<String>,
                #[oai(name = "webhook-id")] webhook_id: Header<String>,
                #[oai(name = "webhook-timestamp")] webhook_timestamp: Header<i64>,
                #[oai(name = "webhook-signature")] webhook_signature: Header<String>,
                body: Json<InboundMessageWebhookDoc>,
            );
        }
    };
}

crm_webhook!(
    ReceivedWebhook,
    "message.received",
    message_received,
    "A customer sent a direct message (text, attachments, story mention or reply, share, reel, quick reply)"
);
crm_webhook!(
    EchoWebhook,
    "message.echo",
    message_echo,
    "The business sent a message from the Instagram app (not through this API)"
);
crm_webhook!(
    ReactionWebhook,
    "message.reaction",
    message_reaction,
    "A customer reacted to a message, or removed a reaction (`instagram_message_id` is the message reacted to)"
);
crm_webhook!(
    DeletedWebhook,
    "message.deleted",
    message_deleted,
    "A customer deleted (unsent) a message (`instagram_message_id` is the deleted message)"
);
crm_webhook!(
    EditedWebhook,
    "message.edited",
    message_edited,
    "A customer edited a message (`instagram_message_id` is the edited message, `message` its new text)"
);
crm_webhook!(
    CommentWebhook,
    "comment.created",
    comment_created,
    "Someone commented on the account's post, reel, ad or live video, or answered a comment there (`sender_username` is Meta's)"
);
crm_webhook!(
    MentionWebhook,
    "comment.mentioned",
    comment_mentioned,
    "Someone @mentioned the account in a comment elsewhere (Meta gives only the ids: `instagram_message_id` is the comment's, `comment.media_id` the media's)"
);
crm_webhook!(
    ReadWebhook,
    "message.read",
    message_read,
    "A customer read the conversation up to `instagram_message_id`"
);
crm_webhook!(
    PostbackWebhook,
    "message.postback",
    message_postback,
    "A customer tapped a button (icebreaker, template, persistent menu)"
);
crm_webhook!(
    ReferralWebhook,
    "message.referral",
    message_referral,
    "A customer opened the conversation from a referral (ig.me link, ad)"
);

/// Every webhook the CRM can receive, for the OpenAPI document.
pub struct CrmWebhooks;

impl poem_openapi::Webhook for CrmWebhooks {
    fn meta() -> Vec<poem_openapi::registry::MetaWebhook> {
        let mut all = Vec::new();
        all.extend(<&dyn ReceivedWebhook>::meta());
        all.extend(<&dyn EchoWebhook>::meta());
        all.extend(<&dyn ReactionWebhook>::meta());
        all.extend(<&dyn DeletedWebhook>::meta());
        all.extend(<&dyn EditedWebhook>::meta());
        all.extend(<&dyn CommentWebhook>::meta());
        all.extend(<&dyn MentionWebhook>::meta());
        all.extend(<&dyn ReadWebhook>::meta());
        all.extend(<&dyn PostbackWebhook>::meta());
        all.extend(<&dyn ReferralWebhook>::meta());
        all
    }

    fn register(registry: &mut poem_openapi::registry::Registry) {
        <&dyn ReceivedWebhook>::register(registry);
        <&dyn EchoWebhook>::register(registry);
        <&dyn ReactionWebhook>::register(registry);
        <&dyn DeletedWebhook>::register(registry);
        <&dyn EditedWebhook>::register(registry);
        <&dyn CommentWebhook>::register(registry);
        <&dyn MentionWebhook>::register(registry);
        <&dyn ReadWebhook>::register(registry);
        <&dyn PostbackWebhook>::register(registry);
        <&dyn ReferralWebhook>::register(registry);
    }
}

pub type ApiService = OpenApiService<
    (
        AccountsApi,
        DeliveriesApi,
        TokensApi,
        MessagesApi,
        CommentsApi,
        ProfileApi,
        DeadLettersApi,
        RefusedEventsApi,
        HealthApi,
        MetaWebhooksApi,
    ),
    CrmWebhooks,
>;

pub fn service() -> ApiService {
    OpenApiService::new(
        (
            AccountsApi,
            DeliveriesApi,
            TokensApi,
            MessagesApi,
            CommentsApi,
            ProfileApi,
            DeadLettersApi,
            RefusedEventsApi,
            HealthApi,
            MetaWebhooksApi,
        ),
        "Instagram → CRM message router",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "The ingest API: connect Instagram accounts and route their direct messages to your CRM. \
         Every /api/v1 route needs `Authorization: Bearer <token>`: an operator token \
         (ROUTER_API_TOKENS, every account) or an account token (one account; anything else is 404 to it). Errors are JSON `{code, message}`.",
    )
    .webhooks::<CrmWebhooks>()
}

/// The document served at `/openapi.json`: poem-openapi's, with the rules
/// its types cannot say written in ([`rules`]).
pub fn document(limits: &Limits) -> String {
    with_rules(&service().spec(), limits)
}

/// poem-openapi's document `spec` with the rules written in.
fn with_rules(spec: &str, limits: &Limits) -> String {
    let mut doc: serde_json::Value = serde_json::from_str(spec).expect("poem-openapi writes JSON");
    rules::apply(&mut doc, limits);
    serde_json::to_string_pretty(&doc).expect("a JSON value serializes")
}

/// The document as committed under `openapi/openapi.json`: with the
/// default settings.
pub fn spec_json() -> String {
    document(&Limits {
        account_in_flight_max: shared::config::ACCOUNT_IN_FLIGHT_MAX,
    })
}

/// The Swagger UI page, showing [`document`].
pub fn swagger_ui_html(limits: &Limits) -> String {
    let service = service();
    let spec = service.spec();
    // poem-openapi's page embeds its own document as is: put ours there.
    service
        .swagger_ui_html()
        .replacen(&spec, &with_rules(&spec, limits), 1)
}
