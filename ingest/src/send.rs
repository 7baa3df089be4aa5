//! `POST /api/v1/accounts/{account_id}/messages`: the CRM answers a customer.
//! The message goes out through Meta's Send API with the account's token,
//! is recorded as outbound, and Meta's errors become codes a CRM can act on.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use serde_json::{Value, json};
use shared::ids::MessageId;
use shared::wire::{self, Attachment};

use crate::accounts::find_account;
use crate::app::AppState;
use crate::auth::ApiToken;
use crate::error::ApiError;
use crate::graph::GraphError;
use crate::openapi::ApiTags;
use crate::store::{AccountRow, NewMessage, StoreError};

/// Meta's limit on a text message, in UTF-8 bytes.
pub const MAX_TEXT_BYTES: usize = 1000;
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

/// A reply: `text` or `attachment`, not both.
#[derive(Debug, Object)]
pub struct SendMessage {
    /// The customer's Instagram-scoped id (`sender_id` of what they sent).
    #[oai(validator(pattern = r"^[0-9]{1,32}$"))]
    pub recipient_id: String,
    /// Up to 1000 UTF-8 bytes.
    pub text: Option<String>,
    pub attachment: Option<OutgoingAttachment>,
    /// `HUMAN_AGENT` to answer outside the 24 h window (up to 7 days).
    pub tag: Option<MessageTag>,
}

#[derive(Debug, Object)]
pub struct SentMessage {
    /// Our id of the outbound message, `msg_…`.
    pub id: String,
    /// Meta's `message_id` (a `mid`).
    pub instagram_message_id: String,
    pub recipient_id: String,
    pub conversation_id: String,
    pub created_at: DateTime<Utc>,
}

#[derive(ApiResponse)]
pub enum SendResponse {
    /// Sent by Meta and recorded.
    #[oai(status = 201)]
    Sent(Json<SentMessage>),
}

/// What to send, in the form Meta's Send API takes.
pub struct OutgoingMessage {
    pub recipient_id: String,
    pub text: Option<String>,
    pub attachment: Option<(&'static str, String)>,
    pub human_agent: bool,
}

impl OutgoingMessage {
    pub fn text(recipient_id: &str, text: &str) -> Self {
        Self {
            recipient_id: recipient_id.to_owned(),
            text: Some(text.to_owned()),
            attachment: None,
            human_agent: false,
        }
    }

    fn graph_body(&self) -> Value {
        let message = match (&self.text, &self.attachment) {
            (Some(text), _) => json!({ "text": text }),
            (None, Some((kind, url))) => {
                json!({ "attachment": { "type": kind, "payload": { "url": url } } })
            }
            (None, None) => json!({}),
        };
        let mut body = json!({ "recipient": { "id": self.recipient_id }, "message": message });
        if self.human_agent {
            body["messaging_type"] = json!("MESSAGE_TAG");
            body["tag"] = json!("HUMAN_AGENT");
        }
        body
    }
}

#[derive(Debug)]
pub enum SendError {
    Graph(GraphError),
    Store(StoreError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Graph(e) => e.fmt(f),
            SendError::Store(e) => e.fmt(f),
        }
    }
}

