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
pub mod graph;
pub mod meta;
pub mod nats;
pub mod process;
pub mod readme_verify;
pub mod schemathesis;

use std::time::Duration;

pub use crm::{CrmReceiver, Delivery};
pub use graph::{FakeGraph, SendAnswer};
pub use nats::{NatsCluster, NatsServer};
pub use process::{Service, free_port, target_dir};

pub const API_TOKEN: &str = "test-api-token-0123456789";
pub const META_APP_SECRET: &str = "test-meta-app-secret";
pub const META_VERIFY_TOKEN: &str = "test-verify-token";
/// `ROUTER_ENCRYPTION_KEY` of both services in the tests.
pub const ENCRYPTION_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

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

/// Each conversation's `sequence`s, in the order its messages first reached
/// the CRM. A repeat (same `webhook-id`, after a crash) may come later and is
/// not an arrival.
pub fn arrivals_by_conversation(
    deliveries: &[Delivery],
) -> std::collections::HashMap<String, Vec<u64>> {
    let mut seen = std::collections::HashSet::new();
    let mut order: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for d in deliveries {
        if !seen.insert(d.webhook_id().to_owned()) {
            continue;
        }
        let conversation = d.json["conversation_id"].as_str().unwrap_or("").to_owned();
        let sequence = d.json["sequence"]
            .as_u64()
            .expect("sequence in every delivery");
        order.entry(conversation).or_default().push(sequence);
    }
    order
}

/// Whether a conversation's arrivals are its messages in the order of their
/// `sequence`, from the first, without gaps.
pub fn in_order(sequences: &[u64]) -> bool {
    sequences.iter().copied().eq(1..=sequences.len() as u64)
}

/// Checks that each conversation's messages first reached the CRM in the
/// order of their `sequence`, without gaps; returns how many conversations.
pub fn assert_conversations_in_order(deliveries: &[Delivery]) -> usize {
    let order = arrivals_by_conversation(deliveries);
    for (conversation, sequences) in &order {
        assert!(
            in_order(sequences),
            "{conversation} reached the CRM out of order: {sequences:?}"
        );
    }
    order.len()
}

/// Which store a test runs ingest on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    /// A file in the test's temporary directory.
    Sqlite,
    /// A fresh database on the server `TEST_DATABASE_URL` names.
    Postgres,
}

/// Runs each named case, an `async fn(Db)`, once per store: as
/// `sqlite::<case>`, and as `postgres::<case>` when `TEST_DATABASE_URL` was
/// set at build time (the build says so when it was not).
#[macro_export]
macro_rules! on_both_stores {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case($crate::Db::Sqlite).await
                }
            )+
        }
        #[cfg(postgres_tests)]
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    super::$case($crate::Db::Postgres).await
                }
            )+
        }
    };
}

/// One test's own database, removed when the test ends.
pub enum TestDatabase {
    Sqlite(tempfile::TempDir),
    Postgres { server: String, name: String },
}

impl TestDatabase {
    /// A fresh, empty database for one test.
    pub async fn create(db: Db) -> Self {
        if db == Db::Sqlite {
            return Self::Sqlite(tempfile::tempdir().unwrap());
        }
        let server = std::env::var("TEST_DATABASE_URL")
            .expect("TEST_DATABASE_URL names the PostgreSQL server for Db::Postgres");
        let name = format!(
            "router_test_{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&server)
            .await
            .expect("TEST_DATABASE_URL reachable");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap();
        Self::Postgres { server, name }
    }

    pub fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}/ingest.db", dir.path().display()),
            Self::Postgres { server, name } => {
                let mut url = url::Url::parse(server).unwrap();
                url.set_path(name);
                url.to_string()
            }
        }
    }
}

impl TestDatabase {
    /// The folder of an SQLite database (its file and WAL), to read its bytes.
    pub fn sqlite_dir(&self) -> Option<&std::path::Path> {
        match self {
            Self::Sqlite(dir) => Some(dir.path()),
            Self::Postgres { .. } => None,
        }
    }

