//! `router-local`: the whole system on one machine, for trying it out.
//!
//! Runs ingest and one forwarder in this process, with SQLite under
//! `./data/`. When nothing answers at `NATS_URL` (default
//! `nats://127.0.0.1:4222`), it starts a nats-server with JetStream storing
//! under `./data/nats` and stops it on exit. Every variable of ingest and
//! forwarder applies; the three ingest needs get development defaults here
//! (never in the services themselves), listed in the README.
//!
//! One runs per folder: it holds a lock on `./data/router-local.lock`, and a
//! second one refuses at once. Every way out (ctrl-c, SIGTERM, SIGHUP, an
//! error, a panic) stops the nats-server it started.

use std::net::ToSocketAddrs as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser as _;
use shared::service::listen;
use tokio_util::sync::CancellationToken;

const DEV_DEFAULTS: [(&str, &str); 4] = [
    ("META_APP_SECRET", "dev-app-secret"),
    ("META_VERIFY_TOKEN", "dev-verify-token"),
    ("ROUTER_API_TOKENS", "dev-api-token-change-me"),
    // A CRM on this machine (the README's walk-through) must be reachable.
    ("CRM_ALLOW_PRIVATE_NETWORKS", "true"),
];

/// What answers at a NATS URL.
enum Probe {
    Nothing,
    /// A server we can use.
    Usable,
    /// A server older than the JetStream API we speak (Debian's 2.9, say).
    TooOld(String),
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("nats://")
        .trim_end_matches('/')
        .to_owned()
}

/// Connects and reads the server's INFO line for its version.
fn probe(url: &str) -> Probe {
    use std::io::{BufRead as _, BufReader};
    let Some(addr) = host_port(url)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    else {
        return Probe::Nothing;
    };
    let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return Probe::Nothing;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    let version = line
        .strip_prefix("INFO ")
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .and_then(|info| info["version"].as_str().map(str::to_owned))
        .unwrap_or_default();
    if shared::jetstream::server_version_supported(&version) {
        Probe::Usable
    } else {
        Probe::TooOld(version)
    }
}

const HELP: &str = "\
router-local: the whole router on this machine, for trying it out

Usage: router-local [--help]

Runs ingest and one forwarder in this process, with SQLite under ./data/.
When no usable nats-server answers at NATS_URL (default nats://127.0.0.1:4222),
it starts one (JetStream, storing under ./data/nats; on 127.0.0.1:4223 beside a
server too old) and stops it on exit. One router-local runs per folder.

Every setting of ingest and forwarder applies (see `ingest --help` and
`forwarder --help`); these get development defaults here, and only here:
  META_APP_SECRET=dev-app-secret
  META_VERIFY_TOKEN=dev-verify-token
  ROUTER_API_TOKENS=dev-api-token-change-me
  CRM_ALLOW_PRIVATE_NETWORKS=true
";

/// The nats-server this router-local started: stopped (SIGTERM, then
/// waited for) whenever this is dropped, on every way out of `main`,
/// an error or a panic included.
struct StartedNats(Child);

impl Drop for StartedNats {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let _ = self.0.wait();
    }
}

/// Holds `./data/router-local.lock` for the life of the process, or says
/// that another router-local runs in this folder.
fn lock_data_dir() -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all("data").map_err(|e| anyhow::anyhow!("cannot create ./data: {e}"))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("data/router-local.lock")
        .map_err(|e| anyhow::anyhow!("cannot open data/router-local.lock: {e}"))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another router-local is running in this folder (it holds data/router-local.lock); stop it first"
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            anyhow::bail!("cannot lock data/router-local.lock: {e}")
        }
    }
}

/// The last lines of the nats-server log, to say why it did not start.
fn nats_log_tail() -> String {
    let log = std::fs::read_to_string("data/nats/nats-server.log").unwrap_or_default();
    let lines: Vec<&str> = log.lines().rev().take(3).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Starts nats-server on `port`, storing under ./data/nats.
fn start_nats(port: u16) -> anyhow::Result<StartedNats> {
    let binary = router_tests::nats::nats_server_binary();
    std::fs::create_dir_all("data/nats")?;
    eprintln!(
        "router-local: starting {} on 127.0.0.1:{port} (log: data/nats/nats-server.log)",
        binary.display()
    );
    let mut child = Command::new(&binary)
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-sd",
            "data/nats",
        ])
        .args(["-l", "data/nats/nats-server.log"])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("could not start {}: {e}", binary.display()))?;
    for _ in 0..100 {
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "{} exited ({status}) without serving on port {port}: {}",
                binary.display(),
                nats_log_tail()
            );
        }
        match probe(&format!("nats://127.0.0.1:{port}")) {
            Probe::Usable => return Ok(StartedNats(child)),
            Probe::TooOld(version) => {
                drop(StartedNats(child));
                anyhow::bail!(
                    "{} is nats-server {version}; 2.11 or newer is needed (NATS_SERVER_BIN names another)",
                    binary.display()
                );
            }
            Probe::Nothing => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    drop(StartedNats(child));
    anyhow::bail!(
        "{} did not answer on port {port} within 10 s; stopped it. Its log: {}",
        binary.display(),
        nats_log_tail()
    )
}

