//! A PostgreSQL primary with a streaming standby, to fail over between them.

use std::io;
use std::time::{Duration, Instant};

use super::postgres::{PostgresServer, children_of, signal};

mod rebuild;

/// How the primary waits for the standby when it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// `synchronous_standby_names = '*'` and `synchronous_commit = on`: a commit returns
    /// once the standby has flushed it, so the standby has every committed write.
    Synchronous,
    /// The default streaming replication: a commit returns before the standby has it, so
    /// the latest commits may be missing on the standby when the primary dies.
    Asynchronous,
}

/// How long starting, streaming and promoting may take before the harness gives up.
const WITHIN: Duration = Duration::from_secs(60);

/// A primary and a hot standby streaming from it, each a throwaway [`PostgresServer`]
/// on its own port and temp dir: the standby is made with `pg_basebackup -R` from the
/// primary. Both allow the `postgres` superuser without a password over TCP (and
/// replication connections on the primary).
///
/// Failing over: [`kill_primary`](Self::kill_primary) (`SIGKILL` of all its processes),
/// then [`promote`](Self::promote) the standby, or both with
/// [`failover`](Self::failover). [`url`](Self::url) names both servers, so a client
/// that follows `target_session_attrs=read-write` finds whichever is primary.
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::servers::{PostgresPair, Replication};
///
/// let Some(mut pair) = PostgresPair::start(Replication::Synchronous) else { return };
/// pair.psql_primary("CREATE TABLE t (v int); INSERT INTO t VALUES (1)");
/// pair.failover();
/// assert_eq!(pair.psql_standby("SELECT v FROM t"), "1");
/// ```
#[derive(Debug)]
pub struct PostgresPair {
    // The standby first: dropped first, it does not wait for a primary that is gone.
    standby: PostgresServer,
    primary: PostgresServer,
    replication: Replication,
}

