//! Meta's webhook endpoint: the subscription handshake and the signed event
//! delivery. The signature is checked over the raw bytes before anything is
//! parsed; every message is saved (with its outbox entry) before the 200.

use std::sync::Arc;

use chrono::Utc;
use poem::http::StatusCode;
use poem::web::{Data, Query};
use poem::{Body, IntoResponse, Request, Response, handler};
use serde::Deserialize;
use shared::ids::{AccountId, MessageId};
use shared::signing::{HUB_SIGNATURE_HEADER, verify_hub_signature};
use shared::wire::{self, InboundMessageWebhook};
use tracing::Instrument as _;

use crate::app::AppState;
use crate::error::ErrorBody;
use crate::followups;
use crate::meta::{self, Classified, WebhookPayload};
use crate::store::{AccountRow, NewMessage, SaveOutcome};
use shared::observe::Throughput;

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
    metrics::counter!("router_ingest_webhooks_total", "result" => code.to_owned()).increment(1);
    let body = ErrorBody::new(code, message);
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
            metrics::counter!("router_ingest_webhooks_total", "result" => "accepted").increment(1);
            for (kind, n) in [
                ("saved", tally.saved),
                ("duplicate", tally.duplicates),
                ("unknown_account", tally.unknown_account),
                ("not_forwarded", tally.not_forwarded),
            ] {
                metrics::counter!("router_ingest_events_total", "result" => kind)
                    .increment(u64::from(n));
            }
            if tally.saved > 0 {
                Throughput::add(&state.throughput.received, u64::from(tally.saved));
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

async fn save_events(state: &Arc<AppState>, payload: &WebhookPayload) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    if payload.object != "instagram" {
        tracing::info!(object = %payload.object, "ignoring webhook for another object");
        return Ok(tally);
    }
    for entry in &payload.entry {
        let (direct, from_changes, ignored_changes) = entry.events();
        tally.not_forwarded += ignored_changes as u32;
        let count = direct.len() + from_changes.len();
        let account = state.store.account_by_instagram_id(&entry.id).await?;
        let Some(account) = account else {
            tracing::info!(instagram_account_id = %entry.id, events = count, "webhook for an unknown account ignored");
            tally.unknown_account += count as u32;
            continue;
        };
        if account.status == "disabled" {
            tracing::info!(account_id = %account.id, events = count, "webhook for a disabled account ignored");
            tally.not_forwarded += count as u32;
            continue;
        }
        let account_id = AccountId::parse(&account.id)?;
        for event in direct.into_iter().chain(from_changes.iter()) {
            let Some(c) = meta::classify(&entry.id, event) else {
                tracing::debug!(account_id = %account.id, "event kind not forwarded");
                tally.not_forwarded += 1;
                continue;
            };
            let span = tracing::info_span!("event", account_id = %account.id, event = c.event);
            save_event(state, &account, &account_id, &entry.id, c, &mut tally)
                .instrument(span)
                .await?;
        }
    }
    Ok(tally)
}

async fn save_event(
    state: &Arc<AppState>,
    account: &AccountRow,
    account_id: &AccountId,
    instagram_account_id: &str,
    c: Classified,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    if c.event == wire::EVENT_MESSAGE_DELETED {
        state
            .store
            .mark_deleted(&account.id, &c.mid, c.time)
            .await?;
    }
    if c.event == wire::EVENT_MESSAGE_ECHO && echo_of_our_send(state, &account.id, &c).await? {
        tracing::info!(account_id = %account.id, "echo of a message sent through the API recorded");
        tally.duplicates += 1;
        return Ok(());
    }
    // The customer's username: from the cache now, or looked up after the
    // 200 while the outbox holds the message for a moment.
    let token = account
        .instagram_access_token
        .as_deref()
        .filter(|t| !t.is_empty());
    let (sender_username, lookup) = match (c.direction, token) {
        ("inbound", Some(_)) => match state.usernames.cached(&account.id, &c.sender_id) {
            Some(known) => (known, false),
            None => (None, true),
        },
        _ => (None, false),
    };
    let publish = account.receives(c.event);
    let id = MessageId::generate();
    let webhook = InboundMessageWebhook {
        event: c.event.to_owned(),
        message_id: id.to_string(),
        account_id: account_id.to_string(),
        sender_id: c.sender_id.clone(),
        sender_username,
        message: c.text.clone(),
        message_type: c.message_type.clone(),
        timestamp: wire::rfc3339(c.time),
        instagram_message_id: c.mid.clone(),
        conversation_id: wire::conversation_id(&c.customer_id, instagram_account_id),
        sequence: None,
        attachments: c.attachments.clone(),
        reply_to: c.reply_to,
        quick_reply: c.quick_reply,
        reaction: c.reaction,
        postback: c.postback,
        referral: c.referral,
    };
    let new = NewMessage {
        id: id.to_string(),
        account_id: account_id.to_string(),
        event: c.event,
        event_key: c.event_key,
        instagram_message_id: c.mid,
        direction: c.direction,
        conversation_id: webhook.conversation_id.clone(),
        sender_id: c.sender_id.clone(),
        recipient_id: c.recipient_id,
        message_type: c.message_type,
        text: c.text,
        attachments: serde_json::to_string(&c.attachments)?,
        sent_at: c.time,
        subject: state.subjects.inbound(account_id),
        webhook: Some(webhook.clone()),
        publish,
        hold_until: (publish && lookup).then(|| Utc::now() + followups::USERNAME_HOLD),
    };
    match state.store.save_message(&new).await? {
        SaveOutcome::Saved { sequence } => {
            tracing::info!(account_id = %account.id, message_id = %new.id, event = new.event, "message saved");
            tally.saved += 1;
            if new.hold_until.is_some() {
                followups::spawn_username_lookup(
                    state.clone(),
                    account.clone(),
                    new.id.clone(),
                    InboundMessageWebhook {
                        sequence,
                        ..webhook.clone()
                    },
                );
            }
            if new.event == wire::EVENT_MESSAGE_RECEIVED {
                followups::spawn_auto_reply(
                    state.clone(),
                    account.clone(),
                    c.customer_id,
                    webhook.conversation_id,
                );
            }
        }
        SaveOutcome::Duplicate => {
            tracing::info!(account_id = %account.id, event = new.event, "redelivered event ignored");
            tally.duplicates += 1;
        }
    }
    Ok(())
}

/// How long an echo waits for a reply to the same customer that is still on
/// its way to Meta: the echo can arrive before Meta's answer to the send.
const ECHO_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether an echo is of a message sent through our API (and so recorded).
async fn echo_of_our_send(
    state: &AppState,
    account_id: &str,
    c: &Classified,
) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + ECHO_WAIT;
    loop {
        if state.store.confirm_echo(account_id, &c.mid, c.time).await? {
            return Ok(true);
        }
        let waiting = state
            .store
            .send_in_flight(account_id, &c.customer_id)
            .await?;
        if !waiting || tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
