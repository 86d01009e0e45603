//! etcd v3 lease backend for `leasehold`: [`EtcdBackend`] implements
//! [`leasehold_core::LockBackend`] on an etcd cluster through the `etcd-client` crate.
//!
//! # How leases map onto etcd
//!
//! - **Keys.** A routine named `report` is held in the key `routine/lock/report` (the
//!   prefix is configurable). Its value names the holder's process, its backend (by a
//!   random nonce) and the acquire attempt that wrote it, so that an attempt can tell
//!   its own write from anyone else's, then the holder's wall-clock time at acquire and
//!   its identity, last and verbatim:
//!   `leasehold-etcd v2 pid 42 backend 00000000000000ab attempt 7 acquired_ms
//!   1764618145123 holder replica-a:17`. The prefix must end with `/` and names must not
//!   contain one: otherwise two applications under different prefixes could lock
//!   different routines in one key (prefix `a/` with name `b/c`, prefix `a/b/` with name
//!   `c`). A prefix without the final `/` is an
//!   [`Error::Config`](leasehold_core::Error::Config) at build, a name with a `/` an
//!   [`Error::InvalidName`](leasehold_core::Error::InvalidName) from every operation.
//! - **Sessions.** A backend holds all its keys through one etcd lease per TTL (usually
//!   one in all), the *session*: 10,000 held routines cost one keep-alive per refresh
//!   period, not 10,000. Keep-alives are sent only when the runner refreshes, never on a
//!   timer; concurrent refreshes share one keep-alive sent after they were all called, so
//!   each refresh is backed by a keep-alive sent after it started. If the session lease
//!   is lost (etcd says it is unknown, or no keep-alive was confirmed for a whole TTL),
//!   every key held through it reports [`Error::Lost`](leasehold_core::Error::Lost) and the
//!   next acquire grants a new session.
//! - **Acquire** is one transaction: create the key under the session lease only if it
//!   does not exist (create revision 0). **Refresh** keeps the session alive and checks
//!   that the key still exists with our create revision and session lease. **Release**
//!   deletes the key only if its create revision is still ours.
//! - **Abandoned acquires.** An acquire whose caller stopped waiting, or that got no
//!   answer, may still take the key in etcd, where no lease object would ever release
//!   it while the session lives. Its key is deleted (only if it still holds the value
//!   that acquire wrote, on our session) once the answer says it was taken. Without an
//!   answer, etcd may apply the acquire late, after a delete: the delete is repeated
//!   with the session's keep-alives until etcd has answered one sent at least a TTL
//!   after the acquire. (An acquire applied later still leaves its key until the
//!   session ends.)
//! - **Fencing token**: the key's create revision. etcd's revision grows with every
//!   write to the cluster, so each acquisition gets a larger one than all before it.
//!   (Wiping the cluster's data resets revisions, and with them this guarantee.)
//! - **Release notifications** wake one waiting backend per release (etcd's election
//!   recipe): a backend waiting for a name puts a key of its own in the name's line,
//!   `routine/wait/<name>/<lease>-<n>` (the key prefix's last segment `lock` becomes
//!   `wait`, any other `s` becomes `s.wait`), under a waiter lease of 10 s kept alive
//!   while it waits, and only the first in line (the lowest create revision) is woken
//!   by the deletion of the lock key (a release or an expiry). The others wait for the
//!   key just before theirs to go and look again. A waiter key goes when its backend
//!   acquires the name, a second after it stopped waiting, or with its lease (a crashed
//!   waiter holds up the line for 10 s at most; the runner's expiry polling, about once
//!   per TTL, does not depend on the line). One watch stream per backend on the key
//!   prefix and one on the waiter prefix, for deletes only, dispatched locally. With
//!   etcd's access control on, the backend's role needs read-write access to the waiter
//!   prefix as well as the key prefix: a waiter that cannot join the line has its wait
//!   fail, and the runner then polls (at the retry interval) instead of being woken.
//! - **Expiry reports**: [`expires_in`](leasehold_core::LockBackend::expires_in) asks the
//!   holder's lease for its remaining time (`LeaseTimeToLive`), rounded up to the next
//!   whole second. A key that is there is never reported free: one whose lease expired
//!   but which etcd has not deleted yet (etcd revokes expired leases every 500 ms, at
//!   most 1,000 a second) is reported as 500 ms from expiry, and one without a lease as
//!   never expiring (the longest TTL etcd grants), so waiters pause instead of trying
//!   again at once.
//! - **Operator queries**: [`describe`](leasehold_core::LockBackend::describe) reads the
//!   key and asks its lease's remaining time; the holder identity and `acquired_at` (the
//!   *holder's* clock: etcd keeps no time with a key) come from the value, and a key
//!   whose value does not name them (an older version's) is described without them.
//!   [`list`](leasehold_core::LockBackend::list) is one range read under the prefix (per
//!   1,000 keys) and one `LeaseTimeToLive` per distinct lease.
//!   [`force_release`](leasehold_core::LockBackend::force_release) deletes the key,
//!   which wakes waiters; the holder's next refresh reports
//!   [`Error::Lost`](leasehold_core::Error::Lost).
//!
//! # Records
//!
//! The [record](leasehold_core::LockBackend::write_record) of a name lives in a key of its
//! own, under a sibling of the key prefix: the prefix's last segment `lock` becomes
//! `record` (`routine/lock/report` keeps its record in `routine/record/report`), any
//! other last segment `s` becomes `s.record` (prefix `billing/locks/` keeps records
//! under `billing/locks.record/`). Record keys are never under the key prefix, so the
//! release watch and [`list`](leasehold_core::LockBackend::list) never see them; do not
//! configure another application's key prefix to be this record prefix. A record has no
//! etcd lease: it **persists** after every lease is gone, until deleted by hand
//! (`etcdctl del routine/record/<name>`). A write is one transaction comparing the lock
//! key's create revision with the writer's fencing token (so it is
//! [fenced](leasehold_core::RecordWrite::Fenced) once the key was released, expired or
//! acquired again) and the record with the expected value, then putting the value.
//!
//! # TTLs
//!
//! etcd lease TTLs are whole seconds, and etcd raises any TTL below its minimum (1.5
//! election timeouts, rounded up: 2 s with the default 1 s election timeout) to that
//! minimum. This backend asks the cluster its minimum when it connects and declares it
//! as [`Capabilities::min_ttl`](leasehold_core::Capabilities::min_ttl). At the other end,
//! etcd refuses leases longer than 9,000,000,000 s (its `MaxLeaseTTL`, about 285 years),
//! which the backend declares as [`Capabilities::max_ttl`](leasehold_core::Capabilities::max_ttl).
//! Every acquire and refresh checks its TTL against both bounds before asking etcd: a TTL
//! outside them is an [`Error::InvalidTtl`](leasehold_core::Error::InvalidTtl), not a server
//! error. TTLs within them are rounded up to whole seconds
//! ([`Capabilities::ttl_granularity`](leasehold_core::Capabilities::ttl_granularity) is
//! 1 s), so a lease is never shorter than asked.
//!
//! # Clusters
//!
//! Give every member's client endpoint (`etcd://a:2379,b:2379,c:2379/prefix/`, or
//! `ROUTINE_ETCD_ENDPOINTS=a:2379,b:2379,c:2379`). A backend sends its requests to one
//! member at a time, the first endpoint at first, and moves to the next when that member
//! refuses connections (the request is then sent to the next member at once, unseen by
//! the caller), breaks a connection, answers that it has no leader (requests carry
//! etcd's `hasleader` requirement, so a member cut off from the others says so instead
//! of holding them), or does not answer within the request's deadline (a paused or
//! partitioned member: that refresh fails with a timeout, and the next one goes to the
//! next member). A member that fails is thus left within one refresh, and a held lease
//! survives the loss of a minority of members that keeps the leader. While the cluster
//! elects a new leader (one to two election timeouts, 1 s each by default, after the leader is
//! gone), no member renews a lease: a TTL shorter than that plus a refresh interval may
//! be lost to a leader's death; etcd itself extends every lease by an election timeout
//! when a new leader takes over, so the key outlives the election on the server.
//!
//! # Versions
//!
//! Tested against etcd 3.4 (a single member, and a three-member cluster); it uses only the v3 KV, lease and watch APIs that etcd has
//! had since 3.0 (and 3.5 and 3.6 keep), so any etcd 3.x server is expected to work.
//!
//! # Configuration
//!
//! [`EtcdBackend::builder`], [`EtcdBackend::from_env`] (`ROUTINE_ETCD_*` variables) or
//! [`EtcdBackend::from_url`] (`etcd://user:password@host:2379,host2:2379/prefix/`,
//! `etcds://` for TLS). TLS needs the `tls` feature (on by default). `Debug` output never
//! shows the password.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use leasehold_core::{LockBackend, LockKey};
//! use leasehold_etcd::EtcdBackend;
//!
//! # async fn f() -> leasehold_core::Result<()> {
//! let backend = EtcdBackend::builder()
//!     .with_endpoints(["127.0.0.1:2379"])
//!     .build()
//!     .await?;
//! let key = LockKey::new("nightly-report")?;
//! match backend.try_acquire(&key, Duration::from_secs(10)).await? {
//!     Some(mut lease) => {
//!         println!("fencing token {}", lease.fencing_token());
//!         lease.refresh(Duration::from_secs(10)).await?;
//!         lease.release().await?;
//!     }
//!     None => backend.released(&key).await?, // someone else holds it: wait for them
//! }
//! # Ok(()) }
//! ```
//!
//! # Feature flags
#![doc = document_features::document_features!()]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod abandon;
mod acquire;
mod backend;
mod channel;
mod check;
mod config;
mod error;
mod expiry;
mod handshake;
mod holder;
mod key;
mod lease;
mod line;
mod operator;
mod orphan;
mod parse;
mod record;
mod session;
mod settings;
mod tls;
mod value;
mod watch;

pub use backend::EtcdBackend;
pub use config::EtcdBackendBuilder;
pub use settings::{DEFAULT_ENDPOINT, DEFAULT_KEY_PREFIX};
