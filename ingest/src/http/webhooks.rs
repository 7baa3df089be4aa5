//! Meta's webhook endpoint over HTTP: the subscription handshake and the
//! signed event delivery. The signature is checked over the raw bytes before
//! anything is parsed ([`crate::meta::verify`]); every message is saved
//! with its outbox entry ([`crate::domain::inbound`]) before the 200.

use std::sync::Arc;

use poem::web::Data;
use poem::{Body, Request, RequestBody};
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::{Json, Payload, PlainText};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry};
use poem_openapi::types::Type as _;
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ApiResponse, ExtractParamOptions, Object, OpenApi,
};
use shared::observe::Throughput;

use super::ApiTags;
use super::error::ErrorBody;
use crate::domain::Core;
use crate::domain::inbound::save_events;
use crate::meta::payload::WebhookPayload;
use crate::meta::verify::{Handshake, signature_matches};

/// Where Meta sends its notifications and its subscription handshake.
pub const PATH: &str = "/webhooks/instagram";

/// Counts a refused webhook by its code and builds its error body.
fn error(code: &str, message: &str) -> Json<ErrorBody> {
    metrics::counter!("router_ingest_webhooks_total", "result" => code.to_owned()).increment(1);
    Json(ErrorBody::new(code, message))
}

#[derive(ApiResponse)]
pub enum HandshakeResponse {
    /// The subscription is verified: `hub.challenge`, echoed.
    #[oai(status = 200)]
    Verified(PlainText<String>),
    /// `verification_failed`: `hub.mode` is not `subscribe` or
    /// `hub.verify_token` is not `META_VERIFY_TOKEN`.
    #[oai(status = 403)]
    Refused(Json<ErrorBody>),
}

#[derive(ApiResponse)]
pub enum ReceiveResponse {
    /// Saved before this answer (or ignored: an unknown or disabled account,
    /// an event kind not forwarded): `EVENT_RECEIVED`.
    #[oai(status = 200)]
    Accepted(PlainText<&'static str>),
    /// `invalid_payload` (signed, but not an Instagram notification) or
    /// `unreadable_body`.
    #[oai(status = 400)]
    BadRequest(Json<ErrorBody>),
    /// `missing_signature` or `invalid_signature`: nothing is saved.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorBody>),
    /// `payload_too_large`: over `INGEST_MAX_BODY_BYTES`.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorBody>),
    /// `storage_unavailable`: the events could not be saved; Meta redelivers.
    #[oai(status = 503)]
    Unavailable(Json<ErrorBody>),
}

pub struct MetaWebhooksApi;

#[OpenApi(tag = "ApiTags::Meta")]
impl MetaWebhooksApi {
    /// Meta's subscription handshake
    ///
    /// Meta calls it once, when the webhook is set up in the app dashboard.
    #[oai(
        path = "/webhooks/instagram",
        method = "get",
        operation_id = "meta_handshake"
    )]
    async fn handshake(
        &self,
        Data(state): Data<&Arc<Core>>,
        /// `subscribe`.
        #[oai(name = "hub.mode")]
        mode: Query<Option<String>>,
        /// Must equal `META_VERIFY_TOKEN`.
        #[oai(name = "hub.verify_token")]
        verify_token: Query<Option<String>>,
        /// Echoed back when the token matches.
        #[oai(name = "hub.challenge")]
        challenge: Query<Option<String>>,
    ) -> HandshakeResponse {
        let handshake = Handshake {
            mode: mode.0,
            verify_token: verify_token.0,
            challenge: challenge.0,
        };
        match handshake.accept(&state.config.meta_verify_token) {
            Some(challenge) => {
                tracing::info!("meta webhook subscription verified");
                HandshakeResponse::Verified(PlainText(challenge))
            }
            None => {
                tracing::warn!("meta webhook handshake refused");
                HandshakeResponse::Refused(error(
                    "verification_failed",
                    "hub.mode or hub.verify_token is wrong",
                ))
            }
        }
    }

    /// Meta's event notifications
    ///
    /// Direct messages and their events for the Instagram accounts connected
    /// here. `X-Hub-Signature-256` (HMAC-SHA256 of the raw body with
    /// `META_APP_SECRET`) is checked over the bytes as sent, before anything
    /// is parsed. Each event is saved before the 200; Meta redelivers
    /// anything else.
    #[oai(
        path = "/webhooks/instagram",
        method = "post",
        operation_id = "meta_events"
    )]
    async fn receive(
        &self,
        Data(state): Data<&Arc<Core>>,
        /// `sha256=<hex>`.
        #[oai(name = "X-Hub-Signature-256")]
        signature: Header<Option<String>>,
        body: MetaWebhookBody,
    ) -> ReceiveResponse {
        receive(state, signature.0, body.0).await
    }
}

