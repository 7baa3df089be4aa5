//! The forwarder's small HTTP side on `FORWARDER_METRICS_ADDR`: liveness and
//! readiness (NATS connected) for orchestrators.

use poem::http::StatusCode;
use poem::listener::TcpAcceptor;
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
    listener: tokio::net::TcpListener,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Route::new()
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics_endpoint))
        .data(client);
    Server::new_with_acceptor(TcpAcceptor::from_tokio(listener)?)
        .run_with_graceful_shutdown(app, shutdown.cancelled_owned(), None)
        .await
}
