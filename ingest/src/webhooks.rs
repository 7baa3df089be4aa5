//! Meta's webhook endpoint: the subscription handshake and the signed event
//! delivery. The signature is checked over the raw bytes before anything is
//! parsed; every message is saved (with its outbox entry) before the 200.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::{Data, Query};
use poem::{Body, IntoResponse, Request, Response, handler};
use serde::Deserialize;
use shared::ids::{AccountId, MessageId};
use shared::signing::{HUB_SIGNATURE_HEADER, verify_hub_signature};
use shared::wire::{self, Attachment, EVENT_MESSAGE_RECEIVED, InboundMessageWebhook};

use crate::app::AppState;
use crate::error::ErrorBody;
use crate::meta::{self, MessagingEvent, WebhookPayload};
use crate::store::{NewMessage, SaveOutcome};

#[derive(Deserialize)]
pub struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = ErrorBody {
        code: code.into(),
        message: message.into(),
    };
    (status, poem::web::Json(body)).into_response()
}

/// `GET /webhooks/instagram`: echoes `hub.challenge` when the token matches.
#[handler]
pub async fn handshake(Query(q): Query<Handshake>, Data(state): Data<&Arc<AppState>>) -> Response {
    let token_ok = q.verify_token.as_deref().is_some_and(|t| {
        use subtle::ConstantTimeEq as _;
        bool::from(
            t.as_bytes()
                .ct_eq(state.config.meta_verify_token.as_bytes()),
        )
    });
    match (q.mode.as_deref(), q.challenge) {
        (Some("subscribe"), Some(challenge)) if token_ok => {
            tracing::info!("meta webhook subscription verified");
            challenge.with_content_type("text/plain").into_response()
        }
        _ => {
            tracing::warn!("meta webhook handshake refused");
            error(
                StatusCode::FORBIDDEN,
                "verification_failed",
                "hub.mode or hub.verify_token is wrong",
            )
        }
    }
}

/// What one webhook delivery came to, for the log line and the tests.
#[derive(Debug, Default)]
struct Tally {
    saved: u32,
    duplicates: u32,
    unknown_account: u32,
    not_forwarded: u32,
}

/// `POST /webhooks/instagram`.
#[handler]
pub async fn receive(req: &Request, body: Body, Data(state): Data<&Arc<AppState>>) -> Response {
    let Some(signature) = req
        .headers()
        .get(HUB_SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
    else {
        tracing::warn!("meta webhook without X-Hub-Signature-256 refused");
        return error(
            StatusCode::UNAUTHORIZED,
            "missing_signature",
            "X-Hub-Signature-256 is required",
        );
    };
    let signature = signature.to_owned();
    let bytes = match body
        .into_bytes_limit(state.config.ingest_max_body_bytes)
        .await
    {
        Ok(b) => b,
        Err(poem::error::ReadBodyError::PayloadTooLarge) => {
            tracing::warn!("meta webhook body over the limit refused");
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is larger than the limit",
            );
        }
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                "the body could not be read",
            );
        }
    };
    if !verify_hub_signature(state.config.meta_app_secret.as_bytes(), &bytes, &signature) {
        tracing::warn!("meta webhook with a wrong signature refused");
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            "X-Hub-Signature-256 does not match the body",
        );
    }
    let payload: WebhookPayload = match serde_json::from_slice(&bytes) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(
                line = e.line(),
                column = e.column(),
                "signed meta webhook is not a valid payload"
            );
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_payload",
                "the body is not an Instagram webhook payload",
            );
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
                "meta webhook accepted"
            );
            if tally.saved > 0 {
                state.outbox_wakeup.notify_one();
            }
            "EVENT_RECEIVED"
                .with_content_type("text/plain")
                .into_response()
        }
        Err(e) => {
            // Meta retries anything but a 200: nothing is lost.
            tracing::error!(error = %e, "could not save meta webhook; meta will redeliver");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "could not save the events; retry",
            )
        }
    }
}

async fn save_events(state: &AppState, payload: &WebhookPayload) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    if payload.object != "instagram" {
        tracing::info!(object = %payload.object, "ignoring webhook for another object");
        return Ok(tally);
    }
    for entry in &payload.entry {
        let events = entry.messaging.iter().chain(entry.standby.iter());
        let account = state.store.account_by_instagram_id(&entry.id).await?;
        let Some(account) = account else {
            let count = entry.messaging.len() + entry.standby.len() + entry.changes.len();
            tracing::info!(instagram_account_id = %entry.id, events = count, "webhook for an unknown account ignored");
            tally.unknown_account += count as u32;
            continue;
        };
        if account.status == "disabled" {
            let count = entry.messaging.len() + entry.standby.len() + entry.changes.len();
            tracing::info!(account_id = %account.id, events = count, "webhook for a disabled account ignored");
            tally.not_forwarded += count as u32;
            continue;
        }
        tally.not_forwarded += entry.changes.len() as u32;
        let account_id = AccountId::parse(&account.id)?;
        for event in events {
            let Some(message) = forwardable(event) else {
                tracing::debug!(account_id = %account.id, kind = event.kind(), "event accepted, not forwarded");
                tally.not_forwarded += 1;
                continue;
            };
            let new = inbound_message(state, &account_id, &entry.id, event, message)?;
            match state.store.save_message(&new).await? {
                SaveOutcome::Saved => {
                    tracing::info!(account_id = %account.id, message_id = %new.id, "message saved");
                    tally.saved += 1
                }
                SaveOutcome::Duplicate => {
                    tracing::info!(account_id = %account.id, "redelivered message ignored");
                    tally.duplicates += 1
                }
            }
        }
    }
    Ok(tally)
}

/// The messages this version forwards: received text and attachments.
/// Echoes, deletions, reactions, reads and the rest are accepted and counted.
fn forwardable(event: &MessagingEvent) -> Option<&meta::Message> {
    event
        .message
        .as_ref()
        .filter(|m| !m.is_echo && !m.is_deleted)
}

fn inbound_message(
    state: &AppState,
    account_id: &AccountId,
    instagram_account_id: &str,
    event: &MessagingEvent,
    message: &meta::Message,
) -> anyhow::Result<NewMessage> {
    let id = MessageId::generate();
    let sent_at = event.time();
    let customer = &event.sender.id;
    let conversation_id = wire::conversation_id(customer, instagram_account_id);
    let attachments: Vec<Attachment> = message
        .attachments
        .iter()
        .map(|a| Attachment {
            kind: meta::attachment_type(&a.kind).to_owned(),
            url: a.payload.as_ref().and_then(|p| p.url.clone()),
        })
        .collect();
    let webhook = InboundMessageWebhook {
        event: EVENT_MESSAGE_RECEIVED.to_owned(),
        message_id: id.to_string(),
        account_id: account_id.to_string(),
        sender_id: customer.clone(),
        sender_username: None,
        message: message.text.clone(),
        message_type: message.message_type(),
        timestamp: wire::rfc3339(sent_at),
        instagram_message_id: message.mid.clone(),
        conversation_id: conversation_id.clone(),
        attachments: attachments.clone(),
    };
    Ok(NewMessage {
        id: id.to_string(),
        account_id: account_id.to_string(),
        instagram_message_id: message.mid.clone(),
        direction: "inbound",
        conversation_id,
        sender_id: customer.clone(),
        recipient_id: event.recipient.id.clone(),
        message_type: webhook.message_type.clone(),
        text: message.text.clone(),
        attachments: serde_json::to_string(&attachments)?,
        sent_at,
        subject: state.subjects.inbound(account_id),
        payload: serde_json::to_vec(&webhook)?,
    })
}