async fn receive(state: &Arc<Core>, signature: Option<String>, body: Body) -> ReceiveResponse {
    let Some(signature) = signature else {
        tracing::warn!("meta webhook without X-Hub-Signature-256 refused");
        return ReceiveResponse::Unauthorized(error(
            "missing_signature",
            "X-Hub-Signature-256 is required",
        ));
    };
    let signature = signature.to_owned();
    let bytes = match body
        .into_bytes_limit(state.config.ingest_max_body_bytes)
        .await
    {
        Ok(b) => b,
        Err(poem::error::ReadBodyError::PayloadTooLarge) => {
            tracing::warn!("meta webhook body over the limit refused");
            return ReceiveResponse::PayloadTooLarge(error(
                "payload_too_large",
                "the body is larger than the limit",
            ));
        }
        Err(_) => {
            return ReceiveResponse::BadRequest(error(
                "unreadable_body",
                "the body could not be read",
            ));
        }
    };
    if !signature_matches(&state.config.meta_app_secret, &bytes, &signature) {
        tracing::warn!("meta webhook with a wrong signature refused");
        return ReceiveResponse::Unauthorized(error(
            "invalid_signature",
            "X-Hub-Signature-256 does not match the body",
        ));
    }
    let payload: WebhookPayload = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                line = e.line(),
                column = e.column(),
                "signed meta webhook is not a valid payload"
            );
            return ReceiveResponse::BadRequest(error(
                "invalid_payload",
                "the body is not an Instagram webhook payload",
            ));
        }
    };
    match save_events(state, &payload).await {
        Ok(tally) => {
            tracing::info!(
                object = %payload.object,
                saved = tally.saved,
                duplicates = tally.duplicates,
                unknown_account = tally.unknown_account,
                not_forwarded = tally.not_forwarded,
                set_aside = tally.set_aside,
                "meta webhook accepted"
            );
            metrics::counter!("router_ingest_webhooks_total", "result" => "accepted").increment(1);
            for (kind, n) in [
                ("saved", tally.saved),
                ("duplicate", tally.duplicates),
                ("unknown_account", tally.unknown_account),
                ("not_forwarded", tally.not_forwarded),
                ("set_aside", tally.set_aside),
            ] {
                metrics::counter!("router_ingest_events_total", "result" => kind)
                    .increment(u64::from(n));
            }
            if tally.saved > 0 {
                Throughput::add(&state.throughput.received, u64::from(tally.saved));
                state.outbox_wakeup.notify_one();
            }
            ReceiveResponse::Accepted(PlainText("EVENT_RECEIVED"))
        }
        Err(e) => {
            // Meta retries anything but a 200: nothing is lost.
            tracing::error!(error = %e, "could not save meta webhook; meta will redeliver");
            ReceiveResponse::Unavailable(error(
                "storage_unavailable",
                "could not save the events; retry",
            ))
        }
    }
}

/// Meta's notification body, kept as the bytes Meta sent: the signature is
/// checked over them, and only then are they parsed (by serde, tolerantly:
/// [`WebhookPayload`]). The document shows it as [`MetaWebhookPayloadDoc`].
/// Any content type is taken (its extractor does not look), as Meta sends JSON.
pub struct MetaWebhookBody(Body);

impl Payload for MetaWebhookBody {
    const CONTENT_TYPE: &'static str = "application/json";

    fn schema_ref() -> MetaSchemaRef {
        MetaWebhookPayloadDoc::schema_ref()
    }

