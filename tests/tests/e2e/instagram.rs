//! Instagram in full, against a fake Graph API on loopback: replies through
//! the Send API with Meta's errors mapped, echoes, every event kind, the
//! username lookup, auto-replies and the conversation history.

use std::time::Duration;

use router_tests::meta::{changes_entry, entry, payload, text_event};
use router_tests::{API_TOKEN, CrmReceiver, Db, FakeGraph, SendAnswer, System};
use serde_json::{Value, json};

const BUSINESS: &str = "17841400000000041";
const CUSTOMER: &str = "6061";
const TOKEN: &str = "IGAA-test-token";
const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    sys: System,
    crm: CrmReceiver,
    graph: FakeGraph,
    account: String,
}

async fn setup_with(db: Db, env: &[(&str, &str)], account: Value) -> Setup {
    let graph = FakeGraph::start().await;
    let graph_url = graph.url();
    let mut all_env = vec![("GRAPH_API_BASE", graph_url.as_str())];
    all_env.extend_from_slice(env);
    let sys = System::start_with(db, &all_env).await;
    let crm = CrmReceiver::start().await;
    let mut body = json!({
        "name": "Shop",
        "instagram_account_id": BUSINESS,
        "crm_webhook_url": crm.url(),
        "instagram_access_token": TOKEN,
    });
    body.as_object_mut()
        .unwrap()
        .extend(account.as_object().unwrap().clone());
    let created = sys.create_account_with(body).await;
    let account = created["id"].as_str().unwrap().to_owned();
    Setup {
        sys,
        crm,
        graph,
        account,
    }
}

async fn setup(db: Db) -> Setup {
    setup_with(db, &[], json!({})).await
}

impl Setup {
    async fn send(&self, body: Value) -> (u16, Value, reqwest::header::HeaderMap) {
        let resp = self
            .sys
            .http
            .post(
                self.sys
                    .url(&format!("/api/v1/accounts/{}/messages", self.account)),
            )
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, resp.json().await.unwrap_or(Value::Null), headers)
    }

    /// [`Self::send`] with an `Idempotency-Key`, through `ingest`'s address.
    async fn send_keyed(&self, ingest: &str, key: &str, body: Value) -> (u16, Value) {
        let resp = self
            .sys
            .http
            .post(format!(
                "http://{ingest}/api/v1/accounts/{}/messages",
                self.account
            ))
            .bearer_auth(API_TOKEN)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn meta_events(&self, events: Vec<Value>) {
        let resp = self
            .sys
            .send_meta_webhook(&payload(vec![entry(BUSINESS, events)]))
            .await;
        assert_eq!(resp.status(), 200);
    }

    /// Sends the events and returns the first delivery's body.
    async fn forwarded(&self, events: Vec<Value>) -> Value {
        self.meta_events(events).await;
        self.crm.wait_for(1, WAIT).await.remove(0).json
    }

    /// The stored `message.received` with this mid, from the history.
    async fn stored_message(&self, mid: &str) -> Value {
        let history = self.history("").await;
        history["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["event"] == "message.received" && m["instagram_message_id"] == mid)
            .unwrap_or_else(|| panic!("{mid} stored: {history}"))
            .clone()
    }

    async fn history(&self, query: &str) -> Value {
        self.sys
            .api_get(&format!(
                "/api/v1/accounts/{}/messages?{query}",
                self.account
            ))
            .await
    }
}

fn event(kind: Value) -> Value {
    let mut e = json!({ "sender": { "id": CUSTOMER }, "recipient": { "id": BUSINESS }, "timestamp": 1_762_597_800_000i64 });
    e.as_object_mut()
        .unwrap()
        .extend(kind.as_object().unwrap().clone());
    e
}

fn echo(mid: &str, text: &str) -> Value {
    json!({ "sender": { "id": BUSINESS }, "recipient": { "id": CUSTOMER }, "timestamp": 1_762_597_900_000i64,
            "message": { "mid": mid, "text": text, "is_echo": true } })
}

async fn a_reply_goes_through_the_send_api_with_the_accounts_token(db: Db) {
    let s = setup(db).await;
    let (status, body, _) = s
        .send(json!({ "recipient_id": CUSTOMER, "text": "Your order ships Monday" }))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["instagram_message_id"], "mid_sent_1");
    assert!(body["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        body["conversation_id"],
        format!("conv_{CUSTOMER}_{BUSINESS}")
    );
    let sent = s.graph.sends();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].path, format!("/{BUSINESS}/messages"));
    assert_eq!(sent[0].authorization, format!("Bearer {TOKEN}"));
    assert_eq!(
        sent[0].body,
        json!({ "recipient": { "id": CUSTOMER }, "message": { "text": "Your order ships Monday" } })
    );

    let (status, _, _) = s
        .send(json!({ "recipient_id": CUSTOMER, "attachment": { "type": "image", "url": "https://cdn.example.com/a.jpg" }, "tag": "HUMAN_AGENT" }))
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        s.graph.sends()[1].body,
        json!({ "recipient": { "id": CUSTOMER },
                "message": { "attachment": { "type": "image", "payload": { "url": "https://cdn.example.com/a.jpg" } } },
                "messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT" })
    );
    let history = s.history("").await;
    let data = history["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert!(
        data.iter()
            .all(|m| m["direction"] == "outbound" && m["event"] == "message.sent")
    );
    assert_eq!(data[1]["message_type"], "image");
    assert_eq!(data[0]["delivery"]["status"], "skipped");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        s.crm.deliveries().is_empty(),
        "the CRM is not sent its own replies"
    );
}

async fn metas_errors_become_stable_codes(db: Db) {
    let s = setup_with(db, &[("GRAPH_API_TIMEOUT_SECS", "1")], json!({})).await;
    let reply = json!({ "recipient_id": CUSTOMER, "text": "hello" });

    s.graph.answer_next_send(SendAnswer::Error {
        status: 400,
        code: 10,
        subcode: Some(2018278),
        message: "This message is sent outside of allowed window.",
    });
    let (status, body, _) = s.send(reply.clone()).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (422, "outside_messaging_window")
    );

    for code in [4, 17, 32, 613, 80002] {
        s.graph.answer_next_send(SendAnswer::Error {
            status: 400,
            code,
            subcode: None,
            message: "Application request limit reached",
        });
        let (status, body, headers) = s.send(reply.clone()).await;
        assert_eq!(
            (status, body["code"].as_str().unwrap()),
            (429, "instagram_rate_limited"),
            "code {code}"
        );
        assert_eq!(headers["retry-after"], "60");
    }

    s.graph.answer_next_send(SendAnswer::Error {
        status: 500,
        code: 2,
        subcode: None,
        message: "Service temporarily unavailable",
    });
    let (status, body, _) = s.send(reply.clone()).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (502, "instagram_error")
    );
    assert_eq!(body["message"], "Service temporarily unavailable");
    assert_eq!(body["meta_code"], 2);
    assert_eq!(body["fbtrace_id"], "AfakeTrace123");

    // An answer far larger than Meta's is not read to the end.
    s.graph.answer_next_send(SendAnswer::Huge(4 * 1024 * 1024));
    let (status, body, _) = s.send(reply.clone()).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (502, "instagram_unavailable")
    );

    s.graph
        .answer_next_send(SendAnswer::Slow(Duration::from_secs(3)));
    let (status, body, _) = s.send(reply.clone()).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (504, "instagram_timeout")
    );

    s.graph.answer_next_send(SendAnswer::Error {
        status: 400,
        code: 190,
        subcode: Some(460),
        message: "Error validating access token",
    });
    let (status, body, _) = s.send(reply.clone()).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (502, "instagram_auth_failed")
    );
    let account = s
        .sys
        .api_get(&format!("/api/v1/accounts/{}", s.account))
        .await;
    assert_eq!(account["status"], "credentials_invalid");
    assert_eq!(account["credentials"]["state"], "invalid");
    assert_eq!(account["credentials"]["error"], "meta_190");
    assert!(!body.to_string().contains(TOKEN));

    // Messages still reach the CRM while the token is bad.
    s.meta_events(vec![event(
        json!({ "message": { "mid": "mid_in", "text": "still there?" } }),
    )])
    .await;
    s.crm.wait_for(1, WAIT).await;

    // A new token puts the account back to active.
    let resp = s
        .sys
        .http
        .patch(s.sys.url(&format!("/api/v1/accounts/{}", s.account)))
        .bearer_auth(API_TOKEN)
        .json(&json!({ "instagram_access_token": "IGAA-new-token" }))
        .send()
        .await
        .unwrap();
    let account: Value = resp.json().await.unwrap();
    assert_eq!(account["status"], "active");
    assert_eq!(account["credentials"]["state"], "valid");
    assert_eq!(account["credentials"]["error"], Value::Null);
    let (status, _, _) = s.send(reply).await;
    assert_eq!(status, 201);
    assert_eq!(
        s.graph.sends().last().unwrap().authorization,
        "Bearer IGAA-new-token"
    );
}

