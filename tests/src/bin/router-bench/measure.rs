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
