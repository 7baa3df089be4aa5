//! `/api/v1/dead-letters`: messages the CRM refused or that ran out of
//! retries. An operator lists them, replays them once the CRM is fixed (same
//! `message_id`, so the CRM sees the same `webhook-id`), or discards them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use shared::ids::{AccountId, MessageId};

use super::ApiTags;
use super::auth::ApiToken;
use super::body::OptionalJson;
use super::error::ApiError;
use super::messages::{MessagePage, default_limit, page_of};
use crate::domain::Core;
use crate::store::DeadLetterFilter;

/// Which dead letters to replay at once. Every field narrows the selection.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct ReplayMany {
    pub account_id: Option<String>,
    /// Dead-lettered at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before this time.
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Object)]
pub struct Replayed {
    /// How many dead letters were put back on their way.
    pub replayed: u64,
}

#[derive(ApiResponse)]
pub enum ReplayResponse {
    /// Queued for delivery again, under the same message id.
    #[oai(status = 202)]
    Accepted(Json<Replayed>),
}

#[derive(ApiResponse)]
pub enum DiscardResponse {
    /// Discarded: it stays in the history with status `discarded`.
    #[oai(status = 204)]
    Discarded,
}

fn not_dead_letter() -> ApiError {
    ApiError::not_found(
        "dead_letter_not_found",
        "no dead letter with this message id",
    )
}

/// The filter as asked, narrowed to the caller's account for an account
/// token (naming another account is 404, as if it did not exist).
fn filter_of(
    auth: &ApiToken,
    account_id: Option<String>,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<DeadLetterFilter, ApiError> {
    if let Some(id) = &account_id {
        auth.reach(id)?;
    }
    let account_id = account_id.or_else(|| auth.scope().map(str::to_owned));
    if let Some(id) = &account_id {
        AccountId::parse(id).map_err(|_| {
            ApiError::bad_request("invalid_account_id", "account_id must be an acc_… id")
        })?;
    }
    Ok(DeadLetterFilter {
        account_id,
        since,
        until,
    })
}

/// 404 `dead_letter_not_found` for a message of another account than an
/// account token's.
async fn reach_message(state: &Core, auth: &ApiToken, id: &MessageId) -> Result<(), ApiError> {
    let Some(own) = auth.scope() else {
        return Ok(());
    };
    match state.store.messages.get_message(id.as_str()).await? {
        Some(row) if row.account_id == own => Ok(()),
        _ => Err(not_dead_letter()),
    }
}

/// Replays at most this many per request, so one call stays short; call again for more.
const REPLAY_BATCH: u32 = 1000;

pub struct DeadLettersApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::DeadLetters")]
impl DeadLettersApi {
    /// List dead letters
    #[allow(clippy::too_many_arguments)] // one per query parameter
    #[oai(
        path = "/dead-letters",
        method = "get",
        operation_id = "list_dead_letters"
    )]
    async fn list(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        /// Only this account's.
        account_id: Query<Option<String>>,
        /// Dead-lettered at or after (RFC 3339).
        since: Query<Option<DateTime<Utc>>>,
        /// Dead-lettered before (RFC 3339).
        until: Query<Option<DateTime<Utc>>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 200.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u32>,
    ) -> Result<Json<MessagePage>, ApiError> {
        let filter = filter_of(&auth, account_id.0, since.0, until.0)?;
        let rows = state
            .store
            .messages
            .list_dead_letters(&filter, cursor.0.as_deref(), limit.0 + 1)
            .await?;
        Ok(Json(page_of(rows, limit.0)))
    }

    /// Replay one dead letter
    #[oai(
        path = "/dead-letters/:message_id/replay",
        method = "post",
        operation_id = "replay_dead_letter"
    )]
    async fn replay_one(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        message_id: Path<String>,
    ) -> Result<ReplayResponse, ApiError> {
        let id = MessageId::parse(&message_id.0).map_err(|_| not_dead_letter())?;
        reach_message(state, &auth, &id).await?;
        if !state.store.messages.replay_dead_letter(id.as_str()).await? {
            return Err(not_dead_letter());
        }
        state.outbox_wakeup.notify_one();
        tracing::info!(message_id = %id, "dead letter replayed");
        Ok(ReplayResponse::Accepted(Json(Replayed { replayed: 1 })))
    }

    /// Replay many dead letters
    ///
    /// Replays up to 1000 dead letters matching the filter; call again while
    /// `replayed` is 1000.
    #[oai(
        path = "/dead-letters/replay",
        method = "post",
        operation_id = "replay_dead_letters"
    )]
    async fn replay_many(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        body: OptionalJson<ReplayMany>,
    ) -> Result<ReplayResponse, ApiError> {
        let filter = filter_of(&auth, body.0.account_id, body.0.since, body.0.until)?;
        let rows = state
            .store
            .messages
            .list_dead_letters(&filter, None, REPLAY_BATCH)
            .await?;
        let mut replayed = 0;
        for row in rows {
            if state.store.messages.replay_dead_letter(&row.id).await? {
                replayed += 1;
            }
        }
        state.outbox_wakeup.notify_one();
        tracing::info!(replayed, "dead letters replayed");
        Ok(ReplayResponse::Accepted(Json(Replayed { replayed })))
    }

    /// Discard a dead letter
    #[oai(
        path = "/dead-letters/:message_id",
        method = "delete",
        operation_id = "discard_dead_letter"
    )]
    async fn discard(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        message_id: Path<String>,
    ) -> Result<DiscardResponse, ApiError> {
        let id = MessageId::parse(&message_id.0).map_err(|_| not_dead_letter())?;
        reach_message(state, &auth, &id).await?;
        if !state
            .store
            .messages
            .discard_dead_letter(id.as_str())
            .await?
        {
            return Err(not_dead_letter());
        }
        tracing::info!(message_id = %id, "dead letter discarded");
        Ok(DiscardResponse::Discarded)
    }
}
