//! A connection taken from its pool once and kept between uses.
//!
//! sqlx tests a connection each time it goes back to its pool (a `ping`,
//! also to finish what a cancelled query left behind): on PostgreSQL a
//! round trip, on SQLite a hand-off to the connection's thread and back.
//! The write turns' connection is used for every save, hundreds of times a
//! second, and that ping came after each: two more wake-ups on each side
//! for every message, sometimes ahead of the webhook's answer, and on
//! SQLite the next write turn waited for it (its pool has one connection).
//!
//! Here the connection stays out of the pool while its uses succeed: a use
//! that ends well says so ([`KeptGuard::keep`]); any other end (an error, a
//! future dropped mid-query) hands it back to the pool as before, pinged
//! and closed if broken, and the next use takes a connection from the
//! pool again. One use at a time: a second waits for the first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;

pub(super) struct KeptConnection<DB: sqlx::Database> {
    pool: sqlx::Pool<DB>,
    slot: Arc<tokio::sync::Mutex<Option<Kept<DB>>>>,
    /// A kept connection idle this long is pinged before it is used (a
    /// server restarted or a proxy's timeout may have cut it); `None` for a
    /// file, which cannot hang up.
    ping_if_idle_for: Option<Duration>,
}

struct Kept<DB: sqlx::Database> {
    conn: PoolConnection<DB>,
    last_used: Instant,
    /// A use left a transaction open (it returned early or was dropped):
    /// rolled back before the next use, as sqlx does for its own
    /// transactions.
    roll_back: bool,
}

/// One use of the kept connection.
pub(super) struct KeptGuard<DB: sqlx::Database> {
    slot: tokio::sync::OwnedMutexGuard<Option<Kept<DB>>>,
    kept: bool,
}

impl<DB: sqlx::Database> KeptConnection<DB> {
    pub(super) fn new(pool: sqlx::Pool<DB>, ping_if_idle_for: Option<Duration>) -> Self {
        Self {
            pool,
            slot: Arc::default(),
            ping_if_idle_for,
        }
    }

    /// The kept connection, once the use before has ended; a connection
    /// from the pool when none is kept.
    pub(super) async fn take(&self) -> Result<KeptGuard<DB>, sqlx::Error>
    where
        for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    {
        let mut slot = self.slot.clone().lock_owned().await;
        if let Some(kept) = slot.as_mut()
            && kept.roll_back
        {
            match sqlx::Executor::execute(&mut *kept.conn, "ROLLBACK").await {
                Ok(_) => kept.roll_back = false,
                Err(_) => close(&mut slot),
            }
        }
        if let (Some(kept), Some(idle)) = (slot.as_mut(), self.ping_if_idle_for)
            && kept.last_used.elapsed() >= idle
            && sqlx::Connection::ping(&mut *kept.conn).await.is_err()
        {
            close(&mut slot);
        }
        if slot.is_none() {
            *slot = Some(Kept {
                conn: self.pool.acquire().await?,
                last_used: Instant::now(),
                roll_back: false,
            });
        }
        Ok(KeptGuard { slot, kept: false })
    }
}

impl<DB: sqlx::Database> KeptGuard<DB> {
    /// This use ended well: the connection stays out of the pool for the
    /// next one.
    pub(super) fn keep(&mut self) {
        self.kept = true;
    }

    /// This use leaves a transaction open: the connection is kept, and
    /// the transaction rolled back before the next use (closed if that
    /// fails).
    pub(super) fn keep_rolling_back(&mut self) {
        if let Some(kept) = self.slot.as_mut() {
            kept.roll_back = true;
        }
        self.kept = true;
    }
}

/// Closes the kept connection, if there is one, instead of handing it back.
fn close<DB: sqlx::Database>(slot: &mut Option<Kept<DB>>) {
    if let Some(mut kept) = slot.take() {
        kept.conn.close_on_drop();
    }
}

impl<DB: sqlx::Database> Drop for KeptGuard<DB> {
    fn drop(&mut self) {
        match self.slot.as_mut() {
            Some(kept) if self.kept => kept.last_used = Instant::now(),
            // Back to the pool, which pings it (closing it if broken).
            _ => drop(self.slot.take()),
        }
    }
}

impl<DB: sqlx::Database> std::ops::Deref for KeptGuard<DB> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.slot.as_ref().expect("taken and not closed").conn
    }
}

