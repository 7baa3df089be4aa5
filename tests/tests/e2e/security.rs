//! The router as an attacker would try it: a CRM URL that points back into
//! the operator's network (loopback, private ranges, the cloud metadata
//! address, IPv4 hidden in IPv6) is refused when an account is created or
//! changed, and again by the forwarder at delivery time, when DNS may have
//! changed since.

use std::time::Duration;

use futures::StreamExt as _;
use reqwest::Method;
use router_tests::{CrmReceiver, Db, NatsServer, System, meta};
use serde_json::json;

const BUSINESS: &str = "17841400000000077";

/// A request body creating an account for [`BUSINESS`].
fn new_account(name: &str, crm_url: &str) -> serde_json::Value {
    json!({"name": name, "instagram_account_id": BUSINESS, "crm_webhook_url": crm_url})
}

async fn assert_no_accounts(sys: &System) {
    let accounts = sys.api_get("/api/v1/accounts").await;
    assert!(
        accounts["data"].as_array().unwrap().is_empty(),
        "{accounts}"
    );
}

#[tokio::test]
async fn crm_urls_reaching_non_public_addresses_are_refused_at_create_and_update() {
    let sys = System::start_with(Db::Sqlite, &[("CRM_ALLOW_PRIVATE_NETWORKS", "false")]).await;
    let create = |url: &str| json!({"name": "Shop", "instagram_account_id": BUSINESS, "crm_webhook_url": url});
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[64:ff9b::a9fe:a9fe]/hook",
        "http://[2002:a00:1::1]/hook",
    ] {
        let (status, body) = sys
            .api_send(Method::POST, "/api/v1/accounts", Some(create(url)))
            .await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["code"], "crm_webhook_url_not_public", "{url}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("CRM_ALLOW_PRIVATE_NETWORKS"),
            "the error names the setting that allows it"
        );
    }
    assert_no_accounts(&sys).await;

    // A public address is accepted; changing it to a private one is not.
    let (status, account) = sys
        .api_send(
            Method::POST,
            "/api/v1/accounts",
            Some(create("https://93.184.215.14/hook")),
        )
        .await;
    assert_eq!(status, 201, "{account}");
    let path = format!("/api/v1/accounts/{}", account["id"].as_str().unwrap());
    let (status, body) = sys
        .api_send(
            Method::PATCH,
            &path,
            Some(json!({"crm_webhook_url": "http://172.16.5.4:8080/hook"})),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["code"], "crm_webhook_url_not_public");
    assert_eq!(
        sys.api_get(&path).await["crm_webhook_url"],
        "https://93.184.215.14/hook",
        "the refused change left the account as it was"
    );
}

