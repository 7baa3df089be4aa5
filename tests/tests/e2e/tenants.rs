//! Accounts are tenants: one account's failing, slow or busy CRM never holds
//! back another's messages; each conversation reaches its CRM in order, also
//! across retries and dead letters; a CRM that keeps failing pauses only its
//! own account (circuit breaker, probes, alerts); operators pause and resume
//! an account; an account's deliveries in flight stay within its cap.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use router_tests::meta::{entry, payload, text_event};
use router_tests::{Alerts, CrmReceiver, Db, System, assert_conversations_in_order, eventually};
use serde_json::{Value, json};

const A: &str = "17841400000000061";
const B: &str = "17841400000000062";
const WAIT: Duration = Duration::from_secs(30);

/// Sends the quiet account's 20 messages and returns how long the last one
/// took to reach its CRM.
async fn quiet_account_gets_through(sys: &System, crm_b: &CrmReceiver) -> Duration {
    let started = Instant::now();
    sys.send_conversations(B, 20, 20, "quiet").await;
    crm_b.wait_for(20, Duration::from_secs(15)).await;
    started.elapsed()
}

async fn a_failing_crm_with_a_backlog_holds_back_no_other_account(db: Db) {
    // Long retry delays: every failed message waits 30 s for its retry.
    let sys = System::start_with(db, &[("FORWARDER_RETRY_SCHEDULE", "30s,30s,30s")]).await;
    let (crm_a, crm_b) = (CrmReceiver::start().await, CrmReceiver::start().await);
    crm_a.answer_all_with(Some(503));
    let (account_a, _) = sys.create_account(A, &crm_a.url()).await;
    sys.create_account(B, &crm_b.url()).await;
    // More waiting retries than the old shared consumer's 1000 places.
    sys.send_conversations(A, 1100, 100, "down").await;
    crm_a.wait_for(5, WAIT).await;

    let took = quiet_account_gets_through(&sys, &crm_b).await;
    println!("account B's 20 messages arrived in {took:?} while A's CRM answers 503");
    let health = account_health(&sys, &account_a).await;
    assert_eq!(health["state"], "paused", "{health}");
    assert_eq!(health["paused_by"], "circuit_breaker");
    assert_eq!(health["last_error"], "http_503");
    let counts = sys.status_counts(&account_a).await;
    assert_eq!(
        counts.get("dead"),
        None,
        "nothing dead-lettered: {counts:?}"
    );
}

async fn a_slow_crm_with_a_backlog_holds_back_no_other_account(db: Db) {
    let sys = System::start(db).await;
    let (crm_a, crm_b) = (CrmReceiver::start().await, CrmReceiver::start().await);
    crm_a.delay_answers(Some(Duration::from_secs(8))); // under the 10 s timeout
    sys.create_account(A, &crm_a.url()).await;
    sys.create_account(B, &crm_b.url()).await;
    sys.send_conversations(A, 300, 300, "slow").await;
    crm_a.wait_for(8, WAIT).await;

    let took = quiet_account_gets_through(&sys, &crm_b).await;
    println!("account B's 20 messages arrived in {took:?} while A's CRM takes 8 s per request");
    assert!(
        crm_a.most_at_once() <= 8,
        "the slow account stays within its cap: {}",
        crm_a.most_at_once()
    );
}

async fn a_backlog_to_a_healthy_crm_does_not_delay_a_quiet_account(db: Db) {
    let sys = System::start(db).await;
    let (crm_a, crm_b) = (CrmReceiver::start().await, CrmReceiver::start().await);
    crm_a.delay_answers(Some(Duration::from_millis(50)));
    let (account_a, _) = sys.create_account(A, &crm_a.url()).await;
    sys.create_account(B, &crm_b.url()).await;
    // A's backlog builds up while its deliveries are paused, then goes.
    post(
        &sys,
        &format!("/api/v1/accounts/{account_a}/deliveries/pause"),
    )
    .await;
    sys.send_conversations(A, 1000, 100, "busy").await;
    post(
        &sys,
        &format!("/api/v1/accounts/{account_a}/deliveries/resume"),
    )
    .await;
    crm_a.wait_for(20, WAIT).await;

    let resp = sys
        .send_meta_webhook(&router_tests::meta::text_message(B, "777", "mid_b", "hi"))
        .await;
    assert_eq!(resp.status(), 200);
    crm_b.wait_for(1, WAIT).await;
    let a_done = crm_a.deliveries().len();
    println!("B's message arrived when A's CRM had {a_done} of its 1000");
    assert!(
        a_done < 200,
        "B's message waited for A's backlog ({a_done} of 1000 delivered first)"
    );
}

