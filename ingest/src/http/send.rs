//! `POST /api/v1/accounts/{account_id}/messages`: the CRM answers a customer.
//! The message goes out through Meta's Send API with the account's token,
//! is recorded as outbound, and Meta's errors become codes a CRM can act on.

use super::time::Timestamp;
use crate::http::body::JsonBody;
use poem_openapi::payload::Json;
use poem_openapi::types::{ParseFromJSON as _, ToJSON as _};
use poem_openapi::{ApiResponse, Enum, Object};

use super::accounts::find_account;
use super::auth::ApiToken;
use super::error::ApiError;
use super::idempotency;
use super::rich::{self, OutgoingQuickReply, SenderAction, Template};
use crate::domain::Core;
use crate::domain::send::{
    Content, OutgoingMessage, SendError, Sent, send_action, send_and_record,
};
use crate::meta::graph::GraphError;
use crate::store::AccountRow;

/// Meta's limit on a text message, in UTF-8 bytes.
const MAX_TEXT_BYTES: usize = 1000;
/// Refuses a text Instagram would refuse (400 `text_too_long`): Meta counts
/// UTF-8 bytes, not characters. `field` names it in the message.
pub fn within_text_limit(field: &str, text: &str) -> Result<(), ApiError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(ApiError::bad_request(
            "text_too_long",
            format!(
                "{field} is {} UTF-8 bytes; Instagram allows at most {MAX_TEXT_BYTES}",
                text.len()
            ),
        ));
    }
    Ok(())
}

/// Seconds a rate-limited caller is asked to wait (Meta gives no figure).
const RATE_LIMIT_RETRY_AFTER: u64 = 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum OutgoingAttachmentType {
    Image,
    Video,
    Audio,
    File,
}

impl OutgoingAttachmentType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Video => "video",
            Self::Audio => "audio",
            Self::File => "file",
        }
    }
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct OutgoingAttachment {
    #[oai(rename = "type")]
    pub kind: OutgoingAttachmentType,
    /// A public https URL of the media; Meta fetches it.
    #[oai(validator(max_length = 2048))]
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum MessageTag {
    /// A human agent answers within 7 days of the customer's message.
    #[oai(rename = "HUMAN_AGENT")]
    HumanAgent,
}

/// A reply: exactly one of `text` (with `quick_replies`, optionally),
/// `attachment`, `template` and `sender_action`.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct SendMessage {
    /// The customer's Instagram-scoped id (`sender_id` of what they sent).
    #[oai(validator(pattern = r"^[0-9]{1,32}$"))]
    pub recipient_id: String,
    /// Up to 1000 UTF-8 bytes.
    pub text: Option<String>,
    /// Up to 13 buttons under `text` (which they need).
    #[oai(validator(min_items = 1, max_items = 13))]
    pub quick_replies: Option<Vec<OutgoingQuickReply>>,
    pub attachment: Option<OutgoingAttachment>,
    /// A generic (cards) or button template.
    pub template: Option<Template>,
    /// `typing_on`, `typing_off` or `mark_seen`: shown to the customer,
    /// answered 200, not recorded.
    pub sender_action: Option<SenderAction>,
    /// `HUMAN_AGENT` to answer outside the 24 h window (up to 7 days).
    pub tag: Option<MessageTag>,
}

/// A sender action Meta took.
#[derive(Debug, Object)]
pub struct SentAction {
    pub recipient_id: String,
    pub sender_action: SenderAction,
}

#[derive(Debug, Object)]
pub struct SentMessage {
    /// Our id of the outbound message, `msg_…`.
    pub id: String,
    /// Meta's `message_id` (a `mid`).
    pub instagram_message_id: String,
    pub recipient_id: String,
    pub conversation_id: String,
    pub created_at: Timestamp,
}

impl From<Sent> for SentMessage {
    fn from(s: Sent) -> Self {
        Self {
            id: s.id,
            instagram_message_id: s.instagram_message_id,
            recipient_id: s.recipient_id,
            conversation_id: s.conversation_id,
            created_at: s.created_at.into(),
        }
    }
}

#[derive(ApiResponse)]
pub enum SendResponse {
    /// Sent by Meta and recorded.
    #[oai(status = 201)]
    Sent(Json<SentMessage>),
    /// The sender action was shown (nothing is recorded).
    #[oai(status = 200)]
    Action(Json<SentAction>),
}

pub(crate) fn api_error(e: SendError) -> ApiError {
    match e {
        SendError::Store(e) => ApiError::from(e),
        SendError::Graph(GraphError::Timeout) => ApiError::gateway_timeout(
            "instagram_timeout",
            "Meta's Send API did not answer in time; the message may or may not have been sent",
        ),
        SendError::Graph(GraphError::Transport(why)) => ApiError::bad_gateway(
            "instagram_unavailable",
            format!("Meta's Send API is unreachable: {why}"),
            None,
            None,
        ),
        SendError::Graph(GraphError::Meta {
            code,
            subcode,
            message,
            fbtrace_id,
            ..
        }) => match (code, subcode) {
            (10, Some(2018278)) => ApiError::unprocessable(
                "outside_messaging_window",
                "the customer's last message is older than 24 hours; answer with tag HUMAN_AGENT (up to 7 days) or wait for them to write",
            ),
            (190, _) => ApiError::bad_gateway(
                "instagram_auth_failed",
                "Meta rejected the account's access token; the account is marked credentials_invalid until a new token is set",
                Some(code),
                fbtrace_id,
            ),
            (4 | 17 | 32 | 613 | 80000..=80014, _) => ApiError::rate_limited(
                "instagram_rate_limited",
                "Meta's rate limit for this account or app is reached; retry later",
                RATE_LIMIT_RETRY_AFTER,
            ),
            _ => ApiError::bad_gateway("instagram_error", message, Some(code), fbtrace_id),
        },
    }
}