async fn text_over_1000_bytes_is_refused_before_meta_is_called(db: Db) {
    let s = setup(db).await;
    let (status, body, _) = s
        .send(json!({ "recipient_id": CUSTOMER, "text": "é".repeat(501) }))
        .await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (400, "text_too_long")
    );
    assert!(s.graph.sends().is_empty());
    let (status, _, _) = s
        .send(json!({ "recipient_id": CUSTOMER, "text": "a".repeat(1000) }))
        .await;
    assert_eq!(status, 201);
    let (status, body, _) = s.send(json!({ "recipient_id": CUSTOMER })).await;
    assert_eq!(
        (status, body["code"].as_str().unwrap()),
        (400, "text_or_attachment_required")
    );
    assert_eq!(s.graph.sends().len(), 1);
}

async fn the_echo_of_our_send_is_not_forwarded_but_an_app_echo_is(db: Db) {
    let s = setup(db).await;
    let (_, sent, _) = s
        .send(json!({ "recipient_id": CUSTOMER, "text": "from the CRM" }))
        .await;
    s.meta_events(vec![echo(
        sent["instagram_message_id"].as_str().unwrap(),
        "from the CRM",
    )])
    .await;
    s.meta_events(vec![echo("mid_typed_in_app", "typed in the app")])
        .await;

    let d = s.crm.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        s.crm.deliveries().len(),
        1,
        "only the app echo is forwarded"
    );
    let body = &d[0].json;
    assert_eq!(body["event"], "message.echo");
    assert_eq!(body["instagram_message_id"], "mid_typed_in_app");
    assert_eq!(body["sender_id"], BUSINESS);
    assert_eq!(body["message"], "typed in the app");
    assert_eq!(
        body["conversation_id"],
        format!("conv_{CUSTOMER}_{BUSINESS}")
    );
    let history = s.history("").await;
    let events: Vec<&str> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["message.sent", "message.echo"]);
}

async fn reactions_and_unreactions_are_forwarded(db: Db) {
    let s = setup(db).await;
    s.meta_events(vec![
        event(json!({ "reaction": { "mid": "mid_1", "action": "react", "reaction": "love", "emoji": "\u{2764}\u{fe0f}" } })),
        json!({ "sender": { "id": CUSTOMER }, "recipient": { "id": BUSINESS }, "timestamp": 1_762_597_801_000i64,
                "reaction": { "mid": "mid_1", "action": "unreact" } }),
    ])
    .await;
    let d = s.crm.wait_for(2, WAIT).await;
    let mut actions: Vec<&str> = d
        .iter()
        .map(|d| d.json["reaction"]["action"].as_str().unwrap())
        .collect();
    actions.sort();
    assert_eq!(actions, ["react", "unreact"]);
    let react = d
        .iter()
        .find(|d| d.json["reaction"]["action"] == "react")
        .unwrap();
    assert_eq!(react.json["event"], "message.reaction");
    assert_eq!(react.json["instagram_message_id"], "mid_1");
    assert_eq!(react.json["reaction"]["reaction"], "love");
    assert_eq!(react.json["message_type"], "reaction");
}

async fn a_deletion_is_forwarded_and_marks_the_stored_message(db: Db) {
    let s = setup(db).await;
    s.meta_events(vec![event(
        json!({ "message": { "mid": "mid_gone", "text": "oops" } }),
    )])
    .await;
    s.crm.wait_for(1, WAIT).await;
    s.meta_events(vec![event(
        json!({ "message": { "mid": "mid_gone", "is_deleted": true } }),
    )])
    .await;
    let d = s.crm.wait_for(2, WAIT).await;
    let deleted = &d[1].json;
    assert_eq!(deleted["event"], "message.deleted");
    assert_eq!(deleted["instagram_message_id"], "mid_gone");
    let original = s.stored_message("mid_gone").await;
    assert!(original["deleted_at"].is_string());

    // A message and its deletion in one webhook (the events of a webhook
    // are saved together): the deletion still finds the message.
    s.meta_events(vec![
        event(json!({ "message": { "mid": "mid_quick", "text": "typo" } })),
        event(json!({ "message": { "mid": "mid_quick", "is_deleted": true } })),
    ])
    .await;
    s.crm.wait_for(4, WAIT).await;
    let quick = s.stored_message("mid_quick").await;
    assert!(quick["deleted_at"].is_string(), "{quick}");
}

async fn an_edit_is_forwarded_with_the_new_text_and_marks_the_stored_message(db: Db) {
    let s = setup(db).await;
    s.meta_events(vec![event(
        json!({ "message": { "mid": "mid_typo", "text": "see you tomorow" } }),
    )])
    .await;
    s.crm.wait_for(1, WAIT).await;
    // Meta's count comes as a number or, in its examples, a string.
    let edit = |n: Value, text: &str| {
        event(json!({ "message_edit": { "mid": "mid_typo", "text": text, "num_edit": n } }))
    };
    s.meta_events(vec![edit(json!(1), "see you tomorrow")])
        .await;
    let d = s.crm.wait_for(2, WAIT).await;
    let edited = &d[1].json;
    assert_eq!(edited["event"], "message.edited");
    assert_eq!(edited["instagram_message_id"], "mid_typo");
    assert_eq!(edited["message"], "see you tomorrow");
    assert_eq!(edited["message_type"], "edited");
    assert_eq!(edited["edit_count"], 1);
    assert_eq!(edited["sequence"], 2);
    // Meta's redelivery of the same edit is not a second one; the next edit is.
    s.meta_events(vec![edit(json!(1), "see you tomorrow")])
        .await;
    s.meta_events(vec![edit(json!("2"), "see you at 10")]).await;
    let d = s.crm.wait_for(3, WAIT).await;
    assert_eq!(d[2].json["edit_count"], 2);
    assert_eq!(d[2].json["message"], "see you at 10");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        s.crm.count(),
        3,
        "the redelivered edit is not forwarded again"
    );
    // The stored message says it was edited.
    let original = s.stored_message("mid_typo").await;
    assert!(original["edited_at"].is_string(), "{original}");
    assert!(original["deleted_at"].is_null(), "{original}");
}