#[tokio::test]
async fn a_crm_name_resolving_to_loopback_at_delivery_is_dead_lettered_and_never_retried() {
    // Ingest accepted the URL (as if DNS pointed elsewhere then); the
    // forwarder, with the check on, finds it resolves to loopback now.
    let nats = NatsServer::start().await;
    let url = nats.url();
    let sys = System::start_on(
        nats,
        Db::Sqlite,
        (&url, &[]),
        (&url, &[("CRM_ALLOW_PRIVATE_NETWORKS", "false")]),
    )
    .await;
    let crm = CrmReceiver::start().await;
    let url = format!("http://localhost:{}/hook", crm.addr.port());
    let (account, _) = sys.create_account(BUSINESS, &url).await;
    let resp = sys
        .send_meta_webhook(&meta::text_message(BUSINESS, "5551", "mid_ssrf", "hi"))
        .await;
    assert_eq!(resp.status(), 200);

    let messages = router_tests::eventually(Duration::from_secs(30), "a message", || async {
        let all = sys.messages(&account).await;
        (!all.is_empty()).then_some(all)
    })
    .await;
    let id = messages[0]["id"].as_str().unwrap().to_owned();
    let m = sys.wait_for_status(&account, &id, "dead").await;
    assert_eq!(m["delivery"]["last_error"], "private_address");
    assert_eq!(m["delivery"]["attempts"], 1);
    // The forwarder's retry schedule here is 1 s: a retry would show by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = sys.message(&account, &id).await.unwrap();
    assert_eq!(m["delivery"]["attempts"], 1, "never retried");
    assert_eq!(crm.count(), 0, "nothing reached the loopback CRM");
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_cannot_take_every_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // At most 3 connections; a request must be complete within 6 s of
    // connecting (GRAPH_API_TIMEOUT_SECS + 5 is the floor).
    let sys = System::start_with(
        Db::Sqlite,
        &[
            ("INGEST_MAX_CONNECTIONS", "3"),
            ("INGEST_CLIENT_TIMEOUT_SECS", "6"),
            ("GRAPH_API_TIMEOUT_SECS", "1"),
        ],
    )
    .await;
    // Three clients that never finish their headers.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut c = tokio::net::TcpStream::connect(sys.ingest.addr)
            .await
            .unwrap();
        c.write_all(b"POST /webhooks/instagram HTTP/1.1\r\nHost: ingest\r\n")
            .await
            .unwrap();
        slow.push(c);
    }
    let started = std::time::Instant::now();
    let health = tokio::spawn({
        let (http, url) = (sys.http.clone(), sys.url("/healthz"));
        async move { http.get(url).send().await.map(|r| r.status().as_u16()) }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !health.is_finished(),
        "a fourth connection waits while three are open"
    );
    // The slow ones are cut off, and the waiting request is then served.
    for mut c in slow {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(15), c.read(&mut buf))
            .await
            .expect("the slow connection is closed");
        assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer");
    }
    assert_eq!(health.await.unwrap().unwrap(), 200);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(20),
        "{waited:?}"
    );
}

#[tokio::test]
async fn api_bodies_over_the_limit_are_refused_with_413() {
    let sys = System::start_with(Db::Sqlite, &[("INGEST_API_MAX_BODY_BYTES", "2048")]).await;
    let name = "x".repeat(4096);
    let (status, body) = sys
        .api_send(
            Method::POST,
            "/api/v1/accounts",
            Some(new_account(&name, "https://93.184.215.14/hook")),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["code"], "payload_too_large");
    assert_no_accounts(&sys).await;
    // Under the limit, the same request is served.
    let (status, _) = sys
        .api_send(
            Method::POST,
            "/api/v1/accounts",
            Some(new_account("Shop", "https://93.184.215.14/hook")),
        )
        .await;
    assert_eq!(status, 201);
}

/// The repository's NATS permissions, with these passwords.
async fn locked_down_nats() -> NatsServer {
    let config =
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../nats-server.conf"));
    NatsServer::start_with_config(
        Some(config),
        &[
            ("ROUTER_NATS_INGEST_PASSWORD", "ingest-pw-0451"),
            ("ROUTER_NATS_FORWARDER_PASSWORD", "forwarder-pw-0452"),
            ("ROUTER_NATS_ADMIN_PASSWORD", "admin-pw-0453"),
        ],
        Some("admin:admin-pw-0453"),
    )
    .await
}

