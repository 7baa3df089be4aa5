//! `/api/v1/accounts/{account_id}/tokens`: API tokens that reach one
//! account, for a CRM team that should see its own account and nothing else.
//! Only operator tokens (`ROUTER_API_TOKENS`) manage them. A token is shown
//! once, when created; the router keeps only its SHA-256.

use super::time::Timestamp;
use crate::http::body::JsonBody;
use std::sync::Arc;

use chrono::Utc;
use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use shared::ids::TokenId;

use super::ApiTags;
use super::accounts::find_account;
use super::auth::{ApiToken, new_account_token};
use super::error::ApiError;
use crate::domain::Core;
use crate::store::TokenRow;

/// What to call a new token.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct CreateToken {
    /// A name to tell it apart (who holds it, what for).
    #[oai(validator(min_length = 1, max_length = 100))]
    pub name: String,
}

/// An account token, without the token.
#[derive(Debug, Object)]
pub struct ApiTokenView {
    /// Our id, `tok_…`: what the request log names.
    pub id: String,
    pub account_id: String,
    pub name: String,
    pub created_at: Timestamp,
}

impl ApiTokenView {
    fn new(row: &TokenRow) -> Self {
        Self {
            id: row.id.clone(),
            account_id: row.account_id.clone(),
            name: row.name.clone(),
            created_at: row.created_at.into(),
        }
    }
}

/// A token just created: `token` is shown this once and never again.
#[derive(Debug, Object)]
pub struct CreatedToken {
    #[oai(flatten)]
    pub api_token: ApiTokenView,
    /// `Authorization: Bearer <token>`; it reaches this account only.
    pub token: String,
}

#[derive(Debug, Object)]
pub struct TokenList {
    /// Oldest first.
    pub data: Vec<ApiTokenView>,
}

#[derive(ApiResponse)]
pub enum CreateTokenResponse {
    /// Created; keep `token`, it is not shown again.
    #[oai(status = 201)]
    Created(Json<CreatedToken>),
}

#[derive(ApiResponse)]
pub enum RevokeTokenResponse {
    /// Revoked: the token is refused from now on.
    #[oai(status = 204)]
    Revoked,
}

fn token_not_found() -> ApiError {
    ApiError::not_found("token_not_found", "no such token for this account")
}

pub struct TokensApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Accounts")]
impl TokensApi {
    /// Create an account token
    ///
    /// The token reaches this account only: anything of another account is
    /// 404 to it. Needs an operator token.
    #[oai(
        path = "/accounts/:account_id/tokens",
        method = "post",
        operation_id = "create_account_token"
    )]
    async fn create(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
        body: JsonBody<CreateToken>,
    ) -> Result<CreateTokenResponse, ApiError> {
        let account = find_account(state, &auth, &account_id.0).await?;
        auth.operator()?;
        let (token, token_hash) = new_account_token();
        let row = TokenRow {
            id: TokenId::generate().to_string(),
            account_id: account.id,
            name: body.0.name,
            token_hash,
            created_at: Utc::now(),
        };
        state.store.tokens.insert_token(&row).await?;
        tracing::info!(account_id = %row.account_id, token_id = %row.id, "account token created");
        Ok(CreateTokenResponse::Created(Json(CreatedToken {
            api_token: ApiTokenView::new(&row),
            token,
        })))
    }

    /// List an account's tokens
    ///
    /// Names and ids only; a token is shown once, when it is created. Needs
    /// an operator token.
    #[oai(
        path = "/accounts/:account_id/tokens",
        method = "get",
        operation_id = "list_account_tokens"
    )]
    async fn list(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
    ) -> Result<Json<TokenList>, ApiError> {
        let account = find_account(state, &auth, &account_id.0).await?;
        auth.operator()?;
        let rows = state.store.tokens.list_tokens(&account.id).await?;
        Ok(Json(TokenList {
            data: rows.iter().map(ApiTokenView::new).collect(),
        }))
    }

    /// Revoke an account token
    ///
    /// Refused from the next request on. Needs an operator token.
    #[oai(
        path = "/accounts/:account_id/tokens/:token_id",
        method = "delete",
        operation_id = "revoke_account_token"
    )]
    async fn revoke(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
        token_id: Path<String>,
    ) -> Result<RevokeTokenResponse, ApiError> {
        let account = find_account(state, &auth, &account_id.0).await?;
        auth.operator()?;
        let id = TokenId::parse(&token_id.0).map_err(|_| token_not_found())?;
        if !state
            .store
            .tokens
            .delete_token(&account.id, id.as_str())
            .await?
        {
            return Err(token_not_found());
        }
        tracing::info!(account_id = %account.id, token_id = %id, "account token revoked");
        Ok(RevokeTokenResponse::Revoked)
    }
}