    /// Runs one statement on the test's database behind ingest's back (to
    /// corrupt a row, say); `$1` is `arg`. Returns the rows it changed.
    pub async fn execute(&self, sql: &'static str, arg: &str) -> u64 {
        use sqlx::Connection as _;
        let url = self.url();
        match self {
            Self::Sqlite(_) => {
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query(sql)
                    .bind(arg)
                    .execute(&mut conn)
                    .await
                    .unwrap()
                    .rows_affected()
            }
            Self::Postgres { .. } => {
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::query(sql)
                    .bind(arg)
                    .execute(&mut conn)
                    .await
                    .unwrap()
                    .rows_affected()
            }
        }
    }
}

impl TestDatabase {
    /// Runs statements on the test's database behind ingest's back: the
    /// one for SQLite or the one for PostgreSQL.
    pub async fn run_script(&self, sqlite: &'static str, postgres: &'static str) {
        use sqlx::Connection as _;
        let url = self.url();
        match self {
            Self::Sqlite(_) => {
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(sqlite).execute(&mut conn).await.unwrap();
            }
            Self::Postgres { .. } => {
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::raw_sql(postgres).execute(&mut conn).await.unwrap();
            }
        }
    }
}

impl TestDatabase {
    /// Reads one text value from the test's database; `$1` is `arg`.
    pub async fn fetch_text(&self, sql: &'static str, arg: &str) -> Option<String> {
        use sqlx::Connection as _;
        let url = self.url();
        match self {
            Self::Sqlite(_) => {
                let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                sqlx::query_scalar(sql)
                    .bind(arg)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
            Self::Postgres { .. } => {
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                sqlx::query_scalar(sql)
                    .bind(arg)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap()
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Self::Postgres { server, name } = self {
            let (server, name) = (server.clone(), name.clone());
            // Dropped from a plain thread: this may run outside any runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    if let Ok(mut admin) =
                        <sqlx::PgConnection as sqlx::Connection>::connect(&server).await
                    {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                            .execute(&mut admin)
                            .await;
                    }
                });
            })
            .join();
        }
    }
}

/// A whole system: nats-server, one ingest, one forwarder.
pub struct System {
    pub nats: NatsServer,
    pub ingest: Service,
    pub forwarder: Service,
    pub http: reqwest::Client,
    /// The test's own database, removed when the test ends.
    pub database: TestDatabase,
}

impl System {
    /// Starts everything with ingest on `db`.
    pub async fn start(db: Db) -> Self {
        Self::start_with(db, &[]).await
    }

    /// Starts everything; `env` is added to both services' environment.
    pub async fn start_with(db: Db, env: &[(&str, &str)]) -> Self {
        let nats = NatsServer::start().await;
        let url = nats.url();
        Self::start_on(nats, db, (&url, env), (&url, env)).await
    }

    /// Starts ingest on `db` and a forwarder on a NATS server already
    /// running, each with its own NATS URL (its own user, say) and settings.
    pub async fn start_on(
        nats: NatsServer,
        db: Db,
        (ingest_nats, ingest_env): (&str, &[(&str, &str)]),
        (forwarder_nats, forwarder_env): (&str, &[(&str, &str)]),
    ) -> Self {
        let database = TestDatabase::create(db).await;
        let ingest = Service::ingest(ingest_nats, &database.url(), ingest_env).await;
        let forwarder = Service::forwarder(forwarder_nats, forwarder_env).await;
        Self {
            nats,
            ingest,
            forwarder,
            http: http_client(),
            database,
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

    /// Creates an account from a full JSON body; returns the create response.
    pub async fn create_account_with(&self, body: serde_json::Value) -> serde_json::Value {
        let resp = self
            .http
            .post(self.url("/api/v1/accounts"))
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "create account");
        resp.json().await.unwrap()
    }

    /// POSTs `body` to the webhook endpoint signed with Meta's app secret.
    pub async fn send_meta_webhook(&self, body: &serde_json::Value) -> reqwest::Response {
        self.send_meta_webhook_to(&self.ingest, body).await
    }

    /// GETs an `/api/v1` path with the API token and returns the JSON.
    pub async fn api_get(&self, path: &str) -> serde_json::Value {
        let resp = self
            .http
            .get(self.url(path))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.unwrap()
    }

    /// Sends `body` (if any) with `method` to an `/api/v1` path with the API
    /// token; returns the status and the JSON answer (`null` when none).
    pub async fn api_send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        self.api_send_as(Some(API_TOKEN), method, path, body).await
    }