async fn a_conversation_stays_in_order_across_a_retry_while_others_go_on(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(A, &crm.url()).await;
    crm.answer_message_with("mid_x1", &[503]);
    let x = |n: u32| text_event(A, "1001", &format!("mid_x{n}"), "x", 1_762_597_800_000);
    let y = |n: u32| text_event(A, "2002", &format!("mid_y{n}"), "y", 1_762_597_800_000);
    let body = payload(vec![entry(A, vec![x(1), y(1), x(2), y(2), x(3)])]);
    assert_eq!(sys.send_meta_webhook(&body).await.status(), 200);

    sys.wait_all_delivered(&account, 5, WAIT).await;
    let arrivals = crm.arrivals();
    let at = |mid: &str| arrivals.iter().rposition(|m| m == mid).unwrap();
    assert_eq!(arrivals.len(), 6, "x1 twice: {arrivals:?}");
    assert!(
        at("mid_y2") < at("mid_x1"),
        "y waited for x's retry: {arrivals:?}"
    );
    assert!(
        at("mid_x1") < at("mid_x2") && at("mid_x2") < at("mid_x3"),
        "{arrivals:?}"
    );
    assert_eq!(assert_conversations_in_order(&crm.deliveries()), 2);
}

async fn messages_arriving_while_an_earlier_one_is_retried_stay_behind_it(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(A, &crm.url()).await;
    // w1 fails, then its retry (about 1 s later) takes half a second to succeed.
    crm.answer_message_with("mid_w1", &[503]);
    crm.answer_message_late("mid_w1", 200, Duration::from_millis(500));
    let send = |mid: &'static str| {
        let body = payload(vec![entry(
            A,
            vec![text_event(A, "5005", mid, "w", 1_762_597_800_000)],
        )]);
        let sys = &sys;
        async move { assert_eq!(sys.send_meta_webhook(&body).await.status(), 200) }
    };
    send("mid_w1").await;
    crm.wait_for(1, WAIT).await; // failed: w1 waits for its retry
    send("mid_w2").await; // arrives while w1 waits on the server
    crm.wait_for(2, WAIT).await; // w1's retry is running
    send("mid_w3").await; // arrives while w1's retry runs
    sys.wait_all_delivered(&account, 3, WAIT).await;

    assert_eq!(crm.arrivals(), ["mid_w1", "mid_w1", "mid_w2", "mid_w3"]);
}

async fn a_dead_letter_releases_the_messages_behind_it(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(A, &crm.url()).await;
    // Refused at once, and failing until its retries (1s,1s,1s) are used up.
    crm.answer_message_with("mid_r1", &[400]);
    crm.answer_message_with("mid_f1", &[503, 503, 503, 503]);
    let event = |customer: &str, mid: &str| text_event(A, customer, mid, "m", 1_762_597_800_000);
    let body = payload(vec![entry(
        A,
        vec![
            event("3003", "mid_r1"),
            event("3003", "mid_r2"),
            event("4004", "mid_f1"),
            event("4004", "mid_f2"),
        ],
    )]);
    assert_eq!(sys.send_meta_webhook(&body).await.status(), 200);

    // Failures in a row, fewer than the breaker's five: degraded, not paused.
    let degraded = eventually(WAIT, "degraded delivery health", || async {
        let health = account_health(&sys, &account).await;
        (health["state"] == "degraded").then_some(health)
    })
    .await;
    assert_eq!(degraded["last_error"], "http_503", "{degraded}");
    assert!(degraded["paused_by"].is_null() && degraded["next_probe_at"].is_null());
    eventually(WAIT, "both followers delivered", || async {
        let counts = sys.status_counts(&account).await;
        (counts.get("delivered") == Some(&2) && counts.get("dead") == Some(&2)).then_some(())
    })
    .await;
    let arrivals = crm.arrivals();
    let last = |mid: &str| arrivals.iter().rposition(|m| m == mid).unwrap();
    assert!(last("mid_r1") < last("mid_r2"), "{arrivals:?}");
    assert_eq!(arrivals.iter().filter(|m| **m == "mid_f1").count(), 4);
    assert!(last("mid_f1") < last("mid_f2"), "{arrivals:?}");
    eventually(WAIT, "healthy again", || async {
        (account_health(&sys, &account).await["state"] == "healthy").then_some(())
    })
    .await;
}

async fn account_health(sys: &System, account: &str) -> Value {
    sys.api_get(&format!("/api/v1/accounts/{account}"))
        .await
        .get("delivery_health")
        .cloned()
        .unwrap()
}

/// Every alert published for the account's CRM, from now on.
async fn alerts(sys: &System, account: &str) -> Alerts {
    sys.alerts(format!("router.alerts.crm.{account}")).await
}

