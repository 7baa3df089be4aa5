//! Delivery guarantees over real processes: retries, dead letters, replay,
//! timeouts, and forwarders killed, stopped or running side by side.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use router_tests::meta;
use router_tests::{API_TOKEN, CrmReceiver, Db, Delivery, System};
use serde_json::json;

const BUSINESS: &str = "17841400000000031";
const WAIT: Duration = Duration::from_secs(30);

async fn send_one(sys: &System, mid: &str) {
    let resp = sys
        .send_meta_webhook(&meta::text_message(BUSINESS, "5551", mid, "hello"))
        .await;
    assert_eq!(resp.status(), 200);
}

/// Waits until ingest has recorded all of `mids` as delivered (a message
/// the CRM received just before a crash is only then redelivered), checks
/// each reached the CRM, and returns the receipts per message id.
async fn all_delivered(
    sys: &System,
    crm: &CrmReceiver,
    account: &str,
    mids: &HashSet<String>,
) -> HashMap<String, usize> {
    sys.wait_all_delivered(account, mids.len(), Duration::from_secs(90))
        .await;
    let all = crm.deliveries();
    let unique: HashSet<String> = all
        .iter()
        .map(|d| d.json["instagram_message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(&unique, mids, "every message reached the CRM");
    receipts(&all)
}

fn message_id(d: &Delivery) -> String {
    d.json["message_id"].as_str().unwrap().to_owned()
}

/// Per message id, how many times the CRM received it; checks every repeat
/// carried its original webhook-id.
fn receipts(deliveries: &[Delivery]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for d in deliveries {
        assert_eq!(
            d.webhook_id(),
            message_id(d),
            "webhook-id is the message id"
        );
        *counts.entry(message_id(d)).or_insert(0) += 1;
    }
    counts
}

async fn crm_errors_then_success_delivers_on_the_third_attempt_with_one_webhook_id(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    crm.answer_with(&[500, 503]);
    send_one(&sys, "mid_retry").await;

    let d = crm.wait_for(3, WAIT).await;
    let ids: HashSet<&str> = d.iter().map(|d| d.webhook_id()).collect();
    assert_eq!(ids.len(), 1, "same webhook-id on every attempt");
    let id = message_id(&d[0]);
    let m = sys.wait_for_status(&account, &id, "delivered").await;
    assert_eq!(m["delivery"]["attempts"], 3);
    assert_eq!(m["delivery"]["last_error"], "http_503");
    assert!(m["delivery"]["delivered_at"].is_string());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(crm.deliveries().len(), 3);
}

async fn a_401_is_dead_lettered_at_once_and_a_replay_delivers_it_with_the_same_webhook_id(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    crm.answer_with(&[401]);
    send_one(&sys, "mid_401").await;

    let first = crm.wait_for(1, WAIT).await.remove(0);
    let id = message_id(&first);
    let m = sys.wait_for_status(&account, &id, "dead").await;
    assert_eq!(m["delivery"]["attempts"], 1);
    assert_eq!(m["delivery"]["last_error"], "http_401");
    assert_eq!(m["delivery"]["last_status_code"], 401);
    let dead = sys
        .api_get(&format!("/api/v1/dead-letters?account_id={account}"))
        .await;
    assert_eq!(dead["data"][0]["id"], id.as_str());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(crm.deliveries().len(), 1, "a 401 is not retried");

    // The CRM is fixed (it now answers 200): replay.
    let resp = sys
        .http
        .post(sys.url(&format!("/api/v1/dead-letters/{id}/replay")))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let second = crm.wait_for(2, WAIT).await.remove(1);
    assert_eq!(second.webhook_id(), first.webhook_id());
    assert_eq!(second.body, first.body, "a replay sends the same body");
    let m = sys.wait_for_status(&account, &id, "delivered").await;
    assert_eq!(m["delivery"]["attempts"], 2);
    assert_eq!(m["delivery"]["replays"], 1);
    let dead = sys.api_get("/api/v1/dead-letters").await;
    assert!(dead["data"].as_array().unwrap().is_empty());

    // Only dead letters can be replayed.
    let again = sys
        .http
        .post(sys.url(&format!("/api/v1/dead-letters/{id}/replay")))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body["code"], "dead_letter_not_found");
}

async fn a_crm_always_failing_gets_one_plus_retries_attempts_then_a_dead_letter(db: Db) {
    // The harness's forwarder runs with FORWARDER_RETRY_SCHEDULE=1s,1s,1s.
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    crm.answer_with(&[500; 20]);
    send_one(&sys, "mid_always_500").await;

    let d = crm.wait_for(4, WAIT).await;
    let id = message_id(&d[0]);
    let m = sys.wait_for_status(&account, &id, "dead").await;
    assert_eq!(m["delivery"]["attempts"], 4);
    assert_eq!(m["delivery"]["last_error"], "http_500");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(crm.deliveries().len(), 4, "exactly 1 + 3 retries");
}

async fn replay_many_and_discard_by_account(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    crm.answer_with(&[403, 403, 403]);
    for mid in ["mid_d1", "mid_d2", "mid_d3"] {
        send_one(&sys, mid).await;
    }
    crm.wait_for(3, WAIT).await;
    let dead = router_tests::eventually(WAIT, "three dead letters", || async {
        let page = sys
            .api_get(&format!("/api/v1/dead-letters?account_id={account}"))
            .await;
        let ids: Vec<String> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        (ids.len() == 3).then_some(ids)
    })
    .await;

    let discard = sys
        .http
        .delete(sys.url(&format!("/api/v1/dead-letters/{}", dead[0])))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(discard.status(), 204);
    let resp = sys
        .http
        .post(sys.url("/api/v1/dead-letters/replay"))
        .bearer_auth(API_TOKEN)
        .json(&json!({ "account_id": account }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["replayed"], 2);
    crm.wait_for(5, WAIT).await;
    sys.wait_for_status(&account, &dead[1], "delivered").await;
    sys.wait_for_status(&account, &dead[2], "delivered").await;
    let m = sys.message(&account, &dead[0]).await.unwrap();
    assert_eq!(m["delivery"]["status"], "discarded");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(crm.deliveries().len(), 5);
}

async fn a_crm_slower_than_the_timeout_is_retried_and_delivered(db: Db) {
    let sys = System::start_with(db, &[("CRM_TIMEOUT_SECS", "1")]).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    crm.answer_late(200, Duration::from_secs(3));
    send_one(&sys, "mid_slow").await;

    let d = crm.wait_for(2, WAIT).await;
    assert_eq!(d[0].webhook_id(), d[1].webhook_id());
    let id = message_id(&d[0]);
    let m = sys.wait_for_status(&account, &id, "delivered").await;
    assert_eq!(m["delivery"]["attempts"], 2);
    assert_eq!(m["delivery"]["last_error"], "timeout");
}

async fn a_forwarder_killed_mid_stream_loses_nothing_and_repeats_keep_their_webhook_id(db: Db) {
    let mut sys = System::start_with(db, &[("CRM_TIMEOUT_SECS", "2")]).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    crm.delay_answers(Some(Duration::from_millis(500)));
    let mids = sys.send_conversations(BUSINESS, 300, 30, "kill").await;

    crm.wait_for(100, WAIT).await;
    sys.forwarder.kill();
    let at_kill = crm.deliveries().len();
    sys.forwarder.restart_forwarder().await;

    let counts = all_delivered(&sys, &crm, &account, &mids).await;
    assert_eq!(counts.len(), 300);
    let repeats: usize = counts.values().map(|c| c - 1).sum();
    println!(
        "kill -9 after {at_kill} deliveries: 300 messages, {} requests, {repeats} repeated (all with their original webhook-id)",
        counts.values().sum::<usize>()
    );
    assert!(
        repeats <= 8,
        "only what was in flight (the account's 8) can repeat ({repeats})"
    );
    let conversations = router_tests::assert_conversations_in_order(&crm.deliveries());
    assert_eq!(conversations, 30);
}

async fn a_forwarder_stopped_with_sigterm_mid_stream_delivers_each_message_exactly_once(db: Db) {
    let mut sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    crm.delay_answers(Some(Duration::from_millis(500)));
    let mids = sys.send_conversations(BUSINESS, 300, 30, "term").await;

    crm.wait_for(100, WAIT).await;
    let status = sys.forwarder.terminate(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "forwarder exits cleanly on SIGTERM: {status:?}"
    );
    assert!(sys.forwarder.logs().contains("forwarder stopped"));
    let at_stop = crm.deliveries().len();
    assert!(at_stop < 300, "stopped mid-stream");
    sys.forwarder.restart_forwarder().await;

    let counts = all_delivered(&sys, &crm, &account, &mids).await;
    assert_eq!(counts.len(), 300);
    let twice: Vec<&String> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(id, _)| id)
        .collect();
    assert!(
        twice.is_empty(),
        "delivered twice: {twice:?}\n{}",
        sys.forwarder.logs()
    );
    router_tests::assert_conversations_in_order(&crm.deliveries());
}

async fn two_forwarders_share_the_accounts_and_deliver_each_message_once_in_order(db: Db) {
    let sys = System::start(db).await;
    let second = sys.another_forwarder(&[]).await;
    let crm = CrmReceiver::start().await;
    crm.delay_answers(Some(Duration::from_millis(20)));
    let mut all = HashSet::new();
    for i in 0..20 {
        let business = format!("178414000000009{i:02}");
        sys.create_account(&business, &crm.url()).await;
        all.extend(
            sys.send_conversations(&business, 10, 2, &format!("two_{i}"))
                .await,
        );
    }

    crm.wait_for(200, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let counts = receipts(&crm.deliveries());
    assert_eq!(counts.len(), 200);
    assert!(
        counts.values().all(|c| *c == 1),
        "no message delivered twice"
    );
    let unique: HashSet<String> = crm
        .deliveries()
        .iter()
        .map(|d| d.json["instagram_message_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(unique, all);
    assert_eq!(
        router_tests::assert_conversations_in_order(&crm.deliveries()),
        40
    );
    for f in [&sys.forwarder, &second] {
        assert!(
            f.logs().contains("delivered status=200"),
            "both forwarders took a share"
        );
    }
}

async fn nats_killed_mid_delivery_loses_nothing(db: Db) {
    let mut sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    crm.delay_answers(Some(Duration::from_millis(100)));
    let mids = sys.send_conversations(BUSINESS, 200, 20, "nats").await;

    crm.wait_for(50, WAIT).await;
    sys.nats.stop(); // SIGKILL
    tokio::time::sleep(Duration::from_secs(2)).await;
    sys.nats.resume().await;

    let counts = all_delivered(&sys, &crm, &account, &mids).await;
    let repeats: usize = counts.values().map(|c| c - 1).sum();
    println!(
        "nats-server kill -9: 200 messages, {} requests, {repeats} repeated",
        counts.values().sum::<usize>()
    );
    router_tests::assert_conversations_in_order(&crm.deliveries());
}

async fn ingest_stopped_while_nats_is_down_publishes_its_outbox_after_restart(db: Db) {
    let mut sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    sys.nats.stop();
    for i in 0..10 {
        send_one(&sys, &format!("mid_saved_{i}")).await;
    }
    // SIGTERM: ingest drains HTTP, tries its outbox within a bound, and exits.
    let status = sys.ingest.terminate(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "ingest exits cleanly: {status:?}"
    );
    assert!(sys.ingest.logs().contains("ingest stopped"));
    assert!(crm.deliveries().is_empty());

    sys.nats.resume().await;
    sys.ingest.start();
    sys.ingest.wait_healthy("/readyz").await;
    sys.wait_all_delivered(&account, 10, Duration::from_secs(60))
        .await;
    let counts = receipts(&crm.deliveries());
    assert_eq!(counts.len(), 10);
    assert!(counts.values().all(|c| *c == 1));
}

async fn a_forwarder_without_the_encryption_key_keeps_messages_until_one_with_it_delivers(db: Db) {
    let mut sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    sys.forwarder.terminate(Duration::from_secs(20)).await;
    // Misconfigured: no ROUTER_ENCRYPTION_KEY, so sealed secrets cannot be read.
    let keyless = sys
        .another_forwarder(&[
            ("ROUTER_ENCRYPTION_KEY", ""),
            ("FORWARDER_RETRY_SCHEDULE", "3s,3s,3s"),
        ])
        .await;
    send_one(&sys, "mid_keyless").await;
    router_tests::eventually(WAIT, "the keyless forwarder's complaint", || async {
        keyless
            .logs()
            .contains("set ROUTER_ENCRYPTION_KEY as on ingest")
            .then_some(())
    })
    .await;
    let pending = sys.status_counts(&account).await;
    assert_eq!(pending.get("dead"), None, "not dead-lettered: {pending:?}");
    assert!(crm.deliveries().is_empty());
    drop(keyless);

    // The fixed forwarder delivers it, signed with the real secret.
    sys.forwarder.restart_forwarder().await;
    sys.wait_all_delivered(&account, 1, Duration::from_secs(30))
        .await;
    assert_eq!(crm.deliveries().len(), 1);
}

router_tests::on_both_stores!(
    crm_errors_then_success_delivers_on_the_third_attempt_with_one_webhook_id,
    a_401_is_dead_lettered_at_once_and_a_replay_delivers_it_with_the_same_webhook_id,
    a_crm_always_failing_gets_one_plus_retries_attempts_then_a_dead_letter,
    replay_many_and_discard_by_account,
    a_crm_slower_than_the_timeout_is_retried_and_delivered,
    a_forwarder_killed_mid_stream_loses_nothing_and_repeats_keep_their_webhook_id,
    a_forwarder_stopped_with_sigterm_mid_stream_delivers_each_message_exactly_once,
    two_forwarders_share_the_accounts_and_deliver_each_message_once_in_order,
    nats_killed_mid_delivery_loses_nothing,
    ingest_stopped_while_nats_is_down_publishes_its_outbox_after_restart,
    a_forwarder_without_the_encryption_key_keeps_messages_until_one_with_it_delivers,
);
