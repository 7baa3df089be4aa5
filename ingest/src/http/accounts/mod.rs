//! `/api/v1/accounts`: connect, read, change and remove Instagram accounts.
//! Secrets (`webhook_secret`, `instagram_access_token`) are write-only: the
//! generated webhook secret is returned once, in the create response.

pub mod deliveries;

use crate::http::body::JsonBody;
use crate::http::time::Timestamp;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem::web::Data;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::types::MaybeUndefined;
use poem_openapi::{ApiResponse, Object, OpenApi};
use shared::ids::AccountId;
use shared::model::{AccountStatus, CredentialsState, CrmWebhookUrl, EventKind, EventSelection};
use shared::signing::WebhookSecret;

use self::deliveries::{DeliveryHealthView, account_view, new_account_view};
use crate::domain::Core;
use crate::http::ApiTags;
use crate::http::auth::ApiToken;
use crate::http::body::OptionalJson;
use crate::http::error::ApiError;
use crate::http::send::within_text_limit;
use crate::store::AccountRow;

/// The selection an API caller gives: `None` (omitted or null) for every event.
fn selection(events: Option<Vec<EventKind>>) -> EventSelection {
    events.map_or(EventSelection::Every, EventSelection::Only)
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
    #[oai(nullable)]
    pub auto_reply_text: Option<String>,
    /// Sent as the private reply to each new comment (once per comment).
    #[oai(nullable)]
    pub comment_auto_reply_text: Option<String>,
    /// An auto-reply goes to a conversation at most once per this many seconds.
    pub auto_reply_cooldown_secs: i64,
    /// The events the CRM receives.
    pub events: Vec<EventKind>,
    pub status: AccountStatus,
    /// Deliveries to the CRM in flight at once; `null` for the forwarders'
    /// default (`FORWARDER_ACCOUNT_IN_FLIGHT`, 8).
    #[oai(nullable)]
    pub max_in_flight: Option<i64>,
    /// How deliveries to the CRM are doing.
    pub delivery_health: DeliveryHealthView,
    /// Where the Instagram access token stands (never the token itself).
    pub credentials: CredentialsView,
    /// While a secret rotation's grace period lasts: when the previous
    /// webhook secret stops signing deliveries (until then
    /// `webhook-signature` carries both signatures and `X-Hub-Signature-256`
    /// the previous secret's). `null` otherwise.
    #[oai(nullable)]
    pub previous_secret_valid_until: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Account {
    pub fn new(r: &AccountRow, delivery_health: DeliveryHealthView) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            instagram_account_id: r.instagram_account_id.clone(),
            crm_webhook_url: r.crm_webhook_url.to_string(),
            auto_reply_text: r.auto_reply_text.clone(),
            comment_auto_reply_text: r.comment_auto_reply_text.clone(),
            auto_reply_cooldown_secs: r.auto_reply_cooldown_secs,
            events: r.events.kinds(),
            status: r.status,
            max_in_flight: r.max_in_flight,
            delivery_health,
            credentials: CredentialsView::new(r),
            previous_secret_valid_until: r
                .previous_secret(Utc::now())
                .map(|(_, until)| until.into()),
            created_at: r.created_at.into(),
            updated_at: r.updated_at.into(),
        }
    }
}

/// The account's Instagram access token: its state and lifetime.
#[derive(Debug, Object)]
pub struct CredentialsView {
    /// `valid`; `expiring` (a refresh failed: the token still works until
    /// `expires_at`, the refresh is tried again daily); `invalid` (Meta
    /// refused it, or it expired: set a new `instagram_access_token`);
    /// `missing` (no token: the account receives but cannot reply).
    pub state: CredentialsState,
    /// When the token expires; `null` until known (given with the token as
    /// `instagram_access_token_expires_in`, or learnt from the first refresh).
    #[oai(nullable)]
    pub expires_at: Option<Timestamp>,
    /// When the token was set or last refreshed.
    #[oai(nullable)]
    pub token_updated_at: Option<Timestamp>,
    /// When a refresh was last tried (at most once a day).
    #[oai(nullable)]
    pub last_refresh_attempt_at: Option<Timestamp>,
    /// Why the state is not `valid`: `meta_190` (Meta refused the token),
    /// `expired`, `meta_<code>` (Meta refused the refresh), `timeout`,
    /// `unreachable`.
    #[oai(nullable)]
    pub error: Option<String>,
}

