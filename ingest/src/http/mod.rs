//! The HTTP surface: Meta's webhook endpoint ([`webhooks`]), the API under
//! `/api/v1` with one module per resource (its routes, types and tag
//! together), health, `/metrics`, and the OpenAPI document generated from
//! these types ([`openapi`]). Handlers turn requests into calls on
//! [`crate::domain`] and the store, and errors into [`error::ApiError`].

pub mod accounts;
pub mod auth;
pub mod dead_letters;
pub mod error;
pub mod health;
pub mod messages;
pub mod openapi;
pub mod send;
pub mod webhooks;

use std::sync::Arc;

use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get};
use poem_openapi::Tags;

use crate::domain::Core;

/// The groups of the API in its document; each resource module names its own.
#[derive(Tags)]
pub enum ApiTags {
    /// Connected Instagram accounts and where their messages go.
    Accounts,
    /// Stored messages and where each stands on its way to the CRM.
    Messages,
    /// Messages the CRM refused or that ran out of retries: list, replay, discard.
    DeadLetters,
    /// Liveness and readiness.
    Health,
}

/// The HTTP application: Meta's webhook, the API, the spec and its UI.
pub fn routes(core: Arc<Core>) -> impl poem::Endpoint {
    let api = openapi::service();
    let spec = api.spec_endpoint();
    let docs = api.swagger_ui();
    Route::new()
        .at(
            "/webhooks/instagram",
            get(webhooks::handshake).post(webhooks::receive),
        )
        .at("/openapi.json", spec)
        .at("/metrics", get(metrics_endpoint))
        .nest("/docs", docs)
        .nest("/", api)
        .data(core)
        .around(log_request)
        .catch_all_error(error::render_error)
}

/// One line per request: method, path (never the query string, which holds
/// Meta's verify token), status and duration.
async fn log_request<E: Endpoint>(next: Arc<E>, req: Request) -> poem::Result<Response> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = std::time::Instant::now();
    let result = next.call(req).await.map(IntoResponse::into_response);
    let status = match &result {
        Ok(resp) => resp.status(),
        Err(e) => e.status(),
    };
    tracing::info!(
        %method,
        %path,
        status = status.as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "http request"
    );
    result
}

/// `GET /metrics`: Prometheus text format. Counts and durations only.
#[poem::handler]
fn metrics_endpoint() -> poem::web::WithContentType<String> {
    shared::observe::render().with_content_type("text/plain; version=0.0.4")
}
