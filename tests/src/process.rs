//! Spawning the real binaries, capturing their output, stopping them.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{API_TOKEN, ENCRYPTION_KEY, META_APP_SECRET, META_VERIFY_TOKEN, eventually};

/// The cargo profile directory (`target/debug`) holding the running
/// executable, whether a test (`target/debug/deps/…`) or a binary.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("executable directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    dir.to_path_buf()
}

/// The newest modification time of any file under `dir`.
fn newest_file(dir: &Path) -> Option<std::time::SystemTime> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            if path.is_dir() {
                newest_file(&path)
            } else {
                e.metadata().and_then(|m| m.modified()).ok()
            }
        })
        .max()
}

/// The service binary, refusing one older than its sources: `cargo test -p
/// router-tests` alone does not rebuild the binaries, `cargo test --workspace` does.
fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    let hint = "run the tests with `cargo test --workspace` (it builds the binaries)";
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| panic!("{} is missing: {hint}", path.display()));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest_source = [
        workspace.join(name).join("src"),
        workspace.join("shared").join("src"),
    ]
    .iter()
    .filter_map(|dir| newest_file(dir))
    .max();
    if newest_source.is_some_and(|source| source > built) {
        panic!("{} is older than its sources: {hint}", path.display());
    }
    path
}

/// A free TCP port on loopback, for a service to listen on. Picked below
/// the kernel's ephemeral range (32768 and up on Linux): a port found free
/// there can be taken by any outgoing connection before the service binds
/// it, and the service then fails with "Address already in use" (seen in
/// CI). Ports are handed out in turn from a random start, so tests running
/// at once do not pick the same one.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher as _, Hasher as _};
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const HIGH: u32 = 32_000;
    static NEXT: std::sync::OnceLock<AtomicU32> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let start = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        AtomicU32::new(start as u32 % (HIGH - LOW))
    });
    loop {
        let port = (LOW + next.fetch_add(1, Ordering::Relaxed) % (HIGH - LOW)) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running child process whose stdout and stderr are captured.
pub struct Service {
    pub name: &'static str,
    pub addr: SocketAddr,
    child: Option<Child>,
    output: Arc<Mutex<Vec<u8>>>,
    command: Vec<(String, String)>,
}

impl Service {
    pub async fn ingest(nats_url: &str, database_url: &str, extra: &[(&str, &str)]) -> Self {
        let service = Self::ingest_started(nats_url, database_url, extra).await;
        service.wait_healthy("/readyz").await;
        service
    }

    /// Ingest serving, without waiting for NATS: for a NATS that is down.
    pub async fn ingest_started(
        nats_url: &str,
        database_url: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let port = free_port();
        let db = database_url.to_owned();
        let mut env = vec![
            ("NATS_URL", nats_url.to_owned()),
            ("DATABASE_URL", db),
            ("INGEST_ADDR", format!("127.0.0.1:{port}")),
            ("INGEST_METRICS_ADDR", format!("127.0.0.1:{}", free_port())),
            ("META_APP_SECRET", META_APP_SECRET.to_owned()),
            ("META_VERIFY_TOKEN", META_VERIFY_TOKEN.to_owned()),
            (
                "ROUTER_API_TOKENS",
                format!("other-token-abcdefghijkl,{API_TOKEN}"),
            ),
            ("ROUTER_ENCRYPTION_KEY", ENCRYPTION_KEY.to_owned()),
            // The tests' CRMs listen on loopback.
            ("CRM_ALLOW_PRIVATE_NETWORKS", "true".to_owned()),
            ("RUST_LOG", "info,ingest=debug".to_owned()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let service = Self::spawn("ingest", port, env);
        service.wait_healthy("/healthz").await;
        service
    }

    pub async fn forwarder(nats_url: &str, extra: &[(&str, &str)]) -> Self {
        let service = Self::forwarder_started(nats_url, extra).await;
        service.wait_healthy("/readyz").await;
        // Give the consumer a moment to be created before messages flow.
        eventually(Duration::from_secs(20), "forwarder consuming", || async {
            service.logs().contains("forwarder consuming").then_some(())
        })
        .await;
        service
    }

    /// A forwarder serving its health endpoints, without waiting for NATS.
    pub async fn forwarder_started(nats_url: &str, extra: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut env = vec![
            ("NATS_URL", nats_url.to_owned()),
            ("FORWARDER_METRICS_ADDR", format!("127.0.0.1:{port}")),
            ("CRM_ALLOW_PRIVATE_NETWORKS", "true".to_owned()),
            ("FORWARDER_RETRY_SCHEDULE", "1s,1s,1s".to_owned()),
            ("ROUTER_ENCRYPTION_KEY", ENCRYPTION_KEY.to_owned()),
            ("RUST_LOG", "info,forwarder=debug".to_owned()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let service = Self::spawn("forwarder", port, env);
        service.wait_healthy("/healthz").await;
        service
    }

    fn spawn(name: &'static str, port: u16, env: Vec<(&str, String)>) -> Self {
        let command: Vec<(String, String)> =
            env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let mut service = Self {
            name,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: None,
            output: Arc::new(Mutex::new(Vec::new())),
            command,
        };
        service.start();
        service
    }

    /// Starts the forwarder again after `kill` or `terminate` and waits until
    /// it consumes.
    pub async fn restart_forwarder(&mut self) {
        let before = self.logs().matches("forwarder consuming").count();
        self.start();
        eventually(
            Duration::from_secs(20),
            "restarted forwarder consuming",
            || async {
                (self.logs().matches("forwarder consuming").count() > before).then_some(())
            },
        )
        .await;
    }

    /// The settings, later ones overriding earlier ones; an empty value
    /// leaves the variable unset.
    fn environment(&self) -> std::collections::BTreeMap<&str, &str> {
        let mut env: std::collections::BTreeMap<&str, &str> = self
            .command
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.retain(|_, v| !v.is_empty());
        env
    }

    /// Starts (or restarts) the process with the same settings.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        let mut cmd = Command::new(binary(self.name));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.environment())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.name));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = self.output.clone();
            std::thread::spawn(move || {
                let mut pipe = pipe;
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    output.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        self.child = Some(child);
    }

    /// Waits for `path` to answer 2xx; on timeout, panics with the
    /// service's last log lines, so a failed start says why.
    pub async fn wait_healthy(&self, path: &str) {
        let url = format!("http://{}{}", self.addr, path);
        let client = crate::http_client();
        let limit = Duration::from_secs(30);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => return,
                _ if tokio::time::Instant::now() > deadline => {
                    let logs = self.logs();
                    let tail: Vec<&str> = logs.lines().rev().take(40).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    panic!(
                        "timed out after {limit:?} waiting for {} {path}; its last log lines:\n{}",
                        self.name,
                        tail.join("\n")
                    );
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The value of one of its settings.
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.environment().get(name).copied()
    }

    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `limit` for a clean exit; returns its status.
    /// Waits without blocking the runtime, so servers in the test (the CRM)
    /// keep answering while the process shuts down.
    pub async fn terminate(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- {} output -----\n{}", self.name, self.logs());
        }
    }
}