    /// [`Self::api_send`] with another bearer token, or none.
    pub async fn api_send_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.http.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Ingest's `/metrics` text, from its own address (`INGEST_METRICS_ADDR`).
    pub async fn ingest_metrics(&self) -> String {
        let addr = self.ingest.setting("INGEST_METRICS_ADDR").unwrap();
        self.metrics_at(addr).await
    }

    /// Every alert published on `subject` from now on (`router.alerts.…`), as JSON.
    pub async fn alerts(&self, subject: String) -> Alerts {
        use futures::StreamExt as _;
        let client = async_nats::connect(self.nats.url()).await.unwrap();
        let mut sub = client.subscribe(subject).await.unwrap();
        client.flush().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let _client = client;
            while let Some(m) = sub.next().await {
                let _ = tx.send(serde_json::from_slice(&m.payload).unwrap_or_default());
            }
        });
        Alerts(rx)
    }

    /// The forwarder's `/metrics` text.
    pub async fn forwarder_metrics(&self) -> String {
        self.metrics_at(&self.forwarder.addr.to_string()).await
    }

    async fn metrics_at(&self, addr: &str) -> String {
        metrics_at(&self.http, addr).await
    }

    /// The stored message with this id, as the messages API lists it.
    pub async fn message(&self, account_id: &str, message_id: &str) -> Option<serde_json::Value> {
        self.messages(account_id)
            .await
            .into_iter()
            .find(|m| m["id"] == message_id)
    }

    /// Every stored message of the account, following the API's pages.
    pub async fn messages(&self, account_id: &str) -> Vec<serde_json::Value> {
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let page = self
                .api_get(&format!(
                    "/api/v1/accounts/{account_id}/messages?limit=200&cursor={cursor}"
                ))
                .await;
            all.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = c.to_owned(),
                None => return all,
            }
        }
    }

    /// How many of the account's messages have each delivery status.
    pub async fn status_counts(
        &self,
        account_id: &str,
    ) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for m in self.messages(account_id).await {
            let status = m["delivery"]["status"].as_str().unwrap().to_owned();
            *counts.entry(status).or_insert(0) += 1;
        }
        counts
    }

    /// Waits until all `n` of the account's messages are delivered.
    pub async fn wait_all_delivered(&self, account_id: &str, n: usize, limit: Duration) {
        eventually(limit, &format!("{n} messages delivered"), || async {
            let counts = self.status_counts(account_id).await;
            (counts.get("delivered") == Some(&n)).then_some(())
        })
        .await;
    }

    /// Waits until the message's delivery status is `status`; returns the message.
    pub async fn wait_for_status(
        &self,
        account_id: &str,
        message_id: &str,
        status: &str,
    ) -> serde_json::Value {
        eventually(
            Duration::from_secs(30),
            &format!("{message_id} {status}"),
            || async {
                self.message(account_id, message_id)
                    .await
                    .filter(|m| m["delivery"]["status"] == status)
            },
        )
        .await
    }

    /// Starts another ingest on the same NATS and database.
    pub async fn another_ingest(&self, env: &[(&str, &str)]) -> Service {
        Service::ingest(&self.nats.url(), &self.database.url(), env).await
    }

    /// POSTs a signed Meta webhook to a given ingest.
    pub async fn send_meta_webhook_to(
        &self,
        ingest: &Service,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        post_meta_webhook(&self.http, ingest.addr, body).await
    }

    /// Starts another forwarder on the same NATS.
    pub async fn another_forwarder(&self, env: &[(&str, &str)]) -> Service {
        Service::forwarder(&self.nats.url(), env).await
    }

    /// Sends `n` text messages to `business`, ten per webhook as Meta
    /// batches them, spread in turn over `conversations` customers; returns
    /// their mids (`mid_<tag>_<i>`).
    pub async fn send_conversations(
        &self,
        business: &str,
        n: usize,
        conversations: usize,
        tag: &str,
    ) -> std::collections::HashSet<String> {
        let mut mids = std::collections::HashSet::new();
        for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
            let events = chunk
                .iter()
                .map(|i| {
                    let mid = format!("mid_{tag}_{i}");
                    mids.insert(mid.clone());
                    meta::text_event(
                        business,
                        &format!("{}", 5600 + i % conversations),
                        &mid,
                        "bulk",
                        1_762_597_800_000 + *i as i64,
                    )
                })
                .collect();
            let body = meta::payload(vec![meta::entry(business, events)]);
            let resp = self.send_meta_webhook(&body).await;
            assert_eq!(resp.status(), 200);
        }
        mids
    }

    /// Both services' log output so far.
    pub fn logs(&self) -> String {
        format!("{}\n{}", self.ingest.logs(), self.forwarder.logs())
    }
}

