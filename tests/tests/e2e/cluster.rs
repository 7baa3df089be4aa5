//! On a three-server JetStream cluster with every stream and bucket
//! replicated three times: 2,000 messages while the server the forwarder is
//! connected to is killed (kill -9) and later restarted, then the inbound
//! stream's leader is killed. Meta gets its 200 throughout (ingest's outbox
//! keeps what it cannot publish), every message reaches the CRM under one
//! `webhook-id`, and a killed server, started again, catches up.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use router_tests::meta::{entry, payload, text_event};
use router_tests::{API_TOKEN, CrmReceiver, Db, NatsCluster, Service, TestDatabase, http_client};
use serde_json::json;

const BUSINESS: &str = "17841400000000301";
const WEBHOOKS: usize = 400;
const PER_WEBHOOK: usize = 5;

/// The longest wait between two arrivals at the CRM from `from` on, over
/// `window`: how long deliveries stalled around a kill.
fn longest_gap(arrivals: &[Instant], from: Instant, window: Duration) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for at in arrivals
        .iter()
        .filter(|at| **at >= from && **at <= from + window)
    {
        longest = longest.max(*at - last);
        last = *at;
    }
    longest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_loses_the_forwarders_server_and_then_the_stream_leader_and_no_message_is_lost() {
    let mut nats = NatsCluster::start().await;
    let urls = nats.urls();
    let database = TestDatabase::create(Db::Sqlite).await;
    let replicated = [("ROUTER_STREAM_REPLICAS", "3")];
    let ingest = Service::ingest(&urls, &database.url(), &replicated).await;
    let forwarder = Service::forwarder(&urls, &replicated).await;
    let crm = CrmReceiver::start().await;
    let http = http_client();
    let created = http
        .post(format!("http://{}/api/v1/accounts", ingest.addr))
        .bearer_auth(API_TOKEN)
        .json(&json!({ "name": "Shop", "instagram_account_id": BUSINESS, "crm_webhook_url": crm.url() }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    // Every stream is replicated on the three servers.
    let client = async_nats::connect(nats.servers[0].url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut inbound = js.get_stream("ROUTER_INBOUND").await.unwrap();
    assert_eq!(inbound.info().await.unwrap().config.num_replicas, 3);
    let mut accounts = js.get_stream("KV_router_accounts").await.unwrap();
    assert_eq!(accounts.info().await.unwrap().config.num_replicas, 3);
    drop(js);

    let send = |n: usize| {
        let events = (0..PER_WEBHOOK)
            .map(|i| {
                let m = n * PER_WEBHOOK + i;
                text_event(
                    BUSINESS,
                    &format!("{}", 7000 + m % 23),
                    &format!("mid_cluster_{m}"),
                    "hello",
                    1_762_597_800_000 + m as i64,
                )
            })
            .collect();
        let body = payload(vec![entry(BUSINESS, events)]);
        let (http, addr) = (&http, ingest.addr);
        async move {
            router_tests::post_meta_webhook(http, addr, &body)
                .await
                .status()
                .as_u16()
        }
    };

    let mut kills = Vec::new();
    let mut killed_first = None;
    let mut leader_down = None;
    for n in 0..WEBHOOKS {
        if n == WEBHOOKS / 4 {
            let i = nats
                .server_of("forwarder")
                .await
                .expect("the forwarder is connected");
            nats.servers[i].stop();
            kills.push(("the forwarder's server", Instant::now()));
            killed_first = Some(i);
        }
        if n == WEBHOOKS / 2 {
            // Back before the next kill: a cluster of three needs two up.
            nats.servers[killed_first.unwrap()].resume().await;
        }
        if n == 3 * WEBHOOKS / 5 {
            // Asked of every server in turn: one just restarted may not
            // answer JetStream requests yet.
            let leader = router_tests::eventually(
                Duration::from_secs(30),
                "the inbound stream's leader",
                || async {
                    let client = async_nats::connect(urls.split(',').collect::<Vec<_>>())
                        .await
                        .ok()?;
                    let js = async_nats::jetstream::new(client);
                    let mut stream = js.get_stream("ROUTER_INBOUND").await.ok()?;
                    let info = stream.info().await.ok()?;
                    info.cluster.as_ref()?.leader.clone()
                },
            )
            .await;
            let i = leader[1..].parse::<usize>().unwrap() - 1;
            nats.servers[i].stop();
            kills.push(("the inbound stream's leader", Instant::now()));
            leader_down = Some(i);
        }
        assert_eq!(send(n).await, 200, "webhook {n} answered 200");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let total = WEBHOOKS * PER_WEBHOOK;
    let distinct = || {
        crm.deliveries()
            .iter()
            .map(|d| d.json["instagram_message_id"].as_str().unwrap().to_owned())
            .collect::<HashSet<_>>()
            .len()
    };
    router_tests::eventually(
        Duration::from_secs(180),
        "every message delivered",
        || async { (distinct() >= total).then_some(()) },
    )
    .await;
    // Room for a late duplicate to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deliveries = crm.deliveries();
    let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
    for d in &deliveries {
        ids.entry(d.json["instagram_message_id"].as_str().unwrap().to_owned())
            .or_default()
            .insert(d.webhook_id().to_owned());
    }
    assert_eq!(ids.len(), total, "every message reached the CRM");
    assert!(
        ids.values().all(|set| set.len() == 1),
        "no message under two webhook-ids"
    );
    let arrivals: Vec<Instant> = deliveries.iter().map(|d| d.received_at).collect();
    eprintln!(
        "cluster: sent {total}, delivered {}, duplicates (same webhook-id) {}",
        ids.len(),
        deliveries.len() - ids.len()
    );
    for (what, at) in &kills {
        eprintln!(
            "cluster: longest delivery gap after killing {what}: {:?}",
            longest_gap(&arrivals, *at, Duration::from_secs(30))
        );
    }

    // The leader, started again, catches up with the others.
    let down = leader_down.unwrap();
    nats.servers[down].resume().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != down).collect();
    let want = nats.replica_state(others[0], "ROUTER_INBOUND").await;
    assert!(want.is_some_and(|(messages, _)| messages >= total as u64));
    router_tests::eventually(
        Duration::from_secs(30),
        "the restarted server caught up",
        || async { (nats.replica_state(down, "ROUTER_INBOUND").await == want).then_some(()) },
    )
    .await;
    drop(forwarder);
    drop(ingest);
}

/// The replicas of an existing layout follow `ROUTER_STREAM_REPLICAS`:
/// streams and buckets made with one replica get three when ingest starts
/// again with 3, in place, and the change is logged.
#[tokio::test]
async fn changing_router_stream_replicas_changes_the_streams_and_buckets_in_place() {
    let nats = NatsCluster::start().await;
    let urls = nats.urls();
    let database = TestDatabase::create(Db::Sqlite).await;
    let mut first = Service::ingest(&urls, &database.url(), &[]).await;
    let client = async_nats::connect(nats.servers[0].url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let replicas = |name: &'static str| {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream(name).await.unwrap();
            stream.info().await.unwrap().config.num_replicas
        }
    };
    assert_eq!(replicas("ROUTER_INBOUND").await, 1);
    assert_eq!(replicas("KV_router_accounts").await, 1);
    first.kill();

    let again = Service::ingest(&urls, &database.url(), &[("ROUTER_STREAM_REPLICAS", "3")]).await;
    for name in [
        "ROUTER_INBOUND",
        "ROUTER_DELIVERY",
        "ROUTER_ALERTS",
        "KV_router_accounts",
        "KV_router_delivery_health",
    ] {
        assert_eq!(replicas(name).await, 3, "{name}");
    }
    // Consumers have no count of their own: they follow their stream.
    router_tests::eventually(
        Duration::from_secs(20),
        "the consumer replicated",
        || async {
            let stream = js.get_stream("ROUTER_DELIVERY").await.ok()?;
            let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                stream.get_consumer("ingest-outcomes").await.ok()?;
            let info = consumer.info().await.ok()?;
            let copies = info.cluster.as_ref().map_or(0, |c| c.replicas.len() + 1);
            (copies == 3).then_some(())
        },
    )
    .await;
    let logs = again.logs();
    assert!(
        logs.contains("stream replicas differ from ROUTER_STREAM_REPLICAS: changing them in place"),
        "{logs}"
    );
    assert!(
        logs.contains("bucket replicas differed from ROUTER_STREAM_REPLICAS: changed in place")
    );
}
