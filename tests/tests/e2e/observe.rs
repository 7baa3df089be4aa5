//! What operators watch: Prometheus metrics on both services and the live
//! summaries on `router.stats.>`.

use std::time::Duration;

use futures::StreamExt as _;
use router_tests::{CrmReceiver, Db, System, meta};

const BUSINESS: &str = "17841400000000061";

async fn metrics_and_nats_stats_show_the_flow(db: Db) {
    let sys = System::start(db).await;
    let nats = async_nats::connect(sys.nats.url()).await.unwrap();
    let mut stats = nats.subscribe("router.stats.>").await.unwrap();
    let crm = CrmReceiver::start().await;
    sys.create_account(BUSINESS, &crm.url()).await;
    for i in 0..3 {
        sys.send_meta_webhook(&meta::text_message(
            BUSINESS,
            "1",
            &format!("mid_{i}"),
            "hi",
        ))
        .await;
    }
    let unsigned = sys
        .http
        .post(sys.url("/webhooks/instagram"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    crm.wait_for(3, Duration::from_secs(20)).await;

    // Live summaries from both services, with what went through.
    let mut seen = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 2
        || seen
            .values()
            .any(|v: &serde_json::Value| v["out_total"] != 3)
    {
        let msg = tokio::time::timeout_at(deadline, stats.next())
            .await
            .expect("stats within 20 s")
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        let service = body["service"].as_str().unwrap().to_owned();
        assert!(
            msg.subject
                .as_str()
                .starts_with(&format!("router.stats.{service}."))
        );
        seen.insert(service, body);
    }
    assert_eq!(seen["ingest"]["in_total"], 3);
    assert_eq!(seen["forwarder"]["in_total"], 3);
    for s in seen.values() {
        for field in [
            "in_per_sec",
            "out_per_sec",
            "errors_per_sec",
            "pending",
            "instance",
            "at",
        ] {
            assert!(s.get(field).is_some(), "stats without {field}: {s}");
        }
    }

    let public = sys.http.get(sys.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404, "no /metrics on the public address");
    let ingest_metrics = sys.ingest_metrics().await;
    for line in [
        "router_ingest_webhooks_total{result=\"accepted\"} 3",
        "router_ingest_webhooks_total{result=\"missing_signature\"} 1",
        "router_ingest_events_total{result=\"saved\"} 3",
        "router_ingest_published_total 3",
        "router_ingest_outbox_backlog 0",
    ] {
        assert!(
            ingest_metrics.contains(line),
            "ingest /metrics lacks {line:?}:\n{ingest_metrics}"
        );
    }
    assert!(ingest_metrics.contains("router_ingest_publish_seconds_bucket"));
    let forwarder_metrics = sys.forwarder_metrics().await;
    for line in [
        "router_forwarder_deliveries_total{outcome=\"delivered\"} 3",
        "router_forwarder_attempt_seconds_bucket",
        "router_forwarder_in_flight",
        "router_forwarder_consumer_pending",
    ] {
        assert!(
            forwarder_metrics.contains(line),
            "forwarder /metrics lacks {line:?}:\n{forwarder_metrics}"
        );
    }
}

router_tests::on_both_stores!(metrics_and_nats_stats_show_the_flow,);