impl CredentialsView {
    fn new(r: &AccountRow) -> Self {
        let state = r.credentials();
        let has_token = state != CredentialsState::Missing;
        Self {
            state,
            expires_at: r.token_expires_at.filter(|_| has_token).map(Into::into),
            token_updated_at: r.token_set_at.filter(|_| has_token).map(Into::into),
            last_refresh_attempt_at: r
                .token_refresh_attempted_at
                .filter(|_| has_token)
                .map(Into::into),
            error: r.credentials_error.clone().filter(|_| has_token),
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

/// The rotate response: the account plus its new webhook secret, shown this once.
#[derive(Debug, Object)]
pub struct RotatedSecret {
    #[oai(flatten)]
    pub account: Account,
    /// The new `whsec_…` secret. Store it now; it is never shown again.
    pub webhook_secret: String,
}

/// How a webhook secret is rotated.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct RotateSecret {
    /// How long the previous secret keeps signing deliveries beside the new
    /// one, in seconds: default 86400 (24 h), at most 604800 (7 days); 0
    /// switches every signature to the new secret at once.
    #[oai(validator(minimum(value = "0"), maximum(value = "604800")))]
    pub grace_period_secs: Option<i64>,
}

#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
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
    /// The private reply sent to each new comment on the account's media
    /// (once per comment, within Meta's 7 days); none when omitted.
    #[oai(validator(max_length = 1000))]
    pub comment_auto_reply_text: Option<String>,
    /// Token for Meta's Send API (write-only): printable ASCII, no spaces.
    #[oai(validator(max_length = 1024, pattern = r"^[!-~]*$"))]
    pub instagram_access_token: Option<String>,
    /// Seconds until the token expires, as Meta's token answer gives it
    /// (`expires_in`); with `instagram_access_token` only. When omitted, the
    /// first refresh (once the token is 24 h old) tells.
    #[oai(validator(minimum(value = "1"), maximum(value = "7776000")))]
    pub instagram_access_token_expires_in: Option<i64>,
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
#[oai(deny_unknown_fields)]
pub struct UpdateAccount {
    #[oai(validator(min_length = 1, max_length = 200))]
    pub name: Option<String>,
    #[oai(validator(max_length = 2048))]
    pub crm_webhook_url: Option<String>,
    #[oai(validator(max_length = 1000))]
    #[oai(nullable)]
    pub auto_reply_text: MaybeUndefined<String>,
    /// `null` stops answering new comments.
    #[oai(validator(max_length = 1000))]
    #[oai(nullable)]
    pub comment_auto_reply_text: MaybeUndefined<String>,
    pub status: Option<AccountStatus>,
    /// Replaces the Send API token (write-only): printable ASCII, no spaces.
    /// The credentials become `valid` again.
    #[oai(validator(max_length = 1024, pattern = r"^[!-~]*$"))]
    pub instagram_access_token: Option<String>,
    /// Seconds until the new token expires (Meta's `expires_in`); with
    /// `instagram_access_token` only.
    #[oai(validator(minimum(value = "1"), maximum(value = "7776000")))]
    pub instagram_access_token_expires_in: Option<i64>,
    /// Rotates the webhook secret (write-only).
    pub webhook_secret: Option<String>,
    #[oai(validator(minimum(value = "60"), maximum(value = "31536000")))]
    pub auto_reply_cooldown_secs: Option<i64>,
    /// The events the CRM receives; `null` for every event.
    #[oai(nullable)]
    pub events: MaybeUndefined<Vec<EventKind>>,
    /// Deliveries in flight at once; `null` for the forwarders' default.
    #[oai(validator(minimum(value = "1")))]
    #[oai(nullable)]
    pub max_in_flight: MaybeUndefined<i64>,
}

#[derive(Debug, Object)]
pub struct AccountPage {
    pub data: Vec<Account>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
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
fn parse_crm_url(s: &str) -> Result<CrmWebhookUrl, ApiError> {
    CrmWebhookUrl::from_user(s).map_err(|why| {
        ApiError::bad_request("invalid_crm_webhook_url", format!("crm_webhook_url {why}"))
    })
}

/// Refuses a CRM URL that reaches only loopback, private or other
/// non-public addresses, unless `CRM_ALLOW_PRIVATE_NETWORKS`. A name that
/// does not resolve (yet) is accepted: the forwarder checks again at each
/// delivery, since DNS can change.
async fn check_crm_reachable(state: &Core, url: &CrmWebhookUrl) -> Result<(), ApiError> {
    if state.config.common.crm_allow_private_networks {
        return Ok(());
    }
    let url = url.url();
    let addresses: Vec<std::net::IpAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![ip.into()],
        Some(url::Host::Ipv6(ip)) => vec![ip.into()],
        Some(url::Host::Domain(name)) => {
            let port = url.port_or_known_default().unwrap_or(443);
            let lookup = tokio::net::lookup_host((name, port));
            match tokio::time::timeout(std::time::Duration::from_secs(5), lookup).await {
                Ok(Ok(found)) => found.map(|a| a.ip()).collect(),
                _ => return Ok(()),
            }
        }
        None => return Ok(()),
    };
    if !addresses.is_empty() && !addresses.iter().any(|ip| shared::net::is_public(*ip)) {
        return Err(ApiError::bad_request(
            "crm_webhook_url_not_public",
            "crm_webhook_url reaches only loopback, private or other non-public addresses \
             (CRM_ALLOW_PRIVATE_NETWORKS=true allows them)",
        ));
    }
    Ok(())
}

/// When a token given with `expires_in` expires; 400 for an
/// `instagram_access_token_expires_in` without a token.
fn token_expiry(
    token: Option<&String>,
    expires_in: Option<i64>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    match (token, expires_in) {
        (None, Some(_)) => Err(ApiError::bad_request(
            "invalid_request",
            "instagram_access_token_expires_in is given with instagram_access_token only",
        )),
        (_, secs) => Ok(secs
            .map(|s| chrono::SubsecRound::trunc_subsecs(now + chrono::TimeDelta::seconds(s), 0))),
    }
}

/// A text Instagram will take, for the field `field`.
fn checked_text(field: &str, text: String) -> Result<String, ApiError> {
    within_text_limit(field, &text)?;
    Ok(text)
}

/// An account's cap, within the operator's maximum.
fn parse_max_in_flight(state: &Core, n: i64) -> Result<i64, ApiError> {
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

pub(crate) fn account_not_found() -> ApiError {
    ApiError::not_found("account_not_found", "no such account")
}

fn parse_account_id(s: &str) -> Result<AccountId, ApiError> {
    AccountId::parse(s).map_err(|_| account_not_found())
}

/// The account a path names, or 404 `account_not_found`: also for an
/// account this token cannot reach, exactly as if it did not exist.
pub async fn find_account(
    state: &Core,
    auth: &ApiToken,
    raw_id: &str,
) -> Result<AccountRow, ApiError> {
    auth.reach(raw_id)?;
    let id = parse_account_id(raw_id)?;
    state
        .store
        .accounts
        .get_account(id.as_str())
        .await?
        .ok_or_else(account_not_found)
}

/// Stores a changed account and hands its routing to the forwarders.
async fn save_change(
    state: &Core,
    row: &mut AccountRow,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    row.updated_at = now;
    if !state.store.accounts.update_account(row).await? {
        return Err(account_not_found());
    }
    state.routing.account_changed(&row.id).await;
    Ok(())
}

pub struct AccountsApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Accounts")]
impl AccountsApi {
    /// Connect an Instagram account
    #[oai(path = "/accounts", method = "post", operation_id = "create_account")]
    async fn create(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        body: JsonBody<CreateAccount>,
    ) -> Result<CreateAccountResponse, ApiError> {
        auth.operator()?;
        let body = body.0;
        let crm_webhook_url = parse_crm_url(&body.crm_webhook_url)?;
        check_crm_reachable(state, &crm_webhook_url).await?;
        let secret = match body.webhook_secret.as_deref() {
            Some(s) => parse_secret(s)?,
            None => WebhookSecret::generate(),
        };
        let now = Utc::now();
        let expires_at = token_expiry(
            body.instagram_access_token.as_ref(),
            body.instagram_access_token_expires_in,
            now,
        )?;
        let mut row = AccountRow::new(
            AccountId::generate().to_string(),
            body.name,
            body.instagram_account_id,
            crm_webhook_url,
            secret.expose().to_owned(),
            now,
        );
        row.auto_reply_text = body
            .auto_reply_text
            .map(|t| checked_text("auto_reply_text", t))
            .transpose()?;
        row.comment_auto_reply_text = body
            .comment_auto_reply_text
            .map(|t| checked_text("comment_auto_reply_text", t))
            .transpose()?;
        row.status = body.status.unwrap_or(AccountStatus::Active);
        row.events = selection(body.events);
        row.auto_reply_cooldown_secs = body.auto_reply_cooldown_secs.unwrap_or(86_400);
        row.max_in_flight = body
            .max_in_flight
            .map(|n| parse_max_in_flight(state, n))
            .transpose()?;
        if let Some(token) = body.instagram_access_token {
            row.set_token(token, expires_at, now);
        }
        state.store.accounts.insert_account(&row).await?;
        state.routing.account_changed(&row.id).await;
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
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        /// The `next_cursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size, 1 to 200.
        #[oai(
            default = "default_limit",
            validator(minimum(value = "1"), maximum(value = "200"))
        )]
        limit: Query<u32>,
    ) -> Result<Json<AccountPage>, ApiError> {
        let rows = match auth.scope() {
            None => {
                state
                    .store
                    .accounts
                    .list_accounts(cursor.0.as_deref(), limit.0 + 1)
                    .await?
            }
            // An account token sees its own account, and no other.
            Some(own) => state
                .store
                .accounts
                .get_account(own)
                .await?
                .filter(|row| {
                    cursor
                        .0
                        .as_deref()
                        .is_none_or(|after| row.id.as_str() > after)
                })
                .into_iter()
                .collect(),
        };
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
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
    ) -> Result<Json<Account>, ApiError> {
        let row = find_account(state, &auth, &account_id.0).await?;
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
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
        body: JsonBody<UpdateAccount>,
    ) -> Result<Json<Account>, ApiError> {
        let body = body.0;
        let mut row = find_account(state, &auth, &account_id.0).await?;
        let now = Utc::now();
        let expires_at = token_expiry(
            body.instagram_access_token.as_ref(),
            body.instagram_access_token_expires_in,
            now,
        )?;
        if let Some(name) = body.name {
            row.name = name;
        }
        if let Some(url) = body.crm_webhook_url {
            row.crm_webhook_url = parse_crm_url(&url)?;
            check_crm_reachable(state, &row.crm_webhook_url).await?;
        }
        match body.auto_reply_text {
            MaybeUndefined::Value(t) => {
                row.auto_reply_text = Some(checked_text("auto_reply_text", t)?)
            }
            MaybeUndefined::Null => row.auto_reply_text = None,
            MaybeUndefined::Undefined => {}
        }
        match body.comment_auto_reply_text {
            MaybeUndefined::Value(t) => {
                row.comment_auto_reply_text = Some(checked_text("comment_auto_reply_text", t)?)
            }
            MaybeUndefined::Null => row.comment_auto_reply_text = None,
            MaybeUndefined::Undefined => {}
        }
        if let Some(status) = body.status {
            row.status = status;
        }
        if let Some(token) = body.instagram_access_token {
            row.set_token(token, expires_at, now);
            // A new token is the fix for rejected credentials.
            if row.status == AccountStatus::CredentialsInvalid && body.status.is_none() {
                row.status = AccountStatus::Active;
            }
        }
        if let Some(secs) = body.auto_reply_cooldown_secs {
            row.auto_reply_cooldown_secs = secs;
        }
        match body.events {
            MaybeUndefined::Value(list) => row.events = selection(Some(list)),
            MaybeUndefined::Null => row.events = EventSelection::Every,
            MaybeUndefined::Undefined => {}
        }
        if let Some(secret) = body.webhook_secret {
            // A secret set this way replaces the old one at once.
            row.webhook_secret = parse_secret(&secret)?.expose().to_owned();
            row.previous_webhook_secret = None;
            row.previous_secret_until = None;
        }
        match body.max_in_flight {
            MaybeUndefined::Value(n) => row.max_in_flight = Some(parse_max_in_flight(state, n)?),
            MaybeUndefined::Null => row.max_in_flight = None,
            MaybeUndefined::Undefined => {}
        }
        save_change(state, &mut row, now).await?;
        tracing::info!(account_id = %row.id, "account updated");
        Ok(Json(account_view(state, &row).await))
    }

    /// Rotate the webhook secret
    ///
    /// Generates a new secret and returns it, this once. For the grace
    /// period (default 24 h) deliveries carry two signatures in
    /// `webhook-signature`, the new secret's and the previous one's, and
    /// `X-Hub-Signature-256` stays with the previous secret; after it, every
    /// signature uses the new secret. Switch your CRM to the new secret
    /// within the period. A rotation during a grace period ends it: the
    /// secret replaced now is the one that keeps signing.
    #[oai(
        path = "/accounts/:account_id/rotate-secret",
        method = "post",
        operation_id = "rotate_webhook_secret"
    )]
    async fn rotate_secret(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
        body: OptionalJson<RotateSecret>,
    ) -> Result<Json<RotatedSecret>, ApiError> {
        let mut row = find_account(state, &auth, &account_id.0).await?;
        let grace = body.0.grace_period_secs.unwrap_or(86_400);
        let now = Utc::now();
        let secret = WebhookSecret::generate();
        let previous = std::mem::replace(&mut row.webhook_secret, secret.expose().to_owned());
        if grace > 0 {
            row.previous_webhook_secret = Some(previous);
            // Whole seconds: what every store keeps the same.
            let until = now + chrono::TimeDelta::seconds(grace);
            row.previous_secret_until = Some(chrono::SubsecRound::trunc_subsecs(until, 0));
        } else {
            row.previous_webhook_secret = None;
            row.previous_secret_until = None;
        }
        save_change(state, &mut row, now).await?;
        tracing::info!(account_id = %row.id, grace_period_secs = grace, "webhook secret rotated");
        Ok(Json(RotatedSecret {
            account: account_view(state, &row).await,
            webhook_secret: row.webhook_secret,
        }))
    }

    /// End a secret rotation's grace period now
    ///
    /// The previous webhook secret stops signing at once: every signature,
    /// `X-Hub-Signature-256` included, uses the current secret. For a CRM
    /// that has switched before the grace period ends. 200 with the account,
    /// also when no grace period was running.
    #[oai(
        path = "/accounts/:account_id/rotate-secret/complete",
        method = "post",
        operation_id = "complete_secret_rotation"
    )]
    async fn complete_rotation(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
    ) -> Result<Json<Account>, ApiError> {
        let mut row = find_account(state, &auth, &account_id.0).await?;
        if row.previous_webhook_secret.is_some() || row.previous_secret_until.is_some() {
            row.previous_webhook_secret = None;
            row.previous_secret_until = None;
            save_change(state, &mut row, Utc::now()).await?;
            tracing::info!(account_id = %row.id, "secret rotation completed early");
        }
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
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
    ) -> Result<DeleteAccountResponse, ApiError> {
        auth.reach(&account_id.0)?;
        auth.operator()?;
        let id = parse_account_id(&account_id.0)?;
        if !state.store.accounts.delete_account(id.as_str()).await? {
            return Err(account_not_found());
        }
        state.routing.account_changed(id.as_str()).await;
        tracing::info!(account_id = %id, "account deleted");
        Ok(DeleteAccountResponse::Deleted)
    }
}

fn default_limit() -> u32 {
    50
}
