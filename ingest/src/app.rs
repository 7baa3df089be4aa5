//! Wires ingest together: state, background tasks, routes, and the run loop
//! that stops on a cancellation token (SIGTERM/ctrl-c in `main`).

use std::sync::Arc;
use std::time::Duration;

use poem::listener::TcpListener;
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, Server, get};
use shared::subjects::Subjects;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::IngestConfig;
use crate::followups::UsernameCache;
use crate::graph::GraphClient;
use crate::nats::NatsLink;
use crate::routing::RoutingSync;
use crate::store::{self, DynStore};
use crate::{error, openapi, outbox, outcomes, webhooks};
use shared::observe::Throughput;

pub struct AppState {
    pub config: IngestConfig,
    pub store: DynStore,
    pub nats: NatsLink,
    pub subjects: Subjects,
    /// Rung after a save so the outbox publishes without waiting for its tick.
    pub outbox_wakeup: Notify,
    pub routing: RoutingSync,
    /// Meta's Graph API: Send API and username lookups.
    pub graph: GraphClient,
    pub usernames: UsernameCache,
    /// Totals behind the live summary on `<prefix>.stats.ingest.<instance>`.
    pub throughput: Arc<Throughput>,
}

/// The HTTP application: Meta's webhook, the API, the spec and its UI.
pub fn routes(state: Arc<AppState>) -> impl poem::Endpoint {
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
        .data(state)
        .around(log_request)
        .catch_all_error(error::render_error)
}

/// Runs ingest until `shutdown` is cancelled, then drains HTTP, flushes the
/// outbox within a bound, and returns.
pub async fn run(config: IngestConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let key = config.common.router_encryption_key.clone();
    if key.is_none() {
        tracing::warn!(
            "ROUTER_ENCRYPTION_KEY is not set: webhook secrets and access tokens are stored unencrypted"
        );
    }
    let store = store::open(&config.database_url, key).await?;
    let nats = NatsLink::connect(&config.common.nats_url).await?;
    let subjects = config.common.router_subject_prefix.clone();
    let addr = config.ingest_addr;
    let graph = GraphClient::new(
        &config.graph_api_base,
        Duration::from_secs(config.graph_api_timeout_secs),
    )?;
    let state = Arc::new(AppState {
        config,
        store,
        nats,
        subjects,
        outbox_wakeup: Notify::new(),
        routing: RoutingSync::default(),
        graph,
        usernames: UsernameCache::default(),
        throughput: Arc::new(Throughput::default()),
    });
    shared::observe::prometheus();

    let tasks = TaskTracker::new();
    let background = shutdown.child_token();
    {
        let (state, stop) = (state.clone(), background.clone());
        tasks.spawn(async move {
            state.nats.set_up(&state.subjects, &stop).await;
            let outbox_task = outbox::run(&state, stop.clone());
            let routing_task = state.routing.run(&state, stop.clone());
            let outcomes_task = outcomes::run(&state, stop.clone());
            let instance = shared::observe::instance_name();
            let stats_task = shared::observe::publish_stats(
                state.nats.client.clone(),
                state.subjects.stats("ingest", &instance),
                "ingest",
                instance,
                state.throughput.clone(),
                stop.clone(),
            );
            tokio::join!(outbox_task, routing_task, outcomes_task, stats_task);
        });
    }

    let listener = TcpListener::bind(addr);
    tracing::info!(%addr, "ingest listening");
    Server::new(listener)
        .run_with_graceful_shutdown(
            routes(state.clone()),
            shutdown.cancelled_owned(),
            Some(Duration::from_secs(10)),
        )
        .await?;

    tracing::info!("http server stopped; flushing the outbox");
    background.cancel();
    tasks.close();
    tasks.wait().await;
    if state.nats.accounts().is_some() {
        outbox::flush(&state, Duration::from_secs(5)).await;
    }
    // Bounded: with NATS down a flush would wait for ever.
    let _ = tokio::time::timeout(Duration::from_secs(2), state.nats.client.flush()).await;
    tracing::info!("ingest stopped");
    Ok(())
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
    use poem::IntoResponse as _;
    shared::observe::render().with_content_type("text/plain; version=0.0.4")
}
