//! A `leasehold` lease backend on PostgreSQL session-level advisory locks.
//!
//! [`PostgresBackend`] implements [`leasehold_core::LockBackend`]: a routine's lease is a
//! `pg_try_advisory_lock` held by the backend's *lock session*, its fencing token comes
//! from a counter row bumped in the same statement, and releases are announced with
//! `NOTIFY`.
//!
//! ```no_run
//! use leasehold_postgres::PostgresBackend;
//!
//! # async fn run() -> leasehold_core::Result<()> {
//! // From ROUTINE_POSTGRES_URL or DATABASE_URL (and optional ROUTINE_POSTGRES_* settings):
//! let backend = PostgresBackend::from_env().await?;
//! // Or explicitly:
//! let backend = PostgresBackend::builder()
//!     .with_url("postgres://app:secret@db.internal/app")
//!     .with_namespace("billing")
//!     .build()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Connections
//!
//! One backend uses one connection however many leases it holds or waits for, and
//! whoever it asks `describe` about (plus operator connections, opened only for `list`,
//! `force_release` and records below): the
//! lock session, owned by one task that runs every acquire, refresh and release in turn
//! (concurrent refreshes share one statement), which also `LISTEN`s for release
//! notifications and reads them between statements. It shows in `pg_stat_activity` as
//! `application_name` `routine lock session` (as `<name> (routine lock session)` when the
//! URL sets `application_name=<name>`).
//! A refresh proves the lock session is alive; if the session is lost (connection error,
//! request timeout, `pg_terminate_backend`, server restart), every lease on it reports
//! [`Error::Lost`](leasehold_core::Error::Lost) and the next acquire opens a new session.
//! When the backend itself drops the session (a statement broke the connection or timed
//! out), every lease on it is told at once through
//! [`Lease::revoked`](leasehold_core::Lease::revoked), so the runner stops its routine
//! without waiting for the next refresh. A statement that fails on a healthy session,
//! including one cancelled by `pg_cancel_backend` or `statement_timeout` (SQLSTATE
//! `57014`), ends nothing. Dropping a lease without releasing it unlocks it in the
//! background.
//!
//! # Lock sessions and heartbeats
//!
//! The server frees every advisory lock of a session the moment the session ends,
//! however it ends: terminated by an operator or a pooler, a server restart or failover,
//! or dropped by the backend. The holders of those locks learn it only at their next
//! refresh, and may run until their local deadlines. So a lease does not rest on the
//! advisory lock alone: each session has a heartbeat row in the session table (the
//! fencing table's name with `_sessions` appended), set to the server's clock plus the
//! session's longest lease TTL by every acquire and refresh, and each key's fencing row
//! names the session that took it. An acquire that gets a free advisory lock but finds
//! the key named by another session whose heartbeat still runs does not take the key:
//! it gives the lock back and reports contention, and
//! [`expires_in`](leasehold_core::LockBackend::expires_in) tells when the heartbeat runs
//! out ([`Capabilities::reports_expiry`](leasehold_core::Capabilities) is `true`). The
//! heartbeat outlasts every local deadline, because it counts from when the statement
//! ran and each deadline from when the request was sent, both in real time.
//!
//! What this costs: a crashed holder (SIGKILL, a dead host) is taken over about one TTL
//! after its last refresh, as on the other backends, rather than as soon as its
//! connection closes. A graceful release clears the key's claim in the same statement, so
//! a handover stays as fast as the release notification; a lost lease that its holder
//! then releases is cleared by the next statement of the backend's new session. The
//! heartbeat row is written by every refresh (one row per backend, not per lease), and
//! rows whose heartbeat has run out are deleted when a session opens. The server's wall
//! clock must not jump forward by more than the safety margin while a key is guarded.
//!
//! # Lease TTLs: what the server enforces
//!
//! An advisory lock has no TTL of its own: it lives as long as its session. The lock
//! session therefore carries settings derived from the longest TTL `X` among its leases
//! (see the `ttl` module), so that the server ends a silent session, and releases its
//! locks, about `X` after its last statement:
//!
//! | holder stops talking because... | PostgreSQL 14 and newer | PostgreSQL 12 and 13 |
//! |---|---|---|
//! | process paused (SIGSTOP, debugger, VM freeze) | `idle_session_timeout`: about `X` | **not enforced**: held until the connection closes |
//! | network cut, host dead | `idle_session_timeout`: about `X` | TCP keepalives: about `X` to `X` + a few seconds |
//! | process crashed, connection closed | at once (the key stays guarded by the session heartbeat, about `X`) | same |
//! | process alive, but stopped refreshing one lease while refreshing others | held while the session is used | same |
//!
//! This table is about the advisory locks. Whenever the server frees them, other clients
//! still cannot take the keys before the session's heartbeat runs out (see *Lock
//! sessions and heartbeats*), so a key is never free sooner than about `X` after the
//! holder's last refresh, unless it was released. On PostgreSQL 12 and 13 a paused
//! holder keeps its locks past the heartbeat, until its connection closes.
//!
//! The last row is by design: leases on one session share its liveness. The runner refreshes
//! every lease it keeps; one it gives up is released or dropped, which unlocks it.
//! PostgreSQL before 12 is refused ([`Error::Misconfigured`](leasehold_core::Error::Misconfigured)).
//! Because the session's settings follow the *longest* TTL, a process mixing very
//! different TTLs holds its short leases up to the longest TTL after a pause. TTLs below
//! one second are refused.
//!
//! # Lock keys
//!
//! A routine's advisory-lock key is [`advisory_lock_key`]: FNV-1a 64 over the namespace
//! (default `routine`), a zero byte and the name, the same in every version of this crate.
//! Two names may hash alike; the fencing table stores the namespace and name of each key,
//! and a mismatch, whether found on acquiring or on contention, is an
//! [`Error::InvalidName`](leasehold_core::Error::InvalidName) naming both routines (a lock
//! taken in that statement is given back). Other applications using `bigint` advisory
//! locks in the same database could still meet our keys unnoticed; give them another
//! database or the two-`int4` key form.
//!
//! # Fencing tokens
//!
//! Table `public.routine_fencing` (schema and name configurable; the session table
//! `public.routine_fencing_sessions` and the epoch table `public.routine_fencing_epoch`
//! live beside it) holds one row per key; the statement that takes the lock also raises
//! the row's `token`, so tokens grow with every acquisition of a key, across processes,
//! restarts, takeovers and server crashes. They grow by one within a lock session's
//! *epoch* and jump when a session of a newer epoch takes the key, so they are large
//! (`epoch × 2^32` and up) and not consecutive: compare them, never count on them (see
//! *Durability*). Never delete the rows. The tables (and schema) are created if missing,
//! which needs the `CREATE` privilege; without it,
//! [`Error::PermissionDenied`](leasehold_core::Error::PermissionDenied) (create the tables
//! once as an administrator, then `SELECT, INSERT, UPDATE` on the fencing and epoch
//! tables and `SELECT, INSERT, UPDATE, DELETE` on the session table suffice). The
//! unlogged waiter table `public.routine_fencing_waiters` (see *Release notifications*)
//! is created beside them too, and wants `SELECT, INSERT, UPDATE, DELETE`; without it
//! the backend works, and each release wakes every waiting process. A
//! fencing table made by an earlier version gets its `holder_session`,
//! `holder_identity` and `record` columns added, which needs its owner (or run
//! `ALTER TABLE public.routine_fencing ADD COLUMN IF NOT EXISTS record bytea` once as
//! the owner before upgrading).
//!
//! What stays on the server: one fencing row (about 100 bytes, plus its record: see
//! *Records*) per routine name ever acquired, kept for good so that tokens never
//! restart; one session row per backend connection, deleted once its heartbeat has
//! run out; and one waiter row per waiting process and key, deleted when a release
//! wakes it, or once it has expired (it stops asking) by the next release of its key or
//! the next backend that connects. An application that makes routine
//! names dynamically (one per tenant, per job id) grows the fencing table by one row per
//! name. To clean up names that are gone for good, delete their rows while nothing holds
//! them, accepting that their tokens restart lower if a name ever comes back (harmless
//! only if nothing downstream still remembers a token of that name), and that their
//! records go with them:
//!
//! ```sql
//! DELETE FROM public.routine_fencing
//! WHERE holder_session IS NULL AND acquired_at < now() - interval '30 days'
//!   AND NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1
//!                   AND ((classid::int8 << 32) | objid::int8) = lock_key);
//! ```
//!
//! A record (a scheduled routine's last fire, say) is deleted with its row; add
//! `AND record IS NULL` to keep the rows of names whose records must survive.
//!
//! # Operator queries
//!
//! [`describe`](leasehold_core::LockBackend::describe) and
//! [`list`](leasehold_core::LockBackend::list) read the fencing row of each key: the
//! holder identity (`holder_identity`, written by the acquire statement:
//! [`process_identity`](leasehold_core::process_identity) for `try_acquire`, the given one
//! for `try_acquire_as`), the fencing token, `acquired_at` (the server's clock at the
//! acquire), and `expires_in` from the claiming session's heartbeat (while an earlier
//! version of this crate still takes keys, a key it took shows the identity of the last
//! holder that stored one). A key counts as held
//! when an acquire would meet contention now: its advisory lock is held in this database
//! (`pg_locks`), or its row names a session whose heartbeat still runs. `describe` (one
//! key, one statement) runs on the lock session, like `expires_in`, so a waiting process
//! that names the holder of its key (the runner's `Contended` event) keeps one connection.
//! `list` and [`force_release`](leasehold_core::LockBackend::force_release) run on a small
//! pool of operator connections (`application_name` `routine operator`), opened on first
//! use and closed after a minute idle, never on the lock session, so they never delay a
//! refresh.
//!
//! `force_release` ends the holder's lock session with `pg_terminate_backend`, which
//! **frees every lease of that backend**, not only the key asked for, and needs
//! membership in `pg_signal_backend` or in the holder's role
//! ([`Error::PermissionDenied`](leasehold_core::Error::PermissionDenied) otherwise). It
//! then clears that key's claim, so the key can be taken at once; the holder's other keys
//! stay guarded by its session's heartbeat until it runs out, so nobody overlaps with the
//! routines still running on them. It announces the ended session on channel
//! `routine_lock_session_ended`: the holder's backend hears it on its lock session (if the
//! termination has not already closed it), drops the session and revokes its leases
//! ([`Lease::revoked`](leasehold_core::Lease::revoked)) at once; a holder cut off learns
//! at its next refresh. On PostgreSQL 12
//! and 13 the server does not wait for the terminated process to exit, so a waiter woken
//! by the release may still meet the lock and wait for its retry interval.
//!
//! # Records
//!
//! [`read_record`](leasehold_core::LockBackend::read_record) and
//! [`write_record`](leasehold_core::LockBackend::write_record) keep a key's record (at most
//! [`MAX_RECORD_LEN`](leasehold_core::MAX_RECORD_LEN) bytes) in the `record` column
//! (`bytea`, NULL for none) of its fencing row. The record has no TTL: it stays when the
//! lease is released or lost, for as long as the row ([`Capabilities::records`] is
//! `true`). A write is one statement that locks the key's row and stores the value only
//! if the row's token is the writer's fencing token, the row still names a lock session
//! whose heartbeat runs (the lease was not released, nor its session's heartbeat run out)
//! and the record holds the expected value; otherwise it reports
//! [`RecordWrite::Fenced`](leasehold_core::RecordWrite::Fenced) (the key was acquired
//! again, released, or never acquired under this name) or
//! [`RecordWrite::Conflict`](leasehold_core::RecordWrite::Conflict) with the stored value.
//! An acquire that bumps the token waits for a write in progress, or the write sees the
//! new token: never both. Both run on the operator connections, never on the lock session,
//! so they never delay a refresh. A name whose key collides with another name's row has
//! no record, and its writes are fenced.
//!
//! [`Capabilities::records`]: leasehold_core::Capabilities::records
//!
//! # Release notifications
//!
//! A release wakes **one** waiting process. A process waiting for a key registers its
//! lock session in the waiter table (the fencing table's name with `_waiters` appended,
//! `UNLOGGED`) with the `expires_in` the runner asks after each failed attempt: same
//! statement, no extra round trip. The release statement picks the registered waiter with the
//! latest deadline (it asked last, or against the longest lease left), deletes its row, and runs `pg_notify` on that session's own channel
//! (`routine_lock_wake_<session id in hex>`, payload the lock key), so only that process
//! hears it and wakes its local waiters of the key; a handover costs the release and one
//! acquire however many processes wait. With no registered waiter (none asked yet, the
//! table is missing or not writable, the waiters run an older version of this crate), it
//! runs `pg_notify('routine_lock_released', '<lock key>')` and every waiting process
//! wakes, as before. A waiter that stops waiting deletes its registration; one whose
//! process crashed since it last asked may still be picked and wakes nobody: the others
//! then try when they next ask, at most one lease TTL later. `force_release` wakes every
//! waiter. See the `waiters` module for the details.
//!
//! The lock session listens on both channels. When the session is dropped every waiter is
//! woken (a release may have been missed), and the next wait opens a new one, which
//! deletes the dropped session's registrations. A crashed holder sends nothing, and a
//! session cut off without a closed connection hears nothing: waiters then notice when
//! the holder's session heartbeat runs out (the runner asks when it does).
//!
//! # Failover
//!
//! A URL may name a primary and its standbys, as libpq writes them:
//! `postgres://app@db1:5432,db2:5432/app?target_session_attrs=read-write`, or
//! `?host=db1,db2&port=5432,5433`, or a URL without a host and the lists in `PGHOST` and
//! `PGPORT` (see [`PostgresBackendBuilder::with_url`]). Each connection of the backend
//! (lock session, operator connections) tries the servers in turn, starting
//! with the one that last worked, and passes over a server that is unreachable, in
//! recovery (a standby) or read-only; each server gets an equal share of the time left,
//! so one that never answers cannot leave the others untried. The backend writes on
//! every connection, so it wants a writable primary whatever `target_session_attrs`
//! says; values asking for a standby are a configuration error. When no server is
//! usable, the error names each one and why it was passed over.
//!
//! When the primary dies, the lock session's next statement fails, every lease on it is
//! lost (and told so, see [`Lease::revoked`](leasehold_core::Lease::revoked)), and the
//! next acquire opens a session on whichever server is primary by then. Advisory locks
//! are not replicated, so the promoted server holds none; what keeps others out is the
//! replicated lease state: the session's heartbeat row and the fencing row naming the
//! session (see *Lock sessions and heartbeats*). How much of it the promoted server has
//! depends on the replication:
//!
//! - **Synchronous** (the standby in `synchronous_standby_names`, `synchronous_commit`
//!   `on` or `remote_apply`, and the failover promotes a standby that was synchronous):
//!   every acquire and refresh the holder saw succeed was on the standby before the
//!   holder heard of it. Nobody takes a key on the promoted server before the previous
//!   holder's deadline (its last acknowledged refresh's send time plus the TTL), and
//!   fencing tokens keep growing. The lease statements then keep the server's
//!   `synchronous_commit`, so each acquire, refresh and release waits for the WAL flush
//!   and the standby's acknowledgement (see *Durability*): that is the price of the
//!   guarantee.
//! - **Asynchronous**: the standby may miss the last commits before the crash. A missed
//!   refresh leaves an older heartbeat, so another process may take the key up to the
//!   replication lag before the holder's deadline; a missed acquire leaves the key free,
//!   or guarded by its previous holder's heartbeat, and the next holder may get the same
//!   fencing token again. Both are bounded by how far the standby was behind.
//!
//! In both, the heartbeat written by the old primary's clock is read by the new
//! primary's: their clocks must agree to well within the TTL (a new primary whose clock
//! runs ahead frees keys that much early).
//!
//! # Durability
//!
//! A commit with PostgreSQL's default `synchronous_commit = on` waits for its WAL to be
//! flushed to disk, which costs more than the rest of an acquire. When the server has no
//! synchronous standby (`synchronous_standby_names` is empty, asked by every statement),
//! the lease statements (acquire, refresh, release) therefore commit asynchronously:
//! `synchronous_commit` is `off` within their own transactions, and a thousand
//! acquire + release pairs cost a handful of WAL flushes rather than one or two each. A
//! server crash (not a clean shutdown) may then lose the last fraction of a second of
//! those commits, and the design keeps the guarantees anyway:
//!
//! - **Tokens.** Each lock session, when it opens, bumps the epoch in the epoch table
//!   with a flushed commit (one flush per session, not per acquire) and hands out tokens
//!   of at least `epoch × 2^32`: `greatest(token + 1, epoch × 2^32)`. Every session
//!   opened after a crash has a higher epoch than any before it, so its tokens exceed
//!   every token handed out before the crash, even those whose counter writes the crash
//!   lost. An epoch has room for 2^32 acquisitions of one key; past that a session
//!   takes a new epoch before granting it. `tests/tokens_crash.rs` kills a server with
//!   SIGKILL right after acquires, several times, and checks exactly this.
//! - **The restart guard.** A lost commit may also lose a heartbeat or a key's claim,
//!   which keep others off a key until its holders' local deadlines have passed (see
//!   *Lock sessions and heartbeats*). Those deadlines lie at most the longest lease TTL
//!   after the crash, so at most that long after the server started again: the epoch
//!   table keeps the longest TTL any client has used (stored with a flushed commit before
//!   a session first uses a longer TTL than stored), and **after a server crash or
//!   restart, no key is granted until the longest TTL has passed since the server
//!   started**. Acquires meanwhile report contention, and
//!   [`expires_in`](leasehold_core::LockBackend::expires_in) says when the wait ends. A
//!   clean restart pays this too (the backend cannot tell it from a crash).
//!
//! With a synchronous standby the statements keep the server's setting, every acquire,
//! refresh and release waits for the flush, and the failover guarantee holds (see
//! *Failover*). An asynchronous standby promoted after a crash may miss the last commits
//! of either kind, as described there.
//!
//! # Poolers
//!
//! Behind a pooler in transaction or statement mode, session-level locks would leak across
//! clients. Each new session checks this with a probe lock across two statements; that
//! failing, or the pooler
//! mixing up prepared statements (PgBouncer before 1.21), is an
//! [`Error::Misconfigured`](leasehold_core::Error::Misconfigured). A pooler in session mode
//! works. Both are tested against a real PgBouncer. The `connect` module describes the case
//! that cannot be detected.
//!
//! # Errors
//!
//! Connection refused or broken: `Unavailable`. No answer in time: `Timeout`. Wrong
//! password or no `pg_hba.conf` entry (`28P01`, `28000`): `Auth`. Missing database
//! (`3D000`): `Config` naming the URL setting, because it does not fix itself. Missing
//! privilege (`42501`): `PermissionDenied`. A standby or a demoted primary (in recovery,
//! or `25006` read-only): `Unavailable`, retried on a new connection, since after a
//! failover the same address, or another server of the URL, may lead to the new
//! primary. With several servers in the URL and none usable: an error of the kind of
//! the first failure that is not transient (credentials, a missing database...), else
//! `Unavailable`, naming each server and why it was passed over. Every request times
//! out after the request timeout (default 5 s) or half the lease TTL, whichever is
//! shorter; the backend never sleeps or retries.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

/// The backend's name in errors.
pub(crate) const NAME: &str = "postgres";

mod backend;
mod config;
mod connect;
mod env;
mod epoch;
mod error;
mod fencing;
mod hash;
mod held;
mod hosts;
mod lease;
mod message;
mod notify;
mod operator;
mod record;
mod schema;
mod session;
mod sourced;
mod tls;
mod ttl;
mod waiters;

pub use backend::PostgresBackend;
pub use config::PostgresBackendBuilder;
pub use hash::{advisory_lock_key, fnv1a_64};
