//! Answering a comment: privately (a direct message, the one Meta allows
//! per comment, within 7 days of it) or publicly (a reply under it). Both
//! need the comment to have been received, and both are recorded in the
//! account's history, in the commenter's conversation.

use chrono::{DateTime, TimeDelta, Utc};
use shared::ids::MessageId;
use shared::model::{Direction, MessageEvent};

use super::Core;
use super::send::{OutgoingMessage, SendError, Sent, graph_failed, send_and_record};
use crate::store::{AccountRow, NewMessage};

/// How long after a comment Meta takes its private reply.
pub const PRIVATE_REPLY_WINDOW: TimeDelta = TimeDelta::days(7);

#[derive(Debug)]
pub enum ReplyError {
    /// The router has not received this comment for the account.
    CommentNotFound,
    /// A private reply to it was sent (or is being sent) already.
    AlreadyReplied,
    /// The comment is older than [`PRIVATE_REPLY_WINDOW`].
    WindowClosed,
    Send(SendError),
}

impl From<crate::store::StoreError> for ReplyError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Send(SendError::Store(e))
    }
}

/// A public reply Meta accepted, as recorded.
#[derive(Debug)]
pub struct PublicReply {
    /// Our id of the reply, `msg_…`.
    pub id: String,
    /// Meta's id of the reply (a comment itself).
    pub instagram_comment_id: String,
    pub conversation_id: String,
    pub created_at: DateTime<Utc>,
}

/// Sends the one private reply to `comment_id`: claimed in the database
/// first, so only one caller, across every ingest, gets to call Meta; given
/// back if Meta refuses, so it can be tried again.
pub async fn private_reply(
    core: &Core,
    account: &AccountRow,
    token: &str,
    comment_id: &str,
    text: &str,
) -> Result<Sent, ReplyError> {
    let messages = &core.store.messages;
    let (author, _, at) = messages
        .find_comment(&account.id, comment_id)
        .await?
        .ok_or(ReplyError::CommentNotFound)?;
    if Utc::now() - at > PRIVATE_REPLY_WINDOW {
        return Err(ReplyError::WindowClosed);
    }
    if !messages
        .claim_private_reply(&account.id, comment_id, Utc::now())
        .await?
    {
        return Err(ReplyError::AlreadyReplied);
    }
    let out = OutgoingMessage {
        comment_id: Some(comment_id.to_owned()),
        ..OutgoingMessage::text(&author, text)
    };
    match send_and_record(core, account, token, &out).await {
        Ok(sent) => Ok(sent),
        Err(e) => {
            if let Err(release) = messages
                .release_private_reply(&account.id, comment_id)
                .await
            {
                tracing::warn!(account_id = %account.id, error = %release, "could not give back a private reply's claim");
            }
            Err(ReplyError::Send(e))
        }
    }
}

/// Posts a public reply under `comment_id` and records it.
pub async fn public_reply(
    core: &Core,
    account: &AccountRow,
    token: &str,
    comment_id: &str,
    text: &str,
) -> Result<PublicReply, ReplyError> {
    let (author, conversation_id, _) = core
        .store
        .messages
        .find_comment(&account.id, comment_id)
        .await?
        .ok_or(ReplyError::CommentNotFound)?;
    let reply_id = match core.graph.reply_to_comment(comment_id, token, text).await {
        Ok(id) => id,
        Err(e) => return Err(ReplyError::Send(graph_failed(core, account, e).await)),
    };
    let id = MessageId::generate().to_string();
    let now = Utc::now();
    // Keyed like a received comment: Meta's notification of this reply is
    // then recognised as already recorded, and not forwarded.
    let record = NewMessage {
        id: id.clone(),
        account_id: account.id.clone(),
        event: MessageEvent::Sent,
        event_key: format!("comment:{reply_id}"),
        instagram_message_id: reply_id.clone(),
        direction: Direction::Outbound,
        conversation_id: conversation_id.clone(),
        sender_id: account.instagram_account_id.clone(),
        recipient_id: author,
        message_type: "comment_reply".to_owned(),
        text: Some(text.to_owned()),
        attachments: "[]".to_owned(),
        sent_at: now,
        subject: String::new(),
        webhook: None,
        publish: false,
        hold_until: None,
    };
    core.store.messages.save_message(&record).await?;
    tracing::info!(account_id = %account.id, message_id = %id, "public reply to a comment sent");
    Ok(PublicReply {
        id,
        instagram_comment_id: reply_id,
        conversation_id,
        created_at: now,
    })
}