impl PostgresPair {
    /// Starts a primary and a standby streaming from it, and returns once the primary
    /// reports the standby in `pg_stat_replication` (with `sync_state = 'sync'` for
    /// [`Replication::Synchronous`]); `None` if the PostgreSQL binaries are missing
    /// outside CI.
    ///
    /// # Panics
    ///
    /// If the binaries are missing under CI, or a server does not come up or stream.
    pub fn start(replication: Replication) -> Option<Self> {
        let primary = PostgresServer::start()?;
        let hba = primary.data_dir().join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba)
            .unwrap_or_else(|err| panic!("reading {}: {err}", hba.display()));
        rules.push_str("host replication postgres 127.0.0.1/32 trust\n");
        std::fs::write(&hba, rules)
            .unwrap_or_else(|err| panic!("writing {}: {err}", hba.display()));
        primary.psql("SELECT pg_reload_conf()");
        let standby =
            PostgresServer::start_with("pg_basebackup", |standby| base_backup(&primary, standby))?;
        // Set after the base backup, so that the standby does not inherit it: promoted,
        // it would wait for a standby of its own on every commit.
        if replication == Replication::Synchronous {
            primary.psql("ALTER SYSTEM SET synchronous_standby_names = '*'");
            primary.psql("ALTER SYSTEM SET synchronous_commit = on");
            primary.psql("SELECT pg_reload_conf()");
        }
        let state = match replication {
            Replication::Synchronous => "sync",
            Replication::Asynchronous => "async",
        };
        wait_until(&format!("the standby streams ({state})"), || {
            primary.psql(&format!(
                "SELECT count(*) FROM pg_stat_replication \
                 WHERE state = 'streaming' AND sync_state = '{state}'"
            )) == "1"
        });
        Some(Self {
            standby,
            primary,
            replication,
        })
    }

    /// The replication mode it was started with.
    pub fn replication(&self) -> Replication {
        self.replication
    }

    /// The port of the server started as the primary.
    pub fn primary_port(&self) -> u16 {
        self.primary.port()
    }

    /// The port of the server started as the standby.
    pub fn standby_port(&self) -> u16 {
        self.standby.port()
    }

    /// The server started as the primary.
    pub fn primary(&self) -> &PostgresServer {
        &self.primary
    }

    /// The server started as the standby.
    pub fn standby(&self) -> &PostgresServer {
        &self.standby
    }

    /// `postgres://postgres@127.0.0.1:<primary>,127.0.0.1:<standby>/postgres?target_session_attrs=read-write`:
    /// the superuser on both servers, the primary first.
    pub fn url(&self) -> String {
        self.url_for_ports(&[self.primary_port(), self.standby_port()])
    }

    /// Like [`url`](Self::url), naming the servers on `ports` in that order (any ports:
    /// a closed one tests a server that is down).
    pub fn url_for_ports(&self, ports: &[u16]) -> String {
        let hosts: Vec<String> = ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!(
            "postgres://postgres@{}/postgres?target_session_attrs=read-write",
            hosts.join(",")
        )
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: one server only.
    pub fn url_for_port(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    }

    /// Kills the primary's postmaster and all its children with `SIGKILL` and waits
    /// until they are gone; returns when the kill was sent. Its WAL senders die first,
    /// so that one stopped by [`pause_replication`](Self::pause_replication) sends
    /// nothing more (killing a server resumes its stopped processes first).
    pub fn kill_primary(&mut self) -> Instant {
        let sent = Instant::now();
        signal(&self.wal_senders(), "KILL");
        self.primary.kill();
        sent
    }

    /// Promotes the standby (`pg_promote`) and returns once it accepts writes.
    ///
    /// # Panics
    ///
    /// If the standby is not promoted within a minute.
    pub fn promote(&mut self) {
        // pg_promote waits (up to a minute) for the promotion to end.
        let promoted = self.standby.psql("SELECT pg_promote(true, 60)");
        assert_eq!(promoted, "t", "the standby was not promoted in time");
        wait_until("the promoted standby accepts writes", || {
            self.standby
                .psql("SELECT NOT pg_is_in_recovery() AND NOT current_setting('transaction_read_only')::bool")
                == "t"
        });
    }

    /// [`kill_primary`](Self::kill_primary), then [`promote`](Self::promote); returns
    /// when the kill was sent.
    pub fn failover(&mut self) -> Instant {
        let sent = self.kill_primary();
        self.promote();
        sent
    }

    /// Pauses the primary's processes with `SIGSTOP` (see [`PostgresServer::pause`]).
    pub fn pause_primary(&self) {
        self.primary.pause();
    }

    /// Resumes a primary paused with [`pause_primary`](Self::pause_primary).
    pub fn resume_primary(&self) {
        self.primary.resume();
    }

    /// Stops the primary's WAL senders with `SIGSTOP`: the standby falls behind, as an
    /// asynchronous standby does under load or on a slow link, and what the primary
    /// commits meanwhile never reaches it if the primary is then killed. With
    /// [`Replication::Synchronous`] every commit on the primary waits meanwhile. Undone
    /// by [`resume_replication`](Self::resume_replication) (or by killing the primary).
    ///
    /// # Panics
    ///
    /// If the primary has no WAL sender (the standby is not connected).
    pub fn pause_replication(&self) {
        let senders = self.wal_senders();
        assert!(!senders.is_empty(), "the primary has no walsender process");
        signal(&senders, "STOP");
    }

    /// Resumes WAL senders stopped by [`pause_replication`](Self::pause_replication).
    pub fn resume_replication(&self) {
        signal(&self.wal_senders(), "CONT");
    }

    /// The pids of the primary's WAL sender processes.
    fn wal_senders(&self) -> Vec<u32> {
        let Some(postmaster) = self.primary.running_pid() else {
            return Vec::new();
        };
        children_of(postmaster)
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|title| String::from_utf8_lossy(&title).contains("walsender"))
            })
            .collect()
    }

    /// Runs `sql` on the primary as the superuser (see [`PostgresServer::psql`]).
    pub fn psql_primary(&self, sql: &str) -> String {
        self.primary.psql(sql)
    }

    /// Runs `sql` on the standby (or the promoted standby) as the superuser.
    pub fn psql_standby(&self, sql: &str) -> String {
        self.standby.psql(sql)
    }
}

/// Fills `standby`'s data dir with a base backup of `primary` that streams from it
/// (`-R` writes `primary_conninfo` and `standby.signal`).
fn base_backup(primary: &PostgresServer, standby: &PostgresServer) -> io::Result<()> {
    let data = standby.data_dir().display().to_string();
    let port = primary.port().to_string();
    standby.run_tool(
        "pg_basebackup",
        &[
            "-D",
            &data,
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "postgres",
            "-R",
            "--checkpoint=fast",
            "--no-sync",
            "-X",
            "stream",
        ],
    )
}

/// Polls `done` until it holds.
///
/// # Panics
///
/// If it does not hold within [`WITHIN`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WITHIN;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WITHIN:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
