//! The one shutdown mechanism: a cancellation token cancelled on SIGTERM or
//! ctrl-c; every task watches it (or a child of it) and stops cleanly. And
//! the one way to wait between tries of something until it works or we stop.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

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
        let stopped = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = tokio::time::sleep(self.delay) => false,
        };
        self.delay = (self.delay * 2).min(Self::MAX);
        !stopped
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