#[tokio::test]
async fn on_the_documented_nats_permissions_the_path_works_and_the_forwarder_cannot_write_routing()
{
    let nats = locked_down_nats().await;
    let (ingest, forwarder) = (
        nats.url_as("ingest:ingest-pw-0451"),
        nats.url_as("forwarder:forwarder-pw-0452"),
    );
    let graph = router_tests::FakeGraph::start().await;
    let graph_url = graph.url();
    let ingest_env = [
        ("GRAPH_API_BASE", graph_url.as_str()),
        ("INGEST_TOKEN_CHECK_INTERVAL", "1s"),
    ];
    let sys = System::start_on(nats, Db::Sqlite, (&ingest, &ingest_env), (&forwarder, &[])).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    // A first answer of 500: the retry path (a conversation hold, a
    // redelivery) runs too.
    crm.answer_with(&[500]);
    let resp = sys
        .send_meta_webhook(&meta::text_message(BUSINESS, "5551", "mid_locked", "hi"))
        .await;
    assert_eq!(resp.status(), 200);
    let delivered = crm.wait_for(2, Duration::from_secs(30)).await;
    let id = delivered[0].json["message_id"].as_str().unwrap().to_owned();
    sys.wait_for_status(&account, &id, "delivered").await;

    // An operator's pause and resume: ingest saves them, the forwarders
    // learn them through routing, and ingest announces them on the alerts
    // subject, which its user may publish.
    let watcher =
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-pw-0453".into())
            .connect(sys.nats.url())
            .await
            .unwrap();
    let mut alerts = watcher
        .subscribe(format!("router.alerts.crm.{account}"))
        .await
        .unwrap();
    for (action, event) in [
        ("pause", "deliveries_paused"),
        ("resume", "deliveries_resumed"),
    ] {
        let path = format!("/api/v1/accounts/{account}/deliveries/{action}");
        let (status, body) = sys.api_send(Method::POST, &path, None).await;
        assert_eq!(status, 200, "{action}: {body}");
        let alert = tokio::time::timeout(Duration::from_secs(10), alerts.next())
            .await
            .unwrap_or_else(|_| panic!("no alert for the {action}"))
            .unwrap();
        let alert: serde_json::Value = serde_json::from_slice(&alert.payload).unwrap();
        assert_eq!(alert["event"], event);
    }
    // A token close to its expiry is refreshed, and the refresh announced
    // on the credentials alerts, which ingest's user may publish too.
    let mut credentials = watcher
        .subscribe(format!("router.alerts.credentials.{account}"))
        .await
        .unwrap();
    let path = format!("/api/v1/accounts/{account}");
    let token = json!({ "instagram_access_token": "IGAA-locked", "instagram_access_token_expires_in": 3600 });
    let (status, body) = sys.api_send(Method::PATCH, &path, Some(token)).await;
    assert_eq!(status, 200, "{body}");
    let alert = tokio::time::timeout(Duration::from_secs(10), credentials.next())
        .await
        .expect("a credentials alert")
        .unwrap();
    let alert: serde_json::Value = serde_json::from_slice(&alert.payload).unwrap();
    assert_eq!(alert["event"], "token_refreshed");

    let resp = sys
        .send_meta_webhook(&meta::text_message(BUSINESS, "5551", "mid_after", "again"))
        .await;
    assert_eq!(resp.status(), 200);
    crm.wait_for(3, Duration::from_secs(30)).await;

    // Every step was allowed: a refused one shows in the services' logs.
    for service in [&sys.ingest, &sys.forwarder] {
        let logs = service.logs();
        assert!(
            !logs.contains("Permissions Violation"),
            "{} was refused a step:\n{logs}",
            service.name
        );
    }

    // With the forwarder's credentials: routing can be read, not written,
    // and nothing can be published as an inbound message.
    let client = async_nats::ConnectOptions::with_user_and_password(
        "forwarder".into(),
        "forwarder-pw-0452".into(),
    )
    .custom_inbox_prefix("_INBOX_forwarder")
    .connect(sys.nats.url())
    .await
    .unwrap();
    let js = async_nats::jetstream::new(client);
    let routing = js.get_key_value("router_accounts").await.unwrap();
    let before = routing
        .get(&account)
        .await
        .unwrap()
        .expect("routing readable");
    let put = tokio::time::timeout(
        Duration::from_secs(5),
        routing.put(&account, r#"{"forged":true}"#.into()),
    )
    .await;
    assert!(!matches!(put, Ok(Ok(_))), "the forwarder wrote routing");
    let forged = async {
        js.publish(format!("router.inbound.{account}"), "{}".into())
            .await?
            .await?;
        anyhow::Ok(())
    };
    let forged = tokio::time::timeout(Duration::from_secs(5), forged).await;
    assert!(
        !matches!(forged, Ok(Ok(()))),
        "the forwarder published inbound"
    );
    assert_eq!(routing.get(&account).await.unwrap(), Some(before));
}

#[tokio::test]
async fn the_forwarder_refuses_a_message_naming_another_account_and_unsealed_routing() {
    let sys = System::start(Db::Sqlite).await;
    let (crm_a, crm_b, elsewhere) = (
        CrmReceiver::start().await,
        CrmReceiver::start().await,
        CrmReceiver::start().await,
    );
    let (a, _) = sys.create_account("17841400000000081", &crm_a.url()).await;
    let (b, _) = sys.create_account("17841400000000082", &crm_b.url()).await;
    let js = async_nats::jetstream::new(async_nats::connect(sys.nats.url()).await.unwrap());

    // On A's subject, a message that says it is B's: it would be signed with
    // A's secret and sent to A's CRM. Terminated instead.
    let forged = json!({
        "event": "message.received", "message_id": "msg_forged01", "account_id": b,
        "conversation_id": "c_1", "message": "pay here", "sender_id": "1",
    });
    js.publish(format!("router.inbound.{a}"), forged.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let resp = sys
        .send_meta_webhook(&meta::text_message(
            "17841400000000081",
            "5551",
            "mid_real",
            "hi",
        ))
        .await;
    assert_eq!(resp.status(), 200);
    let got = crm_a.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].json["instagram_message_id"], "mid_real");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        crm_a.count() + crm_b.count(),
        1,
        "the forged message went nowhere"
    );
    assert!(sys.forwarder.logs().contains("naming another account"));

    // A's routing rewritten behind ingest's back with a plaintext secret and
    // another CRM: with ROUTER_ENCRYPTION_KEY set, the forwarder refuses it.
    let bucket = js.get_key_value("router_accounts").await.unwrap();
    let mut routing: serde_json::Value =
        serde_json::from_slice(&bucket.get(&a).await.unwrap().unwrap()).unwrap();
    assert!(
        routing["webhook_secret"]
            .as_str()
            .unwrap()
            .starts_with("enc:v2:")
    );
    routing["webhook_secret"] = json!("whsec_c2VjcmV0LWNob3Nlbi1ieS1hbi1hdHRhY2tlcg==");
    routing["crm_webhook_url"] = json!(elsewhere.url());
    bucket.put(&a, routing.to_string().into()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let resp = sys
        .send_meta_webhook(&meta::text_message(
            "17841400000000081",
            "5551",
            "mid_after",
            "hi",
        ))
        .await;
    assert_eq!(resp.status(), 200);
    router_tests::eventually(
        Duration::from_secs(10),
        "the planted routing refused",
        || async { sys.forwarder.logs().contains("not sealed").then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(elsewhere.count(), 0, "nothing signed with a planted secret");
    assert_eq!(crm_a.count(), 1);
}

#[tokio::test]
async fn each_api_token_has_its_own_rate_limit() {
    // One request a second, bursts of two, per token.
    let sys = System::start_with(Db::Sqlite, &[("ROUTER_API_RATE_LIMIT", "1")]).await;
    let get = |token: &'static str| {
        sys.http
            .get(sys.url("/api/v1/accounts"))
            .bearer_auth(token)
            .send()
    };
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let resp = get(router_tests::API_TOKEN).await.unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["code"], "rate_limited");
        }
    }
    assert_eq!(&statuses[..2], &[200, 200], "a burst of two: {statuses:?}");
    assert!(statuses[2..].contains(&429), "then refused: {statuses:?}");
    let wait = retry_after.expect("429 carries Retry-After in seconds");
    assert!((1..=2).contains(&wait), "{wait}");
    // Another token is not held back by this one.
    let other = get("other-token-abcdefghijkl").await.unwrap();
    assert_eq!(other.status(), 200);
    // After the wait, the first token is served again.
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert_eq!(get(router_tests::API_TOKEN).await.unwrap().status(), 200);
    // Each request line names the token by its place in ROUTER_API_TOKENS
    // (the last line may reach the harness's reader a moment after its
    // answer reached us).
    let lines = |token: &str| {
        sys.ingest
            .logs()
            .lines()
            .filter(|l| l.contains("http request") && l.contains(token))
            .count()
    };
    router_tests::eventually(Duration::from_secs(5), "seven request lines", || async {
        (lines("token=2") + lines("token=1") >= 7).then_some(())
    })
    .await;
    let logs = sys.ingest.logs();
    assert_eq!(lines("token=2"), 6, "{logs}");
    assert_eq!(lines("token=1"), 1, "{logs}");
}

