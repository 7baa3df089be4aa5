//! The JetStream layout, declared once. Both services call these at start so
//! that whichever starts first creates the streams and the bucket with the
//! settings the README documents; a later start updates them to the same.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

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

pub fn accounts_bucket_config(subjects: &Subjects) -> kv::Config {
    kv::Config {
        bucket: subjects.accounts_bucket(),
        description: "Per-account routing for forwarders, kept by ingest".into(),
        history: 1,
        storage: stream::StorageType::File,
        ..Default::default()
    }
}

/// Creates (or updates to the documented settings) both streams.
pub async fn ensure_streams(js: &jetstream::Context, subjects: &Subjects) -> anyhow::Result<()> {
    js.create_or_update_stream(inbound_stream_config(subjects))
        .await?;
    js.create_or_update_stream(delivery_stream_config(subjects))
        .await?;
    Ok(())
}

/// Opens the accounts bucket, creating it when missing.
pub async fn accounts_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> anyhow::Result<kv::Store> {
    match js.get_key_value(subjects.accounts_bucket()).await {
        Ok(store) => Ok(store),
        Err(_) => Ok(js
            .create_key_value(accounts_bucket_config(subjects))
            .await?),
    }
}

/// What a service needs once the layout is in place.
pub struct Ready {
    pub inbound: jetstream::stream::Stream,
    pub accounts: kv::Store,
}

/// Creates the streams and the bucket, retrying with backoff (200 ms up to
/// 5 s) until NATS answers; `None` when `shutdown` comes first. A server too
/// old for this client is named in the log.
pub async fn set_up_until_ready(
    js: &jetstream::Context,
    subjects: &Subjects,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<Ready> {
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            ensure_streams(js, subjects).await?;
            let inbound = js.get_stream(subjects.inbound_stream()).await?;
            let accounts = accounts_bucket(js, subjects).await?;
            anyhow::Ok(Ready { inbound, accounts })
        };
        match attempt.await {
            Ok(ready) => {
                tracing::info!(
                    inbound = %subjects.inbound_stream(),
                    delivery = %subjects.delivery_stream(),
                    bucket = %subjects.accounts_bucket(),
                    "jetstream streams and accounts bucket ready"
                );
                return Some(ready);
            }
            Err(e) => {
                if let Some(why) = unsupported_server(&js.client()) {
                    tracing::error!("{why}; upgrade it or point NATS_URL at a newer one");
                }
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "jetstream set-up failed");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Connects to NATS, retrying forever in the background once connected, and
/// naming the connection after the service for `nats server report connections`.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let client = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    Ok(client)
}

/// The oldest nats-server whose JetStream API this build speaks.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 10);

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
    fn versions_before_2_10_are_refused() {
        assert!(!server_version_supported("2.9.10"));
        assert!(server_version_supported("2.10.0"));
        assert!(server_version_supported("2.15.1"));
        assert!(server_version_supported("3.0.0"));
    }
}
