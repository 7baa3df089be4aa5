//! The README's examples are the code that runs here: the Python receiver
//! is started against real deliveries, both CRM examples must appear in the
//! README exactly as committed, and every `curl` example runs against a
//! live system and answers as its comment says.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use router_tests::{API_TOKEN, CrmReceiver, Db, FakeGraph, META_APP_SECRET, META_VERIFY_TOKEN};
use router_tests::{System, free_port, meta};
use serde_json::json;

const README: &str = include_str!("../../../README.md");

#[test]
fn readme_shows_the_examples_exactly() {
    let python = include_str!("../../crm_receiver.py");
    assert!(
        README.contains(python.trim_end()),
        "README's Python receiver differs from tests/crm_receiver.py"
    );
    let rust = include_str!("../../src/readme_verify.rs");
    let function = &rust[rust.find("/// Checks both signatures").unwrap()..];
    assert!(
        README.contains(function.trim_end()),
        "README's Rust example differs from tests/src/readme_verify.rs"
    );
}

#[tokio::test]
async fn the_python_receiver_verifies_and_prints_a_real_delivery() {
    let sys = System::start(Db::Sqlite).await;
    let port = free_port();
    let crm_url = format!("http://127.0.0.1:{port}/instagram");
    let (_, secret) = sys.create_account("17841400000000077", &crm_url).await;
    let mut child = KillOnDrop(
        Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/crm_receiver.py"))
            .env("WEBHOOK_SECRET", &secret)
            .env("PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Wait for the receiver to listen, then send the message.
    router_tests::eventually(
        Duration::from_secs(10),
        "python receiver listening",
        || async {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        },
    )
    .await;
    sys.send_meta_webhook(&meta::text_message(
        "17841400000000077",
        "42",
        "mid_py",
        "from python",
    ))
    .await;
    // The receiver prints the delivery as indented JSON; its last line is "}".
    let mut printed = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(printed.contains("mid_py") && printed.ends_with('}'))
        && std::time::Instant::now() < deadline
    {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            printed.push_str(&line);
        }
    }
    assert!(
        printed.contains("\"instagram_message_id\": \"mid_py\""),
        "receiver printed: {printed}"
    );
    // The walk-through shows what the receiver prints: the same fields.
    let delivered: serde_json::Value =
        serde_json::from_str(&printed).unwrap_or_else(|e| panic!("{e}: {printed}"));
    let fields = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    assert_eq!(
        fields(&walk_through_delivery()),
        fields(&delivered),
        "the walk-through's printed message and a real delivery differ in their fields"
    );
    router_tests::eventually(
        Duration::from_secs(10),
        "the receiver's 204 logged",
        || async {
            sys.forwarder
                .logs()
                .contains("delivered status=204")
                .then_some(())
        },
    )
    .await;
}

/// The message the walk-through shows the receiver printing.
fn walk_through_delivery() -> serde_json::Value {
    let intro = "and the receiver prints the message:\n\n```json\n";
    let start = README
        .find(intro)
        .expect("the walk-through's printed message")
        + intro.len();
    let end = start + README[start..].find("```").expect("its block ends");
    serde_json::from_str(&README[start..end]).expect("the walk-through's example is JSON")
}

/// Stops the receiver however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A README `sh` block with `curl` in it, and the status each of its
/// `curl`s must answer: the one its `# → NNN` comment names, else any 2xx.
struct CurlBlock {
    script: String,
    expected: Vec<Option<u16>>,
}

fn curl_blocks() -> Vec<CurlBlock> {
    let mut blocks = Vec::new();
    let mut rest = README;
    while let Some(start) = rest.find("```sh\n") {
        let body = &rest[start + 6..];
        let end = body.find("```").expect("a closed block");
        let script = &body[..end];
        rest = &body[end + 3..];
        if !script.contains("curl ") {
            continue;
        }
        let mut expected: Vec<Option<u16>> = Vec::new();
        for line in script.lines() {
            if line.trim_start().starts_with("curl ") {
                expected.push(None);
            } else if let Some(said) = line.strip_prefix("# → ") {
                let status = said
                    .get(..3)
                    .filter(|_| said.as_bytes().get(3).is_none_or(|b| !b.is_ascii_digit()));
                if let (Some(last), Some(status)) = (expected.last_mut(), status) {
                    *last = status.parse().ok();
                }
            }
        }
        blocks.push(CurlBlock {
            script: script.to_owned(),
            expected,
        });
    }
    blocks
}

#[tokio::test]
async fn every_curl_example_in_the_readme_answers_as_documented() {
    let graph = FakeGraph::start().await;
    let graph_url = graph.url();
    let sys = System::start_with(Db::Sqlite, &[("GRAPH_API_BASE", graph_url.as_str())]).await;
    let crm = CrmReceiver::start().await;
    // The account the examples' $ACCOUNT names, with a token and a comment
    // received ($COMMENT_ID); the walk-through connects its own as well.
    let business = "17841400000000099";
    let account = sys
        .create_account_with(json!({ "name": "Shop", "instagram_account_id": business,
            "crm_webhook_url": crm.url(), "instagram_access_token": "IGAA-readme" }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let comment = json!({ "id": "17900000000000077", "from": { "id": "6070", "username": "ana" },
        "text": "Price?", "media": { "id": "18000000000000001" } });
    let mut webhook = meta::payload(vec![meta::changes_entry(
        business,
        vec![("comments", comment)],
    )]);
    webhook["entry"][0]["time"] = json!(chrono::Utc::now().timestamp_millis());
    assert_eq!(sys.send_meta_webhook(&webhook).await.status(), 200);
    crm.wait_for(1, Duration::from_secs(20)).await;

    let statuses = tempfile::NamedTempFile::new().unwrap();
    let mut script = String::from(
        "set -e\ncurl() { command curl -sS -o /dev/null -w '%{http_code}\\n' \"$@\" >> \"$STATUSES\"; }\n",
    );
    let blocks = curl_blocks();
    let count: usize = blocks.iter().map(|b| b.expected.len()).sum();
    assert!(count >= 14, "the README's curl examples are found: {count}");
    for block in &blocks {
        script.push_str(&block.script);
        script.push('\n');
    }
    let script = script
        .replace("http://127.0.0.1:8080", &sys.url(""))
        .replace("dev-api-token-change-me", API_TOKEN)
        .replace("dev-app-secret", META_APP_SECRET)
        .replace("dev-verify-token", META_VERIFY_TOKEN);
    let run = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("STATUSES", statuses.path())
        .env("TOKEN", API_TOKEN)
        .env("ACCOUNT", &account)
        .env("ACCOUNT_ID", &account)
        .env("COMMENT_ID", "17900000000000077")
        .output()
        .await
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let answered: Vec<u16> = std::fs::read_to_string(statuses.path())
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let expected: Vec<Option<u16>> = blocks.iter().flat_map(|b| b.expected.clone()).collect();
    assert_eq!(
        answered.len(),
        expected.len(),
        "every curl ran: {answered:?}"
    );
    for (i, (got, want)) in answered.iter().zip(&expected).enumerate() {
        match want {
            Some(want) => assert_eq!(got, want, "curl example {i}"),
            None => assert!((200..300).contains(got), "curl example {i}: {got}"),
        }
    }
    // What the examples sent reached Meta (the fake) as the README says.
    let sends = graph.sends();
    assert!(sends.iter().any(|r| r.path.ends_with("/messenger_profile")));
    assert!(sends.iter().any(|r| r.body["sender_action"] == "typing_on"));
}
