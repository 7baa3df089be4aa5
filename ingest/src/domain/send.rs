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

/// What to send, in the form Meta's Send API takes.
pub struct OutgoingMessage {
    pub recipient_id: String,
    pub text: Option<String>,
    pub attachment: Option<(&'static str, String)>,
    pub human_agent: bool,
    /// A private reply to this comment (its author is `recipient_id`): Meta
    /// is told the comment, not the person.
    pub comment_id: Option<String>,
}

impl OutgoingMessage {
    pub fn text(recipient_id: &str, text: &str) -> Self {
        Self {
            recipient_id: recipient_id.to_owned(),
            text: Some(text.to_owned()),
            attachment: None,
            human_agent: false,
            comment_id: None,
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
        event: MessageEvent::Sent,
        event_key: format!("pending:{id}"),
        instagram_message_id: String::new(),
        direction: Direction::Outbound,
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
            if matches!(e, GraphError::Meta { code: 190, .. }) {
                super::credentials::invalid(core, account, "meta_190").await;
            }
            return Err(SendError::Graph(e));
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
