//! Account-scoped API tokens, as a CRM team holding one would try them: the
//! token reaches its own account and nothing else (anything of another
//! account is 404, exactly as if it did not exist), it is shown once and
//! kept only as a hash, its requests are logged under its id, and once
//! revoked it is refused. Then the whole OpenAPI document is walked: every
//! operation refuses a request without a token, and none lets an account
//! token reach another account.

use std::time::Duration;

use reqwest::Method;
use router_tests::{CrmReceiver, Db, System, meta};
use serde_json::{Value, json};

router_tests::on_both_stores!(account_tokens_reach_only_their_account_and_are_kept_only_as_a_hash);

const SHOP_A: &str = "17841400000000101";
const SHOP_B: &str = "17841400000000102";

/// Creates an account token for `account` with the operator token.
async fn new_token(sys: &System, account: &str) -> (String, String) {
    let (status, created) = sys
        .api_send(
            Method::POST,
            &format!("/api/v1/accounts/{account}/tokens"),
            Some(json!({"name": "crm team"})),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    )
}

async fn account_tokens_reach_only_their_account_and_are_kept_only_as_a_hash(db: Db) {
    let sys = System::start(db).await;
    let crm = CrmReceiver::start().await;
    let (a, _) = sys.create_account(SHOP_A, &crm.url()).await;
    let (b, _) = sys.create_account(SHOP_B, &crm.url()).await;

    let (token_id, token) = new_token(&sys, &a).await;
    assert!(token_id.starts_with("tok_"), "{token_id}");
    assert!(
        token.starts_with("rtok_") && token.len() > 40,
        "long and recognisable"
    );
    // Listed by name and id; the token itself is never shown again.
    let listed = sys.api_get(&format!("/api/v1/accounts/{a}/tokens")).await;
    assert_eq!(listed["data"][0]["id"], token_id.as_str());
    assert_eq!(listed["data"][0]["name"], "crm team");
    assert!(listed["data"][0].get("token").is_none());
    assert!(!listed.to_string().contains(&token));

    let mine = Some(token.as_str());
    // Its own account: readable, changeable, its messages and its sends.
    let (status, own) = sys
        .api_send_as(mine, Method::GET, &format!("/api/v1/accounts/{a}"), None)
        .await;
    assert_eq!((status, own["id"].as_str()), (200, Some(a.as_str())));
    let (status, _) = sys
        .api_send_as(
            mine,
            Method::PATCH,
            &format!("/api/v1/accounts/{a}"),
            Some(json!({"name": "Shop A, renamed"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = sys
        .api_send_as(
            mine,
            Method::GET,
            &format!("/api/v1/accounts/{a}/messages"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    // The account list holds its own account only.
    let (status, list) = sys
        .api_send_as(mine, Method::GET, "/api/v1/accounts", None)
        .await;
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.as_str()]);

    // Another account is exactly like one that does not exist.
    let (status, other) = sys
        .api_send_as(mine, Method::GET, &format!("/api/v1/accounts/{b}"), None)
        .await;
    let (_, missing) = sys
        .api_send_as(
            mine,
            Method::GET,
            "/api/v1/accounts/acc_01jz0000000000000000000000",
            None,
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(other, missing, "no way to tell that {b} exists");
    let (status, _) = sys
        .api_send_as(
            mine,
            Method::GET,
            &format!("/api/v1/dead-letters?account_id={b}"),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // What only operators do: 403 on its own account.
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/accounts".to_owned(),
            Some(json!({"name": "x", "instagram_account_id": "1", "crm_webhook_url": crm.url()})),
        ),
        (Method::DELETE, format!("/api/v1/accounts/{a}"), None),
        (Method::GET, format!("/api/v1/accounts/{a}/tokens"), None),
        (
            Method::POST,
            format!("/api/v1/accounts/{a}/tokens"),
            Some(json!({"name": "more"})),
        ),
    ] {
        let (status, body) = sys.api_send_as(mine, method.clone(), &path, body).await;
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert_eq!(body["code"], "operator_token_required");
    }

    // Its requests are logged under its id, never the token.
    let logs = sys.ingest.logs();
    assert!(logs.contains(&format!("token={token_id}")), "{logs}");
    assert!(!logs.contains(&token), "the token is never logged");
    // Kept only as a hash: no row holds the token, and it is nowhere in the
    // database file.
    let rows = sys
        .database
        .execute(
            "UPDATE api_tokens SET name = name WHERE token_hash = $1 OR name = $1",
            &token,
        )
        .await;
    assert_eq!(rows, 0);
    if let Some(dir) = sys.database.sqlite_dir() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let secret = &token.as_bytes()["rtok_".len()..];
            assert!(!bytes.windows(secret.len()).any(|w| w == secret));
        }
    }

    // Revoked: refused at once; revoking again is 404.
    let revoke = format!("/api/v1/accounts/{a}/tokens/{token_id}");
    assert_eq!(sys.api_send(Method::DELETE, &revoke, None).await.0, 204);
    let (status, body) = sys
        .api_send_as(mine, Method::GET, &format!("/api/v1/accounts/{a}"), None)
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = sys.api_send(Method::DELETE, &revoke, None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("token_not_found"))
    );
}

/// A body each operation accepts, so a refusal is about the token, not the body.
fn body_for(operation: &str, b: &str) -> Option<Value> {
    match operation {
        "create_account" => Some(
            json!({"name": "x", "instagram_account_id": "17841400000000199", "crm_webhook_url": "https://crm.example/hook"}),
        ),
        "update_account" => Some(json!({"name": "taken over"})),
        "send_message" => Some(json!({"recipient_id": "9001", "text": "hello"})),
        "replay_dead_letters" => Some(json!({"account_id": b})),
        "create_account_token" => Some(json!({"name": "mine now"})),
        "rotate_webhook_secret" => Some(json!({})),
        "private_reply_to_comment" | "reply_to_comment" => Some(json!({"text": "hello"})),
        "set_ice_breakers" => Some(json!({"ice_breakers": []})),
        "set_persistent_menu" => Some(json!({"items": []})),
        _ => None,
    }
}

#[tokio::test]
async fn every_operation_refuses_a_missing_token_and_keeps_account_tokens_to_their_account() {
    let sys = System::start(Db::Sqlite).await;
    let crm = CrmReceiver::start().await;
    let (a, _) = sys.create_account(SHOP_A, &crm.url()).await;
    let (b, _) = sys.create_account(SHOP_B, &crm.url()).await;
    // B has a dead letter (its CRM refused it with a 401).
    crm.answer_with(&[401]);
    let event = meta::text_event(SHOP_B, "9001", "mid_b_1", "hi", 1_731_061_800_000);
    let resp = sys
        .send_meta_webhook(&meta::payload(vec![meta::entry(SHOP_B, vec![event])]))
        .await;
    assert_eq!(resp.status(), 200);
    let delivered = crm.wait_for(1, Duration::from_secs(30)).await;
    let dead = delivered[0].webhook_id().to_owned();
    sys.wait_for_status(&b, &dead, "dead").await;
    let (b_token_id, _) = new_token(&sys, &b).await;
    let (_, token) = new_token(&sys, &a).await;

    let document = sys.api_get("/openapi.json").await;
    let mut walked = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/") {
            continue;
        }
        for (method, operation) in operations.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            assert_eq!(
                operation["security"],
                json!([{"ApiToken": []}]),
                "{id} is documented as needing a token"
            );
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let concrete = path
                .replace("{account_id}", &b)
                .replace("{message_id}", &dead)
                .replace("{token_id}", &b_token_id)
                .replace("{comment_id}", "17900000000000001");
            let body = body_for(id, &b);

            let (status, answer) = sys
                .api_send_as(None, method.clone(), &concrete, body.clone())
                .await;
            assert_eq!(status, 401, "{id} without a token: {answer}");
            assert_eq!(answer["code"], "unauthorized", "{id}");

            let (status, answer) = sys
                .api_send_as(Some(&token), method.clone(), &concrete, body)
                .await;
            let reaches_b = path.contains("{account_id}") || path.contains("{message_id}");
            if reaches_b || id == "replay_dead_letters" {
                assert_eq!(status, 404, "{id} with A's token on B: {answer}");
            } else {
                // Not about one account: never B's data, never a change.
                assert!(
                    !answer.to_string().contains(&b) && !answer.to_string().contains(&dead),
                    "{id} with A's token shows B: {answer}"
                );
                assert!(matches!(status, 200 | 403), "{id}: {status} {answer}");
            }
            walked.push(id.to_owned());
        }
    }
    for expected in [
        "list_messages",
        "send_message",
        "create_account_token",
        "replay_dead_letter",
        "private_reply_to_comment",
        "reply_to_comment",
    ] {
        assert!(
            walked.iter().any(|w| w == expected),
            "{expected} walked: {walked:?}"
        );
    }

    // B is untouched: still there, named as before, its dead letter and its token kept.
    let account = sys.api_get(&format!("/api/v1/accounts/{b}")).await;
    assert_eq!(account["name"], format!("Shop {SHOP_B}"));
    assert_eq!(account["status"], "active");
    let letters = sys
        .api_get(&format!("/api/v1/dead-letters?account_id={b}"))
        .await;
    assert_eq!(letters["data"][0]["id"], dead.as_str());
    let tokens = sys.api_get(&format!("/api/v1/accounts/{b}/tokens")).await;
    assert_eq!(tokens["data"][0]["id"], b_token_id.as_str());
    assert_eq!(
        sys.api_get("/api/v1/accounts").await["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let _ = a;
}
