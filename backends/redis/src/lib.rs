//! The Redis lease backend of `leasehold`, compatible with the Go original's locks.
//!
//! [`RedisBackend`] implements [`leasehold_core::LockBackend`] on one Redis server (or a
//! primary behind a stable address; Redis Cluster is not supported, since a lock and its
//! fence counter are touched by one script).
//!
//! # Keys and compatibility with the Go original
//!
//! A routine `name` is locked by the key `routine:lock:<name>` holding a plain string
//! value, as bsm/redislock (used by the Go original) stores its random token. Each step is
//! one atomic Lua script:
//!
//! - acquire: if the key is free, `INCR routine:fence:<name>` gives the
//!   [fencing token](leasehold_core::FencingToken) (that key never expires) and
//!   `SET key <value> PX ttl` takes it, where the value is
//!   `leasehold:v1:<owner>:<fencing token>:<server time>:<holder>`: a random owner value
//!   (16 bytes, hex), the token, the server's `TIME` (`<seconds>.<microseconds>`) and the
//!   [holder identity](leasehold_core::LockBackend::try_acquire_as);
//! - refresh: if `GET key` is our whole value, `PEXPIRE key ttl`, else the lease is
//!   [lost](leasehold_core::Error::Lost);
//! - release: if `GET key` is our whole value, `DEL key` and `PUBLISH
//!   routine:released:<name>`; otherwise nothing is touched.
//!
//! Keeping who holds a lease, its token and its start in the lock's own value means they
//! live and expire with the lock: no second key to extend on every refresh or to go stale,
//! and acquire, refresh and release each stay one script call. Go never parses a lock
//! value, only compares it with its own token, so storing more in ours changes nothing for
//! it. [`describe`](leasehold_core::LockBackend::describe) and
//! [`list`](leasehold_core::LockBackend::list) read the value back; a lock held by a Go
//! instance has a value they do not recognise and is reported with its remaining TTL
//! only (no holder, token or start).
//!
//! So a Go instance and a Rust instance of the same routine on one Redis exclude each
//! other. [`RedisBackendBuilder::with_namespace`] replaces `routine` to separate
//! applications; a namespace must not contain `:`, since names may, and two different
//! names could then share one key. Fencing tokens last as long as Redis keeps its data:
//! a server restarted without persistence, or one that evicts keys (see below), counts
//! from 1 again.
//!
//! # Records
//!
//! The [record](leasehold_core::LockBackend::write_record) of a name is the plain string
//! key `routine:record:<name>` (same namespace rule as the lock), holding the value's
//! bytes as given. It has no TTL: it outlives every lease and stays until
//! [`RedisBackend::forget_fencing`] deletes it. A write is one Lua script: it is
//! [fenced](leasehold_core::RecordWrite::Fenced) unless the lock key is held, the fence
//! counter equals the writer's token (every acquire increments it, so no later one
//! exists) and the lock's value carries that token; then it compares the record with the
//! expected value (`nil` for none) and `SET`s it. A lock held by a Go instance (which
//! counts nothing on the fence key) therefore fences every write.
//!
//! # What stays on the server
//!
//! A lock key lives as long as its lease: it is deleted on release and expires with its
//! TTL otherwise. The fence counter `routine:fence:<name>` is never deleted by the
//! backend, so that tokens keep increasing: **one small key per distinct name ever
//! acquired** (under 100 bytes with Redis's overhead). With a fixed set of routines that
//! is nothing; with names made up at run time (one per customer or job id) they add up.
//! A name whose holder wrote a record also keeps its record key `routine:record:<name>`
//! (the value, at most [`MAX_RECORD_LEN`](leasehold_core::MAX_RECORD_LEN) bytes, plus
//! Redis's overhead), which never expires either.
//! [`RedisBackend::forget_fencing`] deletes the counter and the record of a name nobody
//! holds (its tokens then start from 1 again); to see them all:
//! `redis-cli --scan --pattern 'routine:fence:*'` (and `'routine:record:*'`).
//!
//! # Eviction
//!
//! A server whose `maxmemory-policy` is not `noeviction` may delete a held lock under
//! memory pressure (another instance then takes it while the holder still runs) or a
//! fence counter. At connect the backend reads the policy and logs a warning unless it is
//! `noeviction`, or refuses to connect with
//! [`Misconfigured`](leasehold_core::Error::Misconfigured) if
//! [`RedisBackendBuilder::with_require_noeviction`] is set. A server that does not show
//! its configuration (a managed service, an ACL user without `CONFIG`) is not checked.
//!
//! # Connections
//!
//! One backend uses **two connections** however many routines it holds or waits for:
//!
//! - one multiplexed command connection (the `redis` crate's `ConnectionManager`): every
//!   request is pipelined on it, so renewals of many leases never queue behind each
//!   other; it reconnects after an I/O failure. A failure it does not recover from by
//!   itself replaces it with a new one: refused credentials (its reconnection keeps the
//!   refusal and returns it to every later request, even once the password is fixed on
//!   the server) and `READONLY` (a connection stays on the node it reached, which a
//!   failover behind a fixed address demoted to a replica). The request that finds such
//!   a failure opens the new connection and is sent once more on it; at most one
//!   replacement is opened per second, so the runner's backoff paces them;
//! - one pub/sub connection subscribed once to `routine:released:*`, whose messages wake
//!   the local waiters of [`LockBackend::released`](leasehold_core::LockBackend::released).
//!   If it fails, waiters get an error and the runner polls; acquire, refresh and release
//!   do not depend on it. The next wait reconnects it, on a new connection each time, so
//!   credentials fixed on the server are picked up too.
//!
//! # Timeouts and failures
//!
//! - Connecting (TCP, TLS, authentication) is bounded by the connect timeout (5 s by
//!   default, `REDIS_DIAL_TIMEOUT`).
//! - Every request is bounded by the request timeout (3 s by default,
//!   `REDIS_READ_TIMEOUT`/`REDIS_WRITE_TIMEOUT`), and a request made for a lease by two
//!   fifths of its TTL as well, waiting for a reconnection included: strictly less than
//!   the runner's own bound on an acquire (half the TTL by default), so the backend gives
//!   up first and can undo what it may have taken. The `redis` crate's own response and
//!   connection timeouts are set to the request and connect timeouts, so a hung or
//!   paused server yields [`Error::Timeout`](leasehold_core::Error::Timeout) rather than a
//!   call that waits.
//! - The client does not retry reconnections itself (its retry count is set to zero): a
//!   request that finds the connection broken starts one reconnection attempt, and is
//!   sent once more on the new connection within its time bound (the scripts are safe
//!   to repeat: refresh and release compare our lock value, a repeated acquire recognises
//!   the lock it took; a repeated [`write_record`](leasehold_core::LockBackend::write_record)
//!   whose first send was written answers a conflict with its own value). Later attempts
//!   are paced by the runner's backoff; the backend keeps no timers.
//! - An acquire whose outcome is unknown (it failed or timed out after being sent, or its
//!   future was dropped, as the runner does when its own timeout passes) is undone in
//!   the background by a script that deletes the lock if it carries our owner prefix
//!   (the server wrote the rest of the value), queued behind it on the same connection,
//!   so a lock we may hold without knowing is not left held for its whole TTL.
//! - Errors map as: connection refused, reset or other I/O failure →
//!   [`Unavailable`](leasehold_core::Error::Unavailable); timeouts →
//!   [`Timeout`](leasehold_core::Error::Timeout); `NOAUTH`/`WRONGPASS` →
//!   [`Auth`](leasehold_core::Error::Auth) (retried by the runner: an operator may fix the
//!   password); `NOPERM` → [`PermissionDenied`](leasehold_core::Error::PermissionDenied);
//!   `READONLY` (the address serves a replica, as during a failover) →
//!   [`Unavailable`](leasehold_core::Error::Unavailable), transient, with a source saying
//!   so; a TTL under 1 ms (Redis's expiry precision) or above what `PX` can represent
//!   (about 146 million years) → [`InvalidTtl`](leasehold_core::Error::InvalidTtl), both
//!   declared in the [capabilities](leasehold_core::LockBackend::capabilities); an
//!   evicting server when `noeviction` is required →
//!   [`Misconfigured`](leasehold_core::Error::Misconfigured); malformed settings →
//!   [`Config`](leasehold_core::Error::Config) naming the setting or variable.
//!
//! The connections' driver tasks run on the tokio runtime the backend was built on:
//! build and use a backend within one runtime.
//!
//! # Configuration
//!
//! [`RedisBackend::builder`], [`RedisBackend::from_url`] (`redis://` and `rediss://`,
//! TLS by rustls: no OpenSSL) and [`RedisBackend::from_env`] (the Go original's
//! `REDIS_*` variables, see [`RedisBackendBuilder::from_env`]). `Debug` output never
//! shows the password.
//!
//! # TLS
//!
//! `rediss://` (or [`RedisBackendBuilder::with_tls`], `ROUTINE_REDIS_TLS=true`) connects
//! with TLS, trusting the system's root certificates. A private CA and a client
//! certificate are given as PEM files: [`RedisBackendBuilder::with_ca_file`] and
//! [`RedisBackendBuilder::with_client_identity_files`], the URL parameters `ca_file`,
//! `cert_file` and `key_file`, or `ROUTINE_REDIS_CA_FILE`, `ROUTINE_REDIS_CERT_FILE`
//! and `ROUTINE_REDIS_KEY_FILE`. The files are read when the backend connects; one that
//! is missing or holds no PEM certificate or key is
//! [`Config`](leasehold_core::Error::Config) naming its setting.
//!
//! The server's certificate is checked against the host connected to: the `redis` crate
//! has no setting for another server name, so connect by a name (or IP address) that
//! the certificate carries.
//!
//! A failed handshake says why: a certificate not signed by a trusted CA is
//! [`Unavailable`](leasehold_core::Error::Unavailable) saying the certificate was not
//! trusted; a server that requires a client certificate and gets none, or refuses the
//! one it gets, is [`Auth`](leasehold_core::Error::Auth); TLS on against a plaintext
//! server, or off against a TLS-only one, is
//! [`Misconfigured`](leasehold_core::Error::Misconfigured). A plaintext server may sit
//! on a TLS hello without answering, so a TLS connect still under way after a tenth of
//! the connect timeout is joined by a plaintext `PING` on a second connection: a Redis
//! reply to it means the server does not speak TLS, reported then rather than after the
//! whole connect timeout. The same check runs the other way after a plaintext connection
//! fails (a TLS hello answered with a TLS record means the server wants TLS).
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use leasehold_core::{LockBackend, LockKey};
//! use leasehold_redis::RedisBackend;
//!
//! # async fn run() -> leasehold_core::Result<()> {
//! let backend = RedisBackend::from_env().await?;
//! let key = LockKey::new("cleanup")?;
//! match backend.try_acquire(&key, Duration::from_secs(5)).await? {
//!     Some(mut lease) => {
//!         lease.refresh(Duration::from_secs(5)).await?;
//!         lease.release().await?;
//!     }
//!     None => backend.released(&key).await?, // someone else runs it; wait for them
//! }
//! # Ok(()) }
//! ```
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod abandon;
mod backend;
mod builder;
mod client;
mod config;
mod connection;
mod durability;
mod error;
mod eviction;
mod handshake;
mod lease;
mod notify;
mod operator;
mod scripts;
mod sentinel;
mod sentinel_config;
mod tls;
mod value;

pub use backend::RedisBackend;
pub use builder::RedisBackendBuilder;
pub use durability::Durability;
