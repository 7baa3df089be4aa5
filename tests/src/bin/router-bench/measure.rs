//! What both scenarios compute from the CRM's deliveries.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use router_tests::Delivery;

/// When each message (by Instagram mid) first reached the CRM.
pub fn first_arrivals(deliveries: &[Delivery]) -> HashMap<&str, Instant> {
    let mut first = HashMap::new();
    for d in deliveries {
        let mid = d.json["instagram_message_id"].as_str().unwrap_or("");
        first.entry(mid).or_insert(d.received_at);
    }
    first
}

/// From Meta's POST to the first arrival, for each message sent, sorted.
pub fn latencies(
    sent_at: &HashMap<String, Instant>,
    arrivals: &HashMap<&str, Instant>,
) -> Vec<Duration> {
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .filter_map(|(mid, at)| sent_at.get(*mid).map(|s| at.saturating_duration_since(*s)))
        .collect();
    latencies.sort();
    latencies
}

/// The `p` quantile (0 to 1) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    sorted
        .get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
}

/// A Prometheus histogram's cumulative buckets, `(upper bound, count)`.
pub fn histogram(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|line| {
            let (le, count) = line.strip_prefix(&prefix)?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// What was counted between two readings of the same histogram.
pub fn histogram_since(after: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, n)| {
            let earlier = before.iter().find(|(b, _)| *b == le).map_or(0.0, |b| b.1);
            (le, n - earlier)
        })
        .collect()
}

/// The share of observations at or under `bound`, if it is a bucket's.
pub fn share_within(buckets: &[(f64, f64)], bound: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    let within = buckets.iter().find(|(le, _)| *le == bound)?.1;
    (total > 0.0).then(|| within / total)
}

/// The smallest bucket bound that holds the `p` quantile.
pub fn quantile_bound(buckets: &[(f64, f64)], p: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    buckets
        .iter()
        .find(|(_, n)| total > 0.0 && *n >= total * p)
        .map(|(le, _)| *le)
}
