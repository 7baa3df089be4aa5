//! `throughput`: Meta sends signed webhooks as fast as `--concurrency`
//! senders can (closed loop) or at `--rate` webhooks per second (open loop);
//! the router saves, publishes and delivers them to a CRM on loopback. It
//! prints throughput, latencies, the CPU each process spent and the memory
//! of ingest and the forwarder, and checks that every message arrived once
//! with valid signatures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use router_tests::meta::{self, entry, payload, text_event};
use router_tests::{CrmReceiver, Db, NatsServer, Service, TestDatabase, http_client};

use crate::measure::{self, percentile};
use crate::procfs::{self, Cpu, Machine};

pub struct Load {
    pub store: Db,
    pub messages: usize,
    pub per_webhook: usize,
    pub concurrency: usize,
    pub rate: Option<u32>,
    pub accounts: usize,
    pub conversations: usize,
}

/// What each webhook carries, and when each message was sent.
struct Plan {
    webhooks: Vec<(Vec<String>, Vec<u8>)>,
}

fn business(i: usize) -> String {
    format!("178414000009{i:05}")
}

impl Plan {
    /// Messages spread over the accounts and their conversations, in order
    /// within each conversation.
    fn new(load: &Load) -> Self {
        let mut webhooks = Vec::new();
        let mut next = 0;
        while next < load.messages {
            let account = (next / load.per_webhook) % load.accounts;
            let n = load.per_webhook.min(load.messages - next);
            let mids: Vec<String> = (next..next + n).map(|i| format!("mid_bench_{i}")).collect();
            let events = mids
                .iter()
                .enumerate()
                .map(|(k, mid)| {
                    let customer = 300_000 + (next + k) % load.conversations;
                    text_event(
                        &business(account),
                        &customer.to_string(),
                        mid,
                        "a message of ordinary length from a customer",
                        1_762_597_800_000,
                    )
                })
                .collect();
            let body = serde_json::to_vec(&payload(vec![entry(&business(account), events)]))
                .expect("json");
            webhooks.push((mids, body));
            next += n;
        }
        Self { webhooks }
    }
}

/// What the senders saw.
#[derive(Default)]
struct Sent {
    at: HashMap<String, Instant>,
    responses: Vec<Duration>,
    refused: usize,
}