    fn register(registry: &mut Registry) {
        MetaWebhookPayloadDoc::register(registry);
    }
}

impl<'a> ApiExtractor<'a> for MetaWebhookBody {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: Some("Meta's notification, exactly as Meta sends it."),
            content: vec![MetaMediaType {
                content_type: Self::CONTENT_TYPE,
                schema: Self::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        _request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        Ok(Self(body.take().unwrap_or_default()))
    }
}

/// Meta's notification for Instagram (documented here from Meta's Instagram
/// Platform reference; fields ingest does not use are accepted and ignored).
#[derive(Debug, Object)]
#[oai(rename = "MetaWebhookPayload")]
pub struct MetaWebhookPayloadDoc {
    /// `instagram`; anything else is answered 200 and ignored.
    pub object: String,
    pub entry: Vec<MetaEntryDoc>,
}

#[derive(Debug, Object)]
#[oai(rename = "MetaEntry")]
pub struct MetaEntryDoc {
    /// The Instagram professional account the events belong to (an account's
    /// `instagram_account_id`).
    pub id: String,
    /// When Meta sent it, milliseconds since the epoch.
    pub time: Option<i64>,
    pub messaging: Option<Vec<MetaMessagingDoc>>,
    /// Events delivered while another app holds the thread; handled like `messaging`.
    pub standby: Option<Vec<MetaMessagingDoc>>,
    /// Field changes; messaging events found here (the dashboard's test) are handled too.
    pub changes: Option<Vec<MetaChangeDoc>>,
}

#[derive(Debug, Object)]
#[oai(rename = "MetaChange")]
pub struct MetaChangeDoc {
    pub field: String,
    pub value: serde_json::Value,
}

/// One messaging event: exactly one of `message`, `message_edit`,
/// `reaction`, `read`, `postback`, `referral`.
#[derive(Debug, Object)]
#[oai(rename = "MetaMessaging")]
pub struct MetaMessagingDoc {
    pub sender: MetaPartyDoc,
    pub recipient: MetaPartyDoc,
    /// Milliseconds since the epoch.
    pub timestamp: Option<i64>,
    pub message: Option<MetaMessageDoc>,
    pub message_edit: Option<MetaMessageEditDoc>,
    pub reaction: Option<MetaReactionDoc>,
    pub read: Option<MetaReadDoc>,
    pub postback: Option<MetaPostbackDoc>,
    pub referral: Option<serde_json::Value>,
}

#[derive(Debug, Object)]
#[oai(rename = "MetaParty")]
pub struct MetaPartyDoc {
    /// An Instagram-scoped user id, or the business account's id.
    pub id: String,
}

#[derive(Debug, Object)]
#[oai(rename = "MetaMessage")]
pub struct MetaMessageDoc {
    pub mid: String,
    pub text: Option<String>,
    pub attachments: Option<Vec<serde_json::Value>>,
    /// Sent by the business (from the Instagram app or this API).
    pub is_echo: Option<bool>,
    /// The customer deleted (unsent) it.
    pub is_deleted: Option<bool>,
    pub is_unsupported: Option<bool>,
    pub quick_reply: Option<serde_json::Value>,
    pub reply_to: Option<serde_json::Value>,
    pub referral: Option<serde_json::Value>,
}

#[derive(Debug, Object)]
#[oai(rename = "MetaMessageEdit")]
pub struct MetaMessageEditDoc {
    pub mid: String,
    pub text: Option<String>,
    pub num_edit: Option<i64>,
}

#[derive(Debug, Object)]
#[oai(rename = "MetaReaction")]
pub struct MetaReactionDoc {
    pub mid: String,
    /// `react` or `unreact`.
    pub action: String,
    pub reaction: Option<String>,
    pub emoji: Option<String>,
}

#[derive(Debug, Object)]
#[oai(rename = "MetaRead")]
pub struct MetaReadDoc {
    pub mid: String,
}

#[derive(Debug, Object)]
#[oai(rename = "MetaPostback")]
pub struct MetaPostbackDoc {
    pub mid: Option<String>,
    pub title: Option<String>,
    pub payload: Option<String>,
}