impl<DB: sqlx::Database> std::ops::DerefMut for KeptGuard<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.slot.as_mut().expect("taken and not closed").conn
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

    use super::KeptConnection;

    /// A one-connection pool on an SQLite file, as the store's writing
    /// connection, counting the connections handed back to it.
    async fn counted_pool(dir: &tempfile::TempDir) -> (SqlitePool, Arc<AtomicUsize>) {
        let released = Arc::new(AtomicUsize::new(0));
        let counted = released.clone();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("kept.db"))
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .after_release(move |_, _| {
                counted.fetch_add(1, Ordering::SeqCst);
                Box::pin(async { Ok(true) })
            })
            .connect_with(options)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (v INTEGER)")
            .execute(&pool)
            .await
            .unwrap();
        // The connection goes back to the pool in a task of its own.
        while pool.num_idle() == 0 {
            tokio::task::yield_now().await;
        }
        (pool, released)
    }

    async fn count(conn: &mut sqlx::SqliteConnection) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(conn)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn uses_that_end_well_keep_one_connection_out_of_the_pool_and_any_other_hands_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, released) = counted_pool(&dir).await;
        let before = released.load(Ordering::SeqCst);
        let kept = KeptConnection::new(pool.clone(), None);
        // A temporary table lives as long as its connection.
        let mut conn = kept.take().await.unwrap();
        sqlx::query("CREATE TEMP TABLE mine (v INTEGER)")
            .execute(&mut *conn)
            .await
            .unwrap();
        conn.keep();
        drop(conn);
        for _ in 0..50 {
            let mut conn = kept.take().await.unwrap();
            sqlx::query("INSERT INTO mine VALUES (1)")
                .execute(&mut *conn)
                .await
                .unwrap();
            conn.keep();
        }
        assert_eq!(
            released.load(Ordering::SeqCst),
            before,
            "no release, no ping"
        );

        // A use that does not say it ended well: back to the pool.
        let conn = kept.take().await.unwrap();
        drop(conn);
        while released.load(Ordering::SeqCst) == before {
            tokio::task::yield_now().await;
        }
        let mut conn = kept.take().await.unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mine")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(rows, 50, "the pool's one connection, taken again");
        conn.keep();
    }

    #[tokio::test]
    async fn a_transaction_a_use_left_open_is_rolled_back_before_the_next_use() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, released) = counted_pool(&dir).await;
        let before = released.load(Ordering::SeqCst);
        let kept = KeptConnection::new(pool.clone(), None);
        let mut conn = kept.take().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE; INSERT INTO t VALUES (1)")
            .execute(&mut *conn)
            .await
            .unwrap();
        conn.keep_rolling_back();
        drop(conn);

        let mut conn = kept.take().await.unwrap();
        assert_eq!(count(&mut conn).await, 0, "the row was rolled back");
        // A new transaction begins: none is left open.
        sqlx::query("BEGIN IMMEDIATE; INSERT INTO t VALUES (2); COMMIT")
            .execute(&mut *conn)
            .await
            .unwrap();
        conn.keep();
        drop(conn);
        let mut conn = kept.take().await.unwrap();
        let values: Vec<i64> = sqlx::query_scalar("SELECT v FROM t")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        assert_eq!(values, [2]);
        conn.keep();
        assert_eq!(
            released.load(Ordering::SeqCst),
            before,
            "kept through the rollback"
        );
    }

    async fn backend(conn: &mut sqlx::PgConnection) -> Result<i32, sqlx::Error> {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await
    }

    #[tokio::test]
    async fn a_kept_postgresql_connection_cut_while_idle_is_replaced_before_its_next_use() {
        let Some((mut admin, url, name)) = crate::store::testing::postgres_database().await else {
            return;
        };
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap();
        let kept = KeptConnection::new(pool.clone(), Some(Duration::ZERO));
        let mut conn = kept.take().await.unwrap();
        let first = backend(&mut conn).await.unwrap();
        conn.keep();
        drop(conn);
        // As a restarted server or a proxy's timeout would.
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(first)
            .execute(&mut admin)
            .await
            .unwrap();

        let mut conn = kept.take().await.unwrap();
        let second = backend(&mut conn).await.expect("a live connection");
        assert_ne!(second, first);
        conn.keep();
        drop((conn, kept));
        pool.close().await;
        crate::store::testing::drop_postgres_database(admin, &name).await;
    }
}