#[tokio::test]
async fn a_message_jetstream_keeps_refusing_is_set_aside_and_the_rest_flow_on() {
    // A nats-server that takes at most 4 KiB per message: an event with a
    // long text can never be published.
    let conf_dir = tempfile::tempdir().unwrap();
    let conf = conf_dir.path().join("small.conf");
    std::fs::write(&conf, "max_payload: 4096\n").unwrap();
    let nats = NatsServer::start_with_config(Some(conf), &[], None).await;
    let url = nats.url();
    let sys = System::start_on(
        nats,
        Db::Sqlite,
        (&url, &[("INGEST_PUBLISH_ATTEMPTS", "3")]),
        (&url, &[]),
    )
    .await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    let t = 1_731_061_800_000;
    let events = vec![
        meta::text_event(BUSINESS, "1001", "mid_big", &"x".repeat(6000), t),
        meta::text_event(BUSINESS, "1001", "mid_after", "after", t + 1),
        meta::text_event(BUSINESS, "1002", "mid_other", "other", t + 2),
    ];
    let resp = sys
        .send_meta_webhook(&meta::payload(vec![meta::entry(BUSINESS, events)]))
        .await;
    assert_eq!(resp.status(), 200, "saved, whatever NATS will say");

    // The rest reach the CRM, the same conversation's next message included.
    let delivered = crm.wait_for(2, Duration::from_secs(30)).await;
    let mut texts: Vec<String> = delivered
        .iter()
        .map(|d| d.json["message"].as_str().unwrap().to_owned())
        .collect();
    texts.sort();
    assert_eq!(texts, vec!["after", "other"]);
    // The refused one is a dead letter that says why, replayable.
    let dead = sys
        .api_get(&format!("/api/v1/dead-letters?account_id={account}"))
        .await;
    let dead = dead["data"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["delivery"]["last_error"], "publish_refused");
    let metrics = sys.ingest_metrics().await;
    assert!(
        metrics.contains("router_ingest_publish_set_aside_total 1"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(crm.deliveries().len(), 2, "nothing else arrives");
}

#[tokio::test]
async fn an_access_token_no_http_header_can_carry_is_refused_without_being_echoed() {
    // Found by schemathesis: such a token was stored, and every reply then
    // failed with 502 instead of the account being refused at once.
    let sys = System::start(Db::Sqlite).await;
    let crm = CrmReceiver::start().await;
    let (account, _) = sys.create_account(BUSINESS, &crm.url()).await;
    let token = "IGQVJ secret\ntoken-with-a-newline";
    let (status, body) = sys
        .api_send(
            Method::PATCH,
            &format!("/api/v1/accounts/{account}"),
            Some(json!({"instagram_access_token": token})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("instagram_access_token"),
        "{body}"
    );
    assert!(
        !body.to_string().contains("secret"),
        "the token is not echoed: {body}"
    );
    let mut create = new_account("Other", &crm.url());
    create["instagram_account_id"] = json!("17841400000000078");
    create["instagram_access_token"] = json!(token);
    let (status, _) = sys
        .api_send(Method::POST, "/api/v1/accounts", Some(create))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn services_log_in_to_nats_with_an_nkey_seed_file() {
    // A server that knows the services by nkey only (and an admin by
    // password, for the harness to see it is up).
    let service = nkeys::KeyPair::new_user();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("nkeys.conf");
    std::fs::write(
        &conf,
        format!(
            "authorization {{ users = [ {{ user: admin, password: admin-pw-123 }}, {{ nkey: {} }} ] }}\n",
            service.public_key()
        ),
    )
    .unwrap();
    let seed_file = dir.path().join("service.nk");
    std::fs::write(&seed_file, format!("{}\n", service.seed().unwrap())).unwrap();
    let nats = NatsServer::start_with_config(Some(conf), &[], Some("admin:admin-pw-123")).await;
    let seed = seed_file.to_str().unwrap();
    the_path_works_only_with(
        nats,
        ("NATS_NKEY_SEED_FILE", seed),
        &service.seed().unwrap(),
    )
    .await;
}

/// On a server that refuses anonymous clients, the services log in with
/// `setting` and a message goes the whole way; `secret` is never logged.
async fn the_path_works_only_with(nats: NatsServer, setting: (&str, &str), secret: &str) {
    let url = nats.url();
    let refused = async_nats::ConnectOptions::new()
        .connect(&url)
        .await
        .expect_err("no anonymous login");
    assert!(
        refused.to_string().to_lowercase().contains("authorization"),
        "{refused}"
    );
    let env = [setting];
    let sys = System::start_on(nats, Db::Sqlite, (&url, &env), (&url, &env)).await;
    let crm = CrmReceiver::start().await;
    sys.create_account(BUSINESS, &crm.url()).await;
    let message = meta::text_message(BUSINESS, "1001", "mid_login", "hello");
    assert_eq!(sys.send_meta_webhook(&message).await.status(), 200);
    let delivered = crm.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(delivered[0].json["message"], "hello");
    let logs = sys.ingest.logs() + &sys.forwarder.logs();
    assert!(!logs.contains(secret), "the secret is never logged");
}

/// A second key for the rotation test.
const NEW_KEY: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

#[tokio::test]
async fn the_encryption_key_is_rotated_with_the_old_one_as_previous_then_dropped() {
    let mut sys = System::start(Db::Sqlite).await;
    let crm = CrmReceiver::start().await;
    let (account, secret) = sys.create_account(BUSINESS, &crm.url()).await;
    let query = "SELECT webhook_secret FROM accounts WHERE id = $1";
    let sealed_before = sys.database.fetch_text(query, &account).await.unwrap();

    // Restarted with the new key, the old one as previous: ingest re-seals
    // every secret at start, the forwarder still reads what it has not yet.
    sys.ingest.terminate(Duration::from_secs(20)).await;
    sys.forwarder.terminate(Duration::from_secs(20)).await;
    let rotating = [
        ("ROUTER_ENCRYPTION_KEY", NEW_KEY),
        (
            "ROUTER_ENCRYPTION_KEY_PREVIOUS",
            router_tests::ENCRYPTION_KEY,
        ),
    ];
    let ingest = sys.another_ingest(&rotating).await;
    assert!(
        ingest
            .logs()
            .contains("re-sealed with the current encryption key")
    );
    let sealed_after = sys.database.fetch_text(query, &account).await.unwrap();
    let key_id = |sealed: &str| sealed.split(':').nth(2).unwrap().to_owned();
    assert!(sealed_after.starts_with("enc:v2:") && !sealed_after.contains(&secret[6..]));
    assert_ne!(key_id(&sealed_after), key_id(&sealed_before));
    let forwarder = sys.another_forwarder(&rotating).await;
    let message = meta::text_message(BUSINESS, "5551", "mid_rekey_1", "hi");
    assert_eq!(
        sys.send_meta_webhook_to(&ingest, &message).await.status(),
        200
    );
    let delivered = crm.wait_for(1, Duration::from_secs(30)).await;
    assert!(delivered[0].hub_signature_valid(&secret));
    drop((ingest, forwarder));

    // The old key dropped: everything was re-sealed, in the database and in
    // the accounts bucket, so both services work with the new key alone.
    let new_only = [("ROUTER_ENCRYPTION_KEY", NEW_KEY)];
    let ingest = sys.another_ingest(&new_only).await;
    let forwarder = sys.another_forwarder(&new_only).await;
    let message = meta::text_message(BUSINESS, "5551", "mid_rekey_2", "again");
    assert_eq!(
        sys.send_meta_webhook_to(&ingest, &message).await.status(),
        200
    );
    let delivered = crm.wait_for(2, Duration::from_secs(30)).await;
    assert!(
        delivered
            .iter()
            .all(|d| d.standard_signature_valid(&secret))
    );
    for service in [&ingest, &forwarder] {
        assert!(!service.logs().contains("cannot"), "{}", service.logs());
    }
}

#[tokio::test]
async fn a_sealed_secret_moved_to_another_account_does_not_open() {
    let sys = System::start(Db::Sqlite).await;
    let crm = CrmReceiver::start().await;
    let (a, _) = sys.create_account(BUSINESS, &crm.url()).await;
    let (b, _) = sys.create_account("17841400000000078", &crm.url()).await;
    // An attacker with write access to the database copies A's sealed
    // secret onto B: B's secret no longer opens, and the API says so
    // without a value in the answer.
    let moved = sys
        .database
        .execute(
            "UPDATE accounts SET webhook_secret =
                 (SELECT webhook_secret FROM accounts WHERE id = $1) WHERE id <> $1",
            &a,
        )
        .await;
    assert_eq!(moved, 1);
    let (status, body) = sys
        .api_send(Method::GET, &format!("/api/v1/accounts/{b}"), None)
        .await;
    assert_eq!(status, 500, "{body}");
    assert!(!body.to_string().contains("enc:v2"), "{body}");
}

/// A CA, and a certificate it signed for 127.0.0.1, as PEM files in `dir`:
/// `ca.pem`, `server.pem`, `server-key.pem`.
fn tls_files(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &Issuer::new(ca_params, &ca_key))
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.join("server-key.pem"), server_key.serialize_pem()).unwrap();
}

#[tokio::test]
async fn services_reach_a_tls_only_nats_with_its_ca_and_nothing_reaches_it_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    tls_files(dir.path());
    let conf = dir.path().join("tls.conf");
    std::fs::write(
        &conf,
        format!(
            "tls {{ cert_file: \"{0}/server.pem\", key_file: \"{0}/server-key.pem\" }}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let ca = dir.path().join("ca.pem");
    let nats = NatsServer::start_with_tls(conf, ca.clone()).await;
    let url = nats.url();

    // The server tells every client that TLS is required (so no client
    // speaks in the clear), and one that does not trust its CA is refused.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", nats.port))
        .await
        .unwrap();
    let mut info = vec![0u8; 4096];
    let n = tokio::io::AsyncReadExt::read(&mut raw, &mut info)
        .await
        .unwrap();
    let info = String::from_utf8_lossy(&info[..n]);
    assert!(info.contains("\"tls_required\":true"), "{info}");
    let untrusted = async_nats::ConnectOptions::new()
        .require_tls(true)
        .connect(&url)
        .await;
    assert!(
        untrusted.is_err(),
        "a client without the CA trusted the server"
    );

    let ca = ca.to_str().unwrap();
    let env = [("NATS_TLS_CA_FILE", ca)];
    let sys = System::start_on(nats, Db::Sqlite, (&url, &env), (&url, &env)).await;
    let crm = CrmReceiver::start().await;
    sys.create_account(BUSINESS, &crm.url()).await;
    let message = meta::text_message(BUSINESS, "1001", "mid_tls", "hello");
    assert_eq!(sys.send_meta_webhook(&message).await.status(), 200);
    let delivered = crm.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(delivered[0].json["message"], "hello");
}

/// A NATS JWT (v2): `issuer` signs claims about `subject`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, nats: serde_json::Value) -> String {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let mut claims = json!({
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": subject[..8].to_owned(),
        "sub": subject,
        "nats": nats,
    });
    use sha2::Digest as _;
    claims["jti"] = json!(hex::encode_upper(sha2::Sha256::digest(claims.to_string())));
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = b64(claims.to_string().as_bytes());
    let signature = issuer.sign(format!("{header}.{body}").as_bytes()).unwrap();
    format!("{header}.{body}.{}", b64(&signature))
}

#[tokio::test]
async fn services_log_in_to_nats_with_a_creds_file() {
    // An operator-mode server: an operator, one account with JetStream, and
    // a user of it whose JWT and seed make the creds file.
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let system = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        json!({"type": "operator", "version": 2}),
    );
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        json!({"type": "account", "version": 2}),
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        json!({"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1}),
    );
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("operator.conf");
    std::fs::write(
        &conf,
        format!(
            "operator: {operator_jwt}\nsystem_account: {1}\nresolver: MEMORY\n\
             resolver_preload: {{ {0}: {account_jwt}, {1}: {system_jwt} }}\n",
            account.public_key(),
            system.public_key()
        ),
    )
    .unwrap();
    let creds = dir.path().join("service.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    let nats = NatsServer::start_with_creds(conf, creds.clone()).await;
    let creds = creds.to_str().unwrap();
    the_path_works_only_with(nats, ("NATS_CREDS_FILE", creds), &user.seed().unwrap()).await;
}
