//! The inbound path end to end: Meta → ingest → NATS → forwarder → CRM, over
//! real processes and real HTTP.

use std::time::Duration;

use router_tests::meta::{self, entry, payload, text_event};
use router_tests::{API_TOKEN, CrmReceiver, Db, META_VERIFY_TOKEN, System, eventually};
use serde_json::json;

const BUSINESS: &str = "17841400000000001";
const CUSTOMER: &str = "9988776655";
const WAIT: Duration = Duration::from_secs(20);

async fn meta_handshake_echoes_the_challenge_only_for_the_right_token(db: Db) {
    let sys = System::start(db).await;
    let ok = sys
        .http
        .get(sys.url("/webhooks/instagram"))
        .query(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", META_VERIFY_TOKEN),
            ("hub.challenge", "1158201444"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert!(
        ok.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(ok.text().await.unwrap(), "1158201444");

    let wrong = sys
        .http
        .get(sys.url("/webhooks/instagram"))
        .query(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", "nope"),
            ("hub.challenge", "1158201444"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    assert!(!wrong.text().await.unwrap().contains("1158201444"));
}

async fn a_text_message_reaches_the_crm_with_every_field_and_both_signatures(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account_id, secret) = sys.create_account(BUSINESS, &crm.url()).await;

    let resp = sys
        .send_meta_webhook(&meta::text_message(
            BUSINESS,
            CUSTOMER,
            "mid_text_1",
            "Hello! When will my order ship?",
        ))
        .await;
    assert_eq!(resp.status(), 200);

    let delivery = crm.wait_for(1, WAIT).await.remove(0);
    assert!(
        delivery.hub_signature_valid(&secret),
        "X-Hub-Signature-256 must verify"
    );
    assert!(
        delivery.standard_signature_valid(&secret),
        "webhook-signature must verify"
    );
    assert!(router_tests::readme_verify::verify_delivery(
        &secret,
        &delivery.body,
        delivery.header("x-hub-signature-256"),
        delivery.webhook_id(),
        delivery.header("webhook-timestamp"),
        delivery.header("webhook-signature"),
        chrono_now(),
    ));
    assert!(!router_tests::readme_verify::verify_delivery(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        &delivery.body,
        delivery.header("x-hub-signature-256"),
        delivery.webhook_id(),
        delivery.header("webhook-timestamp"),
        delivery.header("webhook-signature"),
        chrono_now(),
    ));
    assert_eq!(delivery.header("content-type"), "application/json");
    let ts: i64 = delivery.header("webhook-timestamp").parse().unwrap();
    assert!((chrono_now() - ts).abs() < 60);

    let body = &delivery.json;
    assert_eq!(body["event"], "message.received");
    let message_id = body["message_id"].as_str().unwrap();
    assert!(message_id.starts_with("msg_"));
    assert_eq!(delivery.webhook_id(), message_id);
    assert_eq!(body["account_id"], account_id.as_str());
    assert_eq!(body["sender_id"], CUSTOMER);
    assert!(body["sender_username"].is_null());
    assert_eq!(body["message"], "Hello! When will my order ship?");
    assert_eq!(body["message_type"], "text");
    assert_eq!(body["timestamp"], "2025-11-08T10:30:00Z");
    assert_eq!(body["instagram_message_id"], "mid_text_1");
    assert_eq!(
        body["conversation_id"],
        format!("conv_{CUSTOMER}_{BUSINESS}")
    );
    assert_eq!(body["sequence"], 1, "the conversation's first event");
}

async fn each_conversations_events_are_numbered_from_one_without_gaps(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    let first = payload(vec![entry(
        BUSINESS,
        vec![
            text_event(BUSINESS, "111", "mid_a1", "a1", 1_762_597_800_000),
            text_event(BUSINESS, "222", "mid_b1", "b1", 1_762_597_801_000),
            text_event(BUSINESS, "111", "mid_a2", "a2", 1_762_597_802_000),
        ],
    )]);
    assert_eq!(sys.send_meta_webhook(&first).await.status(), 200);
    // Meta's redelivery takes no number.
    assert_eq!(sys.send_meta_webhook(&first).await.status(), 200);
    let second = payload(vec![entry(
        BUSINESS,
        vec![
            text_event(BUSINESS, "222", "mid_b2", "b2", 1_762_597_803_000),
            text_event(BUSINESS, "111", "mid_a3", "a3", 1_762_597_804_000),
        ],
    )]);
    assert_eq!(sys.send_meta_webhook(&second).await.status(), 200);

    crm.wait_for(5, WAIT).await;
    sys.wait_all_delivered(&account, 5, WAIT).await;
    let sequence_of = |mid: &str| {
        crm.deliveries()
            .iter()
            .find(|d| d.json["instagram_message_id"] == mid)
            .map(|d| d.json["sequence"].as_u64().unwrap())
            .unwrap()
    };
    let numbered: Vec<u64> = ["mid_a1", "mid_a2", "mid_a3", "mid_b1", "mid_b2"]
        .iter()
        .map(|mid| sequence_of(mid))
        .collect();
    assert_eq!(numbered, [1, 2, 3, 1, 2]);
    for m in sys.messages(&account).await {
        let mid = m["instagram_message_id"].as_str().unwrap();
        assert_eq!(m["sequence"].as_u64(), Some(sequence_of(mid)), "{mid}");
    }
}

/// PostgreSQL's text cannot hold NUL: before, the whole webhook failed with
/// 503 on every one of Meta's retries.
async fn a_nul_character_in_a_text_is_saved_and_reaches_the_crm_unchanged(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    sys.create_account(BUSINESS, &crm.url()).await;
    let text = "before\u{0}after";
    let resp = sys
        .send_meta_webhook(&meta::text_message(BUSINESS, CUSTOMER, "mid_nul", text))
        .await;
    assert_eq!(resp.status(), 200);
    let body = crm.wait_for(1, WAIT).await.remove(0).json;
    assert_eq!(body["message"], text);
}

/// A trigger that refuses to store one event, as an operator's constraint,
/// a value the database cannot hold or a bug would.
const REFUSE_ONE_SQLITE: &str = "CREATE TRIGGER refuse_one BEFORE INSERT ON messages
    WHEN NEW.instagram_message_id = 'mid_refused'
    BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;";
const REFUSE_ONE_POSTGRES: &str = "CREATE FUNCTION refuse_one() RETURNS trigger AS $$
    BEGIN
        IF NEW.instagram_message_id = 'mid_refused' THEN RAISE EXCEPTION 'refused by the test'; END IF;
        RETURN NEW;
    END $$ LANGUAGE plpgsql;
    CREATE TRIGGER refuse_one BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION refuse_one();";

/// Before, an event the database refused failed its whole webhook with 503
/// on every one of Meta's retries, for ever.
async fn an_event_the_database_keeps_refusing_is_set_aside_and_can_be_saved_again(db: Db) {
    let sys = System::start_with(db, &[("INGEST_SAVE_ATTEMPTS", "2")]).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    sys.database
        .run_script(REFUSE_ONE_SQLITE, REFUSE_ONE_POSTGRES)
        .await;
    let t = 1_762_597_800_000i64;
    let webhook = payload(vec![entry(
        BUSINESS,
        vec![
            text_event(BUSINESS, CUSTOMER, "mid_before", "before", t),
            text_event(BUSINESS, CUSTOMER, "mid_refused", "the refused text", t + 1),
            text_event(BUSINESS, "5544332211", "mid_other", "other", t + 2),
        ],
    )]);
    // Refused once: Meta is asked to redeliver; what could be saved was.
    let first = sys.send_meta_webhook(&webhook).await;
    assert_eq!(first.status(), 503);
    crm.wait_for(2, WAIT).await;
    // Refused twice (INGEST_SAVE_ATTEMPTS): set aside, the webhook accepted.
    let second = sys.send_meta_webhook(&webhook).await;
    assert_eq!(second.status(), 200);
    let refused = sys.api_get("/api/v1/refused-events").await;
    let refused = refused["data"].as_array().unwrap().clone();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let event = &refused[0];
    assert_eq!(event["account_id"], account.as_str());
    assert_eq!(event["instagram_message_id"], "mid_refused");
    assert_eq!(event["event"], "message.received");
    assert_eq!(event["attempts"], 2);
    let code = event["error_code"].as_str().unwrap();
    let expected = if db == Db::Sqlite {
        "sqlite:1811" // SQLITE_CONSTRAINT_TRIGGER
    } else {
        "postgres:P0001" // raise_exception
    };
    assert_eq!(code, expected);
    assert!(!event.to_string().contains("refused text"), "{event}");
    let metrics = sys.ingest_metrics().await;
    assert!(
        metrics.contains("router_ingest_save_set_aside_total 1"),
        "{metrics}"
    );
    // Meta's next redelivery changes nothing.
    assert_eq!(sys.send_meta_webhook(&webhook).await.status(), 200);
    let message_id = event["message_id"].as_str().unwrap().to_owned();
    let replay = format!("/api/v1/refused-events/{message_id}/replay");
    // Saving it again while the cause is still there: 409, still set aside.
    let (status, body) = sys.api_send(reqwest::Method::POST, &replay, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "still_refused");
    assert!(
        body["message"].as_str().unwrap().contains(expected),
        "{body}"
    );
    let refused = sys.api_get("/api/v1/refused-events").await;
    assert_eq!(refused["data"][0]["attempts"], 3, "{refused}");

    // The cause fixed, it is saved and reaches the CRM, text unchanged,
    // under the message id the list showed.
    sys.database
        .run_script(
            "DROP TRIGGER refuse_one;",
            "DROP TRIGGER refuse_one ON messages;",
        )
        .await;
    let (status, body) = sys.api_send(reqwest::Method::POST, &replay, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "saved");
    let delivered = crm.wait_for(3, WAIT).await;
    let last = &delivered.last().unwrap().json;
    assert_eq!(last["message"], "the refused text");
    assert_eq!(last["message_id"], message_id.as_str());
    assert_eq!(last["sequence"], 2, "after mid_before in its conversation");
    let refused = sys.api_get("/api/v1/refused-events").await;
    assert!(refused["data"].as_array().unwrap().is_empty(), "{refused}");
    let (status, _) = sys.api_send(reqwest::Method::POST, &replay, None).await;
    assert_eq!(status, 404);
    // Meta's redelivery is now a duplicate of each; the CRM saw each once.
    assert_eq!(sys.send_meta_webhook(&webhook).await.status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut mids: Vec<String> = crm
        .deliveries()
        .iter()
        .map(|d| d.json["instagram_message_id"].as_str().unwrap().to_owned())
        .collect();
    mids.sort();
    assert_eq!(mids, ["mid_before", "mid_other", "mid_refused"]);
}

async fn attachments_are_forwarded_with_their_type_and_url(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    sys.create_account(BUSINESS, &crm.url()).await;
    let event = serde_json::json!({
        "sender": { "id": CUSTOMER }, "recipient": { "id": BUSINESS }, "timestamp": 1_762_597_800_000i64,
        "message": { "mid": "mid_img", "attachments": [
            { "type": "image", "payload": { "url": "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=1" } }
        ] }
    });
    let resp = sys
        .send_meta_webhook(&payload(vec![entry(BUSINESS, vec![event])]))
        .await;
    assert_eq!(resp.status(), 200);
    let body = crm.wait_for(1, WAIT).await.remove(0).json;
    assert_eq!(body["message_type"], "image");
    assert!(body["message"].is_null());
    assert_eq!(body["attachments"][0]["type"], "image");
    assert_eq!(
        body["attachments"][0]["url"],
        "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=1"
    );
}

async fn unsigned_and_wrongly_signed_webhooks_are_refused_and_never_forwarded(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    sys.create_account(BUSINESS, &crm.url()).await;
    let forged = serde_json::to_vec(&meta::text_message(
        BUSINESS,
        CUSTOMER,
        "mid_forged",
        "forged",
    ))
    .unwrap();

    let unsigned = sys
        .http
        .post(sys.url("/webhooks/instagram"))
        .body(forged.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let err: serde_json::Value = unsigned.json().await.unwrap();
    assert_eq!(err["code"], "missing_signature");

    let wrong = sys
        .http
        .post(sys.url("/webhooks/instagram"))
        .header(
            "x-hub-signature-256",
            meta::sign(b"not-the-app-secret", &forged),
        )
        .body(forged.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let err: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(err["code"], "invalid_signature");

    // A body changed after signing (re-serialized, say) does not verify either.
    let signature = meta::sign(router_tests::META_APP_SECRET.as_bytes(), &forged);
    let mut tampered = forged.clone();
    tampered.push(b' ');
    let resp = sys
        .http
        .post(sys.url("/webhooks/instagram"))
        .header("x-hub-signature-256", signature)
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // A genuine message afterwards is the only one the CRM ever sees.
    let ok = sys
        .send_meta_webhook(&meta::text_message(BUSINESS, CUSTOMER, "mid_real", "real"))
        .await;
    assert_eq!(ok.status(), 200);
    crm.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let deliveries = crm.deliveries();
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].json["instagram_message_id"], "mid_real");
}

async fn bodies_over_the_limit_get_413(db: Db) {
    let sys = System::start_with(db, &[("INGEST_MAX_BODY_BYTES", "2048")]).await;
    let big = serde_json::to_vec(&meta::text_message(
        BUSINESS,
        CUSTOMER,
        "mid_big",
        &"x".repeat(4096),
    ))
    .unwrap();
    let resp = sys
        .http
        .post(sys.url("/webhooks/instagram"))
        .header(
            "x-hub-signature-256",
            meta::sign(router_tests::META_APP_SECRET.as_bytes(), &big),
        )
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["code"], "payload_too_large");
}

async fn metas_redelivery_of_a_mid_reaches_the_crm_once(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    sys.create_account(BUSINESS, &crm.url()).await;
    let body = meta::text_message(BUSINESS, CUSTOMER, "mid_dup", "only once please");
    for _ in 0..3 {
        assert_eq!(sys.send_meta_webhook(&body).await.status(), 200);
    }
    crm.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(crm.deliveries().len(), 1);
}

async fn one_webhook_with_three_messages_for_two_accounts_reaches_the_right_crms(db: Db) {
    let sys = System::start(db).await;
    let crm_a = CrmReceiver::start().await;
    let crm_b = CrmReceiver::start().await;
    let business_b = "17841400000000002";
    let (acc_a, secret_a) = sys.create_account(BUSINESS, &crm_a.url()).await;
    let (acc_b, secret_b) = sys.create_account(business_b, &crm_b.url()).await;

    let body = payload(vec![
        entry(
            BUSINESS,
            vec![
                text_event(BUSINESS, "111", "mid_a1", "first for A", 1_762_597_800_000),
                text_event(BUSINESS, "222", "mid_a2", "second for A", 1_762_597_801_000),
            ],
        ),
        entry(
            business_b,
            vec![text_event(
                business_b,
                "333",
                "mid_b1",
                "only for B",
                1_762_597_802_000,
            )],
        ),
    ]);
    assert_eq!(sys.send_meta_webhook(&body).await.status(), 200);

    let a = crm_a.wait_for(2, WAIT).await;
    let b = crm_b.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(crm_a.deliveries().len(), 2);
    assert_eq!(crm_b.deliveries().len(), 1);
    let mut mids: Vec<&str> = a
        .iter()
        .map(|d| d.json["instagram_message_id"].as_str().unwrap())
        .collect();
    mids.sort();
    assert_eq!(mids, ["mid_a1", "mid_a2"]);
    for d in &a {
        assert_eq!(d.json["account_id"], acc_a.as_str());
        assert!(d.hub_signature_valid(&secret_a) && d.standard_signature_valid(&secret_a));
        assert!(!d.hub_signature_valid(&secret_b));
    }
    assert_eq!(b[0].json["instagram_message_id"], "mid_b1");
    assert_eq!(b[0].json["account_id"], acc_b.as_str());
    assert_eq!(
        b[0].json["conversation_id"],
        format!("conv_333_{business_b}")
    );
    assert!(b[0].hub_signature_valid(&secret_b) && b[0].standard_signature_valid(&secret_b));
}

async fn a_webhook_for_an_unknown_account_is_answered_200_and_ignored(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    sys.create_account(BUSINESS, &crm.url()).await;
    let resp = sys
        .send_meta_webhook(&meta::text_message(
            "17849999999999999",
            CUSTOMER,
            "mid_stranger",
            "hi",
        ))
        .await;
    assert_eq!(resp.status(), 200);
    // An event kind we do not forward (a thread handover) is accepted too, and counted.
    let read = serde_json::json!({
        "sender": { "id": CUSTOMER }, "recipient": { "id": BUSINESS }, "timestamp": 1_762_597_800_000i64,
        "pass_thread_control": { "new_owner_app_id": "1234567890", "metadata": "" }
    });
    assert_eq!(
        sys.send_meta_webhook(&payload(vec![entry(BUSINESS, vec![read])]))
            .await
            .status(),
        200
    );
    eventually(WAIT, "the unknown account logged by id", || async {
        sys.ingest
            .logs()
            .contains("17849999999999999")
            .then_some(())
    })
    .await;
    // A real message afterwards shows the pipeline works and nothing else went through.
    sys.send_meta_webhook(&meta::text_message(BUSINESS, CUSTOMER, "mid_known", "hi"))
        .await;
    crm.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d = crm.deliveries();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].json["instagram_message_id"], "mid_known");
}

async fn messages_sent_while_nats_is_down_are_all_delivered_after_it_returns(db: Db) {
    let mut sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    sys.create_account(BUSINESS, &crm.url()).await;
    assert_eq!(
        sys.send_meta_webhook(&meta::text_message(
            BUSINESS,
            CUSTOMER,
            "mid_before",
            "before"
        ))
        .await
        .status(),
        200
    );
    crm.wait_for(1, WAIT).await;

    sys.nats.stop();
    for i in 0..20 {
        let resp = sys
            .send_meta_webhook(&meta::text_message(
                BUSINESS,
                CUSTOMER,
                &format!("mid_outage_{i}"),
                "during outage",
            ))
            .await;
        assert_eq!(
            resp.status(),
            200,
            "Meta still gets its 200 while NATS is down"
        );
    }
    // Both services say so, in the same JSON shape.
    let ready = sys.http.get(sys.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503, "not ready while NATS is down");
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        (&body["nats"], &body["database"]),
        (&json!("unavailable"), &json!("ok"))
    );
    let forwarder = format!("http://{}/readyz", sys.forwarder.addr);
    let ready = sys.http.get(&forwarder).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body, json!({ "nats": "unavailable" }));
    tokio::time::sleep(Duration::from_secs(2)).await;
    sys.nats.resume().await;

    let all = crm.wait_for(21, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all_now = crm.deliveries();
    let mut ids: Vec<String> = all_now
        .iter()
        .map(|d| d.json["instagram_message_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 21, "every message delivered");
    assert_eq!(
        all_now.len(),
        all.len().max(21),
        "no message delivered twice"
    );
}

async fn logs_hold_no_secret_token_or_message_text(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (_, secret) = sys.create_account(BUSINESS, &crm.url()).await;
    let text = "my card number is 4111-SECRET-TEXT";
    sys.send_meta_webhook(&meta::text_message(BUSINESS, CUSTOMER, "mid_private", text))
        .await;
    // Also a refused request with a wrong token and a handshake with the real token.
    sys.http
        .get(sys.url("/api/v1/accounts"))
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .unwrap();
    sys.http
        .get(sys.url("/webhooks/instagram"))
        .query(&[
            ("hub.mode", "subscribe"),
            ("hub.verify_token", META_VERIFY_TOKEN),
            ("hub.challenge", "42"),
        ])
        .send()
        .await
        .unwrap();
    crm.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let logs = sys.logs();
    assert!(
        logs.contains("message saved") && logs.contains("delivered"),
        "the flow is logged:\n{logs}"
    );
    for needle in [
        text,
        // Not "4111" alone: a timestamp's microseconds can read 4111.
        "4111-SECRET",
        &secret,
        &secret["whsec_".len()..],
        API_TOKEN,
        "wrong-token-wrong-token",
        META_VERIFY_TOKEN,
        router_tests::META_APP_SECRET,
    ] {
        assert!(
            !logs.contains(needle),
            "log output contains {needle:?}:\n{logs}"
        );
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

router_tests::on_both_stores!(
    meta_handshake_echoes_the_challenge_only_for_the_right_token,
    a_text_message_reaches_the_crm_with_every_field_and_both_signatures,
    each_conversations_events_are_numbered_from_one_without_gaps,
    attachments_are_forwarded_with_their_type_and_url,
    a_nul_character_in_a_text_is_saved_and_reaches_the_crm_unchanged,
    an_event_the_database_keeps_refusing_is_set_aside_and_can_be_saved_again,
    unsigned_and_wrongly_signed_webhooks_are_refused_and_never_forwarded,
    bodies_over_the_limit_get_413,
    metas_redelivery_of_a_mid_reaches_the_crm_once,
    one_webhook_with_three_messages_for_two_accounts_reaches_the_right_crms,
    a_webhook_for_an_unknown_account_is_answered_200_and_ignored,
    messages_sent_while_nats_is_down_are_all_delivered_after_it_returns,
    logs_hold_no_secret_token_or_message_text,
);

/// At a steady load the outbox publisher reads each saved message from what
/// the write turn that saved it read of the outbox, without a trip to
/// SQLite. A webhook's answer rings the publisher once its save is
/// committed, often while the publisher is already publishing that message;
/// that wake-up must not send it to SQLite for a read that finds nothing new
/// (before: about three reads in four messages, on the connection the saves
/// wait for). Counted in sqlx's log of the statements ingest runs.
#[tokio::test]
async fn at_a_steady_load_sqlites_publisher_does_not_read_the_outbox_again_for_each_message() {
    let sys = System::start_with(Db::Sqlite, &[("RUST_LOG", "info,sqlx::query=debug")]).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    let messages = 200;
    let mut every = tokio::time::interval(Duration::from_millis(2));
    for i in 0..messages {
        every.tick().await;
        let customer = format!("{}", 7700 + i % 20);
        let webhook = meta::text_message(BUSINESS, &customer, &format!("mid_steady_{i}"), "hi");
        assert_eq!(sys.send_meta_webhook(&webhook).await.status(), 200);
    }
    crm.wait_for(messages, WAIT).await;
    sys.wait_all_delivered(&account, messages, WAIT).await;
    let logs = sys.ingest.logs();
    let statements = logs
        .lines()
        .filter(|line| line.contains("summary="))
        .count();
    assert!(
        statements >= messages,
        "{statements} statements in sqlx's log: not where this test counts them"
    );
    let reads = logs
        .lines()
        .filter(|line| line.contains(r#"summary="SELECT o.message_id"#))
        .count();
    assert!(
        reads < messages / 10,
        "{reads} outbox reads on SQLite for {messages} messages"
    );
}
