//! What operators watch: Prometheus metrics (one recorder per process,
//! rendered by each service's `/metrics`) and the live summary each service
//! publishes on `<prefix>.stats.<service>.<instance>` so that
//! `nats sub 'router.stats.>'` shows throughput with nothing else installed.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// How often the stats summary is published.
pub const STATS_EVERY: Duration = Duration::from_secs(5);

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    PROMETHEUS.get_or_init(|| {
        // From half a millisecond: ingest answers Meta in about one.
        let buckets = [
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .expect("valid buckets")
            .build_recorder();
        let handle = recorder.handle();
        // A second install (tests, the local launcher) keeps the first recorder.
        let _ = metrics::set_global_recorder(recorder);
        let upkeep = handle.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        });
        handle
    })
}

/// What kind of metric a [`Metric`] is.
#[derive(Clone, Copy)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric a service exports, with its help text and, for a labelled one,
/// the label values it starts with.
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub label: Option<(&'static str, &'static [&'static str])>,
}

/// Registers every metric with its help text at start, so `/metrics` lists
/// each one, with `# HELP`, before anything has happened and whatever is
/// unreachable: counters and gauges at 0 (labelled ones under each listed
/// value). A histogram is described and appears with its first observation.
pub fn register(list: &[Metric]) {
    prometheus();
    for m in list {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => {
                metrics::describe_histogram!(m.name, m.help);
                continue;
            }
        }
        let labels: Vec<Vec<(&str, &str)>> = match m.label {
            None => vec![Vec::new()],
            Some((key, values)) => values.iter().map(|v| vec![(key, *v)]).collect(),
        };
        for set in labels {
            let labels: Vec<metrics::Label> = set
                .into_iter()
                .map(|(k, v)| metrics::Label::new(k, v))
                .collect();
            match m.kind {
                Kind::Counter => metrics::counter!(m.name, labels).increment(0),
                Kind::Gauge => metrics::gauge!(m.name, labels).increment(0.0),
                Kind::Histogram => {}
            }
        }
    }
}

/// Renders the metrics in Prometheus' text format.
pub fn render() -> String {
    prometheus().render()
}

/// This process's name in stats subjects: host and pid, as a subject token.
pub fn instance_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .unwrap_or_else(|| "host".into());
    let token: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{token}-{}", std::process::id())
}

/// Running totals behind the stats summary.
#[derive(Default)]
pub struct Throughput {
    /// Messages taken in (saved by ingest; fetched by a forwarder).
    pub received: AtomicU64,
    /// Messages passed on (published by ingest; delivered by a forwarder).
    pub sent: AtomicU64,
    /// Failures (publish errors; failed delivery attempts).
    pub errors: AtomicU64,
    /// Work waiting (ingest's outbox; the forwarders' consumer).
    pub pending: AtomicU64,
}

impl Throughput {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Serialize)]
struct Summary<'a> {
    service: &'a str,
    instance: &'a str,
    at: String,
    interval_secs: f64,
    in_per_sec: f64,
    out_per_sec: f64,
    errors_per_sec: f64,
    in_total: u64,
    out_total: u64,
    errors_total: u64,
    pending: u64,
}

/// Publishes a summary every [`STATS_EVERY`] on `<prefix>.stats.<service>.<instance>`
/// until shutdown. Core NATS, not JetStream: it is for watching, not keeping.
pub async fn publish_stats(
    client: async_nats::Client,
    subject: String,
    service: &'static str,
    instance: String,
    totals: std::sync::Arc<Throughput>,
    shutdown: CancellationToken,
) {
    let mut last = (0u64, 0u64, 0u64);
    let mut last_at = Instant::now();
    loop {
        if !crate::shutdown::sleep_unless_stopped(&shutdown, STATS_EVERY).await {
            return;
        }
        let now = (
            totals.received.load(Ordering::Relaxed),
            totals.sent.load(Ordering::Relaxed),
            totals.errors.load(Ordering::Relaxed),
        );
        let secs = last_at.elapsed().as_secs_f64().max(0.001);
        let rate = |a: u64, b: u64| ((a - b) as f64 / secs * 10.0).round() / 10.0;
        let summary = Summary {
            service,
            instance: &instance,
            at: crate::wire::rfc3339(chrono::Utc::now()),
            interval_secs: (secs * 10.0).round() / 10.0,
            in_per_sec: rate(now.0, last.0),
            out_per_sec: rate(now.1, last.1),
            errors_per_sec: rate(now.2, last.2),
            in_total: now.0,
            out_total: now.1,
            errors_total: now.2,
            pending: totals.pending.load(Ordering::Relaxed),
        };
        if let Ok(body) = serde_json::to_vec(&summary) {
            let _ = client.publish(subject.clone(), body.into()).await;
        }
        last = now;
        last_at = Instant::now();
    }
}
