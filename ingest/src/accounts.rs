//! `/api/v1/accounts`: connect, read, change and remove Instagram accounts.
//! Secrets (`webhook_secret`, `instagram_access_token`) are write-only: the
//! generated webhook secret is returned once, in the create response.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use shared::ids::AccountId;
use shared::signing::WebhookSecret;

use crate::app::AppState;
use crate::auth::ApiToken;
use crate::deliveries::{DeliveryHealthView, account_view, new_account_view};
use crate::error::ApiError;
use crate::openapi::ApiTags;
use crate::store::AccountRow;

/// Whether messages for the account are forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Messages are saved and forwarded to the CRM.
    Active,
    /// Webhooks for the account are accepted but nothing is saved or forwarded.
    Disabled,
    /// Meta rejected the access token: messages still flow to the CRM, but
    /// replies fail until a new `instagram_access_token` is set.
    CredentialsInvalid,
}

impl AccountStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::CredentialsInvalid => "credentials_invalid",
        }
    }
    fn from_stored(s: &str) -> Self {
        match s {
            "disabled" => Self::Disabled,
            "credentials_invalid" => Self::CredentialsInvalid,
            _ => Self::Active,
        }
    }
}

/// An event the CRM can receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum EventKind {
    #[oai(rename = "message.received")]
    MessageReceived,
    #[oai(rename = "message.echo")]
    MessageEcho,
    #[oai(rename = "message.reaction")]
    MessageReaction,
    #[oai(rename = "message.deleted")]
    MessageDeleted,
    #[oai(rename = "message.read")]
    MessageRead,
    #[oai(rename = "message.postback")]
    MessagePostback,
    #[oai(rename = "message.referral")]
    MessageReferral,
}

impl EventKind {
    fn as_str(self) -> &'static str {
        use shared::wire::*;
        match self {
            Self::MessageReceived => EVENT_MESSAGE_RECEIVED,
            Self::MessageEcho => EVENT_MESSAGE_ECHO,
            Self::MessageReaction => EVENT_MESSAGE_REACTION,
            Self::MessageDeleted => EVENT_MESSAGE_DELETED,
            Self::MessageRead => EVENT_MESSAGE_READ,
            Self::MessagePostback => EVENT_MESSAGE_POSTBACK,
            Self::MessageReferral => EVENT_MESSAGE_REFERRAL,
        }
    }

    fn all() -> Vec<Self> {
        vec![
            Self::MessageReceived,
            Self::MessageEcho,
            Self::MessageReaction,
            Self::MessageDeleted,
            Self::MessageRead,
            Self::MessagePostback,
            Self::MessageReferral,
        ]
    }
}

/// The stored form of an event selection: `None` means every event.
fn events_to_stored(events: Option<Vec<EventKind>>) -> Option<String> {
    events.map(|list| {
        let names: Vec<&str> = list.iter().map(|e| e.as_str()).collect();
        serde_json::to_string(&names).unwrap_or_else(|_| "[]".into())
    })
}

fn events_from_stored(stored: &Option<String>) -> Vec<EventKind> {
    let all = EventKind::all();
    match stored {
        None => all,
        Some(json) => {
            let names: Vec<String> = serde_json::from_str(json).unwrap_or_default();
            all.into_iter()
                .filter(|e| names.iter().any(|n| n == e.as_str()))
                .collect()
        }
    }
}

