//! Wires ingest together: opens the store and NATS, builds the shared
//! [`Core`], starts the background tasks and the HTTP server, and on
//! shutdown drains HTTP, stops the tasks and flushes the outbox.

use std::sync::Arc;
use std::time::Duration;

use poem::Server;
use poem::listener::{Acceptor, TcpAcceptor};
use shared::observe::Throughput;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::IngestConfig;
use crate::domain::Core;
use crate::domain::followups::UsernameCache;
use crate::domain::routing::RoutingSync;
use crate::meta::graph::GraphClient;
use crate::nats::NatsLink;
use crate::tasks::{outbox, outcomes, routing};
use crate::{http, store};

/// The two addresses ingest serves, bound.
pub struct Listeners {
    /// `INGEST_ADDR`: Meta's webhooks, the API, health, the document.
    pub public: tokio::net::TcpListener,
    /// `INGEST_METRICS_ADDR`: `/metrics`.
    pub metrics: tokio::net::TcpListener,
}

impl Listeners {
    /// Binds both addresses of `config`; an error names the setting.
    pub async fn bind(config: &IngestConfig) -> anyhow::Result<Self> {
        Ok(Self {
            public: shared::service::listen("INGEST_ADDR", config.ingest_addr).await?,
            metrics: shared::service::listen("INGEST_METRICS_ADDR", config.ingest_metrics_addr)
                .await?,
        })
    }
}

/// Runs ingest on `INGEST_ADDR` and `INGEST_METRICS_ADDR` until `shutdown`
/// is cancelled.
pub async fn run(config: IngestConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await?;
    serve(config, listeners, shutdown).await
}

/// Runs ingest on listeners already bound (a launcher binds them before
/// starting anything), until `shutdown` is cancelled; then drains HTTP,
/// flushes the outbox within a bound, and returns.
pub async fn serve(
    config: IngestConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Listeners {
        public: listener,
        metrics,
    } = listeners;
    let key = config.common.encryption_keys()?;
    if key.is_none() {
        tracing::warn!(
            "ROUTER_ENCRYPTION_KEY is not set: webhook secrets and access tokens are stored unencrypted"
        );
    }
    let store = store::open(&config.database_url, key.clone()).await?;
    let nats = Arc::new(NatsLink::connect(&config.common).await?);
    let graph = GraphClient::new(
        &config.graph_api_base,
        Duration::from_secs(config.graph_api_timeout_secs),
    )?;
    let core = Arc::new(Core {
        subjects: config.common.router_subject_prefix.clone(),
        routing: Arc::new(RoutingSync::new(store.accounts.clone(), nats.clone(), key)),
        config,
        store,
        nats,
        outbox_wakeup: Arc::new(Notify::new()),
        graph,
        usernames: UsernameCache::default(),
        throughput: Arc::new(Throughput::default()),
    });
    shared::observe::register(http::metrics::METRICS);

    let publisher = outbox::Publisher {
        messages: core.store.messages.clone(),
        writes: core.store.saves.clone(),
        nats: core.nats.clone(),
        wakeup: core.outbox_wakeup.clone(),
        throughput: core.throughput.clone(),
        publish_attempts: core.config.ingest_publish_attempts,
    };
    let tasks = TaskTracker::new();
    let background = shutdown.child_token();
    // What needs no NATS runs from the start: the outbox backlog metric
    // (what an alert watches while NATS is down) and the token checks.
    tasks.spawn(publisher.clone().watch_backlog(background.clone()));
    tasks.spawn(crate::tasks::check_tokens(core.clone(), background.clone()));
    tasks.spawn(background_tasks(
        core.clone(),
        publisher.clone(),
        background.clone(),
    ));

    let window = Duration::from_secs(
        core.config
            .ingest_client_timeout_secs
            .max(core.config.graph_api_timeout_secs + 5),
    );
    let acceptor = http::guard::Guarded::new(
        TcpAcceptor::from_tokio(listener)?,
        core.config.ingest_max_connections as usize,
        window,
    );
    let addr = acceptor.local_addr().into_iter().next();
    tracing::info!(addr = ?addr.map(|a| a.to_string()), "ingest listening");
    let metrics = http::metrics::serve(metrics, shutdown.clone());
    let public = Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
        http::routes(core.clone()),
        shutdown.cancelled_owned(),
        Some(Duration::from_secs(10)),
    );
    let (public, metrics) = tokio::join!(public, metrics);
    public?;
    metrics?;

    tracing::info!("http server stopped; flushing the outbox");
    background.cancel();
    tasks.close();
    tasks.wait().await;
    if core.nats.accounts().is_some() {
        publisher.flush(Duration::from_secs(5)).await;
    }
    // Bounded: with NATS down a flush would wait for ever.
    let _ = tokio::time::timeout(Duration::from_secs(2), core.nats.client.flush()).await;
    tracing::info!("ingest stopped");
    Ok(())
}

/// Sets up the JetStream layout (retrying until NATS answers), then runs
/// every background task until `stop`.
async fn background_tasks(core: Arc<Core>, publisher: outbox::Publisher, stop: CancellationToken) {
    core.nats
        .set_up(
            &core.subjects,
            core.config.common.router_stream_replicas,
            &stop,
        )
        .await;
    let recorder = outcomes::Recorder {
        writes: core.store.saves.clone(),
        nats: core.nats.clone(),
        subjects: core.subjects.clone(),
    };
    let instance = shared::observe::instance_name();
    tokio::join!(
        publisher.run(stop.clone()),
        routing::run(core.routing.clone(), stop.clone()),
        outcomes::run(recorder, stop.clone()),
        crate::tasks::forget_idempotency_keys(core.store.idempotency.clone(), stop.clone()),
        shared::observe::publish_stats(
            core.nats.client.clone(),
            core.subjects.stats("ingest", &instance),
            "ingest",
            instance,
            core.throughput.clone(),
            stop.clone(),
        ),
    );
}
