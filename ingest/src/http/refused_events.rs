//! `/api/v1/refused-events`: events from Meta the database kept refusing to
//! save (a constraint, a trigger, a value it cannot hold), set aside after
//! `INGEST_SAVE_ATTEMPTS` so the rest of their webhook was accepted. An
//! operator lists them, saves them again once the cause is fixed (they then
//! flow to the CRM like any other message, under the message id shown
//! here), or discards them. Their text is never returned.

use super::time::Timestamp;
use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use shared::ids::{AccountId, MessageId};
use shared::model::EventKind;

use super::ApiTags;
use super::auth::ApiToken;
use super::error::ApiError;
use super::messages::default_limit;
use crate::domain::Core;
use crate::domain::inbound::{SavedAgain, save_again};
use crate::store::{KeptEvent, RefusedRow};

/// An event set aside after the database refused it again and again.
#[derive(Debug, Object)]
pub struct RefusedEvent {
    /// `msg_…`: the message id it is saved and delivered under once saved again.
    pub message_id: String,
    pub account_id: String,
    pub event: EventKind,
    pub conversation_id: String,
    /// Meta's `mid`.
    pub instagram_message_id: String,
    /// Meta's event time.
    pub timestamp: Timestamp,
    /// Refusals so far, Meta's redeliveries and attempts to save it again included.
    pub attempts: i64,
    /// The database's code for the last refusal: `postgres:<SQLSTATE>` or
    /// `sqlite:<result code>` (its message is not kept: it can quote the row).
    pub error_code: String,
    pub first_refused_at: Timestamp,
    pub set_aside_at: Timestamp,
}

impl RefusedEvent {
    fn of(row: RefusedRow) -> Result<Self, ApiError> {
        let kept: KeptEvent = serde_json::from_slice(&row.kept).map_err(ApiError::internal)?;
        let w = kept.webhook;
        Ok(Self {
            message_id: row.message_id,
            account_id: row.account_id,
            event: w.event,
            conversation_id: w.conversation_id,
            instagram_message_id: w.instagram_message_id,
            timestamp: kept.sent_at.into(),
            attempts: row.attempts,
            error_code: row.error_code,
            first_refused_at: row.first_refused_at.into(),
            set_aside_at: row.set_aside_at.unwrap_or(row.first_refused_at).into(),
        })
    }
}

#[derive(Debug, Object)]
pub struct RefusedEventPage {
    pub data: Vec<RefusedEvent>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_cursor: Option<String>,
}

#[derive(Debug, Enum)]
#[oai(rename_all = "snake_case")]
pub enum SavedResult {
    /// Saved now: on its way to the CRM.
    Saved,
    /// Meta's redelivery got through since: it was saved then.
    AlreadySaved,
}

#[derive(Debug, Object)]
pub struct SavedEvent {
    pub message_id: String,
    pub result: SavedResult,
}

#[derive(ApiResponse)]
pub enum SaveAgainResponse {
    /// Saved (or found saved); no longer set aside.
    #[oai(status = 200)]
    Saved(Json<SavedEvent>),
}

#[derive(ApiResponse)]
pub enum DiscardResponse {
    /// Discarded for good: it was never saved, so nothing of it remains.
    #[oai(status = 204)]
    Discarded,
}

fn not_found() -> ApiError {
    ApiError::not_found(
        "refused_event_not_found",
        "no refused event with this message id",
    )
}

/// The event set aside under `message_id`, if the caller can reach it (an
/// account token reaches only its account's; any other is 404).
async fn find(state: &Core, auth: &ApiToken, message_id: &str) -> Result<RefusedRow, ApiError> {
    let id = MessageId::parse(message_id).map_err(|_| not_found())?;
    let row = state.store.messages.get_refused(id.as_str()).await?;
    match row {
        Some(row) if auth.scope().is_none_or(|own| own == row.account_id) => Ok(row),
        _ => Err(not_found()),
    }
}

pub struct RefusedEventsApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::DeadLetters")]
impl RefusedEventsApi {
    /// List events the database refused
    ///
    /// Events set aside after the database refused to save them
    /// `INGEST_SAVE_ATTEMPTS` times, oldest first. Their text is not returned.
    #[oai(
        path = "/refused-events",
        method = "get",
        operation_id = "list_refused_events"
    )]
    async fn list(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        /// Only this account's.
        account_id: Query<Option<String>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 200.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u32>,
    ) -> Result<Json<RefusedEventPage>, ApiError> {
        if let Some(id) = &account_id.0 {
            auth.reach(id)?;
            AccountId::parse(id).map_err(|_| {
                ApiError::bad_request("invalid_account_id", "account_id must be an acc_… id")
            })?;
        }
        let account = account_id.0.as_deref().or(auth.scope());
        let mut rows = state
            .store
            .messages
            .list_refused(account, cursor.0.as_deref(), limit.0 + 1)
            .await?;
        let more = rows.len() > limit.0 as usize;
        rows.truncate(limit.0 as usize);
        let next_cursor = more
            .then(|| rows.last().map(|r| r.message_id.clone()))
            .flatten();
        let data = rows
            .into_iter()
            .map(RefusedEvent::of)
            .collect::<Result<_, _>>()?;
        Ok(Json(RefusedEventPage { data, next_cursor }))
    }

    /// Save a refused event again
    ///
    /// Tries to save the event again, once its cause is fixed. Saved, it
    /// flows to the CRM like any other message, under its `message_id`, and
    /// takes the conversation's next `sequence`. Still refused: 409
    /// `still_refused`, and it stays set aside.
    #[oai(
        path = "/refused-events/:message_id/replay",
        method = "post",
        operation_id = "replay_refused_event"
    )]
    async fn replay(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        message_id: Path<String>,
    ) -> Result<SaveAgainResponse, ApiError> {
        let row = find(state, &auth, &message_id.0).await?;
        let result = match save_again(state, &row).await? {
            SavedAgain::Saved => SavedResult::Saved,
            SavedAgain::AlreadySaved => SavedResult::AlreadySaved,
            SavedAgain::StillRefused(code) => {
                tracing::warn!(message_id = %row.message_id, error_code = %code, "refused event refused again");
                return Err(ApiError::conflict(
                    "still_refused",
                    format!("the database still refuses this event ({code})"),
                ));
            }
        };
        tracing::info!(message_id = %row.message_id, ?result, "refused event saved again");
        Ok(SaveAgainResponse::Saved(Json(SavedEvent {
            message_id: row.message_id,
            result,
        })))
    }

    /// Discard a refused event
    #[oai(
        path = "/refused-events/:message_id",
        method = "delete",
        operation_id = "discard_refused_event"
    )]
    async fn discard(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        message_id: Path<String>,
    ) -> Result<DiscardResponse, ApiError> {
        let row = find(state, &auth, &message_id.0).await?;
        if !state.store.messages.forget_refused(&row.message_id).await? {
            return Err(not_found());
        }
        tracing::info!(message_id = %row.message_id, "refused event discarded");
        Ok(DiscardResponse::Discarded)
    }
}
