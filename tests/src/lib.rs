//! The end-to-end harness: real processes on loopback. A nats-server on a
//! free port with its own store directory (stoppable and restartable), the
//! real `ingest` and `forwarder` binaries, a real HTTP CRM receiver that
//! verifies both signatures independently of our signing code, and a
//! "Meta" that signs webhooks the way Meta does.
//!
//! The binaries are the ones `cargo test --workspace` builds into the
//! target directory (the ingest and forwarder packages have integration
//! tests of their own, which makes cargo build them).

pub mod crm;
pub mod meta;
pub mod nats;
pub mod process;
pub mod readme_verify;

use std::time::Duration;

pub use crm::{CrmReceiver, Delivery};
pub use nats::NatsServer;
pub use process::{Service, free_port, target_dir};

pub const API_TOKEN: &str = "test-api-token-0123456789";
pub const META_APP_SECRET: &str = "test-meta-app-secret";
pub const META_VERIFY_TOKEN: &str = "test-verify-token";

/// An HTTP client for tests (installs the process-wide TLS provider first).
pub fn http_client() -> reqwest::Client {
    shared::install_crypto_provider();
    reqwest::Client::new()
}

/// Polls `check` until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A whole system: nats-server, one ingest, one forwarder.
pub struct System {
    pub nats: NatsServer,
    pub ingest: Service,
    pub forwarder: Service,
    pub http: reqwest::Client,
    /// Holds the SQLite file for as long as the system runs.
    _data: tempfile::TempDir,
}

impl System {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts everything; `env` is added to both services' environment.
    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        let nats = NatsServer::start().await;
        let data = tempfile::tempdir().unwrap();
        let ingest = Service::ingest(&nats.url(), data.path(), env).await;
        let forwarder = Service::forwarder(&nats.url(), env).await;
        Self {
            nats,
            ingest,
            forwarder,
            http: http_client(),
            _data: data,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.ingest.addr, path)
    }

    /// Creates an account pointing at `crm_url`; returns (account id, webhook secret).
    pub async fn create_account(
        &self,
        instagram_account_id: &str,
        crm_url: &str,
    ) -> (String, String) {
        let resp = self
            .http
            .post(self.url("/api/v1/accounts"))
            .bearer_auth(API_TOKEN)
            .json(&serde_json::json!({
                "name": format!("Shop {instagram_account_id}"),
                "instagram_account_id": instagram_account_id,
                "crm_webhook_url": crm_url,
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "create account");
        let body: serde_json::Value = resp.json().await.unwrap();
        (
            body["id"].as_str().unwrap().to_owned(),
            body["webhook_secret"].as_str().unwrap().to_owned(),
        )
    }

    /// POSTs `body` to the webhook endpoint signed with Meta's app secret.
    pub async fn send_meta_webhook(&self, body: &serde_json::Value) -> reqwest::Response {
        let bytes = serde_json::to_vec(body).unwrap();
        self.http
            .post(self.url("/webhooks/instagram"))
            .header("content-type", "application/json")
            .header(
                "x-hub-signature-256",
                meta::sign(META_APP_SECRET.as_bytes(), &bytes),
            )
            .body(bytes)
            .send()
            .await
            .unwrap()
    }

    /// Both services' log output so far.
    pub fn logs(&self) -> String {
        format!("{}\n{}", self.ingest.logs(), self.forwarder.logs())
    }
}
