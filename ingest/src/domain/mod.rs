//! The operations more than one caller needs, between the HTTP API and the
//! background tasks above and Meta's protocol, the store and NATS below:
//! saving what a webhook brought ([`inbound`]), sending and recording a
//! reply ([`send`]) or a comment's ([`comments`]), the follow-ups of a
//! saved message ([`followups`]), the access token's lifecycle
//! ([`credentials`]), and keeping the accounts bucket in step ([`routing`]).

pub mod comments;
pub mod credentials;
pub mod deliveries;
pub mod followups;
pub mod inbound;
pub mod routing;
pub mod send;

use std::sync::Arc;

use shared::observe::Throughput;
use shared::subjects::Subjects;
use tokio::sync::Notify;

use crate::config::IngestConfig;
use crate::meta::graph::GraphClient;
use crate::nats::NatsLink;
use crate::store::Stores;

use self::followups::UsernameCache;
use self::routing::RoutingSync;

/// Everything a request or a follow-up works with, built once at start.
pub struct Core {
    pub config: IngestConfig,
    pub store: Stores,
    pub nats: Arc<NatsLink>,
    pub subjects: Subjects,
    /// Rung after a save so the outbox publishes without waiting for its tick.
    pub outbox_wakeup: Arc<Notify>,
    pub routing: Arc<RoutingSync>,
    /// Meta's Graph API: Send API and username lookups.
    pub graph: GraphClient,
    pub usernames: UsernameCache,
    /// Totals behind the live summary on `<prefix>.stats.ingest.<instance>`.
    pub throughput: Arc<Throughput>,
}
