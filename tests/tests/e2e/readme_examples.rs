//! The README's CRM examples are the code that runs here: the Python
//! receiver is started against real deliveries, and both examples must
//! appear in the README exactly as committed.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use router_tests::{Db, System, free_port, meta};

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
    let mut printed = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !printed.contains("mid_py") && std::time::Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            printed.push_str(&line);
        }
    }
    assert!(
        printed.contains("\"instagram_message_id\": \"mid_py\""),
        "receiver printed: {printed}"
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

/// Stops the receiver however the test ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