async fn a_crm_that_keeps_failing_pauses_its_account_until_a_probe_succeeds(db: Db) {
    let sys = System::start_with(
        db,
        &[
            ("FORWARDER_BREAKER_FAILURES", "3"),
            ("FORWARDER_BREAKER_PROBE_INTERVAL", "1s"),
            ("FORWARDER_BREAKER_MAX_PROBE_INTERVAL", "2s"),
        ],
    )
    .await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(A, &crm.url()).await;
    let mut alerts = alerts(&sys, &account).await;
    crm.answer_all_with(Some(503));
    sys.send_conversations(A, 10, 10, "probe").await;

    let paused = alerts.next().await;
    assert_eq!(paused["event"], "deliveries_paused", "{paused}");
    assert_eq!(paused["account_id"], account.as_str());
    assert_eq!(paused["cause"], "circuit_breaker");
    assert_eq!(paused["last_error"], "http_503");
    assert!(paused["consecutive_failures"].as_u64().unwrap() >= 3);
    assert!(paused["next_probe_at"].is_string());
    let health = account_health(&sys, &account).await;
    assert_eq!(health["state"], "paused", "{health}");
    assert_eq!(health["paused_by"], "circuit_breaker");
    assert!(health["next_probe_at"].is_string());
    eventually(WAIT, "the paused gauge", || async {
        sys.forwarder_metrics()
            .await
            .contains("router_forwarder_accounts{state=\"paused\"} 1")
            .then_some(())
    })
    .await;

    // Probes fail for a while; the retry schedule (3 retries of 1 s) would
    // have dead-lettered every message long ago if it were running.
    let before = crm.deliveries().len();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let probes = crm.deliveries().len() - before;
    assert!(
        (2..=6).contains(&probes),
        "one probe at a time, at growing intervals: {probes} in 6 s"
    );
    let counts = sys.status_counts(&account).await;
    assert_eq!(counts.get("dead"), None, "{counts:?}");
    assert_eq!(counts.get("delivered"), None, "{counts:?}");

    crm.answer_all_with(None);
    let resumed = alerts.next().await;
    assert_eq!(resumed["event"], "deliveries_resumed", "{resumed}");
    assert_eq!(resumed["cause"], "probe_succeeded");
    assert!(resumed["paused_since"].is_string());
    sys.wait_all_delivered(&account, 10, WAIT).await;
    assert_conversations_in_order(&crm.deliveries());
    let health = account_health(&sys, &account).await;
    assert_eq!(health["state"], "healthy", "{health}");
    assert_eq!(health["consecutive_failures"], 0);
}

async fn post(sys: &System, path: &str) -> (u16, Value) {
    sys.api_send(reqwest::Method::POST, path, None).await
}

async fn an_operator_pauses_and_resumes_an_accounts_deliveries(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(A, &crm.url()).await;
    let mut alerts = alerts(&sys, &account).await;

    let (status, paused) = post(
        &sys,
        &format!("/api/v1/accounts/{account}/deliveries/pause"),
    )
    .await;
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["delivery_health"]["state"], "paused");
    assert_eq!(paused["delivery_health"]["paused_by"], "operator");
    let alert = alerts.next().await;
    assert_eq!(
        (alert["event"].as_str(), alert["cause"].as_str()),
        (Some("deliveries_paused"), Some("operator"))
    );
    sys.send_conversations(A, 6, 2, "held").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(crm.deliveries().is_empty(), "nothing goes out while paused");
    assert_eq!(sys.status_counts(&account).await.get("pending"), Some(&6));

    let (status, resumed) = post(
        &sys,
        &format!("/api/v1/accounts/{account}/deliveries/resume"),
    )
    .await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["delivery_health"]["state"], "healthy");
    let alert = alerts.next().await;
    assert_eq!(
        (alert["event"].as_str(), alert["cause"].as_str()),
        (Some("deliveries_resumed"), Some("operator"))
    );
    sys.wait_all_delivered(&account, 6, WAIT).await;
    assert_eq!(assert_conversations_in_order(&crm.deliveries()), 2);

    let (status, body) = post(&sys, "/api/v1/accounts/acc_nope/deliveries/pause").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("account_not_found"))
    );
}

