//! The whole `main` of a service, the same for ingest and the forwarder:
//! set up the allocator and the runtime, parse the settings (a bad one exits
//! 2 with a one-line message), install the TLS provider, log as configured,
//! run until SIGTERM or ctrl-c.

use std::future::Future;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::config::CommonConfig;

/// A service's settings, which hold the common ones.
pub trait ServiceConfig: clap::Parser {
    fn common(&self) -> &CommonConfig;
}

/// Binds the address of the setting `setting` (`INGEST_ADDR`, say); the
/// error names both when it is taken.
pub async fn listen(
    setting: &str,
    addr: std::net::SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {setting} {addr}: {e}"))
}

/// A service's `main`: one malloc arena (see [`malloc_arenas`]), then
/// tokio's multi-threaded runtime (`TOKIO_WORKER_THREADS` threads, one per
/// core by default) running [`main`].
pub fn start<C, Fut>(name: &'static str, run: impl FnOnce(C, CancellationToken) -> Fut) -> ExitCode
where
    C: ServiceConfig,
    Fut: Future<Output = anyhow::Result<()>>,
{
    set_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(main(name, run)),
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How many malloc arenas the process asks glibc for: one, unless the
/// operator chose (`MALLOC_ARENA_MAX`, or `arena_max` in `GLIBC_TUNABLES`).
///
/// glibc gives every thread that allocates an arena of its own, up to eight
/// per core, and memory freed into one arena serves only that arena's
/// threads; a request is read on one tokio worker and answered on another,
/// its rows written on SQLite's thread. With 256 webhooks in flight ingest
/// peaked at 48-52 MiB with the default arenas and 39-40 MiB with one, at a
/// median throughput 3% lower (README, Performance; two arenas: 47 MiB).
fn malloc_arenas(
    malloc_arena_max: Option<&std::ffi::OsStr>,
    glibc_tunables: Option<&std::ffi::OsStr>,
) -> Option<i32> {
    let chosen = malloc_arena_max.is_some()
        || glibc_tunables.is_some_and(|t| t.to_string_lossy().contains("arena_max"));
    (!chosen).then_some(1)
}

/// Applies [`malloc_arenas`]; before any other thread starts, so that none
/// has taken an arena of its own yet.
fn set_malloc_arenas() {
    let arenas = malloc_arenas(
        std::env::var_os("MALLOC_ARENA_MAX").as_deref(),
        std::env::var_os("GLIBC_TUNABLES").as_deref(),
    );
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if let Some(arenas) = arenas {
        // SAFETY: mallopt only sets one of malloc's parameters; called
        // before the runtime's threads exist.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = arenas;
}

/// Runs the service `name` with `run`; a failure is logged and exits 1.
async fn main<C, Fut>(name: &'static str, run: impl FnOnce(C, CancellationToken) -> Fut) -> ExitCode
where
    C: ServiceConfig,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config: C = crate::config::parse_or_exit(name);
    crate::install_crypto_provider();
    crate::telemetry::init_logging(config.common().log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::shutdown::on_signal(shutdown.clone()));
    match run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, on stderr with the other log lines.
            tracing::error!("{name} failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::malloc_arenas;

    #[test]
    fn one_malloc_arena_unless_the_operator_chose() {
        assert_eq!(malloc_arenas(None, None), Some(1));
        assert_eq!(
            malloc_arenas(None, Some(OsStr::new("glibc.malloc.tcache_count=0"))),
            Some(1)
        );
        assert_eq!(malloc_arenas(Some(OsStr::new("4")), None), None);
        assert_eq!(
            malloc_arenas(
                None,
                Some(OsStr::new("glibc.malloc.check=0:glibc.malloc.arena_max=8"))
            ),
            None
        );
    }
}
