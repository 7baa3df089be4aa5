//! An account's circuit breaker. After `FORWARDER_BREAKER_FAILURES` failed
//! attempts in a row, the way a CRM that is down or overloaded fails
//! (timeouts, connection errors, 408, 5xx), the account's deliveries pause:
//! its messages wait in order on the server instead of spending their
//! retries, and one probe delivery is tried after a wait that doubles with
//! each failed probe, up to a cap. Any answer from the CRM (2xx, or a
//! refusal it means) closes it again.
//!
//! Pure state: the lane owning the account calls it with the time and
//! persists what it returns (the account's entry in the health bucket,
//! alerts), so the rules are tested here without a clock or NATS.

use std::time::Duration;

use chrono::{DateTime, Utc};
use shared::wire::{DeliveryHealth, HealthState};

#[derive(Clone, Copy, Debug)]
pub struct BreakerSettings {
    /// Failed attempts in a row that pause the account.
    pub failures: u32,
    /// The wait before the first probe.
    pub probe_interval: Duration,
    /// The longest wait between probes.
    pub max_probe_interval: Duration,
}

/// What an attempt changed, for the lane to persist and announce.
#[derive(Debug, PartialEq)]
pub enum Change {
    /// Nothing worth writing down.
    None,
    /// A failure was recorded (degraded, or a failed probe while paused).
    Failed,
    /// Failures stopped before the threshold: healthy again.
    Healed,
    /// The threshold was reached: deliveries pause.
    Paused,
    /// A pause ended.
    Resumed {
        cause: &'static str,
        paused_since: DateTime<Utc>,
    },
}

pub struct Breaker {
    settings: BreakerSettings,
    health: DeliveryHealth,
}

impl Breaker {
    /// Continues from the account's stored health, if any.
    pub fn new(
        settings: BreakerSettings,
        stored: Option<DeliveryHealth>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            settings,
            health: stored.unwrap_or_else(|| DeliveryHealth::healthy(now)),
        }
    }

    pub fn health(&self) -> &DeliveryHealth {
        &self.health
    }

    pub fn state(&self) -> HealthState {
        self.health.state
    }

    pub fn is_paused(&self) -> bool {
        self.health.state == HealthState::Paused
    }

    /// When a paused account's next probe may start.
    pub fn next_probe_at(&self) -> Option<DateTime<Utc>> {
        self.is_paused()
            .then_some(self.health.next_probe_at)
            .flatten()
    }

    pub fn probe_due(&self, now: DateTime<Utc>) -> bool {
        self.next_probe_at().is_some_and(|at| at <= now)
    }

    /// When the 24 h retry limit of a message published at `published`
    /// starts: time spent paused does not count.
    pub fn retry_window_start(&self, published: DateTime<Utc>) -> DateTime<Utc> {
        self.health
            .resumed_at
            .map_or(published, |r| r.max(published))
    }

    /// The CRM answered: delivered, or refused in a way that is final.
    pub fn answered(&mut self, now: DateTime<Utc>, probe: bool) -> Change {
        match self.health.state {
            HealthState::Healthy => Change::None,
            HealthState::Degraded => {
                self.heal(now);
                Change::Healed
            }
            HealthState::Paused => {
                let paused_since = self.health.since;
                self.heal(now);
                self.health.resumed_at = Some(now);
                Change::Resumed {
                    cause: if probe {
                        "probe_succeeded"
                    } else {
                        "delivery_succeeded"
                    },
                    paused_since,
                }
            }
        }
    }

    /// An attempt failed the way a down or overloaded CRM fails.
    pub fn failed(&mut self, now: DateTime<Utc>, error: &str, probe: bool) -> Change {
        let settings = self.settings;
        let h = &mut self.health;
        h.consecutive_failures = h.consecutive_failures.saturating_add(1);
        h.last_error = Some(error.to_owned());
        h.last_error_at = Some(now);
        match h.state {
            HealthState::Paused => {
                if probe {
                    h.failed_probes = h.failed_probes.saturating_add(1);
                    h.next_probe_at = Some(now + probe_wait(&settings, h.failed_probes));
                }
                Change::Failed
            }
            _ if h.consecutive_failures >= self.settings.failures => {
                h.state = HealthState::Paused;
                h.since = now;
                h.failed_probes = 0;
                h.next_probe_at = Some(now + probe_wait(&settings, 0));
                Change::Paused
            }
            HealthState::Healthy => {
                h.state = HealthState::Degraded;
                h.since = now;
                Change::Failed
            }
            HealthState::Degraded => Change::Failed,
        }
    }

    /// An operator resumed the account's deliveries at `at`: a pause of the
    /// breaker that began before that ends, and the failure count restarts.
    pub fn operator_resumed(&mut self, at: DateTime<Utc>) -> Change {
        match self.health.state {
            HealthState::Paused if self.health.since <= at => {
                let paused_since = self.health.since;
                self.heal(at);
                self.health.resumed_at = Some(at);
                Change::Resumed {
                    cause: "operator",
                    paused_since,
                }
            }
            HealthState::Degraded if self.health.since <= at => {
                self.heal(at);
                Change::Healed
            }
            _ => Change::None,
        }
    }

    fn heal(&mut self, now: DateTime<Utc>) {
        let h = &mut self.health;
        h.state = HealthState::Healthy;
        h.since = now;
        h.consecutive_failures = 0;
        h.failed_probes = 0;
        h.next_probe_at = None;
    }
}

