//! `router-local`, as a newcomer meets it: `--help` starts nothing, a second
//! one in the same folder is refused at once, and a closed terminal (SIGHUP)
//! stops it together with the nats-server it started.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use router_tests::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_router-local");

/// A router-local in `dir` on free ports, with `nats_port` (where nothing
/// answers) as its NATS: it starts its own nats-server there.
fn spawn(dir: &std::path::Path, nats_port: u16) -> (Child, u16) {
    let ingest = free_port();
    let child = Command::new(BIN)
        .current_dir(dir)
        .env("NATS_URL", format!("nats://127.0.0.1:{nats_port}"))
        .env("INGEST_ADDR", format!("127.0.0.1:{ingest}"))
        .env("INGEST_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
        .env(
            "FORWARDER_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("NATS_SERVER_BIN", router_tests::nats::nats_server_binary())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, ingest)
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Whether an HTTP server answers on `port`: router-local binds ingest's
/// port before it starts nats-server, and serves on it only after.
fn serves(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut head = [0; 8];
    stream.write_all(b"GET /healthz HTTP/1.0\r\n\r\n").is_ok()
        && stream.read_exact(&mut head).is_ok()
        && head.starts_with(b"HTTP/1.")
}

async fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn help_prints_its_settings_and_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("--help")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Usage: router-local"), "{help}");
    assert!(help.contains("ROUTER_API_TOKENS=dev-api-token-change-me"));
    assert!(!dir.path().join("data").exists(), "nothing was started");
}

#[tokio::test]
async fn a_second_one_is_refused_and_a_hangup_stops_it_with_its_nats_server() {
    let dir = tempfile::tempdir().unwrap();
    let nats_port = free_port();
    let (mut first, ingest) = spawn(dir.path(), nats_port);
    wait_until(
        "the first router-local serving",
        Duration::from_secs(60),
        || serves(ingest),
    )
    .await;
    assert!(answers(nats_port), "it started its nats-server");

    // A second one in the same folder stops at once, saying why.
    let (second, second_ingest) = spawn(dir.path(), free_port());
    let out = second.wait_with_output().unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("another router-local is running in this folder"),
        "{said}"
    );
    assert!(!answers(second_ingest), "the second started nothing");
    assert!(answers(ingest), "the first runs on");

    // A closed terminal: it stops, and its nats-server with it.
    Command::new("kill")
        .arg("-HUP")
        .arg(first.id().to_string())
        .status()
        .unwrap();
    wait_until("router-local stopped", Duration::from_secs(30), || {
        first.try_wait().unwrap().is_some()
    })
    .await;
    wait_until("its nats-server stopped", Duration::from_secs(10), || {
        !answers(nats_port)
    })
    .await;
}