/// A connected Instagram professional account. Secrets are never shown.
#[derive(Debug, Object)]
pub struct Account {
    /// Our id, `acc_…`.
    pub id: String,
    pub name: String,
    /// The id Meta puts in `entry[].id` of its webhooks.
    pub instagram_account_id: String,
    /// Where the forwarder POSTs this account's messages.
    pub crm_webhook_url: String,
    pub auto_reply_text: Option<String>,
    /// An auto-reply goes to a conversation at most once per this many seconds.
    pub auto_reply_cooldown_secs: i64,
    /// The events the CRM receives.
    pub events: Vec<EventKind>,
    pub status: AccountStatus,
    /// Deliveries to the CRM in flight at once; `null` for the forwarders'
    /// default (`FORWARDER_ACCOUNT_IN_FLIGHT`, 8).
    pub max_in_flight: Option<i64>,
    /// How deliveries to the CRM are doing.
    pub delivery_health: DeliveryHealthView,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Account {
    pub fn new(r: &AccountRow, delivery_health: DeliveryHealthView) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            instagram_account_id: r.instagram_account_id.clone(),
            crm_webhook_url: r.crm_webhook_url.clone(),
            auto_reply_text: r.auto_reply_text.clone(),
            auto_reply_cooldown_secs: r.auto_reply_cooldown_secs,
            events: events_from_stored(&r.events),
            status: AccountStatus::from_stored(&r.status),
            max_in_flight: r.max_in_flight,
            delivery_health,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// The create response: the account plus its webhook secret, shown this once.
#[derive(Debug, Object)]
pub struct CreatedAccount {
    #[oai(flatten)]
    pub account: Account,
    /// `whsec_…`: verifies our signatures on your CRM. Store it now; it is never shown again.
    pub webhook_secret: String,
}

#[derive(Debug, Object)]
pub struct CreateAccount {
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: String,
    /// The Instagram professional account id (digits), as in Meta's `entry[].id`.
    #[oai(validator(pattern = r"^[0-9]{1,32}$"))]
    pub instagram_account_id: String,
    /// http(s) URL of the CRM endpoint that receives messages.
    #[oai(validator(max_length = 2048))]
    pub crm_webhook_url: String,
    #[oai(validator(max_length = 1000))]
    pub auto_reply_text: Option<String>,
    /// Token for Meta's Send API (write-only).
    #[oai(validator(max_length = 1024))]
    pub instagram_access_token: Option<String>,
    /// `whsec_<base64>`; generated when omitted (write-only).
    pub webhook_secret: Option<String>,
    /// Defaults to `active`.
    pub status: Option<AccountStatus>,
    /// Seconds between two auto-replies in one conversation; default 86400 (24 h).
    #[oai(validator(minimum(value = "60"), maximum(value = "31536000")))]
    pub auto_reply_cooldown_secs: Option<i64>,
    /// The events the CRM receives; every event when omitted.
    pub events: Option<Vec<EventKind>>,
    /// Deliveries in flight at once, 1 to `ROUTER_ACCOUNT_IN_FLIGHT_MAX`
    /// (64); the forwarders' default (8) when omitted.
    #[oai(validator(minimum(value = "1")))]
    pub max_in_flight: Option<i64>,
}

/// Only the fields present are changed; `auto_reply_text: null` clears it.
#[derive(Debug, Object)]
pub struct UpdateAccount {
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: Option<String>,
    #[oai(validator(max_length = 2048))]
    pub crm_webhook_url: Option<String>,
    #[oai(validator(max_length = 1000))]
    pub auto_reply_text: MaybeUndefined<String>,
    pub status: Option<AccountStatus>,
    /// Replaces the Send API token (write-only).
    #[oai(validator(max_length = 1024))]
    pub instagram_access_token: Option<String>,
    /// Rotates the webhook secret (write-only).
    pub webhook_secret: Option<String>,
    #[oai(validator(minimum(value = "60"), maximum(value = "31536000")))]
    pub auto_reply_cooldown_secs: Option<i64>,
    /// The events the CRM receives; `null` for every event.
    pub events: MaybeUndefined<Vec<EventKind>>,
    /// Deliveries in flight at once; `null` for the forwarders' default.
    #[oai(validator(minimum(value = "1")))]
    pub max_in_flight: MaybeUndefined<i64>,
}

#[derive(Debug, Object)]
pub struct AccountPage {
    pub data: Vec<Account>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(ApiResponse)]
pub enum CreateAccountResponse {
    /// Created. The response holds the webhook secret, shown only this once.
    #[oai(status = 201)]
    Created(Json<CreatedAccount>),
}

#[derive(ApiResponse)]
pub enum DeleteAccountResponse {
    /// Deleted, with its stored messages.
    #[oai(status = 204)]
    Deleted,
}

/// A CRM URL we are willing to store: absolute http(s), no credentials.
fn parse_crm_url(s: &str) -> Result<String, ApiError> {
    let invalid = |why: &str| {
        ApiError::bad_request("invalid_crm_webhook_url", format!("crm_webhook_url {why}"))
    };
    let url = url::Url::parse(s).map_err(|_| invalid("is not an absolute URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("must use http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not carry credentials"));
    }
    Ok(url.to_string())
}

/// An account's cap, within the operator's maximum.
fn parse_max_in_flight(state: &AppState, n: i64) -> Result<i64, ApiError> {
    let max = i64::from(state.config.common.router_account_in_flight_max);
    if (1..=max).contains(&n) {
        Ok(n)
    } else {
        Err(ApiError::bad_request(
            "invalid_request",
            format!("max_in_flight must be between 1 and {max} (ROUTER_ACCOUNT_IN_FLIGHT_MAX)"),
        ))
    }
}

fn parse_secret(s: &str) -> Result<WebhookSecret, ApiError> {
    WebhookSecret::parse(s)
        .map_err(|e| ApiError::bad_request("invalid_webhook_secret", e.to_string()))
}

fn account_not_found() -> ApiError {
    ApiError::not_found("account_not_found", "no such account")
}

fn parse_account_id(s: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(s).map_err(|_| account_not_found())
}

/// The account a path names, or 404 `account_not_found`.
pub async fn find_account(state: &AppState, raw_id: &str) -> Result<AccountRow, ApiError> {
    let id = parse_account_id(raw_id)?;
    state
        .store
        .get_account(id.as_str())
        .await?
        .ok_or_else(account_not_found)
}

pub struct AccountsApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Accounts")]
impl AccountsApi {
    /// Connect an Instagram account
    #[oai(path = "/accounts", method = "post", operation_id = "create_account")]
    async fn create(
        &self,
        _auth: ApiToken,
        Data(state): Data<&Arc<AppState>>,
        body: Json<CreateAccount>,
    ) -> Result<CreateAccountResponse, ApiError> {
        let body = body.0;
        let crm_webhook_url = parse_crm_url(&body.crm_webhook_url)?;
        let secret = match body.webhook_secret.as_deref() {
            Some(s) => parse_secret(s)?,
            None => WebhookSecret::generate(),
        };
        let now = Utc::now();
        let row = AccountRow {
            id: AccountId::generate().to_string(),
            name: body.name,
            instagram_account_id: body.instagram_account_id,
            crm_webhook_url,
            auto_reply_text: body.auto_reply_text,
            status: body
                .status
                .unwrap_or(AccountStatus::Active)
                .as_str()
                .to_owned(),
            instagram_access_token: body.instagram_access_token,
            webhook_secret: secret.expose().to_owned(),
            created_at: now,
            updated_at: now,
            events: events_to_stored(body.events),
            auto_reply_cooldown_secs: body.auto_reply_cooldown_secs.unwrap_or(86_400),
            max_in_flight: body
                .max_in_flight
                .map(|n| parse_max_in_flight(state, n))
                .transpose()?,
            deliveries_paused_at: None,
            deliveries_resumed_at: None,
        };
        state.store.insert_account(&row).await?;
        state.routing.account_changed(state, &row.id).await;
        tracing::info!(account_id = %row.id, "account created");
        Ok(CreateAccountResponse::Created(Json(CreatedAccount {
            account: new_account_view(&row),
            webhook_secret: row.webhook_secret,
        })))
    }

    /// List accounts
    #[oai(path = "/accounts", method = "get", operation_id = "list_accounts")]
    async fn list(
        &self,
        _auth: ApiToken,
        Data(state): Data<&Arc<AppState>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 200.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u32>,
    ) -> Result<Json<AccountPage>, ApiError> {
        let rows = state
            .store
            .list_accounts(cursor.0.as_deref(), limit.0 + 1)
            .await?;
        let more = rows.len() > limit.0 as usize;
        let data: Vec<Account> = futures::future::join_all(
            rows.iter()
                .take(limit.0 as usize)
                .map(|row| account_view(state, row)),
        )
        .await;
        let next_cursor = if more {
            data.last().map(|a| a.id.clone())
        } else {
            None
        };
        Ok(Json(AccountPage { data, next_cursor }))
    }

    /// Get an account
    #[oai(
        path = "/accounts/:account_id",
        method = "get",
        operation_id = "get_account"
    )]
    async fn get(
        &self,
        _auth: ApiToken,
        Data(state): Data<&Arc<AppState>>,
        account_id: Path<String>,
    ) -> Result<Json<Account>, ApiError> {
        let row = find_account(state, &account_id.0).await?;
        Ok(Json(account_view(state, &row).await))
    }

    /// Change an account
    #[oai(
        path = "/accounts/:account_id",
        method = "patch",
        operation_id = "update_account"
    )]
    async fn update(
        &self,
        _auth: ApiToken,
        Data(state): Data<&Arc<AppState>>,
        account_id: Path<String>,
        body: Json<UpdateAccount>,
    ) -> Result<Json<Account>, ApiError> {
        let body = body.0;
        let mut row = find_account(state, &account_id.0).await?;
        if let Some(name) = body.name {
            row.name = name;
        }
        if let Some(url) = body.crm_webhook_url {
            row.crm_webhook_url = parse_crm_url(&url)?;
        }
        match body.auto_reply_text {
            MaybeUndefined::Value(t) => row.auto_reply_text = Some(t),
            MaybeUndefined::Null => row.auto_reply_text = None,
            MaybeUndefined::Undefined => {}
        }
        if let Some(status) = body.status {
            row.status = status.as_str().to_owned();
        }
        if let Some(token) = body.instagram_access_token {
            row.instagram_access_token = Some(token);
            // A new token is the fix for rejected credentials.
            if row.status == AccountStatus::CredentialsInvalid.as_str() && body.status.is_none() {
                row.status = AccountStatus::Active.as_str().to_owned();
            }
        }
        if let Some(secs) = body.auto_reply_cooldown_secs {
            row.auto_reply_cooldown_secs = secs;
        }
        match body.events {
            MaybeUndefined::Value(list) => row.events = events_to_stored(Some(list)),
            MaybeUndefined::Null => row.events = None,
            MaybeUndefined::Undefined => {}
        }
        if let Some(secret) = body.webhook_secret {
            row.webhook_secret = parse_secret(&secret)?.expose().to_owned();
        }
        match body.max_in_flight {
            MaybeUndefined::Value(n) => row.max_in_flight = Some(parse_max_in_flight(state, n)?),
            MaybeUndefined::Null => row.max_in_flight = None,
            MaybeUndefined::Undefined => {}
        }
        row.updated_at = Utc::now();
        if !state.store.update_account(&row).await? {
            return Err(account_not_found());
        }
        state.routing.account_changed(state, &row.id).await;
        tracing::info!(account_id = %row.id, "account updated");
        Ok(Json(account_view(state, &row).await))
    }

    /// Remove an account and its messages
    #[oai(
        path = "/accounts/:account_id",
        method = "delete",
        operation_id = "delete_account"
    )]
    async fn delete(
        &self,
        _auth: ApiToken,
        Data(state): Data<&Arc<AppState>>,
        account_id: Path<String>,
    ) -> Result<DeleteAccountResponse, ApiError> {
        let id = parse_account_id(&account_id.0)?;
        if !state.store.delete_account(id.as_str()).await? {
            return Err(account_not_found());
        }
        state.routing.account_changed(state, id.as_str()).await;
        tracing::info!(account_id = %id, "account deleted");
        Ok(DeleteAccountResponse::Deleted)
    }
}

fn default_limit() -> u32 {
    50
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crm_urls_must_be_absolute_http_without_credentials() {
        assert!(parse_crm_url("https://crm.example.com/hooks/ig").is_ok());
        assert!(parse_crm_url("http://127.0.0.1:9000/x").is_ok());
        assert!(parse_crm_url("ftp://crm.example.com").is_err());
        assert!(parse_crm_url("/relative").is_err());
        assert!(parse_crm_url("https://user:pw@crm.example.com/").is_err());
    }
}
