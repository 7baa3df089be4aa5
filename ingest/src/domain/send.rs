//! Sending a reply to a customer through Meta's Send API and recording it,
//! for the API (`POST /api/v1/accounts/{id}/messages`) and the auto-reply.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use shared::ids::MessageId;
use shared::model::{Direction, MessageEvent};
use shared::wire::{self, Attachment};

use super::Core;
use crate::meta::graph::GraphError;
use crate::store::{AccountRow, NewMessage, StoreError};

/// A reply Meta accepted, as recorded.
#[derive(Debug)]
pub struct Sent {
    /// Our id of the outbound message, `msg_…`.
    pub id: String,
    /// Meta's `message_id` (a `mid`).
    pub instagram_message_id: String,
    pub recipient_id: String,
    pub conversation_id: String,
    pub created_at: DateTime<Utc>,
}

/// What a message carries.
pub enum Content {
    /// Text, with Meta's `quick_replies` array when there are any.
    Text {
        text: String,
        quick_replies: Option<Value>,
    },
    /// Media Meta fetches from `url`: `image`, `video`, `audio` or `file`.
    Media { kind: &'static str, url: String },
    /// A template, `generic` or `button`: `payload` is Meta's template
    /// payload; `text` the button template's text.
    Template {
        kind: &'static str,
        payload: Value,
        text: Option<String>,
    },
}

/// What to send, in the form Meta's Send API takes.
pub struct OutgoingMessage {
    pub recipient_id: String,
    pub content: Content,
    pub human_agent: bool,
    /// A private reply to this comment (its author is `recipient_id`): Meta
    /// is told the comment, not the person.
    pub comment_id: Option<String>,
}

impl OutgoingMessage {
    pub fn text(recipient_id: &str, text: &str) -> Self {
        Self {
            recipient_id: recipient_id.to_owned(),
            content: Content::Text {
                text: text.to_owned(),
                quick_replies: None,
            },
            human_agent: false,
            comment_id: None,
        }
    }

    /// How the history records it: `text`, the media kind, or `template`.
    fn message_type(&self) -> &'static str {
        match &self.content {
            Content::Text { .. } => "text",
            Content::Media { kind, .. } => kind,
            Content::Template { .. } => "template",
        }
    }

    fn text_content(&self) -> Option<&str> {
        match &self.content {
            Content::Text { text, .. } => Some(text),
            Content::Template { text, .. } => text.as_deref(),
            Content::Media { .. } => None,
        }
    }

    fn graph_body(&self) -> Value {
        let message = match &self.content {
            Content::Text {
                text,
                quick_replies: None,
            } => json!({ "text": text }),
            Content::Text {
                text,
                quick_replies: Some(replies),
            } => json!({ "text": text, "quick_replies": replies }),
            Content::Media { kind, url } => {
                json!({ "attachment": { "type": kind, "payload": { "url": url } } })
            }
            Content::Template { payload, .. } => {
                json!({ "attachment": { "type": "template", "payload": payload } })
            }
        };
        let recipient = match &self.comment_id {
            Some(comment_id) => json!({ "comment_id": comment_id }),
            None => json!({ "id": self.recipient_id }),
        };
        let mut body = json!({ "recipient": recipient, "message": message });
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

/// Shows a sender action (`typing_on`, `typing_off`, `mark_seen`) to the
/// customer; nothing is recorded. A token Meta rejects marks the account.
pub async fn send_action(
    core: &Core,
    account: &AccountRow,
    token: &str,
    recipient_id: &str,
    action: &str,
) -> Result<(), SendError> {
    let body = json!({ "recipient": { "id": recipient_id }, "sender_action": action });
    match core
        .graph
        .send_action(&account.instagram_account_id, token, &body)
        .await
    {
        Ok(()) => Ok(()),
        Err(e) => Err(graph_failed(core, account, e).await),
    }
}

/// Meta's error, after marking the account when Meta rejected its token.
pub async fn graph_failed(core: &Core, account: &AccountRow, e: GraphError) -> SendError {
    if matches!(e, GraphError::Meta { code: 190, .. }) {
        super::credentials::invalid(core, account, "meta_190").await;
    }
    SendError::Graph(e)
}

/// Sends through Meta and records the outbound message (not forwarded to
/// the CRM: it sent it). A token Meta rejects marks the account.
pub async fn send_and_record(
    core: &Core,
    account: &AccountRow,
    token: &str,
    out: &OutgoingMessage,
) -> Result<Sent, SendError> {
    // Recorded first, as pending: Meta's echo of this message can arrive
    // before Meta's answer, and must find it (see `webhooks::save_event`).
    let id = MessageId::generate();
    let now = Utc::now();
    let conversation_id = wire::conversation_id(&out.recipient_id, &account.instagram_account_id);
    let attachments: Vec<Attachment> = match &out.content {
        Content::Media { kind, url } => vec![Attachment {
            kind: (*kind).to_owned(),
            url: Some(url.clone()),
        }],
        _ => Vec::new(),
    };
    let record = NewMessage {
        id: id.to_string(),
        account_id: account.id.clone(),
        event: MessageEvent::Sent,
        event_key: format!("pending:{id}"),
        instagram_message_id: String::new(),
        direction: Direction::Outbound,
        conversation_id: conversation_id.clone(),
        sender_id: account.instagram_account_id.clone(),
        recipient_id: out.recipient_id.clone(),
        message_type: out.message_type().to_owned(),
        text: out.text_content().map(str::to_owned),
        attachments: serde_json::to_string(&attachments).unwrap_or_else(|_| "[]".into()),
        sent_at: now,
        subject: String::new(),
        webhook: None,
        publish: false,
        hold_until: None,
    };
    core.store
        .messages
        .save_message(&record)
        .await
        .map_err(SendError::Store)?;
    let sent = match core
        .graph
        .send_message(&account.instagram_account_id, token, &out.graph_body())
        .await
    {
        Ok(sent) => sent,
        Err(e) => {
            // A timeout may still have sent it; its echo then arrives as an app echo.
            let _ = core.store.messages.abandon_send(&record.id).await;
            return Err(graph_failed(core, account, e).await);
        }
    };
    if !core
        .store
        .messages
        .finish_send(&record.id, &sent.message_id)
        .await
        .map_err(SendError::Store)?
    {
        tracing::warn!(account_id = %account.id, "a sent message's echo was recorded before Meta answered");
    }
    Ok(Sent {
        id: id.to_string(),
        instagram_message_id: sent.message_id,
        recipient_id: out.recipient_id.clone(),
        conversation_id,
        created_at: now,
    })
}
