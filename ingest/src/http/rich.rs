//! The richer parts of a reply, as the API takes them: quick replies,
//! templates and their buttons. Meta's limits are in the schema (lengths,
//! counts), so they are refused before Meta is called, and each part
//! becomes Meta's JSON here.

use poem_openapi::{Enum, Object, Union};
use serde_json::{Value, json};

use super::error::ApiError;

/// A button under the text; tapping it sends its title as the customer's
/// message, with `payload` (the CRM payload's `quick_reply.payload`).
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct OutgoingQuickReply {
    /// 1 to 20 characters (Meta's limit).
    #[oai(validator(min_length = 1, max_length = 20))]
    pub title: String,
    /// 1 to 1000 characters.
    #[oai(validator(min_length = 1, max_length = 1000))]
    pub payload: String,
}

/// Opens a web page.
#[derive(Debug, Object)]
pub struct UrlButton {
    /// 1 to 20 characters.
    #[oai(validator(min_length = 1, max_length = 20))]
    pub title: String,
    /// An http(s) URL.
    #[oai(validator(max_length = 2048))]
    pub url: String,
}

/// Sends a `message.postback` with `payload` to the CRM.
#[derive(Debug, Object)]
pub struct PostbackButton {
    /// 1 to 20 characters.
    #[oai(validator(min_length = 1, max_length = 20))]
    pub title: String,
    /// 1 to 1000 characters.
    #[oai(validator(min_length = 1, max_length = 1000))]
    pub payload: String,
}

/// A template's button, by `type`.
#[derive(Debug, Union)]
#[oai(discriminator_name = "type", one_of)]
pub enum Button {
    #[oai(mapping = "web_url")]
    WebUrl(UrlButton),
    #[oai(mapping = "postback")]
    Postback(PostbackButton),
}

/// One card of a generic template: a title and at least one of the rest.
#[derive(Debug, Object)]
#[oai(deny_unknown_fields)]
pub struct TemplateElement {
    /// 1 to 80 characters.
    #[oai(validator(min_length = 1, max_length = 80))]
    pub title: String,
    /// Up to 80 characters.
    #[oai(validator(max_length = 80))]
    pub subtitle: Option<String>,
    /// An http(s) URL of the card's image.
    #[oai(validator(max_length = 2048))]
    pub image_url: Option<String>,
    /// An http(s) URL opened when the card is tapped.
    #[oai(validator(max_length = 2048))]
    pub default_action_url: Option<String>,
    /// Up to 3 buttons.
    #[oai(validator(min_items = 1, max_items = 3))]
    pub buttons: Option<Vec<Button>>,
}

/// Cards side by side (a carousel), 1 to 10.
#[derive(Debug, Object)]
pub struct GenericTemplate {
    #[oai(validator(min_items = 1, max_items = 10))]
    pub elements: Vec<TemplateElement>,
}

/// A text with 1 to 3 buttons under it.
#[derive(Debug, Object)]
pub struct ButtonTemplate {
    /// 1 to 640 characters.
    #[oai(validator(min_length = 1, max_length = 640))]
    pub text: String,
    #[oai(validator(min_items = 1, max_items = 3))]
    pub buttons: Vec<Button>,
}

/// A structured message, by `type`.
#[derive(Debug, Union)]
#[oai(discriminator_name = "type", one_of)]
pub enum Template {
    #[oai(mapping = "generic")]
    Generic(GenericTemplate),
    #[oai(mapping = "button")]
    Button(ButtonTemplate),
}

/// Shown to the customer instead of a message; nothing is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum SenderAction {
    /// "typing…" for up to 20 s, or until the next message.
    TypingOn,
    TypingOff,
    /// Marks the customer's last message as seen.
    MarkSeen,
}

impl SenderAction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TypingOn => "typing_on",
            Self::TypingOff => "typing_off",
            Self::MarkSeen => "mark_seen",
        }
    }
}

/// `url` if it is an absolute http(s) URL as the API takes them (the
/// pattern its document gives, [`shared::model::is_web_url`], which admits
/// no other scheme), as Meta will fetch it.
pub fn http_url(url: &str) -> Option<String> {
    if !shared::model::is_web_url(url) {
        return None;
    }
    url::Url::parse(url).ok().map(|u| u.to_string())
}

/// An http(s) URL for `field`, or 400 `invalid_url`.
pub fn web_url(field: &str, url: &str) -> Result<String, ApiError> {
    http_url(url).ok_or_else(|| {
        ApiError::bad_request("invalid_url", format!("{field} must be an http(s) URL"))
    })
}

/// Meta's `quick_replies` array.
pub fn quick_replies(replies: Vec<OutgoingQuickReply>) -> Value {
    replies
        .into_iter()
        .map(|r| json!({ "content_type": "text", "title": r.title, "payload": r.payload }))
        .collect()
}

fn buttons(field: &str, buttons: Vec<Button>) -> Result<Value, ApiError> {
    buttons
        .into_iter()
        .map(|b| match b {
            Button::WebUrl(b) => Ok(json!({
                "type": "web_url",
                "url": web_url(&format!("{field}.url"), &b.url)?,
                "title": b.title,
            })),
            Button::Postback(b) => {
                Ok(json!({ "type": "postback", "title": b.title, "payload": b.payload }))
            }
        })
        .collect()
}

/// Meta's template payload, its `template_type`, and the text to record.
pub fn template(t: Template) -> Result<(&'static str, Value, Option<String>), ApiError> {
    match t {
        Template::Button(t) => {
            let payload = json!({
                "template_type": "button",
                "text": t.text,
                "buttons": buttons("template.buttons", t.buttons)?,
            });
            Ok(("button", payload, Some(t.text)))
        }
        Template::Generic(t) => {
            let mut elements = Vec::with_capacity(t.elements.len());
            for (i, e) in t.elements.into_iter().enumerate() {
                let field = format!("template.elements[{i}]");
                if e.subtitle.is_none()
                    && e.image_url.is_none()
                    && e.default_action_url.is_none()
                    && e.buttons.is_none()
                {
                    return Err(ApiError::bad_request(
                        "invalid_template",
                        format!(
                            "{field} needs subtitle, image_url, default_action_url or buttons besides its title (Meta's rule)"
                        ),
                    ));
                }
                let mut element = json!({ "title": e.title });
                if let Some(subtitle) = e.subtitle {
                    element["subtitle"] = json!(subtitle);
                }
                if let Some(url) = e.image_url {
                    element["image_url"] = json!(web_url(&format!("{field}.image_url"), &url)?);
                }
                if let Some(url) = e.default_action_url {
                    let url = web_url(&format!("{field}.default_action_url"), &url)?;
                    element["default_action"] = json!({ "type": "web_url", "url": url });
                }
                if let Some(list) = e.buttons {
                    element["buttons"] = buttons(&format!("{field}.buttons"), list)?;
                }
                elements.push(element);
            }
            let payload = json!({ "template_type": "generic", "elements": elements });
            Ok(("generic", payload, None))
        }
    }
}