/// The wait before the probe after `failed_probes` failed ones.
fn probe_wait(settings: &BreakerSettings, failed_probes: u32) -> chrono::TimeDelta {
    let doubled = settings
        .probe_interval
        .saturating_mul(2u32.saturating_pow(failed_probes.min(20)));
    let wait = doubled.min(settings.max_probe_interval);
    chrono::TimeDelta::from_std(wait).unwrap_or(chrono::TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> (Breaker, DateTime<Utc>) {
        let now = Utc::now();
        let settings = BreakerSettings {
            failures: 3,
            probe_interval: Duration::from_secs(10),
            max_probe_interval: Duration::from_secs(60),
        };
        (Breaker::new(settings, None, now), now)
    }

    fn secs(n: i64) -> chrono::TimeDelta {
        chrono::TimeDelta::seconds(n)
    }

    #[test]
    fn failures_in_a_row_degrade_then_pause() {
        let (mut b, t) = breaker();
        assert_eq!(b.failed(t, "http_503", false), Change::Failed);
        assert_eq!(b.state(), HealthState::Degraded);
        assert_eq!(b.failed(t, "timeout", false), Change::Failed);
        assert_eq!(b.failed(t + secs(1), "connect", false), Change::Paused);
        assert!(b.is_paused());
        let h = b.health();
        assert_eq!(h.consecutive_failures, 3);
        assert_eq!(h.last_error.as_deref(), Some("connect"));
        assert_eq!(h.since, t + secs(1));
        assert_eq!(h.next_probe_at, Some(t + secs(11)));
        assert!(!b.probe_due(t + secs(10)));
        assert!(b.probe_due(t + secs(11)));
    }

    #[test]
    fn an_answer_in_between_starts_the_count_again() {
        let (mut b, t) = breaker();
        b.failed(t, "http_500", false);
        b.failed(t, "http_500", false);
        assert_eq!(b.answered(t, false), Change::Healed);
        assert_eq!(b.state(), HealthState::Healthy);
        b.failed(t, "http_500", false);
        b.failed(t, "http_500", false);
        assert_eq!(b.state(), HealthState::Degraded, "two, not four, in a row");
        assert_eq!(b.answered(t, false), Change::Healed);
        assert_eq!(b.answered(t, false), Change::None);
    }

    #[test]
    fn failed_probes_double_the_wait_up_to_the_cap() {
        let (mut b, t) = breaker();
        for _ in 0..3 {
            b.failed(t, "http_503", false);
        }
        let mut now = t;
        let mut waits = Vec::new();
        for _ in 0..4 {
            now = b.next_probe_at().unwrap();
            assert_eq!(b.failed(now, "http_503", true), Change::Failed);
            waits.push((b.next_probe_at().unwrap() - now).num_seconds());
        }
        assert_eq!(waits, [20, 40, 60, 60]);
        // A failure of a delivery started before the pause moves no probe.
        let next = b.next_probe_at();
        b.failed(now, "timeout", false);
        assert_eq!(b.next_probe_at(), next);
    }

    #[test]
    fn a_successful_probe_resumes_and_moves_the_retry_window() {
        let (mut b, t) = breaker();
        for _ in 0..3 {
            b.failed(t, "http_503", false);
        }
        let published = t - secs(3600);
        assert_eq!(b.retry_window_start(published), published);
        let back = t + secs(7200);
        assert_eq!(
            b.answered(back, true),
            Change::Resumed {
                cause: "probe_succeeded",
                paused_since: t
            }
        );
        assert_eq!(b.state(), HealthState::Healthy);
        assert_eq!(b.health().consecutive_failures, 0);
        assert_eq!(b.retry_window_start(published), back);
        assert_eq!(b.retry_window_start(back + secs(5)), back + secs(5));
    }

    #[test]
    fn an_operator_resume_ends_only_a_pause_that_began_before_it() {
        let (mut b, t) = breaker();
        for _ in 0..3 {
            b.failed(t, "http_503", false);
        }
        assert_eq!(b.operator_resumed(t - secs(1)), Change::None);
        assert!(b.is_paused());
        assert!(matches!(
            b.operator_resumed(t + secs(1)),
            Change::Resumed {
                cause: "operator",
                ..
            }
        ));
        assert!(!b.is_paused());
    }
}
