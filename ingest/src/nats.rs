//! ingest's link to NATS. The connection is made in the background and
//! retried forever, so ingest starts, saves and answers Meta while NATS is
//! down; the streams and the accounts bucket are set up as soon as it is up.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use shared::subjects::Subjects;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

pub struct NatsLink {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    /// Set once streams and buckets exist; until then nothing is published.
    buckets: OnceCell<Buckets>,
}

struct Buckets {
    accounts: kv::Store,
    /// Each account's CRM health, written by the forwarders.
    health: kv::Store,
}

impl NatsLink {
    pub async fn connect(common: &shared::config::CommonConfig) -> anyhow::Result<Self> {
        let client = shared::jetstream::connect(common, "ingest").await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(5))
            .build(client.clone());
        Ok(Self {
            client,
            js,
            buckets: OnceCell::new(),
        })
    }

    /// The accounts bucket, once the JetStream layout is in place.
    pub fn accounts(&self) -> Option<&kv::Store> {
        self.buckets.get().map(|b| &b.accounts)
    }

    /// The delivery-health bucket, once the JetStream layout is in place.
    pub fn health(&self) -> Option<&kv::Store> {
        self.buckets.get().map(|b| &b.health)
    }

    pub fn is_ready(&self) -> bool {
        self.buckets.initialized()
            && self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Creates the streams and the bucket, retrying until NATS answers.
    pub async fn set_up(&self, subjects: &Subjects, replicas: u8, shutdown: &CancellationToken) {
        if let Some(ready) = shared::jetstream::set_up_until_ready(
            &self.js,
            subjects,
            shared::jetstream::Role::Ingest,
            usize::from(replicas),
            shutdown,
        )
        .await
        {
            let _ = self.buckets.set(Buckets {
                accounts: ready.accounts,
                health: ready.health,
            });
        }
    }
}
