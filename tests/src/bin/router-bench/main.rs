//! `router-bench`: measurements over the real binaries, printed as a table.
//! Not a test: figures depend on the machine; nothing here passes or fails
//! (except on errors, losses or duplicates, which void the figures).
//!
//! `throughput`: see [`throughput`]; saturation with `--concurrency`, a
//! steady load with `--rate`, on `--store sqlite` or `--store postgres`
//! (`TEST_DATABASE_URL` names the server).
//!
//! `isolation`: one account (A) has a large backlog to a CRM that fails
//! (every request answered 503) or is slow (each request takes 9 s), while a
//! quiet account (B) receives a steady stream of messages to a healthy CRM.
//! It prints how long B's messages take from Meta's POST to B's CRM.
//!
//! Build the binaries first, then run it from the same profile:
//!
//! ```sh
//! cargo build --release --bins
//! target/release/router-bench isolation --failure 503
//! target/release/router-bench isolation --failure slow
//! target/release/router-bench throughput --store sqlite --messages 20000
//! target/release/router-bench throughput --store sqlite --rate 500 --messages 15000
//! ```

mod measure;
mod procfs;
mod throughput;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use router_tests::meta::{self, entry, payload, text_event};
use router_tests::{CrmReceiver, Db, NatsServer, Service, TestDatabase, http_client};

#[derive(Parser)]
#[command(about = "Measurements of the router over its real binaries")]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Throughput, latency, CPU and memory under Meta's load.
    Throughput {
        /// Where ingest saves messages.
        #[arg(long, value_enum, default_value = "sqlite")]
        store: Store,
        /// Messages to send.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Messages in each webhook (Meta batches up to about ten).
        #[arg(long, default_value_t = 1)]
        per_webhook: usize,
        /// Closed loop: this many senders, each waiting for its answer.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Open loop: webhooks per second instead, whatever the answers.
        #[arg(long)]
        rate: Option<u32>,
        /// Accounts the messages are spread over.
        #[arg(long, default_value_t = 10)]
        accounts: usize,
        /// Conversations the messages are spread over.
        #[arg(long, default_value_t = 1000)]
        conversations: usize,
    },
    /// A quiet account's latency while another account's CRM fails or is slow.
    Isolation {
        /// How account A's CRM misbehaves.
        #[arg(long, value_enum, default_value = "503")]
        failure: Failure,
        /// Messages waiting for account A when B's traffic starts.
        #[arg(long, default_value_t = 10_000)]
        backlog: usize,
        /// Account B's messages per second, one per webhook.
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Seconds of account B's traffic.
        #[arg(long, default_value_t = 30)]
        seconds: u32,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Store {
    Sqlite,
    /// On the server `TEST_DATABASE_URL` names, in a database of its own.
    Postgres,
}

#[derive(Clone, Copy, ValueEnum)]
enum Failure {
    /// Every request answered 503.
    #[value(name = "503")]
    Unavailable,
    /// Every request answered after 9 s (the CRM timeout is 10 s).
    Slow,
}

const BUSINESS_A: &str = "17841400000000881";
const BUSINESS_B: &str = "17841400000000882";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.scenario {
        Scenario::Throughput {
            store,
            messages,
            per_webhook,
            concurrency,
            rate,
            accounts,
            conversations,
        } => {
            throughput::run(throughput::Load {
                store: match store {
                    Store::Sqlite => Db::Sqlite,
                    Store::Postgres => Db::Postgres,
                },
                messages,
                per_webhook: per_webhook.max(1),
                concurrency: concurrency.max(1),
                rate,
                accounts: accounts.max(1),
                conversations: conversations.max(1),
            })
            .await
        }
        Scenario::Isolation {
            failure,
            backlog,
            rate,
            seconds,
        } => isolation(failure, backlog, rate, seconds).await,
    }
}

/// Default settings everywhere, but quiet logs (`ROUTER_BENCH_LOG` to
/// change them) and a CRM on loopback.
fn settings() -> Vec<(&'static str, String)> {
    let log =
        std::env::var("ROUTER_BENCH_LOG").unwrap_or_else(|_| "warn,forwarder::fleet=info".into());
    vec![
        ("RUST_LOG", log),
        ("FORWARDER_RETRY_SCHEDULE", "10s,1m,10m,1h,6h".into()),
        ("CRM_ALLOW_PRIVATE_NETWORKS", "true".into()),
    ]
}