/// Sends the CRM's reply (`POST /accounts/{account_id}/messages`, served by
/// [`super::messages::MessagesApi`] beside the list on the same path). With
/// an `Idempotency-Key`, a repeat of the same request within 24 h gets the
/// first answer and Meta is not called again ([`super::idempotency`]).
pub async fn send_reply(
    auth: &ApiToken,
    state: &Core,
    account_id: &str,
    idempotency_key: Option<String>,
    body: JsonBody<SendMessage>,
) -> Result<SendResponse, ApiError> {
    // Another account's path is 404 before anything about the body is said.
    auth.reach(account_id)?;
    let request = idempotency::request("send_message", &[], &body.0.to_json());
    let out = outgoing(body.0)?;
    let account = find_account(state, auth, account_id).await?;
    idempotency::once(state, &account, idempotency_key, request, async {
        send_now(state, &account, &out).await
    })
    .await
}

impl idempotency::Kept for SendResponse {
    fn kept(&self) -> Option<(u16, serde_json::Value)> {
        match self {
            Self::Sent(Json(sent)) => Some((201, sent.to_json()?)),
            Self::Action(Json(action)) => Some((200, action.to_json()?)),
        }
    }

    fn from_kept(status: u16, json: serde_json::Value) -> Option<Self> {
        match status {
            201 => SentMessage::parse_from_json(Some(json))
                .ok()
                .map(|sent| Self::Sent(Json(sent))),
            _ => SentAction::parse_from_json(Some(json))
                .ok()
                .map(|action| Self::Action(Json(action))),
        }
    }
}

/// What the request asks for: a message, or a sender action.
enum Outgoing {
    Message(OutgoingMessage),
    Action {
        recipient_id: String,
        action: SenderAction,
    },
}

fn exactly_one() -> ApiError {
    ApiError::bad_request(
        "text_or_attachment_required",
        "send exactly one of text, attachment, template and sender_action",
    )
}

/// The reply as Meta's Send API takes it; 400 for what Instagram would refuse.
fn outgoing(body: SendMessage) -> Result<Outgoing, ApiError> {
    if body.quick_replies.is_some() && body.text.is_none() {
        return Err(ApiError::bad_request(
            "quick_replies_need_text",
            "quick_replies go under a text: send text with them",
        ));
    }
    let content = match (
        body.text,
        body.attachment,
        body.template,
        body.sender_action,
    ) {
        (Some(text), None, None, None) => {
            if text.is_empty() {
                return Err(ApiError::bad_request(
                    "text_empty",
                    "text must not be empty",
                ));
            }
            within_text_limit("text", &text)?;
            Content::Text {
                text,
                quick_replies: body.quick_replies.map(rich::quick_replies),
            }
        }
        (None, Some(a), None, None) => {
            let url = rich::http_url(&a.url).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_attachment_url",
                    "attachment.url must be an http(s) URL",
                )
            })?;
            Content::Media {
                kind: a.kind.as_str(),
                url,
            }
        }
        (None, None, Some(template), None) => {
            let (kind, payload, text) = rich::template(template)?;
            Content::Template {
                kind,
                payload,
                text,
            }
        }
        (None, None, None, Some(action)) => {
            if body.tag.is_some() {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    "a sender_action takes no tag",
                ));
            }
            return Ok(Outgoing::Action {
                recipient_id: body.recipient_id,
                action,
            });
        }
        _ => return Err(exactly_one()),
    };
    Ok(Outgoing::Message(OutgoingMessage {
        recipient_id: body.recipient_id,
        content,
        human_agent: body.tag == Some(MessageTag::HumanAgent),
        comment_id: None,
    }))
}

/// The account's Instagram access token; 422 `instagram_token_missing`
/// without one.
pub(crate) fn access_token(account: &AccountRow) -> Result<String, ApiError> {
    account
        .instagram_access_token
        .clone()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unprocessable(
                "instagram_token_missing",
                "the account has no instagram_access_token; set one with PATCH",
            )
        })
}

/// Sends through Meta with the account's token and records the reply.
async fn send_now(
    state: &Core,
    account: &AccountRow,
    out: &Outgoing,
) -> Result<SendResponse, ApiError> {
    let token = access_token(account)?;
    match out {
        Outgoing::Message(out) => {
            let sent = send_and_record(state, account, &token, out)
                .await
                .map_err(api_error)?;
            tracing::info!(account_id = %account.id, message_id = %sent.id, "reply sent");
            Ok(SendResponse::Sent(Json(sent.into())))
        }
        Outgoing::Action {
            recipient_id,
            action,
        } => {
            send_action(state, account, &token, recipient_id, action.as_str())
                .await
                .map_err(api_error)?;
            Ok(SendResponse::Action(Json(SentAction {
                recipient_id: recipient_id.clone(),
                sender_action: *action,
            })))
        }
    }
}
