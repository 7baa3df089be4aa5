//! `/api/v1/accounts/{account_id}/messages`: `GET` lists an account's
//! messages with their delivery state, in the order they were saved, paged
//! by cursor (message text is not returned: the CRM already has it, and API
//! reads never carry message content); `POST` sends a reply ([`super::send`]).
//! Both are in one impl so the document has the path once.

use super::time::Timestamp;
use crate::http::body::JsonBody;
use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use shared::model::DeliveryStatus;

use super::ApiTags;
use super::accounts::find_account;
use super::auth::ApiToken;
use super::error::ApiError;
use super::idempotency::IdempotencyKey;
use super::send::{SendMessage, SendResponse, send_reply};
use crate::domain::Core;
use crate::store::MessageRow;

/// Where a message stands on its way to the CRM.
#[derive(Debug, Object)]
pub struct Delivery {
    pub status: DeliveryStatus,
    /// Attempts made so far, replays included.
    pub attempts: i64,
    /// The last failure: `http_<status>`, `timeout`, `connect`, `account_disabled`, ...
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// The CRM's HTTP status on the last attempt, when it answered.
    #[oai(nullable)]
    pub last_status_code: Option<i64>,
    #[oai(nullable)]
    pub delivered_at: Option<Timestamp>,
    #[oai(nullable)]
    pub dead_at: Option<Timestamp>,
    /// How many times an operator replayed it.
    pub replays: i64,
}

#[derive(Debug, Object)]
pub struct Message {
    /// `msg_…`, the CRM's `message_id` and `webhook-id`.
    pub id: String,
    pub account_id: String,
    /// `message.received`, `message.echo`, `message.sent` (through this API), `message.reaction`, ...
    pub event: String,
    /// `inbound` (from the customer) or `outbound`.
    pub direction: String,
    pub conversation_id: String,
    /// Its place in the conversation (the CRM payload's `sequence`); `null`
    /// for events the CRM does not receive.
    #[oai(nullable)]
    pub sequence: Option<i64>,
    pub sender_id: String,
    pub recipient_id: String,
    pub message_type: String,
    /// Meta's `mid`.
    pub instagram_message_id: String,
    /// Meta's event time.
    pub timestamp: Timestamp,
    /// When ingest saved it.
    pub created_at: Timestamp,
    /// When the customer deleted (unsent) it.
    #[oai(nullable)]
    pub deleted_at: Option<Timestamp>,
    /// When the customer last edited it (`message.edited`).
    #[oai(nullable)]
    pub edited_at: Option<Timestamp>,
    pub delivery: Delivery,
}

impl From<MessageRow> for Message {
    fn from(r: MessageRow) -> Self {
        Self {
            id: r.id,
            account_id: r.account_id,
            event: r.event.as_str().to_owned(),
            direction: r.direction.as_str().to_owned(),
            conversation_id: r.conversation_id,
            sequence: r.sequence,
            sender_id: r.sender_id,
            recipient_id: r.recipient_id,
            message_type: r.message_type,
            instagram_message_id: r.instagram_message_id,
            timestamp: r.sent_at.into(),
            created_at: r.created_at.into(),
            deleted_at: r.deleted_at.map(Into::into),
            edited_at: r.edited_at.map(Into::into),
            delivery: Delivery {
                status: r.delivery_status,
                attempts: r.delivery_attempts,
                last_error: r.last_error,
                last_status_code: r.last_status_code,
                delivered_at: r.delivered_at.map(Into::into),
                dead_at: r.dead_at.map(Into::into),
                replays: r.replays,
            },
        }
    }
}

#[derive(Debug, Object)]
pub struct MessagePage {
    pub data: Vec<Message>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

/// Turns `limit + 1` rows into a page and its cursor.
pub fn page_of(mut rows: Vec<MessageRow>, limit: u32) -> MessagePage {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|r| r.id.clone())
    } else {
        None
    };
    MessagePage {
        data: rows.into_iter().map(Message::from).collect(),
        next_cursor,
    }
}

pub fn default_limit() -> u32 {
    50
}

pub struct MessagesApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Messages")]
impl MessagesApi {
    /// List an account's messages with their delivery state
    #[oai(
        path = "/accounts/:account_id/messages",
        method = "get",
        operation_id = "list_messages"
    )]
    async fn list(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
        /// Only this conversation (`conv_…`).
        conversation_id: Query<Option<String>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 200.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u32>,
    ) -> Result<Json<MessagePage>, ApiError> {
        let account = find_account(state, &auth, &account_id.0).await?;
        let rows = state
            .store
            .messages
            .list_messages(
                &account.id,
                conversation_id.0.as_deref(),
                cursor.0.as_deref(),
                limit.0 + 1,
            )
            .await?;
        Ok(Json(page_of(rows, limit.0)))
    }

    /// Send a reply to a customer through Instagram
    #[oai(
        path = "/accounts/:account_id/messages",
        method = "post",
        operation_id = "send_message"
    )]
    async fn send(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
        /// Makes a retry safe: a repeat with the same key and body within 24 h
        /// gets the first answer (status and body) and Meta is not called
        /// again; while the first is still running, 409
        /// `idempotency_key_in_progress`; the same key with another body, 422
        /// `idempotency_key_reused`. Keys are per account; up to 255 visible
        /// ASCII characters (a UUID, say).
        #[oai(name = "Idempotency-Key")]
        idempotency_key: IdempotencyKey,
        body: JsonBody<SendMessage>,
    ) -> Result<SendResponse, ApiError> {
        send_reply(&auth, state, &account_id.0, idempotency_key.0, body).await
    }
}
