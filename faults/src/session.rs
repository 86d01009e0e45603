//! Faults of PostgreSQL lock sessions, as an operator causes them from `psql`:
//! `pg_terminate_backend` of the session holding the routine's advisory lock, and
//! `pg_cancel_backend` of its statements, again and again for a while.
//!
//! The session is found by its lock in `pg_locks` (its `pid` column is the session's
//! server process), not by the member: every member reaches the server through a proxy
//! on the same address, and only the lock tells which session is the holder's.

use std::time::Duration;

use anyhow::bail;

use super::cluster::Cluster;
use super::inject::FaultId;
use super::log::FaultKind;

impl Cluster {
    /// `pg_terminate_backend` of the lock session holding the routine's lock, that of
    /// `member`, which holds `token`. The fault is recorded just before `psql` starts.
    ///
    /// # Errors
    ///
    /// If the server is not PostgreSQL, `psql` fails, or no session holds the lock.
    pub async fn terminate_lock_session(
        &mut self,
        member: usize,
        token: u64,
    ) -> anyhow::Result<FaultId> {
        self.member(member)?;
        let held = self.lock_held()?;
        let id = self.record(FaultKind::SessionTerminate, Some(member), Some(token));
        let terminated = self
            .psql(format!(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_locks \
                 WHERE {held}"
            ))
            .await?;
        anyhow::ensure!(
            terminated == "1",
            "terminated {terminated} lock sessions holding the lock of member {member} \
             (token {token}), not one"
        );
        Ok(id)
    }

    /// `pg_cancel_backend` of the lock session holding the routine's lock, as fast as one
    /// server process can send them, for `length`: one `psql` runs a loop on the server
    /// that looks the session up again before each cancel (another session may take the
    /// lock meanwhile). `member`, holding `token`, is the holder when it begins. Returns
    /// once the last cancel is sent, which ends the fault.
    ///
    /// A cancel reaches a statement only if it arrives while one runs and the statement
    /// still checks for interrupts afterwards; a session waiting for its client ignores
    /// it. The lock session's statements take well under a millisecond, so even this rate
    /// cancels only some of them (a loop with a 1 ms sleep cancelled about one refresh in
    /// three TTLs, this one one or two per TTL).
    ///
    /// # Errors
    ///
    /// If the server is not PostgreSQL or `psql` fails.
    pub async fn cancel_lock_session_statements(
        &mut self,
        member: usize,
        token: u64,
        length: Duration,
    ) -> anyhow::Result<FaultId> {
        self.member(member)?;
        let held = self.lock_held()?;
        let id = self.record(FaultKind::StatementCancel, Some(member), Some(token));
        self.psql(format!(
            "DO $$ DECLARE stop timestamptz := clock_timestamp() + interval '{} \
             microseconds'; BEGIN WHILE clock_timestamp() < stop LOOP \
             PERFORM pg_cancel_backend(pid) FROM pg_locks WHERE {held}; END LOOP; END $$",
            length.as_micros(),
        ))
        .await?;
        self.end(id);
        Ok(id)
    }

    /// The `pg_locks` condition for the routine's advisory lock, held (a `bigint` key is
    /// split into `classid`, the high half, and `objid`, with `objsubid` 1).
    #[cfg(feature = "postgres")]
    fn lock_held(&self) -> anyhow::Result<String> {
        // The members' backends use the default namespace.
        let key = leasehold::postgres::advisory_lock_key("routine", &self.config.name);
        Ok(format!(
            "locktype = 'advisory' AND objsubid = 1 AND granted \
             AND ((classid::int8 << 32) | objid::int8) = {key}"
        ))
    }

    #[cfg(not(feature = "postgres"))]
    fn lock_held(&self) -> anyhow::Result<String> {
        bail!("lock sessions are PostgreSQL's, and this build has no PostgreSQL")
    }

    /// Runs `sql` with `psql` on a blocking thread (the server's helper blocks) and
    /// returns its output; the server is the cluster's again when it returns.
    #[cfg(feature = "postgres")]
    async fn psql(&mut self, sql: String) -> anyhow::Result<String> {
        use std::panic::AssertUnwindSafe;

        use anyhow::{Context as _, anyhow};

        use super::server::Server;

        let server = self.server.take().context("the server is gone")?;
        let (server, output) = tokio::task::spawn_blocking(move || {
            // The helper panics on failure; catch it so the server is not dropped (and
            // killed) with the thread.
            let output = std::panic::catch_unwind(AssertUnwindSafe(|| match &server {
                Server::Postgres(postgres) => Ok(postgres.psql(&sql)),
                _ => Err(anyhow!("not a PostgreSQL server")),
            }));
            (server, output)
        })
        .await
        .context("the psql thread did not finish")?;
        self.server = Some(server);
        match output {
            Ok(output) => output,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("psql panicked");
                bail!("{message}")
            }
        }
    }

    #[cfg(not(feature = "postgres"))]
    async fn psql(&mut self, _sql: String) -> anyhow::Result<String> {
        bail!("lock sessions are PostgreSQL's, and this build has no PostgreSQL")
    }
}
