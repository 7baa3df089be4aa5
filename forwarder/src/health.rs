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

pub async fn serve(
    addr: std::net::SocketAddr,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Route::new()
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .data(client);
    Server::new(TcpListener::bind(addr))
        .run_with_graceful_shutdown(app, shutdown.cancelled_owned(), None)
        .await
}