/// Alerts as they arrive, from [`System::alerts`].
pub struct Alerts(tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>);

impl Alerts {
    /// The next alert; panics after 20 s without one.
    pub async fn next(&mut self) -> serde_json::Value {
        tokio::time::timeout(Duration::from_secs(20), self.0.recv())
            .await
            .expect("an alert in time")
            .unwrap()
    }

    /// Alerts that arrived and were not taken yet.
    pub fn pending(&mut self) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| self.0.try_recv().ok()).collect()
    }
}

/// POSTs `body` to the webhook endpoint of the ingest at `ingest`, signed
/// with Meta's app secret, as Meta would.
pub async fn post_meta_webhook(
    http: &reqwest::Client,
    ingest: std::net::SocketAddr,
    body: &serde_json::Value,
) -> reqwest::Response {
    let bytes = serde_json::to_vec(body).unwrap();
    http.post(format!("http://{ingest}/webhooks/instagram"))
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

/// The Prometheus text a service serves at `addr`.
pub async fn metrics_at(http: &reqwest::Client, addr: &str) -> String {
    try_metrics_at(http, addr).await.unwrap()
}

/// The same, or the error of a service that serves none there.
pub async fn try_metrics_at(http: &reqwest::Client, addr: &str) -> reqwest::Result<String> {
    http.get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .text()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(webhook_id: &str, conversation: &str, sequence: u64) -> Delivery {
        let mut headers = poem::http::HeaderMap::new();
        headers.insert("webhook-id", webhook_id.parse().unwrap());
        Delivery {
            headers,
            body: Vec::new(),
            json: serde_json::json!({"conversation_id": conversation, "sequence": sequence}),
            received_at: std::time::Instant::now(),
        }
    }

    #[test]
    fn a_conversation_is_in_order_only_as_one_two_three_repeats_aside() {
        let arrivals = arrivals_by_conversation(&[
            delivery("a1", "a", 1),
            delivery("b2", "b", 2),
            delivery("a2", "a", 2),
            // A repeat of an earlier delivery is not an arrival.
            delivery("a1", "a", 1),
            delivery("b1", "b", 1),
            delivery("c1", "c", 1),
            delivery("c3", "c", 3),
        ]);
        assert_eq!(arrivals["a"], [1, 2]);
        assert!(in_order(&arrivals["a"]));
        assert!(!in_order(&arrivals["b"]), "the second arrived first");
        assert!(!in_order(&arrivals["c"]), "the second never arrived");
    }
}