async fn every_event_carries_its_conversations_reply_windows(db: Db) {
    let s = setup(db).await;
    let at = |ms: i64, from: &str, to: &str, kind: Value| {
        let mut e = json!({ "sender": { "id": from }, "recipient": { "id": to }, "timestamp": ms });
        e.as_object_mut()
            .unwrap()
            .extend(kind.as_object().unwrap().clone());
        e
    };
    let t1 = 1_762_597_800_000i64; // 2025-11-08T10:30:00Z
    let t2 = t1 + 3_600_000; // an hour later
    let steps = [
        // The business wrote first, from the app: no window is open yet.
        at(
            t1 - 100_000,
            BUSINESS,
            CUSTOMER,
            json!({ "message": { "mid": "w_echo_first", "text": "Hi!", "is_echo": true } }),
        ),
        at(
            t1,
            CUSTOMER,
            BUSINESS,
            json!({ "message": { "mid": "w_msg", "text": "Is it in stock?" } }),
        ),
        // A read receipt does not move the window.
        at(
            t1 + 200_000,
            CUSTOMER,
            BUSINESS,
            json!({ "read": { "mid": "w_msg" } }),
        ),
        // A postback does.
        at(
            t2,
            CUSTOMER,
            BUSINESS,
            json!({ "postback": { "mid": "w_pb", "title": "Yes", "payload": "YES" } }),
        ),
        at(
            t2 + 60_000,
            BUSINESS,
            CUSTOMER,
            json!({ "message": { "mid": "w_echo_after", "text": "Great", "is_echo": true } }),
        ),
    ];
    for step in steps {
        s.meta_events(vec![step]).await;
    }
    let delivered = s.crm.wait_for(5, WAIT).await;
    let by_mid = |mid: &str, event: &str| {
        delivered
            .iter()
            .map(|d| &d.json)
            .find(|j| j["instagram_message_id"] == mid && j["event"] == event)
            .unwrap_or_else(|| panic!("{mid} {event} delivered"))
            .clone()
    };
    let windows = |j: &Value| {
        (
            j["reply_window_ends_at"].clone(),
            j["human_agent_window_ends_at"].clone(),
        )
    };
    let after_t1 = (json!("2025-11-09T10:30:00Z"), json!("2025-11-15T10:30:00Z"));
    let after_t2 = (json!("2025-11-09T11:30:00Z"), json!("2025-11-15T11:30:00Z"));
    let first = by_mid("w_echo_first", "message.echo");
    assert_eq!(windows(&first), (Value::Null, Value::Null), "{first}");
    assert!(
        first.get("reply_window_ends_at").is_none(),
        "absent, not null"
    );
    assert_eq!(windows(&by_mid("w_msg", "message.received")), after_t1);
    assert_eq!(windows(&by_mid("w_msg", "message.read")), after_t1);
    assert_eq!(windows(&by_mid("w_pb", "message.postback")), after_t2);
    assert_eq!(windows(&by_mid("w_echo_after", "message.echo")), after_t2);
    // A message redelivered late by Meta does not pull the window back.
    s.meta_events(vec![at(
        t1 + 1_000,
        CUSTOMER,
        BUSINESS,
        json!({ "message": { "mid": "w_late", "text": "late" } }),
    )])
    .await;
    let d = s.crm.wait_for(6, WAIT).await;
    assert_eq!(windows(&d[5].json), after_t2);
}

async fn a_send_repeated_with_its_idempotency_key_gets_the_first_answer_and_meta_is_called_once(
    db: Db,
) {
    let s = setup(db).await;
    let here = s.sys.ingest.addr.to_string();
    let reply = json!({ "recipient_id": CUSTOMER, "text": "Your order shipped" });
    let (status, first) = s.send_keyed(&here, "order-42-shipped", reply.clone()).await;
    assert_eq!(status, 201, "{first}");
    // The CRM's retry (after a timeout, say): the same answer, no second DM.
    let (status, again) = s.send_keyed(&here, "order-42-shipped", reply.clone()).await;
    assert_eq!((status, &again), (201, &first));
    assert_eq!(s.graph.sends().len(), 1, "Meta called once");
    // The same body in another key order is the same request.
    let reordered: Value =
        serde_json::from_str(r#"{"text": "Your order shipped", "recipient_id": "6061"}"#).unwrap();
    let (status, _) = s.send_keyed(&here, "order-42-shipped", reordered).await;
    assert_eq!(status, 201);
    // The same key with another body: 422, nothing sent.
    let other = json!({ "recipient_id": CUSTOMER, "text": "Something else" });
    let (status, body) = s.send_keyed(&here, "order-42-shipped", other).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("idempotency_key_reused"))
    );
    assert_eq!(s.graph.sends().len(), 1);
    // Meta's refusal is an answer too, given again without calling Meta.
    s.graph.answer_next_send(SendAnswer::Error {
        status: 400,
        code: 10,
        subcode: Some(2018278),
        message: "outside of allowed window",
    });
    let (status, body) = s.send_keyed(&here, "late-1", reply.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("outside_messaging_window"))
    );
    let (status, repeat) = s.send_keyed(&here, "late-1", reply.clone()).await;
    assert_eq!((status, &repeat), (422, &body));
    assert_eq!(s.graph.sends().len(), 2);
    // A rate limit is not kept: Meta sent nothing, so a repeat really runs.
    s.graph.answer_next_send(SendAnswer::Error {
        status: 400,
        code: 4,
        subcode: None,
        message: "too many calls",
    });
    let (status, _) = s.send_keyed(&here, "busy-1", reply.clone()).await;
    assert_eq!(status, 429);
    let (status, _) = s.send_keyed(&here, "busy-1", reply.clone()).await;
    assert_eq!(status, 201);
    assert_eq!(s.graph.sends().len(), 4);
    // While the first is still with Meta, a repeat gets 409; afterwards, the answer.
    s.graph
        .answer_next_send(SendAnswer::Slow(Duration::from_secs(2)));
    let slow = s.send_keyed(&here, "slow-1", reply.clone());
    let early = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.send_keyed(&here, "slow-1", reply.clone()).await
    };
    let ((status, first), (early_status, early_body)) = tokio::join!(slow, early);
    assert_eq!(status, 201, "{first}");
    assert_eq!(
        (early_status, early_body["code"].as_str()),
        (409, Some("idempotency_key_in_progress"))
    );
    let (status, after) = s.send_keyed(&here, "slow-1", reply.clone()).await;
    assert_eq!((status, &after), (201, &first));
    assert_eq!(s.graph.sends().len(), 5);
    // A key that cannot be one is refused, naming the header.
    // Nor is one outside ASCII, which is never taken for no key at all
    // (the retry it should make safe would message the customer twice).
    for key in ["has space", "заказ-42"] {
        let (status, body) = s.send_keyed(&here, key, reply.clone()).await;
        assert_eq!(status, 400, "{key}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key"),
            "{body}"
        );
    }
    assert_eq!(s.graph.sends().len(), 5, "Meta was not called");
}

async fn comments_and_mentions_are_forwarded_as_their_own_events(db: Db) {
    let s = setup(db).await;
    let comment = json!({
        "id": "17900000000000001",
        "from": { "id": "6062", "username": "ana.shop" },
        "text": "How much is this?",
        "media": { "id": "18000000000000001", "media_product_type": "REELS" }
    });
    let reply = json!({
        "id": "17900000000000002",
        "from": { "id": "6063", "username": "bo" },
        "text": "Me too!",
        "media": { "id": "18000000000000001", "media_product_type": "REELS" },
        "parent_id": "17900000000000001"
    });
    let mention = json!({ "media_id": "18000000000000009", "comment_id": "17900000000000003" });
    let webhook = payload(vec![changes_entry(
        BUSINESS,
        vec![
            ("comments", comment.clone()),
            ("comments", reply),
            ("mentions", mention),
        ],
    )]);
    let resp = s.sys.send_meta_webhook(&webhook).await;
    assert_eq!(resp.status(), 200);
    let d = s.crm.wait_for(3, WAIT).await;
    let by_id = |id: &str| {
        d.iter()
            .map(|d| d.json.clone())
            .find(|j| j["instagram_message_id"] == id)
            .unwrap_or_else(|| panic!("{id} delivered"))
    };
    let first = by_id("17900000000000001");
    assert_eq!(first["event"], "comment.created");
    assert_eq!(first["message"], "How much is this?");
    assert_eq!(first["message_type"], "comment");
    assert_eq!(first["sender_id"], "6062");
    assert_eq!(first["sender_username"], "ana.shop");
    assert_eq!(first["conversation_id"], format!("conv_6062_{BUSINESS}"));
    assert_eq!(first["comment"]["media_id"], "18000000000000001");
    assert_eq!(first["comment"]["media_product_type"], "REELS");
    assert_eq!(first["comment"]["source"], "comments");
    assert!(first["comment"].get("parent_id").is_none());
    assert_eq!(
        by_id("17900000000000002")["comment"]["parent_id"],
        "17900000000000001"
    );
    let mentioned = by_id("17900000000000003");
    assert_eq!(mentioned["event"], "comment.mentioned");
    assert_eq!(mentioned["comment"]["media_id"], "18000000000000009");
    assert_eq!(mentioned["comment"]["source"], "mentions");
    assert!(mentioned["message"].is_null());
    // The commenter is named by Meta: no username lookup was needed.
    assert!(s.graph.lookups().is_empty(), "{:?}", s.graph.lookups());
    // Meta's redelivery of a comment is not forwarded again.
    let again = payload(vec![changes_entry(BUSINESS, vec![("comments", comment)])]);
    assert_eq!(s.sys.send_meta_webhook(&again).await.status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.crm.count(), 3);
}

