//! The JetStream layout, declared once. Both services call these at start so
//! that whichever starts first creates the streams and the bucket with the
//! settings the README documents; a later start updates them to the same.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PriorityPolicy, pull};
use async_nats::jetstream::{self, kv, stream};

use crate::ids::AccountId;
use crate::subjects::Subjects;

/// How long inbound messages and outcomes stay in their streams for
/// inspection, replay and late consumers.
pub const STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// A republish of the same `Nats-Msg-Id` within this window is dropped by
/// JetStream. Longer than any outbox retry gap we expect in practice.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(3600);

pub fn inbound_stream_config(subjects: &Subjects) -> stream::Config {
    stream::Config {
        name: subjects.inbound_stream(),
        description: Some("Inbound Instagram messages, one subject per account".into()),
        subjects: vec![subjects.inbound_all()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: STREAM_MAX_AGE,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

pub fn delivery_stream_config(subjects: &Subjects) -> stream::Config {
    stream::Config {
        name: subjects.delivery_stream(),
        description: Some("Delivery outcomes published by forwarders".into()),
        subjects: vec![subjects.delivery_all()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: STREAM_MAX_AGE,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

pub fn alerts_stream_config(subjects: &Subjects) -> stream::Config {
    stream::Config {
        name: subjects.alerts_stream(),
        description: Some(
            "Alerts for operators: accounts whose deliveries paused or resumed".into(),
        ),
        subjects: vec![subjects.alerts_all()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        max_age: STREAM_MAX_AGE,
        ..Default::default()
    }
}

pub fn accounts_bucket_config(subjects: &Subjects) -> kv::Config {
    kv::Config {
        bucket: subjects.accounts_bucket(),
        description: "Per-account routing for forwarders, kept by ingest".into(),
        history: 1,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

pub fn health_bucket_config(subjects: &Subjects) -> kv::Config {
    kv::Config {
        bucket: subjects.health_bucket(),
        description: "Per-account CRM health (circuit breaker), kept by the forwarders".into(),
        history: 1,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

pub fn holds_bucket_config(subjects: &Subjects) -> kv::Config {
    kv::Config {
        bucket: subjects.holds_bucket(),
        description: "Conversations held behind a message waiting for a retry".into(),
        history: 1,
        storage: stream::StorageType::File,
        // A hold outliving its message (gone from the stream) is useless.
        max_age: STREAM_MAX_AGE,
        ..Default::default()
    }
}

/// How long a forwarder's heartbeat stays in the bucket after it stops: a
/// heartbeat that stopped without a goodbye marks a crashed forwarder.
pub const FORWARDER_RECORD_AGE: Duration = Duration::from_secs(3600);

pub fn forwarders_bucket_config(subjects: &Subjects) -> kv::Config {
    kv::Config {
        bucket: subjects.forwarders_bucket(),
        description: "Heartbeats of the running forwarders, which share the accounts".into(),
        history: 1,
        storage: stream::StorageType::File,
        max_age: FORWARDER_RECORD_AGE,
        ..Default::default()
    }
}

/// The durable consumer ingest records delivery outcomes with. Several
/// ingests share it; recording an outcome twice is harmless.
pub fn outcome_consumer(subjects: &Subjects) -> pull::Config {
    pull::Config {
        durable_name: Some(subjects.outcome_consumer()),
        description: Some("ingest records delivery outcomes on messages".into()),
        filter_subject: subjects.delivery_all(),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 1000,
        ..Default::default()
    }
}

/// The priority group every forwarder pulls an account's consumer with.
pub const DELIVERY_GROUP: &str = "deliveries";

/// How long the server keeps an account pinned to a forwarder that stopped
/// pulling it without handing it back (a crash): the backstop behind the
/// forwarders' own hand-over.
pub const PIN_TTL: Duration = Duration::from_secs(30);

/// One account's budget of delivered but unacknowledged messages: in
/// flight, waiting for a retry, or held behind an earlier message of their
/// conversation. Reaching it stops that account only.
pub const ACCOUNT_MAX_ACK_PENDING: i64 = 1000;

/// One account's durable consumer on the inbound stream. Every forwarder
/// pulls it in the [`DELIVERY_GROUP`] with the pinned-client policy, so the
/// server hands its messages to one forwarder at a time: that forwarder
/// keeps the account's conversations in order and its deliveries within
/// its cap. `ack_wait` is above the CRM timeout (each attempt starts with a
/// progress ack); after a crash the messages come back within it.
pub fn account_consumer_config(
    subjects: &Subjects,
    account: &AccountId,
    ack_wait: Duration,
    deliver_policy: DeliverPolicy,
) -> pull::Config {
    pull::Config {
        durable_name: Some(subjects.account_consumer(account)),
        description: Some(format!(
            "Deliveries to the CRM of {account}, by one forwarder at a time"
        )),
        filter_subject: subjects.inbound(account),
        deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        max_ack_pending: ACCOUNT_MAX_ACK_PENDING,
        priority_policy: PriorityPolicy::PinnedClient,
        priority_groups: vec![DELIVERY_GROUP.to_owned()],
        priority_timeout: PIN_TTL,
        ..Default::default()
    }
}

/// Creates (or updates to the documented settings) the three streams, each
/// with `replicas` replicas.
pub async fn ensure_streams(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: usize,
) -> anyhow::Result<()> {
    for config in [
        inbound_stream_config(subjects),
        delivery_stream_config(subjects),
        alerts_stream_config(subjects),
    ] {
        // `get_stream` reads the stream's info; no second request for it.
        if let Ok(found) = js.get_stream(&config.name).await
            && found.cached_info().config.num_replicas != replicas
        {
            tracing::warn!(
                stream = %config.name,
                from = found.cached_info().config.num_replicas,
                to = replicas,
                "stream replicas differ from ROUTER_STREAM_REPLICAS: changing them in place"
            );
        }
        let name = config.name.clone();
        js.create_or_update_stream(stream::Config {
            num_replicas: replicas,
            ..config
        })
        .await
        .map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
    }
    Ok(())
}

/// Opens a bucket with `replicas` replicas, creating it when missing; one
/// found with another count is changed in place (or, when this NATS user
/// may not, logged with the command that does it).
pub async fn bucket(
    js: &jetstream::Context,
    config: kv::Config,
    replicas: usize,
) -> anyhow::Result<kv::Store> {
    let store = match js.get_key_value(&config.bucket).await {
        Ok(store) => store,
        Err(_) => {
            return Ok(js
                .create_key_value(kv::Config {
                    num_replicas: replicas,
                    ..config
                })
                .await?);
        }
    };
    // The store read its stream's info when it was opened.
    let info = store.stream.cached_info();
    if info.config.num_replicas != replicas {
        let stream = &store.stream_name;
        let from = info.config.num_replicas;
        let changed = stream::Config {
            num_replicas: replicas,
            ..info.config.clone()
        };
        match js.update_stream(changed).await {
            Ok(_) => tracing::warn!(
                bucket = %config.bucket,
                from,
                to = replicas,
                "bucket replicas differed from ROUTER_STREAM_REPLICAS: changed in place"
            ),
            Err(e) => tracing::error!(
                bucket = %config.bucket,
                from,
                to = replicas,
                error = %e,
                "bucket replicas differ from ROUTER_STREAM_REPLICAS and could not be changed: run `nats stream edit {stream} --replicas {replicas}`"
            ),
        }
    }
    Ok(store)
}

/// What a service needs once the layout is in place.
pub struct Ready {
    pub inbound: jetstream::stream::Stream,
    pub accounts: kv::Store,
    pub health: kv::Store,
    pub holds: kv::Store,
    pub forwarders: kv::Store,
}

/// Who sets up what. Ingest creates (or updates) the streams and every
/// bucket; a forwarder creates only the buckets it writes (CRM health,
/// conversation holds, heartbeats) and finds the rest, waiting until ingest
/// has made them. So its NATS user needs no right to change the streams or
/// the accounts bucket (README, Security).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Ingest,
    Forwarder,
}

/// Sets up the layout for `role`, retrying with backoff (200 ms up to 5 s)
/// until NATS answers and, for a forwarder, until ingest has created what it
/// finds; `None` when `shutdown` comes first. A server too old for this
/// client is named in the log.
pub async fn set_up_until_ready(
    js: &jetstream::Context,
    subjects: &Subjects,
    role: Role,
    replicas: usize,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Ready> {
    let mut backoff = crate::shutdown::Backoff::default();
    loop {
        let attempt = async {
            let accounts = if role == Role::Ingest {
                ensure_streams(js, subjects, replicas).await?;
                bucket(js, accounts_bucket_config(subjects), replicas).await?
            } else {
                js.get_key_value(subjects.accounts_bucket())
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!("accounts bucket not there yet (ingest creates it): {e}")
                    })?
            };
            anyhow::Ok(Ready {
                inbound: js.get_stream(subjects.inbound_stream()).await?,
                accounts,
                health: bucket(js, health_bucket_config(subjects), replicas).await?,
                holds: bucket(js, holds_bucket_config(subjects), replicas).await?,
                forwarders: bucket(js, forwarders_bucket_config(subjects), replicas).await?,
            })
        };
        match attempt.await {
            Ok(ready) => {
                tracing::info!(
                    inbound = %subjects.inbound_stream(),
                    delivery = %subjects.delivery_stream(),
                    alerts = %subjects.alerts_stream(),
                    "jetstream streams and buckets ready"
                );
                return Some(ready);
            }
            Err(e) => {
                if let Some(why) = unsupported_server(&js.client()) {
                    tracing::error!("{why}; upgrade it or point NATS_URL at a newer one");
                }
                tracing::warn!(error = %e, retry_in_ms = backoff.delay().as_millis() as u64, "jetstream set-up failed");
            }
        }
        if !backoff.wait(shutdown).await {
            return None;
        }
    }
}

/// Publishes an alert on `<prefix>.alerts.crm.<account_id>` (kept in the
/// alerts stream), waiting a bounded time for JetStream's acknowledgement.
pub async fn publish_crm_alert(
    js: &jetstream::Context,
    subjects: &Subjects,
    account: &AccountId,
    alert: &crate::wire::CrmAlert,
) {
    publish_alert(js, subjects.crm_alert(account), account, alert).await;
}

/// Publishes an alert on `<prefix>.alerts.credentials.<account_id>`.
pub async fn publish_credentials_alert(
    js: &jetstream::Context,
    subjects: &Subjects,
    account: &AccountId,
    alert: &crate::wire::CredentialsAlert,
) {
    publish_alert(js, subjects.credentials_alert(account), account, alert).await;
}

async fn publish_alert(
    js: &jetstream::Context,
    subject: String,
    account: &AccountId,
    alert: &impl serde::Serialize,
) {
    let Ok(body) = serde_json::to_vec(alert) else {
        return;
    };
    let published = async {
        js.publish(subject, body.into()).await?.await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(5), published).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(account_id = %account, error = %e, "alert not published"),
        Err(_) => tracing::warn!(account_id = %account, "alert not acknowledged"),
    }
}

/// Connects to NATS, retrying forever in the background once connected, and
/// naming the connection after the service for `nats server report connections`.
/// Replies come on `_INBOX_<name>.>`, so a NATS user may subscribe to its own
/// replies only (README, Security). Credentials: a user and password in
/// `NATS_URL`, a creds file or an nkey seed file; TLS with `tls://` or a CA
/// file. A file's problem names its setting and path, never its content.
pub async fn connect(
    common: &crate::config::CommonConfig,
    name: &str,
) -> anyhow::Result<async_nats::Client> {
    use anyhow::Context as _;
    let url = common.nats_url.as_str();
    let mut options = async_nats::ConnectOptions::new();
    if let Some((user, password)) = url_login(url) {
        options = options.user_and_password(user, password);
    }
    if let Some(path) = &common.nats_creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| anyhow::anyhow!("NATS_CREDS_FILE {}: {}", path.display(), e.kind()))?;
    }
    if let Some(path) = &common.nats_nkey_seed_file {
        let seed = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("NATS_NKEY_SEED_FILE {}: {}", path.display(), e.kind()))?;
        let seed = seed.trim();
        nkeys::KeyPair::from_seed(seed)
            .with_context(|| format!("NATS_NKEY_SEED_FILE {}: not an nkey seed", path.display()))?;
        options = options.nkey(seed.to_owned());
    }
    if let Some(path) = &common.nats_tls_ca_file {
        options = options
            .add_root_certificates(path.clone())
            .require_tls(true);
    }
    let client = options
        .event_callback(|event| async move { log_event(event) })
        .reconnect_to_server_callback({
            let warned = Arc::new(std::sync::Mutex::new(HashMap::new()));
            move |servers, _| {
                warn_unreachable(&servers, &warned);
                std::future::ready(None)
            }
        })
        .name(name)
        .custom_inbox_prefix(format!("_INBOX_{name}"))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .connect(nats_urls(url))
        .await?;
    Ok(client)
}

/// How often a NATS server that stays unreachable is reported again.
const UNREACHABLE_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Called before each connection attempt with every server's last error:
/// a server that just failed is reported at WARN with its address (never
/// its credentials) and the cause, then at most once a minute while it
/// stays unreachable. async-nats itself only says "IO error" at INFO.
fn warn_unreachable(
    servers: &[async_nats::Server],
    warned: &std::sync::Mutex<HashMap<String, (usize, std::time::Instant)>>,
) {
    let mut warned = warned.lock().unwrap_or_else(|e| e.into_inner());
    for server in servers {
        let address = crate::config::redact(server.addr.as_url_str());
        let Some(cause) = server
            .last_error
            .as_deref()
            .filter(|_| server.failed_attempts > 0)
        else {
            warned.remove(&address);
            continue;
        };
        let due = match warned.get(&address) {
            None => true,
            Some((attempts, at)) => {
                server.failed_attempts < *attempts || at.elapsed() >= UNREACHABLE_REPORT_EVERY
            }
        };
        if due {
            tracing::warn!(
                server = %address,
                failed_attempts = server.failed_attempts,
                cause = %cause,
                "cannot connect to NATS; retrying"
            );
            warned.insert(address, (server.failed_attempts, std::time::Instant::now()));
        } else if let Some(entry) = warned.get_mut(&address) {
            entry.0 = server.failed_attempts;
        }
    }
}

/// async-nats's connection events, at the level an operator needs.
fn log_event(event: async_nats::Event) {
    use async_nats::Event;
    match event {
        Event::Connected => tracing::info!("connected to NATS"),
        Event::Disconnected => tracing::warn!("lost the NATS connection; reconnecting"),
        Event::LameDuckMode => {
            tracing::warn!("the NATS server is shutting down (lame duck mode); moving to another")
        }
        Event::SlowConsumer(sid) => tracing::warn!(subscription = sid, "slow NATS consumer"),
        Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
        // Each failed attempt; the server and cause come from
        // `warn_unreachable`, which knows which server it was.
        Event::ClientError(e) => tracing::debug!(error = %e, "NATS client error"),
        Event::Draining | Event::Closed => tracing::info!(%event, "NATS connection"),
    }
}

/// The servers of `NATS_URL`: one, or several comma-separated (a cluster).
pub fn nats_urls(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// The user and password in a NATS URL (the first of a list that has one),
/// percent-decoded: async-nats leaves them in the URL unused.
pub fn url_login(urls: &str) -> Option<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    urls.split(',').find_map(|one| {
        let url = url::Url::parse(one.trim()).ok()?;
        (!url.username().is_empty())
            .then(|| (decode(url.username()), decode(url.password().unwrap_or(""))))
    })
}

/// The oldest nats-server whose JetStream API this build speaks (pinned
/// pull consumers came with 2.11).
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 11);

/// Whether a server version string (`2.10.22`) is new enough.
pub fn server_version_supported(version: &str) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= MIN_SERVER_VERSION,
        _ => true,
    }
}

/// A clear explanation when the connected server is too old, else `None`.
pub fn unsupported_server(client: &async_nats::Client) -> Option<String> {
    let version = client.server_info().version;
    (!version.is_empty() && !server_version_supported(&version)).then(|| {
        format!(
            "nats-server {version} is too old: {}.{} or newer is required",
            MIN_SERVER_VERSION.0, MIN_SERVER_VERSION.1
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_is_read_from_the_url_and_decoded() {
        assert_eq!(url_login("nats://127.0.0.1:4222"), None);
        assert_eq!(
            url_login("nats://ingest:p%40ss%2Fword@nats:4222"),
            Some(("ingest".into(), "p@ss/word".into()))
        );
        assert_eq!(
            url_login("nats://a:4222, nats://fwd:pw@b:4222"),
            Some(("fwd".into(), "pw".into()))
        );
    }

    #[test]
    fn versions_before_2_11_are_refused() {
        assert!(!server_version_supported("2.9.10"));
        assert!(!server_version_supported("2.10.22"));
        assert!(server_version_supported("2.11.0"));
        assert!(server_version_supported("2.15.1"));
        assert!(server_version_supported("3.0.0"));
    }
}
