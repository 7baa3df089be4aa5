//! Meta's webhook endpoint over HTTP: the subscription handshake and the
//! signed event delivery. The signature is checked over the raw bytes before
//! anything is parsed ([`crate::meta::verify`]); every message is saved
//! with its outbox entry ([`crate::domain::inbound`]) before the 200.

use std::sync::Arc;

use poem::http::StatusCode;
use poem::web::{Data, Query};
use poem::{Body, IntoResponse, Request, Response, handler};
use shared::observe::Throughput;

use super::error::ErrorBody;
use crate::domain::Core;
use crate::domain::inbound::save_events;
use crate::meta::payload::WebhookPayload;
use crate::meta::verify::{HUB_SIGNATURE_HEADER, Handshake, signature_matches};

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    metrics::counter!("router_ingest_webhooks_total", "result" => code.to_owned()).increment(1);
    let body = ErrorBody::new(code, message);
    (status, poem::web::Json(body)).into_response()
}

/// `GET /webhooks/instagram`: echoes `hub.challenge` when the token matches.
#[handler]
pub async fn handshake(Query(q): Query<Handshake>, Data(state): Data<&Arc<Core>>) -> Response {
    match q.accept(&state.config.meta_verify_token) {
        Some(challenge) => {
            tracing::info!("meta webhook subscription verified");
            challenge.with_content_type("text/plain").into_response()
        }
        None => {
            tracing::warn!("meta webhook handshake refused");
            error(
                StatusCode::FORBIDDEN,
                "verification_failed",
                "hub.mode or hub.verify_token is wrong",
            )
        }
    }
}

/// `POST /webhooks/instagram`.
#[handler]
pub async fn receive(req: &Request, body: Body, Data(state): Data<&Arc<Core>>) -> Response {
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
    if !signature_matches(&state.config.meta_app_secret, &bytes, &signature) {
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
