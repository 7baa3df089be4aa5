//! The forwarder's small HTTP side on `FORWARDER_METRICS_ADDR`: liveness and
//! readiness (NATS connected) for orchestrators.

use poem::http::StatusCode;
use poem::listener::TcpAcceptor;
use poem::web::Data;
use poem::{EndpointExt, Route, Server, get, handler};
use shared::observe::{Kind, Metric};
use tokio_util::sync::CancellationToken;

#[handler]
fn healthz() -> &'static str {
    "ok"
}

/// JSON of the same shape as ingest's `/readyz`, with what a forwarder
/// needs: `{"nats": "ok"}` (200) or `{"nats": "unavailable"}` (503).
#[handler]
fn readyz(
    Data(client): Data<&async_nats::Client>,
) -> (StatusCode, poem::web::Json<serde_json::Value>) {
    let ok = client.connection_state() == async_nats::connection::State::Connected;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = if ok { "ok" } else { "unavailable" };
    (status, poem::web::Json(serde_json::json!({ "nats": word })))
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

/// Every metric a forwarder exports, registered with its help text at start.
pub const METRICS: &[Metric] = &[
    Metric {
        name: "router_forwarder_deliveries_total",
        kind: Kind::Counter,
        help: "Delivery attempts to CRMs, by outcome",
        label: Some(("outcome", &["delivered", "retrying", "dead"])),
    },
    Metric {
        name: "router_forwarder_attempt_seconds",
        kind: Kind::Histogram,
        help: "Time a CRM took to answer a delivery",
        label: None,
    },
    Metric {
        name: "router_forwarder_in_flight",
        kind: Kind::Gauge,
        help: "Deliveries running now",
        label: None,
    },
    Metric {
        name: "router_forwarder_consumer_pending",
        kind: Kind::Gauge,
        help: "Messages not yet delivered to this forwarder, over the consumers of the accounts it serves",
        label: None,
    },
    Metric {
        name: "router_forwarder_consumer_ack_pending",
        kind: Kind::Gauge,
        help: "Messages delivered to this forwarder and not yet acknowledged (in flight, waiting for a retry, held)",
        label: None,
    },
    Metric {
        name: "router_forwarder_consumer_redelivered",
        kind: Kind::Gauge,
        help: "Messages redelivered by JetStream, over the consumers of the accounts it serves",
        label: None,
    },
    Metric {
        name: "router_forwarder_accounts",
        kind: Kind::Gauge,
        help: "Accounts this forwarder serves, by CRM health",
        label: Some(("state", &["healthy", "degraded", "paused"])),
    },
    Metric {
        name: "router_forwarder_held_back_total",
        kind: Kind::Counter,
        help: "Messages sent back to wait behind an earlier message of their conversation being retried",
        label: None,
    },
    Metric {
        name: "router_forwarder_refused_messages_total",
        kind: Kind::Counter,
        help: "Inbound messages refused (terminated) by the forwarder, by reason",
        label: Some(("reason", &["account_mismatch"])),
    },
];
