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
        // Every webhook's answer is timed, the refused one too, from half a
        // millisecond up.
        "router_ingest_webhook_seconds_count 4",
        "router_ingest_webhook_seconds_bucket{le=\"0.0005\"}",
        "router_ingest_webhook_seconds_bucket{le=\"+Inf\"} 4",
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

/// Every metric is on `/metrics`, with its help text, from the start and
/// with NATS unreachable from the start: the outbox backlog, which an alert
/// watches, grows from the first message saved. The README's metrics table
/// names each of them. Both services log at WARN which NATS server they
/// cannot reach and why.
#[tokio::test]
async fn every_metric_is_exported_with_help_from_the_start_even_without_nats() {
    let readme = include_str!("../../../README.md");
    // Nothing listens there.
    let port = router_tests::free_port();
    let nats_url = format!("nats://router:s3cret-nats@127.0.0.1:{port}");
    let database = router_tests::TestDatabase::create(Db::Sqlite).await;
    let ingest = router_tests::Service::ingest_started(&nats_url, &database.url(), &[]).await;
    let forwarder = router_tests::Service::forwarder_started(&nats_url, &[]).await;
    let http = router_tests::http_client();
    let metrics_of = |addr: String| {
        let http = http.clone();
        async move { router_tests::metrics_at(&http, &addr).await }
    };
    let ingest_metrics = ingest.setting("INGEST_METRICS_ADDR").unwrap().to_owned();
    for (list, addr) in [
        (ingest::http::metrics::METRICS, ingest_metrics.clone()),
        (forwarder::health::METRICS, forwarder.addr.to_string()),
    ] {
        let text = metrics_of(addr).await;
        for metric in list {
            assert!(
                readme.contains(&format!("`{}", metric.name)),
                "the README lists {}",
                metric.name
            );
            if matches!(metric.kind, shared::observe::Kind::Histogram) {
                continue;
            }
            assert!(
                text.contains(&format!("# HELP {} {}", metric.name, metric.help)),
                "{} has its help text:\n{text}",
                metric.name
            );
        }
    }

    // Each service says, at WARN, which server it cannot reach and why,
    // without the password.
    for service in [&ingest, &forwarder] {
        router_tests::eventually(Duration::from_secs(15), "the NATS warning", || async {
            service
                .logs()
                .lines()
                .any(|l| {
                    l.contains("WARN")
                        && l.contains("cannot connect to NATS")
                        && l.contains(&format!("nats://***@127.0.0.1:{port}"))
                        && l.contains("Connection refused")
                })
                .then_some(())
        })
        .await;
        assert!(
            !service.logs().contains("s3cret-nats"),
            "{}",
            service.logs()
        );
    }

    // A message saved while NATS has never answered shows in the backlog.
    let resp = http
        .post(format!("http://{}/api/v1/accounts", ingest.addr))
        .bearer_auth(router_tests::API_TOKEN)
        .json(
            &serde_json::json!({ "name": "Shop", "instagram_account_id": BUSINESS,
            "crm_webhook_url": "https://crm.example/hook" }),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let webhook = meta::text_message(BUSINESS, "1", "mid_no_nats", "hi");
    let resp = router_tests::post_meta_webhook(&http, ingest.addr, &webhook).await;
    assert_eq!(resp.status(), 200);
    router_tests::eventually(Duration::from_secs(10), "the backlog exported", || async {
        metrics_of(ingest_metrics.clone())
            .await
            .lines()
            .any(|l| l == "router_ingest_outbox_backlog 1")
            .then_some(())
    })
    .await;
}

/// A database ingest cannot open stops it at start with one line that names
/// the database (never its password) and why.
#[tokio::test]
async fn a_database_ingest_cannot_open_stops_it_with_one_line_naming_it() {
    let blocker = tempfile::NamedTempFile::new().unwrap();
    let under_a_file = format!("sqlite://{}/ingest.db", blocker.path().display());
    let unreachable = "postgres://router:s3cret-pw@127.0.0.1:1/router".to_owned();
    for (url, names) in [
        (under_a_file.clone(), under_a_file.clone()),
        (unreachable, "postgres://***@127.0.0.1:1/router".to_owned()),
    ] {
        let out = tokio::process::Command::new(router_tests::target_dir().join("ingest"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &url)
            .env(
                "NATS_URL",
                format!("nats://127.0.0.1:{}", router_tests::free_port()),
            )
            .env(
                "INGEST_ADDR",
                format!("127.0.0.1:{}", router_tests::free_port()),
            )
            .env(
                "INGEST_METRICS_ADDR",
                format!("127.0.0.1:{}", router_tests::free_port()),
            )
            .env("META_APP_SECRET", "s")
            .env("META_VERIFY_TOKEN", "v")
            .env("ROUTER_API_TOKENS", router_tests::API_TOKEN)
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{url}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("cannot open the database"))
            .collect();
        assert_eq!(lines.len(), 1, "said once: {stderr}");
        assert!(
            lines[0].contains(&format!("DATABASE_URL={names}")),
            "{stderr}"
        );
        assert!(!stderr.contains("s3cret-pw"), "{stderr}");
    }
}
