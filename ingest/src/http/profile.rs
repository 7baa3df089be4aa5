//! `/api/v1/accounts/{account_id}/ice-breakers` and `.../persistent-menu`:
//! what a customer sees before and beside the conversation, set through
//! the Graph API (`messenger_profile`, platform `instagram`). A tap comes
//! back as `message.postback` (the menu's postback items) or as a message
//! with the ice breaker's `payload`. Meta's limits are refused before Meta
//! is called; Meta's errors map as a reply's ([`super::send`]).

use crate::http::body::JsonBody;
use std::sync::Arc;

use poem::web::Data;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Union};
use serde_json::{Value, json};

use super::ApiTags;
use super::accounts::find_account;
use super::auth::ApiToken;
use super::error::ApiError;
use super::rich::web_url;
use super::send::{access_token, api_error};
use crate::domain::Core;
use crate::domain::send::graph_failed;
use crate::store::AccountRow;

/// A question offered to a customer who opens a conversation.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct IceBreaker {
    /// 1 to 80 characters.
    #[oai(validator(min_length = 1, max_length = 80))]
    pub question: String,
    /// Comes back with the customer's message when they tap it; 1 to 1000
    /// characters.
    #[oai(validator(min_length = 1, max_length = 1000))]
    pub payload: String,
}

/// The account's ice breakers: up to 4; an empty list removes them.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct IceBreakers {
    #[oai(validator(max_items = 4))]
    pub ice_breakers: Vec<IceBreaker>,
}

/// Sends a `message.postback` with `payload` to the CRM.
#[derive(Debug, Clone, Object)]
pub struct MenuPostback {
    /// 1 to 30 characters.
    #[oai(validator(min_length = 1, max_length = 30))]
    pub title: String,
    /// 1 to 1000 characters.
    #[oai(validator(min_length = 1, max_length = 1000))]
    pub payload: String,
}

/// Opens a web page.
#[derive(Debug, Clone, Object)]
pub struct MenuUrl {
    /// 1 to 30 characters.
    #[oai(validator(min_length = 1, max_length = 30))]
    pub title: String,
    /// An http(s) URL.
    #[oai(validator(max_length = 2048))]
    pub url: String,
}

/// A menu item, by `type`.
#[derive(Debug, Clone, Union)]
#[oai(discriminator_name = "type", one_of)]
pub enum MenuItem {
    #[oai(mapping = "postback")]
    Postback(MenuPostback),
    #[oai(mapping = "web_url")]
    WebUrl(MenuUrl),
}

/// The account's persistent menu: up to 20 items; an empty list removes it.
#[derive(Debug, Clone, Object)]
#[oai(deny_unknown_fields)]
pub struct PersistentMenu {
    #[oai(validator(max_items = 20))]
    pub items: Vec<MenuItem>,
    /// Hides the text box, so customers can only tap the menu. Default false.
    #[oai(default)]
    pub composer_input_disabled: bool,
}

/// Sets (or, with `None`, removes) one `messenger_profile` field.
async fn set_profile(
    state: &Core,
    account: &AccountRow,
    field: &str,
    value: Option<Value>,
) -> Result<(), ApiError> {
    let token = access_token(account)?;
    let ig = &account.instagram_account_id;
    let done = match value {
        Some(value) => {
            let body = json!({ "platform": "instagram", field: value });
            state.graph.set_messenger_profile(ig, &token, &body).await
        }
        None => {
            state
                .graph
                .delete_messenger_profile(ig, &token, field)
                .await
        }
    };
    match done {
        Ok(()) => {
            tracing::info!(account_id = %account.id, field, "messenger profile set");
            Ok(())
        }
        Err(e) => Err(api_error(graph_failed(state, account, e).await)),
    }
}

pub struct ProfileApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Accounts")]
impl ProfileApi {
    /// Set the account's ice breakers
    ///
    /// Up to 4 questions a customer can tap to start a conversation (Meta's
    /// `ice_breakers`, default locale). Replaces the ones set before; an
    /// empty list removes them. 200 with what was set.
    #[oai(
        path = "/accounts/:account_id/ice-breakers",
        method = "put",
        operation_id = "set_ice_breakers"
    )]
    async fn set_ice_breakers(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
        body: JsonBody<IceBreakers>,
    ) -> Result<Json<IceBreakers>, ApiError> {
        let account = find_account(state, &auth, &account_id.0).await?;
        let value = (!body.ice_breakers.is_empty()).then(|| {
            let questions: Vec<Value> = body
                .ice_breakers
                .iter()
                .map(|q| json!({ "question": q.question, "payload": q.payload }))
                .collect();
            json!([{ "call_to_actions": questions, "locale": "default" }])
        });
        set_profile(state, &account, "ice_breakers", value).await?;
        Ok(Json(body.0))
    }

    /// Set the account's persistent menu
    ///
    /// Up to 20 items always at hand in the conversation: postbacks (a
    /// `message.postback` to the CRM) and web links. Replaces the menu set
    /// before; an empty list removes it. 200 with what was set.
    #[oai(
        path = "/accounts/:account_id/persistent-menu",
        method = "put",
        operation_id = "set_persistent_menu"
    )]
    async fn set_persistent_menu(
        &self,
        auth: ApiToken,
        Data(state): Data<&Arc<Core>>,
        account_id: Path<String>,
        body: JsonBody<PersistentMenu>,
    ) -> Result<Json<PersistentMenu>, ApiError> {
        let account = find_account(state, &auth, &account_id.0).await?;
        let mut actions = Vec::with_capacity(body.items.len());
        for (i, item) in body.items.iter().enumerate() {
            actions.push(match item {
                MenuItem::Postback(p) => {
                    json!({ "type": "postback", "title": p.title, "payload": p.payload })
                }
                MenuItem::WebUrl(u) => json!({
                    "type": "web_url",
                    "title": u.title,
                    "url": web_url(&format!("items[{i}].url"), &u.url)?,
                }),
            });
        }
        let value = (!actions.is_empty()).then(|| {
            json!([{
                "locale": "default",
                "composer_input_disabled": body.composer_input_disabled,
                "call_to_actions": actions,
            }])
        });
        set_profile(state, &account, "persistent_menu", value).await?;
        Ok(Json(body.0))
    }
}