pub async fn run(load: Load) -> anyhow::Result<()> {
    let nats = NatsServer::start().await;
    let database = TestDatabase::create(load.store).await;
    let settings = [
        ("RUST_LOG", "warn,forwarder::fleet=info"),
        ("CRM_ALLOW_PRIVATE_NETWORKS", "true"),
        ("FORWARDER_RETRY_SCHEDULE", "1s,5s,30s"),
    ];
    let ingest = Service::ingest(&nats.url(), &database.url(), &settings).await;
    let forwarder = Service::forwarder(&nats.url(), &settings).await;
    let crm = CrmReceiver::start().await;
    let http = http_client();
    let mut secrets = HashMap::new();
    for i in 0..load.accounts {
        let body: serde_json::Value = http
            .post(format!("http://{}/api/v1/accounts", ingest.addr))
            .bearer_auth(router_tests::API_TOKEN)
            .json(&serde_json::json!({
                "name": format!("Bench {i}"),
                "instagram_account_id": business(i),
                "crm_webhook_url": crm.url(),
            }))
            .send()
            .await?
            .json()
            .await?;
        let id = body["id"].as_str().unwrap_or_default().to_owned();
        secrets.insert(
            id,
            body["webhook_secret"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    // Every forwarder lane up and idle before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let plan = Plan::new(&load);
    let pids = [
        ("ingest", ingest.pid()),
        ("forwarder", forwarder.pid()),
        ("nats-server", nats.pid()),
    ];
    let idle_rss: Vec<u64> = pids[..2]
        .iter()
        .map(|(_, pid)| pid.map_or(0, procfs::rss_kib))
        .collect();
    let cpu_before = Cpu::read(&pids, load.store == Db::Postgres);
    let machine_before = Machine::read();
    let metrics_addr = ingest.setting("INGEST_METRICS_ADDR").unwrap_or_default();
    let answers_before = answer_times(&http, metrics_addr).await;

    let url = format!("http://{}/webhooks/instagram", ingest.addr);
    let sent = Arc::new(Mutex::new(Sent::default()));
    let started = Instant::now();
    let senders = Senders {
        concurrency: load.concurrency,
        interval: load
            .rate
            .map(|r| Duration::from_secs_f64(1.0 / f64::from(r))),
    };
    send_on_own_thread(senders, plan, url, sent.clone()).await?;
    let sending = started.elapsed();
    let answers =
        measure::histogram_since(&answer_times(&http, metrics_addr).await, &answers_before);

    let deadline = Instant::now() + Duration::from_secs(60);
    while crm.count() < load.messages && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_after = Cpu::read(&pids, load.store == Db::Postgres);
    let stolen = Machine::read().since(&machine_before);
    let peak_rss: Vec<u64> = pids[..2]
        .iter()
        .map(|(_, pid)| pid.map_or(0, procfs::peak_rss_kib))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let deliveries = crm.deliveries();
    let sent = sent.lock().unwrap();
    let first_arrival = measure::first_arrivals(&deliveries);
    let mut bad_signatures = 0;
    for d in &deliveries {
        let secret = secrets
            .get(d.json["account_id"].as_str().unwrap_or(""))
            .map_or("", String::as_str);
        if !(d.hub_signature_valid(secret) && d.standard_signature_valid(secret)) {
            bad_signatures += 1;
        }
    }
    let latencies = measure::latencies(&sent.at, &first_arrival);
    let mut responses = sent.responses.clone();
    responses.sort();
    let last_arrival = first_arrival.values().max().copied().unwrap_or(started);
    let delivering = last_arrival.saturating_duration_since(started);

    let mode = match load.rate {
        Some(rate) => format!("open loop at {rate} webhooks/s"),
        None => format!("closed loop, {} senders", load.concurrency),
    };
    println!();
    println!(
        "throughput on {:?}: {} messages, {} per webhook, {mode}, {} accounts, {} conversations",
        load.store, load.messages, load.per_webhook, load.accounts, load.conversations
    );
    println!();
    println!(
        "| webhooks accepted/s | messages delivered/s | e2e p50 | p90 | p99 | max | ingest response p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {:.0} | {:.0} | {} | {} | {} | {} | {} | {} |",
        (sent.responses.len() - sent.refused) as f64 / sending.as_secs_f64(),
        first_arrival.len() as f64 / delivering.as_secs_f64().max(0.001),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(percentile(&latencies, 1.0)),
        ms(percentile(&responses, 0.50)),
        ms(percentile(&responses, 0.99)),
    );
    println!();
    let share = |bound| {
        measure::share_within(&answers, bound).map_or("-".into(), |s| format!("{:.1}%", s * 100.0))
    };
    println!(
        "| ingest's answers by its own clock | within 1 ms | within 2 ms | within 5 ms | p99 at most |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| | {} | {} | {} | {} |",
        share(0.001),
        share(0.002),
        share(0.005),
        match measure::quantile_bound(&answers, 0.99) {
            Some(bound) if bound.is_finite() => format!("{:.1} ms", bound * 1000.0),
            Some(_) => "above every bucket".into(),
            None => "-".into(),
        },
    );
    println!();
    println!("| the machine's CPU stolen by its hypervisor, first send to last arrival |");
    println!("|---|");
    println!("| {:.1}% |", stolen * 100.0);
    println!();
    let per_k = |ticks: f64| ticks / first_arrival.len().max(1) as f64 * 1000.0;
    let spent = cpu_after.since(&cpu_before);
    println!(
        "| CPU s per 1,000 messages | ingest | forwarder | nats-server | PostgreSQL | total |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| | {:.3} | {:.3} | {:.3} | {} | {:.3} |",
        per_k(spent.processes[0]),
        per_k(spent.processes[1]),
        per_k(spent.processes[2]),
        if load.store == Db::Postgres {
            format!("{:.3}", per_k(spent.postgres))
        } else {
            "-".into()
        },
        per_k(spent.total()),
    );
    println!();
    println!(
        "| RSS MiB | ingest idle | ingest peak | forwarder idle | forwarder peak |\n|---|---|---|---|---|\n| | {:.1} | {:.1} | {:.1} | {:.1} |",
        idle_rss[0] as f64 / 1024.0,
        peak_rss[0] as f64 / 1024.0,
        idle_rss[1] as f64 / 1024.0,
        peak_rss[1] as f64 / 1024.0,
    );
    println!();
    let lost = load.messages.saturating_sub(first_arrival.len());
    let duplicates = deliveries.len() - first_arrival.len();
    let out_of_order = router_tests::arrivals_by_conversation(&deliveries)
        .values()
        .filter(|sequences| !router_tests::in_order(sequences))
        .count();
    println!(
        "| refused webhooks | lost | duplicates | bad signatures | conversations out of order |\n|---|---|---|---|---|\n| {} | {lost} | {duplicates} | {bad_signatures} | {out_of_order} |",
        sent.refused
    );
    if sent.refused + lost + duplicates + bad_signatures + out_of_order > 0 {
        anyhow::bail!("errors, losses, duplicates or disorder: the figures above do not count");
    }
    Ok(())
}

/// How Meta sends: `concurrency` senders, each waiting for its answer, or one
/// webhook every `interval` whatever the answers.
struct Senders {
    concurrency: usize,
    interval: Option<Duration>,
}

/// Meta's senders get a thread and a runtime of their own, with their own
/// connections: on the bench's runtime an answer that arrived would wait
/// for a worker busy with the CRM's deliveries, and that wait would be
/// counted as ingest's.
async fn send_on_own_thread(
    senders: Senders,
    plan: Plan,
    url: String,
    sent: Arc<Mutex<Sent>>,
) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|meta| meta.block_on(send_all(&senders, plan, &url, &sent)))
    })
    .await??;
    Ok(())
}

