//! The one shutdown mechanism: a cancellation token cancelled on SIGTERM or
//! ctrl-c; every task watches it (or a child of it) and stops cleanly.

use tokio_util::sync::CancellationToken;

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