async fn a_comment_gets_one_private_reply_and_public_replies(db: Db) {
    let s = setup(db).await;
    let comment = |id: &str, from: &str| {
        json!({ "id": id, "from": { "id": from, "username": "ana.shop" }, "text": "Price?",
                "media": { "id": "18000000000000001", "media_product_type": "FEED" } })
    };
    // Two comments made just now, one made 8 days ago.
    let now_ms = chrono_now_ms();
    let mut recent = payload(vec![changes_entry(
        BUSINESS,
        vec![
            ("comments", comment("17900000000000011", "6062")),
            ("comments", comment("17900000000000012", "6063")),
        ],
    )]);
    recent["entry"][0]["time"] = json!(now_ms);
    let mut old = payload(vec![changes_entry(
        BUSINESS,
        vec![("comments", comment("17900000000000013", "6064"))],
    )]);
    old["entry"][0]["time"] = json!(now_ms - 8 * 86_400_000);
    assert_eq!(s.sys.send_meta_webhook(&recent).await.status(), 200);
    assert_eq!(s.sys.send_meta_webhook(&old).await.status(), 200);
    s.crm.wait_for(3, WAIT).await;
    let setup = &s;
    let answer = |comment: &str, how: &str, text: &str| {
        let path = format!(
            "/api/v1/accounts/{}/comments/{comment}/{how}",
            setup.account
        );
        let body = json!({ "text": text });
        async move {
            setup
                .sys
                .api_send(reqwest::Method::POST, &path, Some(body))
                .await
        }
    };

    // The private reply: a DM to the commenter, through the comment.
    let (status, sent) = answer("17900000000000011", "private-reply", "Sent you the price!").await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(sent["conversation_id"], format!("conv_6062_{BUSINESS}"));
    let call = s.graph.sends().pop().unwrap();
    assert_eq!(call.path, format!("/{BUSINESS}/messages"));
    assert_eq!(
        call.body["recipient"],
        json!({ "comment_id": "17900000000000011" })
    );
    assert_eq!(call.body["message"]["text"], "Sent you the price!");
    assert_eq!(call.authorization, format!("Bearer {TOKEN}"));
    // Meta allows one: the second is refused here, Meta is not called.
    let (status, body) = answer("17900000000000011", "private-reply", "Again").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("private_reply_already_sent"))
    );
    assert_eq!(s.graph.sends().len(), 1);
    // Refused by Meta, the claim is given back: a retry can go out.
    s.graph.answer_next_send(SendAnswer::Error {
        status: 500,
        code: 2,
        subcode: None,
        message: "temporary",
    });
    let (status, body) = answer("17900000000000012", "private-reply", "Hi").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (502, Some("instagram_error"))
    );
    let (status, _) = answer("17900000000000012", "private-reply", "Hi").await;
    assert_eq!(status, 201);
    // Too old, or never received: refused before Meta.
    let (status, body) = answer("17900000000000013", "private-reply", "Hi").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("private_reply_window_closed"))
    );
    let (status, body) = answer("17900000000000099", "private-reply", "Hi").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("comment_not_found"))
    );
    assert_eq!(s.graph.sends().len(), 3);

    // A public reply, under the comment (any number of them).
    let (status, posted) = answer("17900000000000011", "replies", "Thanks Ana!").await;
    assert_eq!(status, 201, "{posted}");
    assert_eq!(posted["comment_id"], "17900000000000011");
    let call = s.graph.sends().pop().unwrap();
    assert_eq!(call.path, "/17900000000000011/replies");
    assert_eq!(call.body["message"], "Thanks Ana!");
    let reply_id = posted["instagram_comment_id"].as_str().unwrap().to_owned();
    // Meta's notification of our own reply is not forwarded to the CRM.
    let mut own = payload(vec![changes_entry(
        BUSINESS,
        vec![(
            "comments",
            json!({ "id": reply_id, "from": { "id": BUSINESS, "username": "shop" },
            "text": "Thanks Ana!", "media": { "id": "18000000000000001" }, "parent_id": "17900000000000011" }),
        )],
    )]);
    own["entry"][0]["time"] = json!(now_ms);
    assert_eq!(s.sys.send_meta_webhook(&own).await.status(), 200);
    // Both answers are in the commenter's history.
    let history = s
        .history(&format!("conversation_id=conv_6062_{BUSINESS}"))
        .await;
    let kinds: Vec<(String, String)> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["event"].as_str().unwrap().to_owned(),
                m["message_type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("comment.created".to_owned(), "comment".to_owned()),
            ("message.sent".to_owned(), "text".to_owned()),
            ("message.sent".to_owned(), "comment_reply".to_owned()),
        ]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.crm.count(), 3, "our own reply is not forwarded");
    // With an Idempotency-Key, a repeated public reply is posted once.
    let keyed = || async {
        let resp = s
            .sys
            .http
            .post(s.sys.url(&format!(
                "/api/v1/accounts/{}/comments/17900000000000012/replies",
                s.account
            )))
            .bearer_auth(API_TOKEN)
            .header("Idempotency-Key", "thanks-bo")
            .json(&json!({ "text": "Thanks Bo!" }))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    };
    let sends = s.graph.sends().len();
    let first = keyed().await;
    assert_eq!(first.0, 201, "{}", first.1);
    assert_eq!(keyed().await, first);
    assert_eq!(s.graph.sends().len(), sends + 1, "Meta called once");
}

async fn new_comments_get_the_accounts_private_auto_reply_once(db: Db) {
    let s = setup_with(
        db,
        &[],
        json!({ "comment_auto_reply_text": "Thanks! We sent you the details in DM." }),
    )
    .await;
    let mut webhook = payload(vec![changes_entry(
        BUSINESS,
        vec![
            (
                "comments",
                json!({ "id": "17900000000000021", "from": { "id": "6062", "username": "ana" },
                "text": "Details?", "media": { "id": "18000000000000001" } }),
            ),
            // The business's own comment is not answered.
            (
                "comments",
                json!({ "id": "17900000000000022", "from": { "id": BUSINESS, "username": "shop" },
                "text": "New stock!", "media": { "id": "18000000000000001" } }),
            ),
        ],
    )]);
    webhook["entry"][0]["time"] = json!(chrono_now_ms());
    assert_eq!(s.sys.send_meta_webhook(&webhook).await.status(), 200);
    let sends = router_tests::eventually(WAIT, "the auto-reply sent", || async {
        let sends = s.graph.sends();
        (!sends.is_empty()).then_some(sends)
    })
    .await;
    assert_eq!(
        sends[0].body["recipient"],
        json!({ "comment_id": "17900000000000021" })
    );
    assert_eq!(
        sends[0].body["message"]["text"],
        "Thanks! We sent you the details in DM."
    );
    // Meta's redelivery does not answer the comment twice, and the comment
    // has had its one private reply.
    assert_eq!(s.sys.send_meta_webhook(&webhook).await.status(), 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.graph.sends().len(), 1, "{:?}", s.graph.sends());
    let (status, body) = s
        .sys
        .api_send(
            reqwest::Method::POST,
            &format!(
                "/api/v1/accounts/{}/comments/17900000000000021/private-reply",
                s.account
            ),
            Some(json!({ "text": "Hi" })),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("private_reply_already_sent"))
    );
    // The account shows the setting, and `null` turns it off.
    let account = s
        .sys
        .api_get(&format!("/api/v1/accounts/{}", s.account))
        .await;
    assert_eq!(
        account["comment_auto_reply_text"],
        "Thanks! We sent you the details in DM."
    );
    let (status, _) = s
        .sys
        .api_send(
            reqwest::Method::PATCH,
            &format!("/api/v1/accounts/{}", s.account),
            Some(json!({ "comment_auto_reply_text": null })),
        )
        .await;
    assert_eq!(status, 200);
    let mut later = payload(vec![changes_entry(
        BUSINESS,
        vec![(
            "comments",
            json!({ "id": "17900000000000023", "from": { "id": "6063", "username": "bo" },
            "text": "And me?", "media": { "id": "18000000000000001" } }),
        )],
    )]);
    later["entry"][0]["time"] = json!(chrono_now_ms());
    assert_eq!(s.sys.send_meta_webhook(&later).await.status(), 200);
    s.crm.wait_for(3, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.graph.sends().len(), 1, "no auto-reply once turned off");
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn read_receipts_are_forwarded(db: Db) {
    let s = setup(db).await;
    let body = s
        .forwarded(vec![event(json!({ "read": { "mid": "mid_seen" } }))])
        .await;
    assert_eq!(body["event"], "message.read");
    assert_eq!(body["instagram_message_id"], "mid_seen");
}

