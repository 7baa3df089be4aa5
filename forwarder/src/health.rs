//! The forwarder's small HTTP side on `FORWARDER_METRICS_ADDR`: liveness and
//! readiness (NATS connected) for orchestrators.

use poem::http::StatusCode;
use poem::listener::TcpListener;
use poem::web::Data;
use poem::{EndpointExt, Route, Server, get, handler};
use tokio_util::sync::CancellationToken;

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
fn readyz(Data(client): Data<&async_nats::Client>) -> (StatusCode, &'static str) {
    if client.connection_state() == async_nats::connection::State::Connected {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "nats unavailable")
    }
}

/// Prometheus text format: deliveries by outcome, attempt latency, in flight,
/// the consumer's pending and redelivered counts.
#[handler]
fn metrics_endpoint() -> poem::web::WithContentType<String> {
    use poem::IntoResponse as _;
    shared::observe::render().with_content_type("text/plain; version=0.0.4")
}

pub async fn serve(
    addr: std::net::SocketAddr,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Route::new()
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics_endpoint))
        .data(client);
    Server::new(TcpListener::bind(addr))
        .run_with_graceful_shutdown(app, shutdown.cancelled_owned(), None)
        .await
}