async fn isolation(
    failure: Failure,
    backlog: usize,
    rate: u32,
    seconds: u32,
) -> anyhow::Result<()> {
    let nats = NatsServer::start().await;
    let database = TestDatabase::Sqlite(tempfile::tempdir()?);
    let settings = settings();
    let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let ingest = Service::ingest(&nats.url(), &database.url(), &settings).await;
    let _forwarder = Service::forwarder(&nats.url(), &settings).await;
    let http = http_client();
    let (crm_a, crm_b) = (CrmReceiver::start().await, CrmReceiver::start().await);
    match failure {
        Failure::Unavailable => crm_a.answer_all_with(Some(503)),
        Failure::Slow => crm_a.delay_answers(Some(Duration::from_secs(9))),
    }
    let account = |business: &str, url: String| {
        let http = http.clone();
        let base = format!("http://{}", ingest.addr);
        let business = business.to_owned();
        async move {
            let body: serde_json::Value = http
                .post(format!("{base}/api/v1/accounts"))
                .bearer_auth(router_tests::API_TOKEN)
                .json(&serde_json::json!({
                    "name": business, "instagram_account_id": business, "crm_webhook_url": url,
                }))
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(
                body["webhook_secret"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    };
    account(BUSINESS_A, crm_a.url()).await?;
    let secret_b = account(BUSINESS_B, crm_b.url()).await?;
    let post = {
        let http = http.clone();
        let webhook_url = format!("http://{}/webhooks/instagram", ingest.addr);
        move |body: serde_json::Value| {
            let (http, url) = (http.clone(), webhook_url.clone());
            async move {
                let bytes = serde_json::to_vec(&body).unwrap();
                let signature = meta::sign(router_tests::META_APP_SECRET.as_bytes(), &bytes);
                http.post(url)
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", signature)
                    .body(bytes)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        }
    };

    // Account A's backlog: ten messages per webhook, 1000 conversations.
    let started = Instant::now();
    let chunks: Vec<Vec<usize>> = (0..backlog)
        .collect::<Vec<_>>()
        .chunks(10)
        .map(<[usize]>::to_vec)
        .collect();
    let mut refused = 0;
    for wave in chunks.chunks(16) {
        let sends = wave.iter().map(|chunk| {
            let events = chunk
                .iter()
                .map(|i| {
                    text_event(
                        BUSINESS_A,
                        &format!("{}", 100_000 + i % 1000),
                        &format!("mid_a_{i}"),
                        "backlog",
                        1_762_597_800_000,
                    )
                })
                .collect();
            post(payload(vec![entry(BUSINESS_A, events)]))
        });
        refused += futures::future::join_all(sends)
            .await
            .iter()
            .filter(|s| **s != 200)
            .count();
    }
    eprintln!(
        "router-bench: account A's {backlog} messages accepted in {:.1}s ({refused} webhooks refused)",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Account B: one message per webhook at a steady rate (open loop).
    let total = (rate * seconds) as usize;
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let first = tokio::time::Instant::now();
    let mut sends = Vec::with_capacity(total);
    for i in 0..total {
        tokio::time::sleep_until(first + interval * i as u32).await;
        let mid = format!("mid_b_{i}");
        let body = meta::text_message(BUSINESS_B, &format!("{}", 200_000 + i % 50), &mid, "hi");
        let (sent_at, post) = (sent_at.clone(), post.clone());
        sends.push(tokio::spawn(async move {
            sent_at.lock().unwrap().insert(mid, Instant::now());
            post(body).await
        }));
    }
    let b_refused = futures::future::join_all(sends)
        .await
        .into_iter()
        .filter(|s| !matches!(s, Ok(200)))
        .count();
    let deadline = Instant::now() + Duration::from_secs(30);
    while crm_b.deliveries().len() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let deliveries = crm_b.deliveries();
    let sent_at = sent_at.lock().unwrap();
    let first_arrival = measure::first_arrivals(&deliveries);
    let valid = deliveries
        .iter()
        .all(|d| d.hub_signature_valid(&secret_b) && d.standard_signature_valid(&secret_b));
    let latencies = measure::latencies(&sent_at, &first_arrival);
    let pct = |p: f64| {
        measure::percentile(&latencies, p).map_or("-".to_owned(), |d| {
            format!("{:.0} ms", d.as_secs_f64() * 1000.0)
        })
    };
    let failure_name = match failure {
        Failure::Unavailable => "answers 503 to everything",
        Failure::Slow => "takes 9 s per request",
    };
    println!();
    println!("isolation: account A ({backlog} messages waiting) whose CRM {failure_name};");
    println!(
        "           account B at {rate} msg/s for {seconds} s, one message per webhook; one forwarder, default settings"
    );
    println!();
    println!(
        "| B sent | B delivered | missing 30 s after the last send | duplicates | p50 | p90 | p99 | max | A's CRM requests |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {total} | {} | {} | {} | {} | {} | {} | {} | {} |",
        first_arrival.len(),
        total.saturating_sub(first_arrival.len()) + b_refused,
        deliveries.len() - first_arrival.len(),
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0),
        crm_a.deliveries().len(),
    );
    if !valid {
        println!("SOME DELIVERIES TO B FAILED SIGNATURE VERIFICATION");
    }
    Ok(())
}
