//! `/metrics` on its own listener, `INGEST_METRICS_ADDR`: Prometheus text
//! format, counts and durations only. Kept off `INGEST_ADDR`, which faces
//! Meta and the CRM, so only what can reach the internal address reads it.

use poem::listener::TcpAcceptor;
use poem::{IntoResponse as _, Route, Server, get, handler};
use shared::observe::{Kind, Metric};
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

/// Every metric ingest exports, registered with its help text at start.
pub const METRICS: &[Metric] = &[
    Metric {
        name: "router_ingest_webhooks_total",
        kind: Kind::Counter,
        help: "Meta webhooks received, by result: accepted, or the error code they were answered with",
        label: Some((
            "result",
            &[
                "accepted",
                "missing_signature",
                "invalid_signature",
                "payload_too_large",
                "invalid_payload",
                "storage_unavailable",
            ],
        )),
    },
    Metric {
        name: "router_ingest_webhook_seconds",
        kind: Kind::Histogram,
        help: "Time from a Meta webhook's arrival to ingest's answer, whatever the answer",
        label: None,
    },
    Metric {
        name: "router_ingest_events_total",
        kind: Kind::Counter,
        help: "Events in accepted webhooks, by result",
        label: Some((
            "result",
            &[
                "saved",
                "duplicate",
                "unknown_account",
                "not_forwarded",
                "set_aside",
            ],
        )),
    },
    Metric {
        name: "router_ingest_outbox_backlog",
        kind: Kind::Gauge,
        help: "Messages saved but not yet published to JetStream (grows while NATS is down)",
        label: None,
    },
    Metric {
        name: "router_ingest_outbox_oldest_age_seconds",
        kind: Kind::Gauge,
        help: "Age of the oldest message waiting in the outbox, in seconds",
        label: None,
    },
    Metric {
        name: "router_ingest_published_total",
        kind: Kind::Counter,
        help: "Messages published to JetStream from the outbox",
        label: None,
    },
    Metric {
        name: "router_ingest_publish_failures_total",
        kind: Kind::Counter,
        help: "Outbox publishes that failed and will be retried",
        label: None,
    },
    Metric {
        name: "router_ingest_publish_seconds",
        kind: Kind::Histogram,
        help: "Time to publish a batch of the outbox and get JetStream's acknowledgements",
        label: None,
    },
    Metric {
        name: "router_ingest_publish_set_aside_total",
        kind: Kind::Counter,
        help: "Messages JetStream kept refusing, set aside as dead letters (publish_refused)",
        label: None,
    },
    Metric {
        name: "router_ingest_save_set_aside_total",
        kind: Kind::Counter,
        help: "Events the database kept refusing, set aside (/api/v1/refused-events)",
        label: None,
    },
    Metric {
        name: "router_ingest_save_batch_size",
        kind: Kind::Histogram,
        help: "Webhook events saved per database transaction (group commit)",
        label: None,
    },
    Metric {
        name: "router_ingest_accounts_credentials",
        kind: Kind::Gauge,
        help: "Accounts by access-token state, as of the last check (INGEST_TOKEN_CHECK_INTERVAL)",
        label: Some(("state", &["valid", "expiring", "invalid", "missing"])),
    },
    Metric {
        name: "router_ingest_token_refreshes_total",
        kind: Kind::Counter,
        help: "Access-token refreshes, by result",
        label: Some(("result", &["refreshed", "failed", "refused"])),
    },
];
