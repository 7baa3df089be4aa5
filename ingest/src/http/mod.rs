//! The HTTP surface: Meta's webhook endpoint ([`webhooks`]), the API under
//! `/api/v1` with one module per resource (its routes, types and tag
//! together), health, and the OpenAPI document generated from
//! these types ([`openapi`]). Handlers turn requests into calls on
//! [`crate::domain`] and the store, and errors into [`error::ApiError`].

pub mod accounts;
pub mod auth;
pub mod body;
pub mod comments;
pub mod dead_letters;
pub mod error;
pub mod guard;
pub mod health;
pub mod idempotency;
pub mod messages;
pub mod metrics;
pub mod openapi;
pub mod profile;
pub mod refused_events;
pub mod rich;
pub mod send;
pub mod time;
pub mod tokens;
pub mod webhooks;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route};
use poem_openapi::Tags;

use crate::domain::Core;

/// The groups of the API in its document; each resource module names its own.
#[derive(Tags)]
pub enum ApiTags {
    /// Connected Instagram accounts and where their messages go.
    Accounts,
    /// Stored messages and where each stands on its way to the CRM.
    Messages,
    /// Messages the CRM refused or that ran out of retries, and events the
    /// database kept refusing to save: list, replay, discard.
    DeadLetters,
    /// Liveness and readiness.
    Health,
    /// Meta's webhook: the subscription handshake and signed event
    /// notifications (called by Meta, not by CRMs).
    Meta,
}

/// The HTTP application: Meta's webhook, the API, the spec and its UI.
pub fn routes(core: Arc<Core>) -> impl poem::Endpoint {
    let api = openapi::service();
    let api_max_body = core.config.ingest_api_max_body_bytes;
    let in_flight_max = core.config.common.router_account_in_flight_max;
    let limits = move || openapi::Limits {
        account_in_flight_max: in_flight_max,
    };
    // The document and the UI page (which embeds Swagger UI's script and
    // the document, 1.5 MB) are made when asked for, not held for the life
    // of the process.
    let spec = poem::endpoint::make_sync(move |_| {
        openapi::document(&limits()).with_content_type("application/json; charset=utf-8")
    });
    let docs =
        poem::endpoint::make_sync(move |_| poem::web::Html(openapi::swagger_ui_html(&limits())));
    let limiter = Arc::new(auth::ApiLimiter::new(core.config.router_api_rate_limit));
    Route::new()
        .at("/openapi.json", spec)
        .nest("/docs", docs)
        .nest(
            "/",
            api.around(move |next, req| limit_body(next, req, api_max_body)),
        )
        .around(move |next, req| serve_request(next, req, limiter.clone(), core.clone()))
}

/// Reads an API request's body up to `max` bytes (413 `payload_too_large`
/// above it, whether or not the client announced its length), then hands it
/// on. How long the client may take is the connection's deadline ([`guard`]).
async fn limit_body<E: Endpoint>(
    next: Arc<E>,
    mut req: Request,
    max: usize,
) -> poem::Result<Response> {
    // Meta's notifications have their own limit (INGEST_MAX_BODY_BYTES),
    // applied by their handler, which counts what it refuses.
    if req.uri().path() == webhooks::PATH {
        return next.call(req).await.map(IntoResponse::into_response);
    }
    // Boxed: reading a body is a 4 KiB future that Meta's notifications
    // (most requests) never need, and every request in flight would carry it.
    let body = Box::pin(req.take_body().into_bytes_limit(max)).await?;
    req.set_body(body);
    next.call(req).await.map(IntoResponse::into_response)
}

/// The one layer around every request (a layer per concern would each
/// hold its own copy of the request while it is in flight): it gives the
/// handlers what they share, renders an error that escaped them as JSON
/// `{code, message}`, and logs one line per request: method, path (never
/// the query string, which holds Meta's verify token), status and duration.
async fn serve_request<E: Endpoint>(
    next: Arc<E>,
    mut req: Request,
    limiter: Arc<auth::ApiLimiter>,
    core: Arc<Core>,
) -> poem::Result<Response> {
    req.extensions_mut().insert(limiter);
    req.extensions_mut().insert(core);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // Which API token made the request, filled in once it is checked: its
    // place in ROUTER_API_TOKENS (1 for the first) or an account token's id,
    // never the token; absent without a known one.
    let caller = auth::CallerSlot::default();
    req.extensions_mut().insert(caller.clone());
    let started = std::time::Instant::now();
    let resp = match next.call(req).await {
        Ok(resp) => resp.into_response(),
        Err(err) => error::render_error(err).await,
    };
    let elapsed = started.elapsed();
    if path == webhooks::PATH && method == poem::http::Method::POST {
        ::metrics::histogram!("router_ingest_webhook_seconds").record(elapsed.as_secs_f64());
    }
    tracing::info!(
        %method,
        %path,
        token = caller.0.get().map(tracing::field::display),
        status = resp.status().as_u16(),
        elapsed_ms = elapsed.as_millis() as u64,
        "http request"
    );
    Ok(resp)
}
