//! When to try again. Delays come from `FORWARDER_RETRY_SCHEDULE`, get ±20 %
//! jitter so a recovering CRM is not hit by every message at once, and a
//! CRM's `Retry-After` is honoured when it asks for longer (up to a bound).

use std::time::Duration;

use rand::Rng as _;

/// A message older than this is not retried any more.
pub const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// The longest `Retry-After` we honour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

#[derive(Clone, Debug, PartialEq)]
pub struct RetrySchedule {
    delays: Vec<Duration>,
}

impl RetrySchedule {
    pub fn new(delays: Vec<Duration>) -> Self {
        Self { delays }
    }

    /// How many retries follow the first attempt.
    pub fn retries(&self) -> u32 {
        self.delays.len() as u32
    }

    /// What follows failed attempt number `attempt` (1-based) of a message
    /// that entered the stream `age` ago: the delay before the next attempt,
    /// or `None` for a dead letter (retries used up, or older than 24 h).
    pub fn next_retry(
        &self,
        attempt: u32,
        age: Duration,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        if age > MAX_AGE {
            return None;
        }
        self.delay_after(attempt, retry_after)
    }

    /// The delay after failed attempt number `attempt` (1-based), or `None`
    /// when the retries are used up.
    pub fn delay_after(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let base = *self.delays.get(attempt.checked_sub(1)? as usize)?;
        let jittered = base.mul_f64(rand::rng().random_range(0.8..=1.2));
        let wanted = retry_after
            .map(|r| r.min(MAX_RETRY_AFTER))
            .unwrap_or_default();
        Some(jittered.max(wanted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_follow_the_schedule_with_bounded_jitter() {
        let s = RetrySchedule::new(vec![Duration::from_secs(10), Duration::from_secs(60)]);
        assert_eq!(s.retries(), 2);
        for _ in 0..100 {
            let d = s.delay_after(1, None).unwrap();
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
        let d = s.delay_after(2, None).unwrap();
        assert!(d >= Duration::from_secs(48) && d <= Duration::from_secs(72));
        assert_eq!(s.delay_after(3, None), None);
        assert_eq!(s.delay_after(0, None), None);
    }

    #[test]
    fn messages_older_than_a_day_are_not_retried() {
        let s = RetrySchedule::new(vec![Duration::from_secs(10); 5]);
        assert!(s.next_retry(1, Duration::from_secs(3600), None).is_some());
        assert!(
            s.next_retry(1, MAX_AGE + Duration::from_secs(1), None)
                .is_none()
        );
        assert!(s.next_retry(6, Duration::ZERO, None).is_none());
    }

    #[test]
    fn retry_after_lengthens_but_is_capped() {
        let s = RetrySchedule::new(vec![Duration::from_secs(1)]);
        assert_eq!(
            s.delay_after(1, Some(Duration::from_secs(120))),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            s.delay_after(1, Some(Duration::from_secs(10 * 3600))),
            Some(MAX_RETRY_AFTER)
        );
    }
}