async fn send_all(senders: &Senders, plan: Plan, url: &str, sent: &Arc<Mutex<Sent>>) {
    let http = http_client();
    let queue = Arc::new(Mutex::new(plan.webhooks.into_iter().enumerate()));
    let interval = senders.interval;
    let first = tokio::time::Instant::now();
    let count = if interval.is_some() {
        // Open loop: enough senders that none waits for a slow answer.
        senders.concurrency.max(256)
    } else {
        senders.concurrency
    };
    let workers = (0..count).map(|_| {
        let (queue, http, url, sent) = (queue.clone(), http.clone(), url.to_owned(), sent.clone());
        async move {
            loop {
                let Some((i, (mids, body))) = queue.lock().unwrap().next() else {
                    return;
                };
                if let Some(every) = interval {
                    tokio::time::sleep_until(first + every * i as u32).await;
                }
                let signature = meta::sign(router_tests::META_APP_SECRET.as_bytes(), &body);
                let at = Instant::now();
                {
                    let mut sent = sent.lock().unwrap();
                    for mid in mids {
                        sent.at.insert(mid, at);
                    }
                }
                let status = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("x-hub-signature-256", signature)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                let mut sent = sent.lock().unwrap();
                sent.responses.push(at.elapsed());
                if status != 200 {
                    sent.refused += 1;
                }
            }
        }
    });
    futures::future::join_all(workers).await;
}

/// Ingest's own histogram of its answers to Meta, from its `/metrics`. A version
/// that serves none there (before 2026-12-01, such as the *before* of the README's
/// results) gives none, and its table reads "-".
async fn answer_times(http: &reqwest::Client, metrics_addr: &str) -> Vec<(f64, f64)> {
    let Ok(text) = router_tests::try_metrics_at(http, metrics_addr).await else {
        return Vec::new();
    };
    measure::histogram(&text, "router_ingest_webhook_seconds")
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}