async fn postbacks_are_forwarded(db: Db) {
    let s = setup(db).await;
    let body = s.forwarded(vec![event(json!({ "postback": { "mid": "mid_pb", "title": "Track my order", "payload": "TRACK_ORDER" } }))]).await;
    assert_eq!(body["event"], "message.postback");
    assert_eq!(
        body["postback"],
        json!({ "title": "Track my order", "payload": "TRACK_ORDER" })
    );
}

async fn referrals_are_forwarded(db: Db) {
    let s = setup(db).await;
    let referral = json!({ "ref": "summer_sale", "source": "IGME_LINK", "type": "OPEN_THREAD" });
    let body = s
        .forwarded(vec![event(json!({ "referral": referral }))])
        .await;
    assert_eq!(body["event"], "message.referral");
    assert_eq!(body["referral"], referral);
}

async fn quick_replies_carry_their_payload(db: Db) {
    let s = setup(db).await;
    let body = s
        .forwarded(vec![event(json!({ "message": { "mid": "mid_qr", "text": "Yes", "quick_reply": { "payload": "CONFIRM_YES" } } }))])
        .await;
    assert_eq!(body["message_type"], "text");
    assert_eq!(body["quick_reply"]["payload"], "CONFIRM_YES");
}

async fn story_replies_and_replies_to_messages_carry_reply_to(db: Db) {
    let s = setup(db).await;
    s.meta_events(vec![
        event(json!({ "message": { "mid": "mid_sr", "text": "Love it", "reply_to": { "story": { "url": "https://lookaside.fbsbx.com/story/1", "id": "1790" } } } })),
        json!({ "sender": { "id": CUSTOMER }, "recipient": { "id": BUSINESS }, "timestamp": 1_762_597_801_000i64,
                "message": { "mid": "mid_rr", "text": "About this", "reply_to": { "mid": "mid_earlier" } } }),
    ])
    .await;
    let d = s.crm.wait_for(2, WAIT).await;
    let story = d
        .iter()
        .find(|d| d.json["instagram_message_id"] == "mid_sr")
        .unwrap();
    assert_eq!(story.json["message_type"], "story_reply");
    assert_eq!(story.json["reply_to"]["story"]["id"], "1790");
    let reply = d
        .iter()
        .find(|d| d.json["instagram_message_id"] == "mid_rr")
        .unwrap();
    assert_eq!(reply.json["message_type"], "text");
    assert_eq!(reply.json["reply_to"]["mid"], "mid_earlier");
}

async fn story_mentions_shares_reels_and_several_attachments_are_forwarded(db: Db) {
    let s = setup(db).await;
    let att = |kind: &str, url: &str| json!({ "type": kind, "payload": { "url": url } });
    let events = vec![
        event(
            json!({ "message": { "mid": "mid_mention", "attachments": [att("story_mention", "https://cdn/story")] } }),
        ),
        event(
            json!({ "message": { "mid": "mid_share", "attachments": [att("share", "https://cdn/post")] } }),
        ),
        event(
            json!({ "message": { "mid": "mid_reel", "attachments": [att("ig_reel", "https://cdn/reel")] } }),
        ),
        event(
            json!({ "message": { "mid": "mid_many", "attachments": [att("image", "https://cdn/1.jpg"), att("video", "https://cdn/2.mp4"), att("audio", "https://cdn/3.m4a"), att("file", "https://cdn/4.pdf")] } }),
        ),
    ];
    s.meta_events(events).await;
    let d = s.crm.wait_for(4, WAIT).await;
    let by_mid = |mid: &str| {
        d.iter()
            .find(|d| d.json["instagram_message_id"] == mid)
            .unwrap()
            .json
            .clone()
    };
    assert_eq!(by_mid("mid_mention")["message_type"], "story_mention");
    assert_eq!(by_mid("mid_share")["message_type"], "share");
    assert_eq!(by_mid("mid_reel")["message_type"], "reel");
    let many = by_mid("mid_many");
    assert_eq!(many["message_type"], "image");
    let kinds: Vec<&str> = many["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["image", "video", "audio", "file"]);
    assert_eq!(many["attachments"][3]["url"], "https://cdn/4.pdf");
}

async fn standby_events_and_the_dashboards_test_payload_are_accepted(db: Db) {
    let s = setup(db).await;
    let standby = json!({ "object": "instagram", "entry": [{ "id": BUSINESS, "time": 1_762_597_800,
        "standby": [text_event(BUSINESS, CUSTOMER, "mid_standby", "while another app holds the thread", 1_762_597_800_000)] }] });
    assert_eq!(s.sys.send_meta_webhook(&standby).await.status(), 200);
    // The dashboard's "Test" button: changes[], string timestamps, entry id "0".
    let test = json!({ "object": "instagram", "entry": [{ "id": "0", "time": 1_762_597_800,
        "changes": [{ "field": "messages", "value": { "sender": { "id": "12334" }, "recipient": { "id": "23245" },
            "timestamp": "1527459824", "message": { "mid": "random_mid", "text": "random_text" } } }] }] });
    assert_eq!(s.sys.send_meta_webhook(&test).await.status(), 200);
    let d = s.crm.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.crm.deliveries().len(), 1);
    assert_eq!(d[0].json["instagram_message_id"], "mid_standby");
}

async fn an_account_receives_only_the_events_it_chose(db: Db) {
    let s = setup_with(db, &[], json!({ "events": ["message.received"] })).await;
    s.meta_events(vec![
        event(json!({ "reaction": { "mid": "mid_x", "action": "react", "reaction": "love" } })),
        event(json!({ "read": { "mid": "mid_x" } })),
        json!({ "sender": { "id": CUSTOMER }, "recipient": { "id": BUSINESS }, "timestamp": 1_762_597_801_000i64,
                "message": { "mid": "mid_text", "text": "hi" } }),
    ])
    .await;
    s.crm.wait_for(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let d = s.crm.deliveries();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].json["event"], "message.received");
    assert_eq!(d[0].json["sequence"], 1, "skipped events take no number");
    let history = s.history("").await;
    let skipped: Vec<&Value> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["delivery"]["status"] == "skipped")
        .collect();
    assert_eq!(skipped.len(), 2);
    assert!(skipped.iter().all(|m| m["sequence"].is_null()));
}

