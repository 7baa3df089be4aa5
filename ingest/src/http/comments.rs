//! `/api/v1/accounts/{account_id}/comments/{comment_id}/…`: answering a
//! comment the CRM received as `comment.created`, privately (a direct
//! message that opens a conversation) or publicly (a reply under it).
//! Meta's errors map to the same codes as a reply's ([`super::send`]).

use super::time::Timestamp;
use crate::http::body::JsonBody;
use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::types::{ParseFromJSON as _, ToJSON as _};
use poem_openapi::{ApiResponse, Object, OpenApi};

use super::ApiTags;
use super::accounts::find_account;
use super::auth::ApiToken;
use super::error::ApiError;
use super::idempotency::{self, IdempotencyKey};
use super::send::{SentMessage, access_token, api_error, within_text_limit};
use crate::domain::Core;
use crate::domain::comments::{ReplyError, private_reply, public_reply};

/// The answer to a comment.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct CommentAnswer {
    /// Up to 1000 UTF-8 bytes.
    #[oai(validator(min_length = 1))]
    pub text: String,
}

#[derive(Debug, Object)]
pub struct PublicReplyView {
    /// Our id of the reply, `msg_…`, as in the history.
    pub id: String,
    /// Meta's id of the reply (itself a comment).
    pub instagram_comment_id: String,
    /// The comment answered.
    pub comment_id: String,
    /// The commenter's conversation, where the history lists the reply.
    pub conversation_id: String,
    pub created_at: Timestamp,
}

#[derive(ApiResponse)]
pub enum PrivateReplyResponse {
    /// Sent by Meta as a direct message to the commenter and recorded; the
    /// conversation then goes on like any other.
    #[oai(status = 201)]
    Sent(Json<SentMessage>),
}

#[derive(ApiResponse)]
pub enum PublicReplyResponse {
    /// Posted under the comment and recorded.
    #[oai(status = 201)]
    Posted(Json<PublicReplyView>),
}

fn reply_error(e: ReplyError) -> ApiError {
    match e {
        ReplyError::CommentNotFound => ApiError::not_found(
            "comment_not_found",
            "no comment with this id was received for this account",
        ),
        ReplyError::AlreadyReplied => ApiError::conflict(
            "private_reply_already_sent",
            "this comment already has its private reply; Meta allows one per comment",
        ),
        ReplyError::WindowClosed => ApiError::unprocessable(
            "private_reply_window_closed",
            "the comment is more than 7 days old; Meta takes no private reply to it",
        ),
        ReplyError::Send(e) => api_error(e),
    }
}

pub struct CommentsApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Messages")]
impl CommentsApi {
    /// Answer a comment privately
    ///
    /// Sends the one private reply Meta allows per comment, within 7 days of
    /// it: a direct message to the commenter, which opens a conversation that
    /// then flows like any other. A second one is refused with 409
    /// `private_reply_already_sent`, without calling Meta.
    #[oai(
        path = "/accounts/:account_id/comments/:comment_id/private-reply",
        method = "post",
        operation_id = "private_reply_to_comment"
    )]
    async fn private_reply(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
        comment_id: Path<String>,
        /// Makes a retry safe, as for a reply (`send_message`).
        #[oai(name = "Idempotency-Key")]
        idempotency_key: IdempotencyKey,
        body: JsonBody<CommentAnswer>,
    ) -> Result<PrivateReplyResponse, ApiError> {
        auth.reach(&account_id.0)?;
        within_text_limit("text", &body.0.text)?;
        let account = find_account(state, &auth, &account_id.0).await?;
        let request = idempotency::request(
            "private_reply_to_comment",
            &[&comment_id.0],
            &body.0.to_json(),
        );
        idempotency::once(state, &account, idempotency_key.0, request, async {
            let token = access_token(&account)?;
            let sent = private_reply(state, &account, &token, &comment_id.0, &body.0.text)
                .await
                .map_err(reply_error)?;
            tracing::info!(account_id = %account.id, message_id = %sent.id, "private reply to a comment sent");
            Ok(PrivateReplyResponse::Sent(Json(sent.into())))
        })
        .await
    }

    /// Answer a comment publicly
    ///
    /// Posts a reply under the comment, visible to everyone.
    #[oai(
        path = "/accounts/:account_id/comments/:comment_id/replies",
        method = "post",
        operation_id = "reply_to_comment"
    )]
    async fn public_reply(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
        comment_id: Path<String>,
        /// Makes a retry safe, as for a reply (`send_message`).
        #[oai(name = "Idempotency-Key")]
        idempotency_key: IdempotencyKey,
        body: JsonBody<CommentAnswer>,
    ) -> Result<PublicReplyResponse, ApiError> {
        auth.reach(&account_id.0)?;
        within_text_limit("text", &body.0.text)?;
        let account = find_account(state, &auth, &account_id.0).await?;
        let request = idempotency::request("reply_to_comment", &[&comment_id.0], &body.0.to_json());
        idempotency::once(state, &account, idempotency_key.0, request, async {
            let token = access_token(&account)?;
            let reply = public_reply(state, &account, &token, &comment_id.0, &body.0.text)
                .await
                .map_err(reply_error)?;
            Ok(PublicReplyResponse::Posted(Json(PublicReplyView {
                id: reply.id,
                instagram_comment_id: reply.instagram_comment_id,
                comment_id: comment_id.0.clone(),
                conversation_id: reply.conversation_id,
                created_at: reply.created_at.into(),
            })))
        })
        .await
    }
}

impl idempotency::Kept for PrivateReplyResponse {
    fn kept(&self) -> Option<(u16, serde_json::Value)> {
        let Self::Sent(Json(sent)) = self;
        Some((201, sent.to_json()?))
    }

    fn from_kept(_: u16, json: serde_json::Value) -> Option<Self> {
        SentMessage::parse_from_json(Some(json))
            .ok()
            .map(|sent| Self::Sent(Json(sent)))
    }
}

impl idempotency::Kept for PublicReplyResponse {
    fn kept(&self) -> Option<(u16, serde_json::Value)> {
        let Self::Posted(Json(reply)) = self;
        Some((201, reply.to_json()?))
    }

    fn from_kept(_: u16, json: serde_json::Value) -> Option<Self> {
        PublicReplyView::parse_from_json(Some(json))
            .ok()
            .map(|reply| Self::Posted(Json(reply)))
    }
}
