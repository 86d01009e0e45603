//! A `routine` lease backend on PostgreSQL session-level advisory locks.
//!
//! [`PostgresBackend`] implements [`routine_core::LockBackend`]: a routine's lease is a
//! `pg_try_advisory_lock` held by the backend's *lock session*, its fencing token comes
//! from a counter row bumped in the same statement, and releases are announced with
//! `NOTIFY`.
//!
//! ```no_run
//! use routine_postgres::PostgresBackend;
//!
//! # async fn run() -> routine_core::Result<()> {
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
//! One backend uses two connections however many leases it holds: the lock session, owned
//! by one task that runs every acquire, refresh and release in turn (concurrent refreshes
//! share one statement), and a `LISTEN` connection for release notifications. Both show in
//! `pg_stat_activity` as `application_name` `routine lock session` and `routine listener`
//! (as `<name> (routine lock session)`... when the URL sets `application_name=<name>`).
//! A refresh proves the lock session is alive; if the session is lost (connection error,
//! request timeout, `pg_terminate_backend`, server restart), every lease on it reports
//! [`Error::Lost`](routine_core::Error::Lost) and the next acquire opens a new session.
//! Dropping a lease without releasing it unlocks it in the background.
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
//! | process crashed, connection closed | at once | at once |
//! | process alive, but stopped refreshing one lease while refreshing others | held while the session is used | same |
//!
//! The last row is by design: leases on one session share its liveness. The runner refreshes
//! every lease it keeps; one it gives up is released or dropped, which unlocks it.
//! PostgreSQL before 12 is refused ([`Error::Misconfigured`](routine_core::Error::Misconfigured)).
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
//! [`Error::InvalidName`](routine_core::Error::InvalidName) naming both routines (a lock
//! taken in that statement is given back). Other applications using `bigint` advisory
//! locks in the same database could still meet our keys unnoticed; give them another
//! database or the two-`int4` key form.
//!
//! # Fencing tokens
//!
//! Table `public.routine_fencing` (schema and name configurable) holds one row per key;
//! the statement that takes the lock also increments the row's `token`, so tokens grow with
//! every acquisition of a key, across processes, restarts and takeovers. Never delete its
//! rows. The table (and schema) are created if missing, which needs the `CREATE`
//! privilege; without it, [`Error::PermissionDenied`](routine_core::Error::PermissionDenied)
//! (create the table once as an administrator, then `SELECT, INSERT, UPDATE` suffice).
//!
//! # Release notifications
//!
//! A release runs `pg_notify('routine_lock_released', '<lock key>')`; the listener
//! connection wakes the local waiters of that key. A crashed holder sends nothing, and a
//! listener cut off without a closed connection hears nothing: waiters then notice at the
//! runner's retry interval. The backend cannot tell how long a
//! holder has left, so [`Capabilities::reports_expiry`](routine_core::Capabilities) is
//! `false`.
//!
//! # Poolers
//!
//! Behind a pooler in transaction or statement mode, session-level locks would leak across
//! clients. Each new session checks this with a probe lock across two statements, and the
//! two connections must have distinct server backends; either failing, or the pooler
//! mixing up prepared statements (PgBouncer before 1.21), is an
//! [`Error::Misconfigured`](routine_core::Error::Misconfigured). A pooler in session mode
//! works. Both are tested against a real PgBouncer. The `connect` module describes the case
//! that cannot be detected.
//!
//! # Errors
//!
//! Connection refused or broken: `Unavailable`. No answer in time: `Timeout`. Wrong
//! password or no `pg_hba.conf` entry (`28P01`, `28000`): `Auth`. Missing database
//! (`3D000`): `Config` naming the URL setting, because it does not fix itself. Missing
//! privilege (`42501`): `PermissionDenied`. Every request times out after the request
//! timeout (default 5 s) or half the lease TTL, whichever is shorter; the backend never sleeps
//! or retries.
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod backend;
mod config;
mod connect;
mod env;
mod error;
mod fencing;
mod hash;
mod lease;
mod notify;
mod session;
mod ttl;

pub use backend::PostgresBackend;
pub use config::PostgresBackendBuilder;
pub use hash::{advisory_lock_key, fnv1a_64};