async fn the_auto_reply_goes_once_per_conversation_and_never_to_an_echo(db: Db) {
    let s = setup_with(
        db,
        &[],
        json!({ "auto_reply_text": "Thanks! We answer within a day." }),
    )
    .await;
    let msg = |sender: &str, mid: &str, ms: i64| json!({ "sender": { "id": sender }, "recipient": { "id": BUSINESS }, "timestamp": ms, "message": { "mid": mid, "text": "hi" } });
    s.meta_events(vec![msg(CUSTOMER, "mid_a1", 1_762_597_800_000)])
        .await;
    s.crm.wait_for(1, WAIT).await;
    router_tests::eventually(WAIT, "the auto-reply", || async {
        (s.graph.sends().len() == 1).then_some(())
    })
    .await;
    s.meta_events(vec![msg(CUSTOMER, "mid_a2", 1_762_597_801_000)])
        .await;
    s.meta_events(vec![echo("mid_sent_1", "Thanks! We answer within a day.")])
        .await; // the auto-reply's echo
    s.meta_events(vec![echo("mid_app", "typed in the app")])
        .await;
    s.meta_events(vec![msg("7070", "mid_b1", 1_762_597_802_000)])
        .await;
    router_tests::eventually(WAIT, "the second conversation's auto-reply", || async {
        (s.graph.sends().len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sends = s.graph.sends();
    assert_eq!(sends.len(), 2, "one auto-reply per conversation");
    assert_eq!(sends[0].body["recipient"]["id"], CUSTOMER);
    assert_eq!(
        sends[0].body["message"]["text"],
        "Thanks! We answer within a day."
    );
    assert_eq!(sends[1].body["recipient"]["id"], "7070");
    let history = s
        .history(&format!("conversation_id=conv_{CUSTOMER}_{BUSINESS}"))
        .await;
    let events: Vec<&str> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "message.received",
            "message.sent",
            "message.received",
            "message.echo"
        ]
    );
}

async fn usernames_are_looked_up_once_and_failures_leave_null(db: Db) {
    let s = setup(db).await;
    s.graph.profile_is("111", "alice.shop.fan");
    s.graph.profile_fails("222", 230);
    s.graph.profile_fails("333", 1);
    let msg = |sender: &str, mid: &str| json!({ "sender": { "id": sender }, "recipient": { "id": BUSINESS }, "timestamp": 1_762_597_800_000i64, "message": { "mid": mid, "text": "hi" } });
    s.meta_events(vec![msg("111", "mid_1")]).await;
    s.crm.wait_for(1, WAIT).await;
    s.meta_events(vec![
        msg("111", "mid_2"),
        msg("222", "mid_3"),
        msg("333", "mid_4"),
    ])
    .await;
    let d = s.crm.wait_for(4, WAIT).await;
    let username = |mid: &str| {
        d.iter()
            .find(|d| d.json["instagram_message_id"] == mid)
            .unwrap()
            .json["sender_username"]
            .clone()
    };
    assert_eq!(username("mid_1"), "alice.shop.fan");
    assert_eq!(username("mid_2"), "alice.shop.fan");
    assert!(username("mid_3").is_null(), "consent refused (230): null");
    assert!(username("mid_4").is_null(), "Meta failing: null");
    let lookups_of_111 = s
        .graph
        .lookups()
        .iter()
        .filter(|l| l.path == "/111")
        .count();
    assert_eq!(lookups_of_111, 1, "cached per account");
    assert_eq!(
        s.graph.lookups()[0].authorization,
        format!("Bearer {TOKEN}")
    );
}

async fn the_history_lists_a_conversation_in_order_by_pages(db: Db) {
    let s = setup(db).await;
    s.meta_events(vec![event(
        json!({ "message": { "mid": "mid_h1", "text": "Do you ship to Spain?" } }),
    )])
    .await;
    s.crm.wait_for(1, WAIT).await;
    s.send(json!({ "recipient_id": CUSTOMER, "text": "Yes, in 3 days" }))
        .await;
    s.meta_events(vec![json!({ "sender": { "id": CUSTOMER }, "recipient": { "id": BUSINESS }, "timestamp": 1_762_597_900_000i64,
        "message": { "mid": "mid_h2", "text": "Great" } })])
    .await;
    s.crm.wait_for(2, WAIT).await;
    let conv = format!("conv_{CUSTOMER}_{BUSINESS}");
    let page1 = s.history(&format!("conversation_id={conv}&limit=2")).await;
    let cursor = page1["next_cursor"].as_str().unwrap();
    let page2 = s
        .history(&format!("conversation_id={conv}&limit=2&cursor={cursor}"))
        .await;
    assert!(page2["next_cursor"].is_null());
    let all: Vec<Value> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .chain(page2["data"].as_array().unwrap())
        .cloned()
        .collect();
    let directions: Vec<&str> = all
        .iter()
        .map(|m| m["direction"].as_str().unwrap())
        .collect();
    assert_eq!(directions, ["inbound", "outbound", "inbound"]);
    assert_eq!(all[0]["instagram_message_id"], "mid_h1");
    assert_eq!(all[1]["instagram_message_id"], "mid_sent_1");
    assert_eq!(all[2]["instagram_message_id"], "mid_h2");
}

async fn an_echo_arriving_before_metas_answer_to_our_send_is_still_recognised(db: Db) {
    let s = setup(db).await;
    // Meta takes 1.5 s to answer the send, and its echo arrives meanwhile.
    s.graph
        .answer_next_send(SendAnswer::Slow(Duration::from_millis(1500)));
    let send = s.send(json!({ "recipient_id": CUSTOMER, "text": "racing the echo" }));
    let echo_first = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.meta_events(vec![echo("mid_sent_1", "racing the echo")])
            .await;
    };
    let ((status, sent, _), ()) = tokio::join!(send, echo_first);
    assert_eq!(status, 201);
    assert_eq!(sent["instagram_message_id"], "mid_sent_1");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        s.crm.deliveries().is_empty(),
        "our own reply is not forwarded as an echo"
    );
    let history = s.history("").await;
    let data = history["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{history}");
    assert_eq!(data[0]["event"], "message.sent");
    assert_eq!(data[0]["instagram_message_id"], "mid_sent_1");
}

fn instant(at: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(at.as_str().unwrap())
        .unwrap()
        .to_utc()
}

/// Seconds from now until an RFC 3339 time.
fn secs_until(at: &Value) -> i64 {
    (instant(at) - chrono::Utc::now()).num_seconds()
}

/// A setup whose ingest checks the access tokens every second.
async fn setup_checking_tokens(db: Db) -> Setup {
    setup_with(db, &[("INGEST_TOKEN_CHECK_INTERVAL", "1s")], json!({})).await
}

