//! Scale-out on PostgreSQL: two ingests and three forwarders on one database
//! and one nats-server. Every webhook reaches both ingests at once, as when
//! Meta's redelivery lands on another instance; every message is delivered,
//! none twice.
#![cfg(postgres_tests)]

use std::collections::HashMap;
use std::time::Duration;

use router_tests::meta::{entry, payload, text_event};
use router_tests::{CrmReceiver, System};

const BUSINESS: &str = "17841400000000051";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingests_and_three_forwarders_deliver_2000_messages_once_each() {
    let sys = System::start().await;
    let second_ingest = sys.another_ingest(&[]).await;
    let _f2 = sys.another_forwarder(&[]).await;
    let _f3 = sys.another_forwarder(&[]).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;

    let started = std::time::Instant::now();
    for batch in 0..200 {
        let events = (0..10)
            .map(|i| {
                let n = batch * 10 + i;
                text_event(
                    BUSINESS,
                    &format!("{}", 9000 + n % 37),
                    &format!("mid_scale_{n}"),
                    "hello",
                    1_762_597_800_000 + n as i64,
                )
            })
            .collect();
        let body = payload(vec![entry(BUSINESS, events)]);
        let (a, b) = tokio::join!(
            sys.send_meta_webhook(&body),
            sys.send_meta_webhook_to(&second_ingest, &body)
        );
        assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    }
    let sent_in = started.elapsed();

    sys.wait_all_delivered(&account, 2000, Duration::from_secs(180))
        .await;
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
    let counts = sys.status_counts(&account).await;
    assert_eq!(
        counts.values().sum::<usize>(),
        2000,
        "one stored message per mid: {counts:?}"
    );
    println!(
        "scale-out: 4000 webhook deliveries (2000 messages, each to both ingests) sent in {:.1}s, all delivered once after {:.1}s",
        sent_in.as_secs_f64(),
        delivered_in.as_secs_f64()
    );
}
