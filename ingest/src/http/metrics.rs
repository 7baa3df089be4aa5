//! `/metrics` on its own listener, `INGEST_METRICS_ADDR`: Prometheus text
//! format, counts and durations only. Kept off `INGEST_ADDR`, which faces
//! Meta and the CRM, so only what can reach the internal address reads it.

use poem::listener::TcpAcceptor;
use poem::{IntoResponse as _, Route, Server, get, handler};
use tokio_util::sync::CancellationToken;

#[handler]
fn metrics_endpoint() -> poem::web::WithContentType<String> {
    shared::observe::render().with_content_type("text/plain; version=0.0.4")
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Route::new().at("/metrics", get(metrics_endpoint));
    Server::new_with_acceptor(TcpAcceptor::from_tokio(listener)?)
        .run_with_graceful_shutdown(app, shutdown.cancelled_owned(), None)
        .await
}
