//! Scale-out on PostgreSQL: two ingests and three forwarders on one database
//! and one nats-server, twelve accounts. Every webhook reaches both ingests at
//! once, as when Meta's redelivery lands on another instance; every message
//! is delivered, none twice, every conversation in order, and the accounts
//! are spread over the forwarders.
#![cfg(postgres_tests)]

use std::collections::HashMap;
use std::time::Duration;

use router_tests::meta::{entry, payload, text_event};
use router_tests::{CrmReceiver, Db, System};

/// Rendezvous hashing puts all of six accounts on one of three forwarders
/// in 0.4% of runs (3 × 3⁻⁶), which failed the spread check once; with
/// twelve, in one run of 180,000.
const ACCOUNTS: usize = 12;

fn business(i: usize) -> String {
    format!("1784140000000005{i}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingests_and_three_forwarders_deliver_2000_messages_once_each() {
    let sys = System::start(Db::Postgres).await;
    let second_ingest = sys.another_ingest(&[]).await;
    let f2 = sys.another_forwarder(&[]).await;
    let f3 = sys.another_forwarder(&[]).await;
    let crm = CrmReceiver::start().await;
    let mut accounts = Vec::new();
    for i in 0..ACCOUNTS {
        accounts.push(sys.create_account(&business(i), &crm.url()).await.0);
    }

    let started = std::time::Instant::now();
    for batch in 0..200 {
        let to = business(batch % ACCOUNTS);
        let events = (0..10)
            .map(|i| {
                let n = batch * 10 + i;
                text_event(
                    &to,
                    &format!("{}", 9000 + n % 37),
                    &format!("mid_scale_{n}"),
                    "hello",
                    1_762_597_800_000 + n as i64,
                )
            })
            .collect();
        let body = payload(vec![entry(&to, events)]);
        let (a, b) = tokio::join!(
            sys.send_meta_webhook(&body),
            sys.send_meta_webhook_to(&second_ingest, &body)
        );
        assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    }
    let sent_in = started.elapsed();

    for (i, account) in accounts.iter().enumerate() {
        let n = 10 * (200 - i).div_ceil(ACCOUNTS);
        sys.wait_all_delivered(account, n, Duration::from_secs(180))
            .await;
    }
    let delivered_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut per_message: HashMap<String, usize> = HashMap::new();
    for d in crm.deliveries() {
        *per_message
            .entry(d.json["instagram_message_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_message.len(), 2000, "every message delivered");
    let twice: Vec<_> = per_message.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    let mut stored = 0;
    for account in &accounts {
        stored += sys.status_counts(account).await.values().sum::<usize>();
    }
    assert_eq!(stored, 2000, "one stored message per mid");
    router_tests::assert_conversations_in_order(&crm.deliveries());
    let serving: Vec<usize> = [&sys.forwarder, &f2, &f3]
        .iter()
        .map(|f| f.logs().matches("serving account").count())
        .collect();
    assert!(
        serving.iter().filter(|n| **n > 0).count() >= 2,
        "the accounts are spread over the forwarders: {serving:?}"
    );
    println!(
        "scale-out: 4000 webhook deliveries (2000 messages for {ACCOUNTS} accounts, each to both ingests) sent in {:.1}s, all delivered once and in order after {:.1}s",
        sent_in.as_secs_f64(),
        delivered_in.as_secs_f64()
    );
}