/// Makes sure a usable NATS answers; returns the server we started, if any.
fn ensure_nats() -> anyhow::Result<Option<StartedNats>> {
    let explicit = std::env::var("NATS_URL").ok();
    let url = explicit
        .clone()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let port_of = |u: &str| u.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
    match probe(&url) {
        Probe::Usable => Ok(None),
        Probe::Nothing => {
            eprintln!("router-local: nothing answers at {url}");
            let port = port_of(&url).unwrap_or(4222);
            Ok(Some(start_nats(port)?))
        }
        Probe::TooOld(version) if explicit.is_none() => {
            // Leave the old server alone and run a current one beside it.
            let port = if matches!(probe("nats://127.0.0.1:4223"), Probe::Nothing) {
                4223
            } else {
                router_tests::free_port()
            };
            eprintln!(
                "router-local: the nats-server at {url} is {version}; JetStream here needs 2.11 or newer"
            );
            let child = start_nats(port)?;
            // SAFETY: set before any other thread reads the environment.
            unsafe { std::env::set_var("NATS_URL", format!("nats://127.0.0.1:{port}")) };
            Ok(Some(child))
        }
        Probe::TooOld(version) => {
            anyhow::bail!(
                "the nats-server at NATS_URL={url} is {version}; 2.11 or newer is required"
            )
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("-h" | "--help") => {
            print!("{HELP}");
            return Ok(());
        }
        Some(other) => {
            eprint!("router-local: unknown argument {other}\n\n{HELP}");
            std::process::exit(2);
        }
    }
    // Before anything is started: a second router-local here stops now.
    let _lock = lock_data_dir()?;
    shared::install_crypto_provider();
    for (key, value) in DEV_DEFAULTS {
        if std::env::var_os(key).is_none() {
            // SAFETY: set before any other thread reads the environment.
            unsafe { std::env::set_var(key, value) };
        }
    }
    let configs = || {
        let ingest =
            ingest::config::IngestConfig::try_parse_from(["ingest"]).unwrap_or_else(|e| e.exit());
        let forwarder = forwarder::config::ForwarderConfig::try_parse_from(["forwarder"])
            .unwrap_or_else(|e| e.exit());
        (ingest, forwarder)
    };
    let (ingest_config, forwarder_config) = configs();
    // Both ports first: a second router-local stops here, before it starts
    // anything, and says which port is taken.
    let ingest_listeners = ingest::app::Listeners::bind(&ingest_config).await?;
    let forwarder_listener = listen(
        "FORWARDER_METRICS_ADDR",
        forwarder_config.forwarder_metrics_addr,
    )
    .await?;
    // Stopped when dropped: on return, on an error below, on a panic.
    let _nats = ensure_nats()?;
    // Again: NATS_URL now names the server started for us, if one was.
    let (ingest_config, forwarder_config) = configs();
    shared::telemetry::init_logging(ingest_config.common.log_format);

    let nats_url = ingest_config.common.nats_url.clone();

    eprintln!(
        "router-local: ingest on http://{} (metrics on http://{}), forwarder health on http://{}, NATS at {nats_url}, database {}",
        ingest_config.ingest_addr,
        ingest_config.ingest_metrics_addr,
        forwarder_config.forwarder_metrics_addr,
        ingest_config.database_url
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(shared::shutdown::on_signal(shutdown.clone()));
    // A closed terminal (SIGHUP) stops it as ctrl-c does.
    let hangup = shutdown.clone();
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    tokio::spawn(async move {
        if hup.recv().await.is_some() {
            eprintln!("router-local: hangup; stopping");
            hangup.cancel();
        }
    });
    let (ingest_result, forwarder_result) = tokio::join!(
        async {
            let r = ingest::app::serve(ingest_config, ingest_listeners, shutdown.clone()).await;
            shutdown.cancel();
            r
        },
        async {
            let r = forwarder::serve(forwarder_config, forwarder_listener, shutdown.clone()).await;
            shutdown.cancel();
            r
        },
    );
    ingest_result?;
    forwarder_result
}