impl Setup {
    /// Sets a new access token with its lifetime; returns the account.
    async fn set_token(&self, token: &str, expires_in: i64) -> Value {
        let resp = self
            .sys
            .http
            .patch(self.sys.url(&format!("/api/v1/accounts/{}", self.account)))
            .bearer_auth(API_TOKEN)
            .json(&json!({ "instagram_access_token": token, "instagram_access_token_expires_in": expires_in }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    async fn account(&self) -> Value {
        self.sys
            .api_get(&format!("/api/v1/accounts/{}", self.account))
            .await
    }
}

async fn a_token_near_its_expiry_is_refreshed_and_the_new_one_is_used(db: Db) {
    let s = setup_checking_tokens(db).await;
    let account = s.account().await;
    // Given without a lifetime: valid, expiry unknown until the first refresh
    // (which Meta allows once the token is a day old).
    assert_eq!(account["credentials"]["state"], "valid");
    assert_eq!(account["credentials"]["expires_at"], Value::Null);
    let mut alerts = s
        .sys
        .alerts(format!("router.alerts.credentials.{}", s.account))
        .await;

    // Five days left: inside the ten days before expiry, so it is refreshed.
    let account = s.set_token("IGAA-long-lived", 5 * 86_400).await;
    let left = secs_until(&account["credentials"]["expires_at"]);
    assert!((5 * 86_400 - 60..=5 * 86_400).contains(&left), "{account}");
    let alert = alerts.next().await;
    assert_eq!(alert["event"], "token_refreshed", "{alert}");
    assert_eq!(alert["account_id"], s.account.as_str());
    assert_eq!(alert["state"], "valid");
    let sixty_days = 5_184_000;
    assert!((sixty_days - 60..=sixty_days).contains(&secs_until(&alert["expires_at"])));
    assert_eq!(s.graph.refreshes(), ["IGAA-long-lived"]);

    let account = s.account().await;
    let credentials = &account["credentials"];
    assert_eq!(credentials["state"], "valid");
    assert_eq!(
        instant(&credentials["expires_at"]),
        instant(&alert["expires_at"])
    );
    assert!(credentials["last_refresh_attempt_at"].is_string());
    assert_eq!(credentials["error"], Value::Null);
    assert!(!account.to_string().contains("IGAA"), "no token in a read");

    // Replies go out with the refreshed token.
    let (status, _, _) = s
        .send(json!({ "recipient_id": CUSTOMER, "text": "hello" }))
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        s.graph.sends().last().unwrap().authorization,
        "Bearer IGAA-refreshed-1"
    );
    // Sixty days away again: not refreshed a second time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.graph.refreshes().len(), 1);
    assert!(alerts.pending().is_empty());
    let metrics = s.sys.ingest_metrics().await;
    assert!(
        metrics.contains("router_ingest_token_refreshes_total{result=\"refreshed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("router_ingest_accounts_credentials{state=\"valid\"} 1"));
}

async fn a_token_that_cannot_be_refreshed_turns_expiring_then_invalid(db: Db) {
    let s = setup_checking_tokens(db).await;
    let mut alerts = s
        .sys
        .alerts(format!("router.alerts.credentials.{}", s.account))
        .await;
    s.graph.answer_next_refresh(SendAnswer::Error {
        status: 500,
        code: 2,
        subcode: None,
        message: "Service temporarily unavailable",
    });
    s.set_token("IGAA-short", 4).await;
    let alert = alerts.next().await;
    assert_eq!(
        (&alert["event"], &alert["state"], &alert["error"]),
        (
            &json!("token_expiring"),
            &json!("expiring"),
            &json!("meta_2")
        ),
        "{alert}"
    );
    let account = s.account().await;
    assert_eq!(account["credentials"]["state"], "expiring");
    assert_eq!(account["credentials"]["error"], "meta_2");
    assert_eq!(account["status"], "active", "the token still works");
    let metrics = s.sys.ingest_metrics().await;
    assert!(
        metrics.contains("router_ingest_token_refreshes_total{result=\"failed\"} 1"),
        "{metrics}"
    );

    // Once it has expired: invalid, and never refreshed again meanwhile
    // (a refresh is tried at most once a day).
    let alert = alerts.next().await;
    assert_eq!(
        (&alert["event"], &alert["state"], &alert["error"]),
        (
            &json!("token_invalid"),
            &json!("invalid"),
            &json!("expired")
        ),
        "{alert}"
    );
    assert_eq!(s.graph.refreshes(), ["IGAA-short"]);
    let account = s.account().await;
    assert_eq!(account["credentials"]["state"], "invalid");
    assert_eq!(account["status"], "credentials_invalid");
    router_tests::eventually(Duration::from_secs(10), "the invalid gauge", || async {
        s.sys
            .ingest_metrics()
            .await
            .contains("router_ingest_accounts_credentials{state=\"invalid\"} 1")
            .then_some(())
    })
    .await;

    // Meta refusing the refresh itself (code 190): invalid at once.
    s.graph.answer_next_refresh(SendAnswer::Error {
        status: 400,
        code: 190,
        subcode: Some(460),
        message: "Error validating access token",
    });
    let account = s.set_token("IGAA-revoked", 3600).await;
    assert_eq!(account["credentials"]["state"], "valid");
    assert_eq!(account["status"], "active");
    let alert = alerts.next().await;
    assert_eq!(
        (&alert["event"], &alert["error"]),
        (&json!("token_invalid"), &json!("meta_190")),
        "{alert}"
    );
    let account = s.account().await;
    assert_eq!(account["credentials"]["state"], "invalid");
    assert_eq!(account["status"], "credentials_invalid");
    assert_eq!(s.graph.refreshes(), ["IGAA-short", "IGAA-revoked"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.graph.refreshes().len(),
        2,
        "an invalid token is not retried"
    );
}

async fn quick_replies_templates_and_sender_actions_go_out_as_meta_takes_them(db: Db) {
    let s = setup(db).await;
    // Text with quick replies.
    let (status, sent, _) = s
        .send(json!({ "recipient_id": CUSTOMER, "text": "Which size?",
                      "quick_replies": [{ "title": "Small", "payload": "SIZE_S" },
                                        { "title": "Large 🧥", "payload": "SIZE_L" }] }))
        .await;
    assert_eq!(status, 201, "{sent}");
    assert_eq!(
        s.graph.sends()[0].body["message"],
        json!({ "text": "Which size?", "quick_replies": [
            { "content_type": "text", "title": "Small", "payload": "SIZE_S" },
            { "content_type": "text", "title": "Large 🧥", "payload": "SIZE_L" }] })
    );

    // A generic template: cards with an image, a link and buttons.
    let (status, _, _) = s
        .send(json!({ "recipient_id": CUSTOMER, "template": { "type": "generic", "elements": [
            { "title": "Blue jacket", "subtitle": "€89", "image_url": "https://shop.example/j.jpg",
              "default_action_url": "https://shop.example/j",
              "buttons": [{ "type": "web_url", "title": "Buy", "url": "https://shop.example/buy/j" },
                          { "type": "postback", "title": "Other sizes", "payload": "SIZES_J" }] },
            { "title": "Red scarf", "subtitle": "€19" }] } }))
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        s.graph.sends()[1].body["message"],
        json!({ "attachment": { "type": "template", "payload": { "template_type": "generic", "elements": [
            { "title": "Blue jacket", "subtitle": "€89", "image_url": "https://shop.example/j.jpg",
              "default_action": { "type": "web_url", "url": "https://shop.example/j" },
              "buttons": [{ "type": "web_url", "url": "https://shop.example/buy/j", "title": "Buy" },
                          { "type": "postback", "title": "Other sizes", "payload": "SIZES_J" }] },
            { "title": "Red scarf", "subtitle": "€19" }] } } })
    );

    // A button template, as a human agent outside the 24 h window.
    let (status, _, _) = s
        .send(json!({ "recipient_id": CUSTOMER, "tag": "HUMAN_AGENT", "template": { "type": "button",
            "text": "Your order shipped", "buttons": [{ "type": "web_url", "title": "Track", "url": "https://t.example/1" }] } }))
        .await;
    assert_eq!(status, 201);
    let body = &s.graph.sends()[2].body;
    assert_eq!(
        body["message"]["attachment"]["payload"],
        json!({ "template_type": "button", "text": "Your order shipped",
                "buttons": [{ "type": "web_url", "url": "https://t.example/1", "title": "Track" }] })
    );
    assert_eq!(body["tag"], "HUMAN_AGENT");

    // Sender actions: 200, Meta told, nothing recorded.
    for action in ["typing_on", "typing_off", "mark_seen"] {
        let (status, answer, _) = s
            .send(json!({ "recipient_id": CUSTOMER, "sender_action": action }))
            .await;
        assert_eq!(
            (status, answer),
            (
                200,
                json!({ "recipient_id": CUSTOMER, "sender_action": action })
            )
        );
        assert_eq!(
            s.graph.sends().last().unwrap().body,
            json!({ "recipient": { "id": CUSTOMER }, "sender_action": action })
        );
    }
    // A repeat with its Idempotency-Key gets the first 200; Meta is told once.
    let ingest = s.sys.ingest.addr.to_string();
    let typing = json!({ "recipient_id": CUSTOMER, "sender_action": "typing_on" });
    let first = s.send_keyed(&ingest, "typing-1", typing.clone()).await;
    let again = s.send_keyed(&ingest, "typing-1", typing).await;
    assert_eq!((first.0, &first.1), (200, &again.1));
    assert_eq!(again.0, 200);
    assert_eq!(s.graph.sends().len(), 7);

    let history = s.history("").await;
    let types: Vec<&str> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["message_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["text", "template", "template"], "{history}");
}

async fn richer_replies_over_metas_limits_are_refused_before_meta_is_called(db: Db) {
    let s = setup(db).await;
    let quick = |n: usize, title: &str| -> Value {
        (0..n)
            .map(|i| json!({ "title": title, "payload": format!("P{i}") }))
            .collect()
    };
    let button = json!({ "type": "postback", "title": "Yes", "payload": "YES" });
    let cases = [
        (
            json!({ "recipient_id": CUSTOMER, "text": "Pick", "quick_replies": quick(14, "A") }),
            "invalid_request",
            "quick_replies",
        ),
        (
            json!({ "recipient_id": CUSTOMER, "text": "Pick", "quick_replies": quick(1, &"é".repeat(21)) }),
            "invalid_request",
            "title",
        ),
        (
            json!({ "recipient_id": CUSTOMER, "quick_replies": quick(1, "A") }),
            "quick_replies_need_text",
            "text",
        ),
        (
            json!({ "recipient_id": CUSTOMER, "template": { "type": "generic",
                    "elements": (0..11).map(|i| json!({ "title": format!("T{i}"), "subtitle": "s" })).collect::<Value>() } }),
            "invalid_request",
            "elements",
        ),
        (
            json!({ "recipient_id": CUSTOMER, "template": { "type": "generic", "elements": [{ "title": "Only a title" }] } }),
            "invalid_template",
            "template.elements[0]",
        ),
        (
            json!({ "recipient_id": CUSTOMER, "template": { "type": "button", "text": "Sure?",
                    "buttons": [button.clone(), button.clone(), button.clone(), button] } }),
            "invalid_request",
            "buttons",
        ),
        (
            json!({ "recipient_id": CUSTOMER, "template": { "type": "button", "text": "Go",
                    "buttons": [{ "type": "web_url", "title": "Open", "url": "javascript:alert(1)" }] } }),
            "invalid_url",
            "template.buttons.url",
        ),
        (
            json!({ "recipient_id": CUSTOMER, "template": { "type": "carousel", "elements": [] } }),
            "invalid_request",
            "carousel",
        ),
        (
            json!({ "recipient_id": CUSTOMER, "text": "hi", "sender_action": "typing_on" }),
            "text_or_attachment_required",
            "sender_action",
        ),
        (
            json!({ "recipient_id": CUSTOMER, "sender_action": "dancing" }),
            "invalid_request",
            "dancing",
        ),
        (
            json!({ "recipient_id": CUSTOMER, "sender_action": "typing_on", "tag": "HUMAN_AGENT" }),
            "invalid_request",
            "tag",
        ),
    ];
    for (body, code, named) in cases {
        let (status, answer, _) = s.send(body.clone()).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some(code)),
            "{body} → {answer}"
        );
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(named), "{message} names {named}");
    }
    assert!(s.graph.sends().is_empty(), "Meta was not called");
}

async fn ice_breakers_and_the_persistent_menu_are_set_through_the_graph_api(db: Db) {
    let s = setup(db).await;
    let put = |what: &'static str, body: Value| {
        let sys = &s.sys;
        let url = sys.url(&format!("/api/v1/accounts/{}/{what}", s.account));
        async move {
            let resp = sys
                .http
                .put(url)
                .bearer_auth(API_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let breakers = json!({ "ice_breakers": [
        { "question": "Where is my order?", "payload": "ORDER" },
        { "question": "Do you ship abroad?", "payload": "SHIPPING" }] });
    let (status, answer) = put("ice-breakers", breakers.clone()).await;
    assert_eq!((status, &answer), (200, &breakers));
    let sent = s.graph.sends().remove(0);
    assert_eq!(
        (
            sent.method.as_str(),
            sent.path.as_str(),
            sent.authorization.as_str()
        ),
        (
            "POST",
            format!("/{BUSINESS}/messenger_profile").as_str(),
            "Bearer IGAA-test-token"
        )
    );
    assert_eq!(
        sent.body,
        json!({ "platform": "instagram", "ice_breakers": [{ "locale": "default", "call_to_actions": [
            { "question": "Where is my order?", "payload": "ORDER" },
            { "question": "Do you ship abroad?", "payload": "SHIPPING" }] }] })
    );

    let menu = json!({ "items": [
        { "type": "postback", "title": "Talk to a person", "payload": "AGENT" },
        { "type": "web_url", "title": "Our shop", "url": "https://shop.example/" }] });
    let (status, answer) = put("persistent-menu", menu).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["composer_input_disabled"], false);
    assert_eq!(
        s.graph.sends()[1].body,
        json!({ "platform": "instagram", "persistent_menu": [{ "locale": "default",
            "composer_input_disabled": false, "call_to_actions": [
            { "type": "postback", "title": "Talk to a person", "payload": "AGENT" },
            { "type": "web_url", "title": "Our shop", "url": "https://shop.example/" }] }] })
    );

    // An empty list removes them.
    let (status, _) = put("ice-breakers", json!({ "ice_breakers": [] })).await;
    assert_eq!(status, 200);
    let removed = s.graph.sends().remove(2);
    assert_eq!(removed.method, "DELETE");
    assert_eq!(
        removed.body,
        json!({ "platform": "instagram", "fields": ["ice_breakers"] })
    );

    // Meta's limits, before Meta is called.
    let five: Value = (0..5)
        .map(|i| json!({ "question": format!("Q{i}"), "payload": "P" }))
        .collect();
    let (status, answer) = put("ice-breakers", json!({ "ice_breakers": five })).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, answer) = put(
        "persistent-menu",
        json!({ "items": [{ "type": "web_url", "title": "x", "url": "ftp://x" }] }),
    )
    .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_url"))
    );
    assert_eq!(s.graph.sends().len(), 3);

