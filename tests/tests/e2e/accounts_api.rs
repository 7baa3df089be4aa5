//! The account API over HTTP against a running ingest: auth, validation,
//! write-only secrets, and routing changes reaching the forwarder.

use std::time::Duration;

use reqwest::Method;
use router_tests::{API_TOKEN, CrmReceiver, Db, System, meta};
use serde_json::{Value, json};

const BUSINESS: &str = "17841400000000009";
const WAIT: Duration = Duration::from_secs(20);

async fn json_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}")),
    )
}

async fn api_routes_need_a_known_bearer_token_and_errors_are_json(db: Db) {
    let sys = System::start(db).await;
    let (status, body) = json_of(
        sys.http
            .get(sys.url("/api/v1/accounts"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = json_of(
        sys.http
            .get(sys.url("/api/v1/accounts"))
            .bearer_auth("not-a-known-token-123")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    assert!(body["message"].is_string());
    let (status, body) = json_of(
        sys.http
            .get(sys.url("/no/such/route"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let resp = sys
        .http
        .get(sys.url("/api/v1/accounts"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // The spec and its UI are served without a token.
    let spec: Value = sys
        .http
        .get(sys.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"]["/api/v1/accounts"].is_object());
    assert!(spec["webhooks"]["message.received"].is_object());
    let docs = sys.http.get(sys.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
}

async fn create_read_list_update_delete_with_write_only_secrets(db: Db) {
    let sys = System::start(db).await;
    let token = "IGQVJ-access-token-that-must-stay-hidden";
    let (status, created) = json_of(
        sys.http
            .post(sys.url("/api/v1/accounts"))
            .bearer_auth(API_TOKEN)
            .json(&json!({
                "name": "Acme Shoes",
                "instagram_account_id": BUSINESS,
                "crm_webhook_url": "https://crm.example.com/hooks/instagram",
                "auto_reply_text": "Thanks, we'll answer soon",
                "instagram_access_token": token,
            }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("acc_"));
    let secret = created["webhook_secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(created["status"], "active");
    assert_eq!(created["name"], "Acme Shoes");
    assert!(created.get("instagram_access_token").is_none());

    let reads = [
        sys.http
            .get(sys.url(&format!("/api/v1/accounts/{id}")))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap(),
        sys.http
            .get(sys.url("/api/v1/accounts"))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap(),
        sys.http
            .patch(sys.url(&format!("/api/v1/accounts/{id}")))
            .bearer_auth(API_TOKEN)
            .json(&json!({ "name": "Acme Shoes EU", "auto_reply_text": null }))
            .send()
            .await
            .unwrap(),
    ];
    let mut bodies = Vec::new();
    for resp in reads {
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains(&secret) && !text.contains("whsec_"),
            "secret shown in a read: {text}"
        );
        assert!(
            !text.contains(token),
            "access token shown in a read: {text}"
        );
        bodies.push(serde_json::from_str::<Value>(&text).unwrap());
    }
    assert_eq!(bodies[0]["instagram_account_id"], BUSINESS);
    assert_eq!(bodies[1]["data"][0]["id"], id.as_str());
    assert_eq!(bodies[2]["name"], "Acme Shoes EU");
    assert!(bodies[2]["auto_reply_text"].is_null());

    let del = sys
        .http
        .delete(sys.url(&format!("/api/v1/accounts/{id}")))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 204);
    let (status, body) = json_of(
        sys.http
            .get(sys.url(&format!("/api/v1/accounts/{id}")))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("account_not_found"))
    );
}

async fn invalid_input_gets_a_stable_code(db: Db) {
    let sys = System::start(db).await;
    let post = |body: Value| {
        sys.http
            .post(sys.url("/api/v1/accounts"))
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
    };
    let cases = [
        (
            json!({"name": "x", "instagram_account_id": BUSINESS, "crm_webhook_url": "ftp://crm"}),
            400,
            "invalid_crm_webhook_url",
        ),
        (
            json!({"name": "x", "instagram_account_id": BUSINESS, "crm_webhook_url": "https://u:p@crm.example"}),
            400,
            "invalid_crm_webhook_url",
        ),
        (
            json!({"name": "x", "instagram_account_id": "not-digits", "crm_webhook_url": "https://crm.example"}),
            400,
            "invalid_request",
        ),
        (
            json!({"name": "", "instagram_account_id": BUSINESS, "crm_webhook_url": "https://crm.example"}),
            400,
            "invalid_request",
        ),
        (
            json!({"instagram_account_id": BUSINESS, "crm_webhook_url": "https://crm.example"}),
            400,
            "invalid_request",
        ),
        (
            json!({"name": "x", "instagram_account_id": BUSINESS, "crm_webhook_url": "https://crm.example", "webhook_secret": "plain"}),
            400,
            "invalid_webhook_secret",
        ),
        (
            // 300 characters, 1,200 UTF-8 bytes: Instagram counts bytes.
            json!({"name": "x", "instagram_account_id": BUSINESS, "crm_webhook_url": "https://crm.example", "auto_reply_text": "🙂".repeat(300)}),
            400,
            "text_too_long",
        ),
    ];
    for (body, status, code) in cases {
        let (s, b) = json_of(post(body.clone()).await.unwrap()).await;
        assert_eq!(
            (s, b["code"].as_str().unwrap()),
            (status, code),
            "for {body}"
        );
    }
    let (s, b) = json_of(
        sys.http
            .post(sys.url("/api/v1/accounts"))
            .bearer_auth(API_TOKEN)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, b["code"].as_str().unwrap()), (400, "invalid_request"));

    let ok = json!({"name": "x", "instagram_account_id": BUSINESS, "crm_webhook_url": "https://crm.example",
        "webhook_secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"});
    let (s, b) = json_of(post(ok.clone()).await.unwrap()).await;
    assert_eq!(s, 201);
    assert_eq!(
        b["webhook_secret"],
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    );
    let (s, b) = json_of(post(ok).await.unwrap()).await;
    assert_eq!(
        (s, b["code"].as_str().unwrap()),
        (409, "instagram_account_exists")
    );
}

async fn list_pages_with_a_cursor(db: Db) {
    let sys = System::start(db).await;
    for i in 0..5 {
        sys.create_account(&format!("1784140000000010{i}"), "https://crm.example.com/h")
            .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut req = sys
            .http
            .get(sys.url("/api/v1/accounts"))
            .bearer_auth(API_TOKEN)
            .query(&[("limit", "2")]);
        if let Some(c) = &cursor {
            req = req.query(&[("cursor", c)]);
        }
        let (s, page) = json_of(req.send().await.unwrap()).await;
        assert_eq!(s, 200);
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|a| a["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 5);
}

async fn changes_to_an_account_reach_the_forwarder(db: Db) {
    let sys = System::start(db).await;
    let old_crm = CrmReceiver::start().await;
    let new_crm = CrmReceiver::start().await;
    let (id, _) = sys.create_account(BUSINESS, &old_crm.url()).await;
    sys.send_meta_webhook(&meta::text_message(BUSINESS, "1", "mid_1", "one"))
        .await;
    old_crm.wait_for(1, WAIT).await;

    // A new CRM URL and a rotated secret are used for the next message.
    let rotated = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let resp = sys
        .http
        .patch(sys.url(&format!("/api/v1/accounts/{id}")))
        .bearer_auth(API_TOKEN)
        .json(&json!({ "crm_webhook_url": new_crm.url(), "webhook_secret": rotated }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    sys.send_meta_webhook(&meta::text_message(BUSINESS, "1", "mid_2", "two"))
        .await;
    let d = new_crm.wait_for(1, WAIT).await;
    assert_eq!(d[0].json["instagram_message_id"], "mid_2");
    assert!(d[0].hub_signature_valid(rotated) && d[0].standard_signature_valid(rotated));

    // Disabled: webhooks are answered 200 but nothing reaches the CRM.
    let resp = sys
        .http
        .patch(sys.url(&format!("/api/v1/accounts/{id}")))
        .bearer_auth(API_TOKEN)
        .json(&json!({ "status": "disabled" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = sys
        .send_meta_webhook(&meta::text_message(BUSINESS, "1", "mid_3", "three"))
        .await;
    assert_eq!(resp.status(), 200);

    // Deleted: the account is unknown from then on.
    let resp = sys
        .http
        .delete(sys.url(&format!("/api/v1/accounts/{id}")))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = sys
        .send_meta_webhook(&meta::text_message(BUSINESS, "1", "mid_4", "four"))
        .await;
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(old_crm.deliveries().len(), 1);
    assert_eq!(new_crm.deliveries().len(), 1);
}

async fn secrets_are_encrypted_at_rest_in_the_database_and_the_bucket(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let token = "IGAA-token-kept-sealed";
    let created = sys
        .create_account_with(json!({
            "name": "Sealed", "instagram_account_id": BUSINESS, "crm_webhook_url": crm.url(),
            "instagram_access_token": token,
        }))
        .await;
    let id = created["id"].as_str().unwrap();
    let secret = created["webhook_secret"].as_str().unwrap();

    let (stored_secret, stored_token): (String, Option<String>) = match &sys.database {
        router_tests::TestDatabase::Sqlite(_) => {
            let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&sys.database.url())
                .await
                .unwrap();
            sqlx::query_as("SELECT webhook_secret, instagram_access_token FROM accounts")
                .fetch_one(&mut db)
                .await
                .unwrap()
        }
        router_tests::TestDatabase::Postgres { .. } => {
            let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(&sys.database.url())
                .await
                .unwrap();
            sqlx::query_as("SELECT webhook_secret, instagram_access_token FROM accounts")
                .fetch_one(&mut db)
                .await
                .unwrap()
        }
    };
    assert!(stored_secret.starts_with("enc:v2:") && !stored_secret.contains(&secret[6..]));
    let stored_token = stored_token.unwrap();
    assert!(stored_token.starts_with("enc:v2:") && !stored_token.contains(token));

    let nats = async_nats::connect(sys.nats.url()).await.unwrap();
    let kv = async_nats::jetstream::new(nats)
        .get_key_value("router_accounts")
        .await
        .unwrap();
    let entry = String::from_utf8(kv.get(id).await.unwrap().unwrap().to_vec()).unwrap();
    assert!(
        !entry.contains(&secret[6..]),
        "the bucket holds the secret in the clear: {entry}"
    );
    assert!(entry.contains("enc:v2:"));

    // And the forwarder, holding the same key, still signs with the real secret.
    sys.send_meta_webhook(&meta::text_message(BUSINESS, "1", "mid_sealed", "hi"))
        .await;
    let d = crm.wait_for(1, WAIT).await;
    assert!(d[0].hub_signature_valid(secret) && d[0].standard_signature_valid(secret));
}

/// A stored value the router does not know (here an event list written by
/// hand) is an error on every path, never read as some default: the API
/// answers 500, Meta's webhook 503 so Meta keeps it and retries, and once
/// the row is repaired the retried message is delivered.
async fn a_stored_value_the_router_does_not_know_is_an_error_on_every_path(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    let changed = sys
        .database
        .execute(
            r#"UPDATE accounts SET events = '["message.typo"]' WHERE id = $1"#,
            &account,
        )
        .await;
    assert_eq!(changed, 1);

    let (status, body) = json_of(
        sys.http
            .get(sys.url(&format!("/api/v1/accounts/{account}")))
            .bearer_auth(API_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (500, Some("internal_error"))
    );
    let webhook = meta::text_message(BUSINESS, "4242", "mid.corrupt.1", "hello");
    let resp = sys.send_meta_webhook(&webhook).await;
    assert_eq!(resp.status(), 503, "Meta keeps the event and retries");
    assert!(crm.deliveries().is_empty());
    let logs = sys.ingest.logs();
    assert!(
        logs.contains("message.typo"),
        "the bad value is named in the log: {}",
        logs.lines()
            .filter(|l| l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    sys.database
        .execute("UPDATE accounts SET events = NULL WHERE id = $1", &account)
        .await;
    assert_eq!(sys.send_meta_webhook(&webhook).await.status(), 200);
    sys.wait_all_delivered(&account, 1, WAIT).await;
    assert_eq!(crm.deliveries().len(), 1);
}

/// The one delivery that `mid` made, and the account's secrets it verifies with.
async fn delivery_of(
    sys: &System,
    crm: &CrmReceiver,
    mid: &str,
    n: usize,
) -> router_tests::Delivery {
    let resp = sys
        .send_meta_webhook(&meta::text_message(BUSINESS, "5551", mid, "hi"))
        .await;
    assert_eq!(resp.status(), 200);
    let deliveries = crm.wait_for(n, WAIT).await;
    deliveries
        .into_iter()
        .find(|d| d.json["instagram_message_id"] == mid)
        .expect("the message was delivered")
}

async fn a_rotated_secret_signs_beside_the_previous_one_for_its_grace_period(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (account, old) = sys.create_account(BUSINESS, &crm.url()).await;
    let rotate = format!("/api/v1/accounts/{account}/rotate-secret");

    // Out-of-range or unknown settings are refused before anything changes.
    for body in [
        json!({"grace_period_secs": -1}),
        json!({"grace_period_secs": 604801}),
        json!({"grace_period": 60}),
    ] {
        let (status, err) = sys.api_send(Method::POST, &rotate, Some(body)).await;
        assert_eq!(status, 400, "{err}");
    }
    let (status, err) = sys
        .api_send(
            Method::POST,
            "/api/v1/accounts/acc_nope/rotate-secret",
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("account_not_found"))
    );
    let first = delivery_of(&sys, &crm, "mid_rot_1", 1).await;
    assert!(first.hub_signature_valid(&old) && first.standard_signature_valid(&old));

    // A rotation with a grace period: both secrets sign `webhook-signature`,
    // and `X-Hub-Signature-256` stays with the previous one.
    let (status, rotated) = sys
        .api_send(Method::POST, &rotate, Some(json!({"grace_period_secs": 5})))
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new = rotated["webhook_secret"].as_str().unwrap().to_owned();
    assert!(new.starts_with("whsec_") && new != old);
    assert!(rotated["previous_secret_valid_until"].is_string());
    let (_, shown) = sys
        .api_send(Method::GET, &format!("/api/v1/accounts/{account}"), None)
        .await;
    assert_eq!(
        shown["previous_secret_valid_until"],
        rotated["previous_secret_valid_until"]
    );
    assert!(!shown.to_string().contains(&new[6..]) && !shown.to_string().contains(&old[6..]));
    let stored: Option<String> = sys
        .database
        .fetch_text(
            "SELECT previous_webhook_secret FROM accounts WHERE id = $1",
            &account,
        )
        .await;
    let stored = stored.expect("the previous secret is kept");
    assert!(stored.starts_with("enc:v2:") && !stored.contains(&old[6..]));

    let during = delivery_of(&sys, &crm, "mid_rot_2", 2).await;
    assert_eq!(during.header("webhook-signature").split(' ').count(), 2);
    assert!(during.standard_signature_valid(&new) && during.standard_signature_valid(&old));
    assert!(during.hub_signature_valid(&old) && !during.hub_signature_valid(&new));

    // After the grace period, only the new secret signs.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let after = delivery_of(&sys, &crm, "mid_rot_3", 3).await;
    assert!(after.standard_signature_valid(&new) && !after.standard_signature_valid(&old));
    assert!(after.hub_signature_valid(&new));
    let (_, shown) = sys
        .api_send(Method::GET, &format!("/api/v1/accounts/{account}"), None)
        .await;
    assert!(shown["previous_secret_valid_until"].is_null());

    // A grace period of 0 switches every signature at once.
    let (status, rotated) = sys
        .api_send(Method::POST, &rotate, Some(json!({"grace_period_secs": 0})))
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert!(rotated["previous_secret_valid_until"].is_null());
    let newest = rotated["webhook_secret"].as_str().unwrap().to_owned();
    let last = delivery_of(&sys, &crm, "mid_rot_4", 4).await;
    assert_eq!(last.header("webhook-signature").split(' ').count(), 1);
    assert!(last.standard_signature_valid(&newest) && last.hub_signature_valid(&newest));
    assert!(!last.standard_signature_valid(&new));

    // A CRM that switched early ends the grace period at once.
    let (_, rotated) = sys
        .api_send(
            Method::POST,
            &rotate,
            Some(json!({"grace_period_secs": 3600})),
        )
        .await;
    let fifth = rotated["webhook_secret"].as_str().unwrap().to_owned();
    let (status, done) = sys
        .api_send(Method::POST, &format!("{rotate}/complete"), None)
        .await;
    assert_eq!(status, 200, "{done}");
    assert!(done["previous_secret_valid_until"].is_null());
    let early = delivery_of(&sys, &crm, "mid_rot_5", 5).await;
    assert_eq!(early.header("webhook-signature").split(' ').count(), 1);
    assert!(early.hub_signature_valid(&fifth) && early.standard_signature_valid(&fifth));
}

router_tests::on_both_stores!(
    a_rotated_secret_signs_beside_the_previous_one_for_its_grace_period,
    a_stored_value_the_router_does_not_know_is_an_error_on_every_path,
    api_routes_need_a_known_bearer_token_and_errors_are_json,
    create_read_list_update_delete_with_write_only_secrets,
    invalid_input_gets_a_stable_code,
    list_pages_with_a_cursor,
    changes_to_an_account_reach_the_forwarder,
    secrets_are_encrypted_at_rest_in_the_database_and_the_bucket,
);

/// A field the API does not know is refused, named, and changes nothing: a
/// typo never passes for a change that was made.
#[tokio::test]
async fn unknown_fields_are_refused_with_their_name_and_nothing_changes() {
    let sys = System::start(Db::Sqlite).await;
    let (account, _) = sys
        .create_account("17841400000000411", "https://crm.example/hook")
        .await;
    let before = sys.api_get(&format!("/api/v1/accounts/{account}")).await;
    let cases = [
        (
            Method::POST,
            "/api/v1/accounts".to_owned(),
            json!({ "name": "x", "instagram_account_id": "17841400000000412",
                    "crm_webhook_url": "https://crm.example/hook", "evnets": [] }),
            "evnets",
        ),
        (
            Method::PATCH,
            format!("/api/v1/accounts/{account}"),
            json!({ "nmae": "typo" }),
            "nmae",
        ),
        (
            Method::POST,
            format!("/api/v1/accounts/{account}/messages"),
            json!({ "recipient_id": "42", "text": "hi", "tags": "HUMAN_AGENT" }),
            "tags",
        ),
        (
            Method::POST,
            format!("/api/v1/accounts/{account}/messages"),
            json!({ "recipient_id": "42", "attachment": { "type": "image", "url": "https://x.example/a.png", "caption": "c" } }),
            "attachment.caption",
        ),
        (
            Method::POST,
            format!("/api/v1/accounts/{account}/tokens"),
            json!({ "name": "crm", "scope": "all" }),
            "scope",
        ),
        (
            Method::POST,
            "/api/v1/dead-letters/replay".to_owned(),
            json!({ "account": account }),
            "account",
        ),
        (
            Method::PUT,
            format!("/api/v1/accounts/{account}/ice-breakers"),
            json!({ "ice_breakers": [{ "question": "q", "payload": "p", "locale": "fr" }] }),
            "ice_breakers[0].locale",
        ),
        // Inside `type`-tagged objects too.
        (
            Method::POST,
            format!("/api/v1/accounts/{account}/messages"),
            json!({ "recipient_id": "42", "template": { "type": "button", "text": "t",
                    "buttons": [{ "type": "web_url", "title": "Open", "url": "https://shop.example/",
                                  "webview_height": "tall" }] } }),
            "template.buttons[0].webview_height",
        ),
        (
            Method::PUT,
            format!("/api/v1/accounts/{account}/persistent-menu"),
            json!({ "items": [{ "type": "postback", "title": "Help", "payload": "HELP", "icon": "?" }] }),
            "items[0].icon",
        ),
    ];
    let cases = cases.map(|(method, path, body, field)| (method, path, body, format!("`{field}`")));
    all_refused_and_nothing_changed(&sys, &account, before, cases).await;
}

/// Sends each body, checks that it is refused with 400 `invalid_request`
/// and a message holding its expected text, then that the account (as it
/// was `before`) and the list of accounts are unchanged.
async fn all_refused_and_nothing_changed(
    sys: &System,
    account: &str,
    before: Value,
    cases: impl IntoIterator<Item = (Method, String, Value, impl AsRef<str>)>,
) {
    for (method, path, body, expected) in cases {
        let (status, answer) = sys.api_send(method, &path, Some(body.clone())).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("invalid_request")),
            "{path} {body}: {answer}"
        );
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(expected.as_ref()), "{body}: {message}");
    }
    let after = sys.api_get(&format!("/api/v1/accounts/{account}")).await;
    assert_eq!(before, after, "nothing changed");
    let list = sys.api_get("/api/v1/accounts").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

/// A body that breaks its schema is refused with a message naming the field
/// (its path, inside lists and tagged objects) and the rule it breaks; a
/// JSON type is never converted; and nothing is changed.
#[tokio::test]
async fn validation_errors_name_the_field_and_the_rule() {
    let sys = System::start(Db::Sqlite).await;
    let (account, _) = sys
        .create_account("17841400000000414", "https://crm.example/hook")
        .await;
    let before = sys.api_get(&format!("/api/v1/accounts/{account}")).await;
    let create = |extra: Value| {
        let mut body = json!({ "name": "x", "instagram_account_id": "17841400000000415",
            "crm_webhook_url": "https://crm.example/hook" });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let send = format!("/api/v1/accounts/{account}/messages");
    let cases = [
        (
            Method::POST,
            "/api/v1/accounts".to_owned(),
            json!({ "instagram_account_id": "17841400000000415",
                    "crm_webhook_url": "https://crm.example/hook" }),
            "field `name` is required",
        ),
        (
            Method::POST,
            "/api/v1/accounts".to_owned(),
            create(json!({ "name": null })),
            "field `name` is required",
        ),
        (
            Method::POST,
            "/api/v1/accounts".to_owned(),
            create(json!({ "name": 5 })),
            "field `name` must be a string, not a number",
        ),
        (
            Method::POST,
            "/api/v1/accounts".to_owned(),
            create(json!({ "events": ["message.received", "message.nope"] })),
            "field `events[1]` must be one of message.received,",
        ),
        (
            Method::POST,
            "/api/v1/accounts".to_owned(),
            create(json!({ "name": "" })),
            "field `name` verification failed. minLength(1)",
        ),
        (
            Method::PATCH,
            format!("/api/v1/accounts/{account}"),
            json!({ "max_in_flight": "ten" }),
            "field `max_in_flight` must be an integer, not a string",
        ),
        (
            Method::POST,
            send.clone(),
            json!({ "recipient_id": "42", "text": "hi", "quick_replies": [{ "payload": "A" }] }),
            "field `quick_replies[0].title` is required",
        ),
        (
            Method::POST,
            send.clone(),
            json!({ "recipient_id": "42", "template": { "text": "t", "buttons": [] } }),
            "field `template.type` is required (generic, button)",
        ),
        (
            Method::POST,
            send.clone(),
            json!({ "recipient_id": "42", "template": { "type": "carousel" } }),
            "field `template.type` must be one of generic, button",
        ),
        (
            Method::POST,
            send.clone(),
            json!({ "recipient_id": "42", "template": { "type": "button", "text": "t",
                    "buttons": [{ "type": "postback", "title": true, "payload": "P" }] } }),
            "field `template.buttons[0].title` must be a string, not a boolean",
        ),
        (
            Method::POST,
            send,
            json!([{ "recipient_id": "42" }]),
            "the body must be an object, not an array",
        ),
        (
            Method::POST,
            format!("/api/v1/accounts/{account}/rotate-secret"),
            json!({ "grace_period_secs": null }),
            "field `grace_period_secs` must not be null",
        ),
        (
            Method::PATCH,
            format!("/api/v1/accounts/{account}"),
            json!({ "status": null }),
            "field `status` must not be null",
        ),
    ];
    all_refused_and_nothing_changed(&sys, &account, before, cases).await;
    // Where null means something, the document says `nullable`, and it works.
    let (status, answer) = sys
        .api_send(
            Method::PATCH,
            &format!("/api/v1/accounts/{account}"),
            Some(json!({ "auto_reply_text": null, "max_in_flight": null })),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
}

/// The document an ingest serves states the rules that ingest applies: its
/// own `max_in_flight` limit, closed request objects, and the one form of a
/// URL, which the API checks with the very pattern it publishes.
#[tokio::test]
async fn the_served_document_states_the_rules_this_ingest_applies() {
    let sys = System::start_with(Db::Sqlite, &[("ROUTER_ACCOUNT_IN_FLIGHT_MAX", "16")]).await;
    let doc = sys.api_get("/openapi.json").await;
    let schema = &doc["components"]["schemas"]["CreateAccount"];
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["properties"]["max_in_flight"]["maximum"], 16);
    let pattern = schema["properties"]["crm_webhook_url"]["pattern"]
        .as_str()
        .unwrap();
    let pattern = regex::Regex::new(pattern).unwrap();
    let mut next_id = 17841400000000500u64;
    let mut create = |url: &str, in_flight: u32| {
        next_id += 1;
        json!({ "name": "Shop", "instagram_account_id": next_id.to_string(),
                "crm_webhook_url": url, "max_in_flight": in_flight })
    };
    let mut refused = Vec::new();
    for url in [
        "https://0.com*/hook",
        "https://crm.example/a b",
        "https://münchen.example/hook",
    ] {
        assert!(!pattern.is_match(url), "{url}");
        let (status, answer) = sys
            .api_send(Method::POST, "/api/v1/accounts", Some(create(url, 1)))
            .await;
        assert_eq!(status, 400, "{url}: {answer}");
        assert_eq!(answer["code"], "invalid_crm_webhook_url", "{url}");
        refused.push(answer["message"].as_str().unwrap().to_owned());
    }
    assert!(refused[0].contains("host name"), "{}", refused[0]);
    for url in [
        "http://[2001:db8::1]:8080/hook",
        "HTTPS://crm.example/hook?team=2#ig",
    ] {
        assert!(pattern.is_match(url), "{url}");
        let (status, answer) = sys
            .api_send(Method::POST, "/api/v1/accounts", Some(create(url, 16)))
            .await;
        assert_eq!(status, 201, "{url}: {answer}");
    }
    let (status, answer) = sys
        .api_send(
            Method::POST,
            "/api/v1/accounts",
            Some(create("https://crm.example/hook", 17)),
        )
        .await;
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid_request")),
        "{answer}"
    );
}

/// Every time the API and the alerts write is RFC 3339 UTC with `Z`, to the
/// millisecond, as the CRM payload's are with `Z`.
#[tokio::test]
async fn times_are_utc_with_z_to_the_millisecond_in_the_api_and_the_alerts() {
    let form = |v: &Value| {
        let s = v.as_str().unwrap_or_else(|| panic!("a time: {v}"));
        let ok = s.len() == 24
            && s.ends_with('Z')
            && s.as_bytes()[19] == b'.'
            && chrono::DateTime::parse_from_rfc3339(s).is_ok();
        assert!(ok, "{s} is not like 2026-11-30T10:30:00.123Z");
    };
    let sys = System::start(Db::Sqlite).await;
    let created = sys
        .create_account_with(
            json!({ "name": "Shop", "instagram_account_id": "17841400000000413",
            "crm_webhook_url": "https://crm.example/hook", "instagram_access_token": "IGAA-t" }),
        )
        .await;
    let account = created["id"].as_str().unwrap().to_owned();
    form(&created["created_at"]);
    form(&created["updated_at"]);
    form(&created["credentials"]["token_updated_at"]);
    let mut alerts = sys.alerts(format!("router.alerts.crm.{account}")).await;
    let (status, paused) = sys
        .api_send(
            Method::POST,
            &format!("/api/v1/accounts/{account}/deliveries/pause"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{paused}");
    form(&paused["delivery_health"]["since"]);
    form(&alerts.next().await["at"]);
    let (status, token) = sys
        .api_send(
            Method::POST,
            &format!("/api/v1/accounts/{account}/tokens"),
            Some(json!({ "name": "crm" })),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    form(&token["created_at"]);
}

/// The operations whose every field is optional take no body at all as
/// `{}`; a body that is not JSON is still refused.
#[tokio::test]
async fn bodiless_rotation_and_bulk_replay_take_their_defaults() {
    let sys = System::start(Db::Sqlite).await;
    let (account, secret) = sys
        .create_account("17841400000000414", "https://crm.example/hook")
        .await;
    let path = format!("/api/v1/accounts/{account}/rotate-secret");
    let (status, rotated) = sys.api_send(Method::POST, &path, None).await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["webhook_secret"], secret.as_str());
    assert!(
        rotated["previous_secret_valid_until"].is_string(),
        "the default grace period: {rotated}"
    );
    let (status, replayed) = sys
        .api_send(Method::POST, "/api/v1/dead-letters/replay", None)
        .await;
    assert_eq!((status, &replayed), (202, &json!({ "replayed": 0 })));
    let resp = sys
        .http
        .post(sys.url("/api/v1/dead-letters/replay"))
        .bearer_auth(API_TOKEN)
        .header("content-type", "text/plain")
        .body("everything please")
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(resp).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
}