/// Sends through Meta and records the outbound message (not forwarded to
/// the CRM: it sent it). A token Meta rejects marks the account.
pub async fn send_and_record(
    state: &AppState,
    account: &AccountRow,
    token: &str,
    out: &OutgoingMessage,
) -> Result<SentMessage, SendError> {
    // Recorded first, as pending: Meta's echo of this message can arrive
    // before Meta's answer, and must find it (see `webhooks::save_event`).
    let id = MessageId::generate();
    let now = Utc::now();
    let conversation_id = wire::conversation_id(&out.recipient_id, &account.instagram_account_id);
    let attachments: Vec<Attachment> = out
        .attachment
        .iter()
        .map(|(kind, url)| Attachment {
            kind: (*kind).to_owned(),
            url: Some(url.clone()),
        })
        .collect();
    let record = NewMessage {
        id: id.to_string(),
        account_id: account.id.clone(),
        event: "message.sent",
        event_key: format!("pending:{id}"),
        instagram_message_id: String::new(),
        direction: "outbound",
        conversation_id: conversation_id.clone(),
        sender_id: account.instagram_account_id.clone(),
        recipient_id: out.recipient_id.clone(),
        message_type: out
            .attachment
            .as_ref()
            .map_or("text", |(kind, _)| kind)
            .to_owned(),
        text: out.text.clone(),
        attachments: serde_json::to_string(&attachments).unwrap_or_else(|_| "[]".into()),
        sent_at: now,
        subject: String::new(),
        webhook: None,
        publish: false,
        hold_until: None,
    };
    state
        .store
        .save_message(&record)
        .await
        .map_err(SendError::Store)?;
    let sent = match state
        .graph
        .send_message(&account.instagram_account_id, token, &out.graph_body())
        .await
    {
        Ok(sent) => sent,
        Err(e) => {
            // A timeout may still have sent it; its echo then arrives as an app echo.
            let _ = state.store.abandon_send(&record.id).await;
            if matches!(e, GraphError::Meta { code: 190, .. }) {
                mark_credentials_invalid(state, account).await;
            }
            return Err(SendError::Graph(e));
        }
    };
    if !state
        .store
        .finish_send(&record.id, &sent.message_id)
        .await
        .map_err(SendError::Store)?
    {
        tracing::warn!(account_id = %account.id, "a sent message's echo was recorded before Meta answered");
    }
    Ok(SentMessage {
        id: id.to_string(),
        instagram_message_id: sent.message_id,
        recipient_id: out.recipient_id.clone(),
        conversation_id,
        created_at: now,
    })
}

async fn mark_credentials_invalid(state: &AppState, account: &AccountRow) {
    let mut row = account.clone();
    row.status = "credentials_invalid".into();
    row.updated_at = Utc::now();
    match state.store.update_account(&row).await {
        Ok(_) => {
            tracing::warn!(account_id = %account.id, "meta rejected the access token; account needs new credentials");
            state.routing.account_changed(state, &account.id).await;
        }
        Err(e) => {
            tracing::error!(account_id = %account.id, error = %e, "could not mark the account")
        }
    }
}

fn api_error(e: SendError) -> ApiError {
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

pub struct SendApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Messages")]
impl SendApi {
    /// Send a reply to a customer through Instagram
    #[oai(
        path = "/accounts/:account_id/messages",
        method = "post",
        operation_id = "send_message"
    )]
    async fn send(
        &self,
        _auth: ApiToken,
        Data(state): Data<&Arc<AppState>>,
        account_id: Path<String>,
        body: Json<SendMessage>,
    ) -> Result<SendResponse, ApiError> {
        let body = body.0;
        let out = match (body.text, body.attachment) {
            (Some(text), None) => {
                if text.is_empty() {
                    return Err(ApiError::bad_request(
                        "text_empty",
                        "text must not be empty",
                    ));
                }
                if text.len() > MAX_TEXT_BYTES {
                    return Err(ApiError::bad_request(
                        "text_too_long",
                        format!(
                            "text is {} UTF-8 bytes; Instagram allows at most {MAX_TEXT_BYTES}",
                            text.len()
                        ),
                    ));
                }
                OutgoingMessage {
                    recipient_id: body.recipient_id,
                    text: Some(text),
                    attachment: None,
                    human_agent: false,
                }
            }
            (None, Some(a)) => {
                let url = url::Url::parse(&a.url)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "https" | "http"))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_attachment_url",
                            "attachment.url must be an http(s) URL",
                        )
                    })?;
                OutgoingMessage {
                    recipient_id: body.recipient_id,
                    text: None,
                    attachment: Some((a.kind.as_str(), url.to_string())),
                    human_agent: false,
                }
            }
            _ => {
                return Err(ApiError::bad_request(
                    "text_or_attachment_required",
                    "send exactly one of text and attachment",
                ));
            }
        };
        let out = OutgoingMessage {
            human_agent: body.tag == Some(MessageTag::HumanAgent),
            ..out
        };
        let account = find_account(state, &account_id.0).await?;
        let token = account
            .instagram_access_token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::unprocessable(
                    "instagram_token_missing",
                    "the account has no instagram_access_token; set one with PATCH",
                )
            })?;
        let sent = send_and_record(state, &account, &token, &out)
            .await
            .map_err(api_error)?;
        tracing::info!(account_id = %account.id, message_id = %sent.id, "reply sent");
        Ok(SendResponse::Sent(Json(sent)))
    }
}
