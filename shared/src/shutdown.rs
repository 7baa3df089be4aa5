//! The one shutdown mechanism: a cancellation token cancelled on SIGTERM or
//! ctrl-c; every task watches it (or a child of it) and stops cleanly. And
//! the one way to wait: [`sleep_unless_stopped`] for a fixed pause (cut
//! short by a wake-up with [`nap`]), [`Backoff`] between tries of something
//! until it works or we stop.

use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Sleeps for `duration`; false when `shutdown` came first.
pub async fn sleep_unless_stopped(shutdown: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(duration) => true,
    }
}

/// Sleeps for `duration` or until `wakeup` is notified, whichever is
/// first; false when `shutdown` came first.
pub async fn nap(shutdown: &CancellationToken, duration: Duration, wakeup: &Notify) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = wakeup.notified() => true,
        _ = tokio::time::sleep(duration) => true,
    }
}

/// The waits between tries of something that keeps failing (NATS not up
/// yet, say): 200 ms, then twice as long each time, up to 5 s.
pub struct Backoff {
    delay: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(200),
        }
    }
}

impl Backoff {
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(5);

    /// How long the next wait is.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Waits before the next try and lengthens the wait after it; false
    /// when `shutdown` comes first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let delay = self.delay;
        self.delay = (self.delay * 2).min(Self::MAX);
        sleep_unless_stopped(shutdown, delay).await
    }

    /// After a success: the next failure waits the shortest time again.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Whether the last tries failed (the wait has grown).
    pub fn is_backing_off(&self) -> bool {
        self.delay > Self::default().delay
    }
}

/// Waits for SIGTERM or ctrl-c, then cancels `token`.
pub async fn on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("can install a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.ok();
    tracing::info!("shutdown requested");
    token.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_double_up_to_the_cap_and_reset_after_a_success() {
        let running = CancellationToken::new();
        let mut backoff = Backoff::default();
        let started = tokio::time::Instant::now();
        for _ in 0..6 {
            assert!(backoff.wait(&running).await);
        }
        // 200 + 400 + 800 + 1600 + 3200 + 5000 ms of (paused) time.
        assert_eq!(started.elapsed(), Duration::from_millis(11_200));
        assert!(backoff.is_backing_off());
        backoff.reset();
        assert!(!backoff.is_backing_off());
        assert_eq!(backoff.delay(), Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn a_nap_ends_on_wakeup_and_a_sleep_on_shutdown() {
        let running = CancellationToken::new();
        let wakeup = std::sync::Arc::new(Notify::new());
        let started = tokio::time::Instant::now();
        let woken = tokio::spawn({
            let (running, wakeup) = (running.clone(), wakeup.clone());
            async move { nap(&running, Duration::from_secs(60), &wakeup).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        wakeup.notify_one();
        assert!(woken.await.unwrap(), "woken, not stopped");
        assert!(started.elapsed() < Duration::from_secs(2));

        let stopped = CancellationToken::new();
        let sleeper = tokio::spawn({
            let stopped = stopped.clone();
            async move { sleep_unless_stopped(&stopped, Duration::from_secs(3600)).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        stopped.cancel();
        assert!(!sleeper.await.unwrap(), "a shutdown ends the sleep");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn waits_double_up_to_the_cap_and_end_with_shutdown() {
        let stopped = CancellationToken::new();
        stopped.cancel();
        let mut backoff = Backoff::default();
        let mut delays = Vec::new();
        for _ in 0..7 {
            delays.push(backoff.delay().as_millis());
            assert!(!backoff.wait(&stopped).await, "a shutdown ends the wait");
        }
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}