async fn an_operator_resume_ends_a_circuit_breaker_pause_at_once(db: Db) {
    let sys = System::start_with(
        db,
        &[
            ("FORWARDER_BREAKER_FAILURES", "2"),
            ("FORWARDER_BREAKER_PROBE_INTERVAL", "10m"),
        ],
    )
    .await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(A, &crm.url()).await;
    crm.answer_all_with(Some(500));
    sys.send_conversations(A, 4, 4, "stuck").await;
    eventually(WAIT, "the breaker's pause", || async {
        (account_health(&sys, &account).await["state"] == "paused").then_some(())
    })
    .await;

    crm.answer_all_with(None);
    let (status, _) = post(
        &sys,
        &format!("/api/v1/accounts/{account}/deliveries/resume"),
    )
    .await;
    assert_eq!(status, 200);
    // Long before the next probe (10 min), and before the retry delays end.
    sys.wait_all_delivered(&account, 4, Duration::from_secs(20))
        .await;
    assert_eq!(account_health(&sys, &account).await["state"], "healthy");
}

async fn an_accounts_deliveries_in_flight_stay_within_its_cap(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    crm.delay_answers(Some(Duration::from_millis(300)));
    let created = sys
        .create_account_with(json!({
            "name": "Capped", "instagram_account_id": A,
            "crm_webhook_url": crm.url(), "max_in_flight": 2,
        }))
        .await;
    assert_eq!(created["max_in_flight"], 2);
    let account = created["id"].as_str().unwrap().to_owned();
    sys.send_conversations(A, 12, 12, "capped").await;
    sys.wait_all_delivered(&account, 12, WAIT).await;
    assert_eq!(crm.most_at_once(), 2, "two at a time, never more");

    let path = format!("/api/v1/accounts/{account}");
    let patch = |value: Value| {
        sys.api_send(
            reqwest::Method::PATCH,
            &path,
            Some(json!({ "max_in_flight": value })),
        )
    };
    for bad in [json!(0), json!(65), json!("many")] {
        let (status, body) = patch(bad.clone()).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_request")),
            "{bad}"
        );
    }
    let (status, body) = patch(Value::Null).await;
    assert_eq!(status, 200);
    assert!(body["max_in_flight"].is_null(), "back to the default");
}

async fn upgrading_from_the_shared_consumer_carries_on_where_it_stood(db: Db) {
    use async_nats::jetstream::{self, AckKind, consumer::pull};
    let mut sys = System::start(db).await;
    sys.forwarder.terminate(Duration::from_secs(20)).await;
    let crm = CrmReceiver::start().await;
    sys.create_account(A, &crm.url()).await;
    sys.send_conversations(A, 10, 1, "old").await;

    // The forwarder of the previous version shared one consumer and had
    // delivered (acked) the first four messages when it was stopped.
    let js = jetstream::new(async_nats::connect(sys.nats.url()).await.unwrap());
    let stream = js.get_stream("ROUTER_INBOUND").await.unwrap();
    eventually(WAIT, "the ten messages in the stream", || async {
        (stream.get_info().await.ok()?.state.messages == 10).then_some(())
    })
    .await;
    let legacy: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("forwarder".into()),
            filter_subject: "router.inbound.>".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let old: Vec<_> = legacy
        .fetch()
        .max_messages(4)
        .messages()
        .await
        .unwrap()
        .filter_map(|m| async { m.ok() })
        .collect()
        .await;
    assert_eq!(old.len(), 4);
    let delivered_before: Vec<String> = old
        .iter()
        .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap()["message_id"].to_string())
        .collect();
    for m in &old {
        m.double_ack_with(AckKind::Ack).await.unwrap();
    }

    sys.forwarder.restart_forwarder().await;
    crm.wait_for(6, WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = crm.deliveries();
    assert_eq!(d.len(), 6, "the six not delivered before, once each");
    assert!(
        d.iter()
            .all(|d| !delivered_before.contains(&d.json["message_id"].to_string())),
        "nothing the old forwarder delivered comes again"
    );
    let sequences: Vec<u64> = d
        .iter()
        .map(|d| d.json["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [5, 6, 7, 8, 9, 10]);
    assert!(
        stream.consumer_info("forwarder").await.is_err(),
        "the shared consumer is gone"
    );
}

router_tests::on_both_stores!(
    a_failing_crm_with_a_backlog_holds_back_no_other_account,
    a_slow_crm_with_a_backlog_holds_back_no_other_account,
    a_backlog_to_a_healthy_crm_does_not_delay_a_quiet_account,
    a_conversation_stays_in_order_across_a_retry_while_others_go_on,
    messages_arriving_while_an_earlier_one_is_retried_stay_behind_it,
    a_dead_letter_releases_the_messages_behind_it,
    a_crm_that_keeps_failing_pauses_its_account_until_a_probe_succeeds,
    an_operator_pauses_and_resumes_an_accounts_deliveries,
    an_operator_resume_ends_a_circuit_breaker_pause_at_once,
    an_accounts_deliveries_in_flight_stay_within_its_cap,
    upgrading_from_the_shared_consumer_carries_on_where_it_stood,
);