    // Meta's errors map as a reply's.
    s.graph.answer_next_send(SendAnswer::Error {
        status: 400,
        code: 100,
        subcode: None,
        message: "Invalid parameter",
    });
    let (status, answer) = put("ice-breakers", breakers.clone()).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (502, Some("instagram_error"))
    );
    assert_eq!(answer["meta_code"], 100);
    s.graph.answer_next_send(SendAnswer::Error {
        status: 400,
        code: 190,
        subcode: None,
        message: "Error validating access token",
    });
    let (status, answer) = put("ice-breakers", breakers).await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (502, Some("instagram_auth_failed"))
    );
    assert_eq!(s.account().await["credentials"]["state"], "invalid");
}

router_tests::on_both_stores!(
    a_reply_goes_through_the_send_api_with_the_accounts_token,
    metas_errors_become_stable_codes,
    text_over_1000_bytes_is_refused_before_meta_is_called,
    the_echo_of_our_send_is_not_forwarded_but_an_app_echo_is,
    reactions_and_unreactions_are_forwarded,
    a_deletion_is_forwarded_and_marks_the_stored_message,
    an_edit_is_forwarded_with_the_new_text_and_marks_the_stored_message,
    every_event_carries_its_conversations_reply_windows,
    comments_and_mentions_are_forwarded_as_their_own_events,
    a_comment_gets_one_private_reply_and_public_replies,
    new_comments_get_the_accounts_private_auto_reply_once,
    a_send_repeated_with_its_idempotency_key_gets_the_first_answer_and_meta_is_called_once,
    read_receipts_are_forwarded,
    postbacks_are_forwarded,
    referrals_are_forwarded,
    quick_replies_carry_their_payload,
    story_replies_and_replies_to_messages_carry_reply_to,
    story_mentions_shares_reels_and_several_attachments_are_forwarded,
    standby_events_and_the_dashboards_test_payload_are_accepted,
    an_account_receives_only_the_events_it_chose,
    the_auto_reply_goes_once_per_conversation_and_never_to_an_echo,
    usernames_are_looked_up_once_and_failures_leave_null,
    the_history_lists_a_conversation_in_order_by_pages,
    an_echo_arriving_before_metas_answer_to_our_send_is_still_recognised,
    a_token_near_its_expiry_is_refreshed_and_the_new_one_is_used,
    a_token_that_cannot_be_refreshed_turns_expiring_then_invalid,
    quick_replies_templates_and_sender_actions_go_out_as_meta_takes_them,
    richer_replies_over_metas_limits_are_refused_before_meta_is_called,
    ice_breakers_and_the_persistent_menu_are_set_through_the_graph_api,
);

/// Keys are kept in the database: a repeat that lands on another ingest
/// gets the same answer, and Meta is still called once.
#[cfg(postgres_tests)]
#[tokio::test]
async fn an_idempotent_repeat_on_another_ingest_gets_the_first_answer() {
    let s = setup(Db::Postgres).await;
    let graph_url = s.graph.url();
    let other = s
        .sys
        .another_ingest(&[("GRAPH_API_BASE", graph_url.as_str())])
        .await;
    let reply = json!({ "recipient_id": CUSTOMER, "text": "On its way" });
    let (status, first) = s
        .send_keyed(&s.sys.ingest.addr.to_string(), "k-1", reply.clone())
        .await;
    assert_eq!(status, 201, "{first}");
    let (status, again) = s.send_keyed(&other.addr.to_string(), "k-1", reply).await;
    assert_eq!((status, &again), (201, &first));
    assert_eq!(s.graph.sends().len(), 1);
}
