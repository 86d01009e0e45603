//! The Redis lease backend of `leasehold`, compatible with the Go original's locks.
//!
//! [`RedisBackend`] implements [`leasehold_core::LockBackend`] on one Redis server, a
//! primary behind a stable address, or the master a set of Redis Sentinels names (see
//! [Sentinel](#sentinel)), or, opt-in, a Redis Cluster (see [Redis Cluster](#redis-cluster):
//! keys with a hash tag, not compatible with the Go original).
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
//!   routine:released:<name>` with the id of the one waiter it wakes (see
//!   [Release notifications](#release-notifications)); otherwise nothing is touched.
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
//! TTL otherwise. The waiters of a name, `routine:waiters:<name>` (see
//! [Release notifications](#release-notifications)), expire once nobody has registered
//! in them for their longest registration (10 s, or twice the lock's TTL). The fence
//! counter `routine:fence:<name>` is never deleted by the backend, so that tokens keep
//! increasing: **one small key per distinct name ever acquired** (under 100 bytes with
//! Redis's overhead). With a fixed set of routines that is nothing; with names made up
//! at run time (one per customer or job id) they add up.
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
//! One backend uses **three connections** however many routines it holds or waits for
//! (two over TLS; in cluster mode, two per node: see [Redis Cluster](#redis-cluster)):
//!
//! - one multiplexed command connection (the `redis` crate's `ConnectionManager`):
//!   requests are pipelined on it, so renewals of many leases never queue behind each
//!   other; it reconnects after an I/O failure. A failure it does not recover from by
//!   itself replaces it with a new one: refused credentials (its reconnection keeps the
//!   refusal and returns it to every later request, even once the password is fixed on
//!   the server) and `READONLY` (a connection stays on the node it reached, which a
//!   failover behind a fixed address demoted to a replica). The request that finds such
//!   a failure opens the new connection and is sent once more on it; at most one
//!   replacement is opened per second, so the runner's backoff paces them;
//! - one direct lane (a plain TCP or Unix socket connection named `leasehold-lane`,
//!   not used over TLS): a single command first goes there if no other request is on
//!   it, written and answered on the caller's own task, without the manager's hand-off
//!   to its driver task and back (15 to 20% of an uncontended acquire + release on
//!   the benchmark machine, see BENCHMARKS.md). A request that finds it busy uses the manager; one whose lane
//!   connection fails is sent again on the manager; what follows a request dropped on
//!   it is queued behind that request's answer. See `src/lane.rs`;
//! - one pub/sub connection subscribed once to `routine:released:*`, whose messages wake
//!   the local waiters of [`LockBackend::released`](leasehold_core::LockBackend::released)
//!   (see [Release notifications](#release-notifications)).
//!   If it fails, waiters get an error and the runner polls; acquire, refresh and release
//!   do not depend on it. The next wait reconnects it, on a new connection each time, so
//!   credentials fixed on the server are picked up too.
//!
//! # Release notifications
//!
//! A release wakes **one waiting backend**, not every one, so that W processes waiting
//! for a name do not all try at once on every handover. Each backend has a random waiter
//! id (16 hex digits). While a [`released`](leasehold_core::LockBackend::released) wait
//! of a backend on a name is pending (and its notifications are up),
//! [`expires_in`](leasehold_core::LockBackend::expires_in), which the runner calls after
//! every failed attempt, registers the backend in the sorted set
//! `routine:waiters:<name>` ([`RedisBackend::waiters_key`]) with a deadline of now +
//! max(10 s, 2 × the lock's `PTTL`), by the server's clock, in the same script as the
//! `PTTL`: no extra request. The release script drops the entries past their deadline,
//! takes out the one with the highest deadline (the waiter that registered last or
//! against the longest lease left; most likely still there), and publishes the name's
//! release channel on that backend's own channel `routine:wake:<waiter id>`, which its
//! pub/sub connection subscribes to besides, while the backend waits on any name,
//! `PSUBSCRIBE routine:released:*`: no other process receives anything. A backend that
//! only holds drops that pattern on the first release message it hears, so it does not
//! read every release of every name (its own included). With nobody registered it publishes the empty message on
//! `routine:released:<name>`, which wakes every waiter, as every release did before; so
//! does [`force_release`](leasehold_core::LockBackend::force_release). In cluster mode
//! the picked waiter's id is published on the name's sharded channel instead, which
//! every waiting backend receives and only the one named acts on. Acquiring the name
//! takes the taker out of the set (in the acquire script), and a release never picks the
//! releasing backend.
//!
//! - A picked waiter that died or stopped waiting without leaving the set wakes nobody:
//!   the others learn that the name is free at their next `expires_in`, which the runner
//!   sends when the released lease would have run out, so within that lease's TTL. A
//!   dead waiter is skipped once its deadline has passed.
//! - A backend whose waits on a name never call `expires_in` (such as the runner's
//!   observers) is not registered and is never picked: a release that picked nobody
//!   wakes it, and one that picked a waiter reaches it at its next poll (in cluster
//!   mode it is woken by every release, as before).
//! - Processes of an older version never register and wake on any message of the
//!   release channel; their releases wake everyone, and releases that picked a waiter
//!   reach them by polling: mixed fleets keep working.
//! - An ACL user whose channels are restricted needs both `routine:released:*` and
//!   `routine:wake:*` (`&routine:released:* &routine:wake:*`): the release script
//!   publishes on either, and a refused `PUBLISH` fails the release after its `DEL`.
//! - A Go instance ignores the waiters key, and its releases publish nothing (the
//!   runner's `expires_in` polling finds them, as before).
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
//! TLS by rustls: no OpenSSL; `redis+sentinel://`, see [Sentinel](#sentinel);
//! `redis+cluster://`, see [Redis Cluster](#redis-cluster)) and [`RedisBackend::from_env`] (the Go original's
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
//! # Sentinel
//!
//! `redis+sentinel://[user[:password]@]host1:26379,host2:26379,host3:26379/<master name>[/db]`
//! (also written `redis-sentinel://`), the form the Redis ecosystem uses for Sentinel,
//! [`RedisBackendBuilder::with_sentinels`] with
//! [`with_master_name`](RedisBackendBuilder::with_master_name), or
//! `ROUTINE_REDIS_SENTINELS` with `ROUTINE_REDIS_SENTINEL_MASTER`: the backend asks the
//! sentinels (through the `redis` crate's Sentinel client) for the master and connects
//! to it. The user and password in the URL are the master's; sentinels that require a
//! password take [`with_sentinel_credentials`](RedisBackendBuilder::with_sentinel_credentials)
//! or the URL parameters `sentinel_username` and `sentinel_password`.
//!
//! **Sentinel over TLS.** `rediss+sentinel://` (or `rediss-sentinel://`), or TLS turned on
//! with [`with_tls`](RedisBackendBuilder::with_tls), a TLS file or `ROUTINE_REDIS_TLS`,
//! reaches the sentinels and the master they name over TLS, with the same settings as
//! `rediss://` (`ca_file`, `cert_file` and `key_file` parameters, the builder's TLS
//! setters, the `ROUTINE_REDIS_*_FILE` variables) for both. As with `rediss://`, the
//! certificates must be issued for the host connected to: the sentinels' addresses, and
//! the address the sentinels give for the master (its `replica-announce-ip`). A TLS
//! failure with every sentinel is the typed error of a `rediss://` connection (an
//! untrusted certificate is [`Error::Unavailable`](leasehold_core::Error::Unavailable)
//! saying so).
//!
//! **Following the master.** A request that fails in a way a failover explains (the
//! connection refused, reset, dropped or timed out, `READONLY` from a demoted master,
//! `WAIT` refused by a replica, too few replicas confirming in durable mode) asks the
//! sentinels again, at most once a second, and moves the command connection to the
//! master they name if it changed (a different address, or the same address in a later
//! epoch); the request is then sent once more there. Until the sentinels have answered
//! since such a failure, an acquire is not sent (it fails with a transient error): it
//! needs the master's epoch, and the client re-establishes a dropped connection to the
//! same address, which may serve a master of another epoch by then. Scripts are loaded again
//! on the new master when it answers `NOSCRIPT`; the batched refresh goes wherever the
//! command connection goes; the release notifications subscribe again, on the master of
//! the moment, at the next wait after their connection closed (until then, a demoted
//! master still passes on what the new master publishes, as replicas do). While the
//! sentinels fail over (a few seconds after the master stops answering, with
//! `down-after-milliseconds` of 1 s), requests fail with transient errors that the runner
//! retries.
//!
//! Connecting fails with [`Unavailable`](leasehold_core::Error::Unavailable) saying
//! "no sentinel reachable" (with each sentinel's address and failure) when none answers,
//! and with [`Misconfigured`](leasehold_core::Error::Misconfigured) naming the master
//! when the sentinels answer but none monitors a master of that name; a URL without a
//! master name, or with a malformed sentinel list, is
//! [`Config`](leasehold_core::Error::Config).
//!
//! **Fencing tokens across failovers.** Every failover gives the new master's
//! configuration a Sentinel `config-epoch` higher than any before it (the epoch in which
//! the sentinels elected the leader that promoted it). The backend takes the highest
//! `config-epoch` the reachable sentinels report for the master it connects to, and the
//! acquire script raises the name's counter to at least `epoch << 40` before
//! incrementing it. So a token is `epoch << 40 | n`: every token handed out by a master of
//! an earlier epoch is below `(epoch_old + 1) << 40 <= epoch << 40`, below every token
//! of the new master, even if the new master lost fencing increments in the failover.
//! It cannot go backwards as long as a name is acquired fewer than 2^40 times per epoch
//! and no master is restarted empty without a failover (a master without persistence
//! restarted before the sentinels notice comes back with its counters at 0 in the same
//! epoch; the Sentinel documentation warns against restarting such masters
//! automatically). Before the first failover the epoch is 0 and tokens are the plain
//! counter, as on a single server.
//!
//! # Redis Cluster
//!
//! `redis+cluster://[user[:password]@]host1:port,host2:port,...[/]` (`rediss+cluster://`
//! for TLS, with the same `ca_file`, `cert_file` and `key_file` parameters as
//! `rediss://`), [`RedisBackendBuilder::with_cluster_nodes`] or
//! `ROUTINE_REDIS_CLUSTER_NODES=host1:port,host2:port` turn on cluster mode. The Redis
//! ecosystem has no standard cluster URL; this one lists seed nodes as the Sentinel URL
//! lists sentinels (port 6379 by default), takes no database (a cluster has database 0
//! only: another is [`Config`](leasehold_core::Error::Config)) and takes the durability
//! parameters. Cluster and Sentinel settings together are
//! [`Config`](leasehold_core::Error::Config).
//!
//! **Keys.** Every key of a name carries the name as a hash tag, so that they share a
//! slot and each script touches keys of one slot: `routine:lock:{<name>}`,
//! `routine:fence:{<name>}`, `routine:record:{<name>}`, `routine:waiters:{<name>}`,
//! and releases are announced on
//! `routine:released:{<name>}`. **This is not the Go original's layout**: a Go instance
//! and a Rust instance in cluster mode do not exclude each other (Go's bsm/redislock
//! keys have no hash tag). [`RedisBackend::lock_key`] and its siblings return the cluster
//! form. A name starting with `}` would make an empty hash tag and is refused
//! ([`InvalidName`](leasehold_core::Error::InvalidName)) by acquire, record writes and
//! [`RedisBackend::forget_fencing`]; a namespace may not contain `{` or `}`.
//!
//! **Requests** go through the `redis` crate's cluster connection
//! (`redis::cluster_async::ClusterConnection`), which reads the slot layout from the first
//! seed node that answers, sends each script to the master of its keys' slot, and follows
//! `MOVED`/`ASK` redirections and failovers (it reads the layout again when a node fails
//! or redirects). Its connection and response timeouts are the connect and request
//! timeouts; it retries a request at most three times, within the request timeout (its
//! overall bound), and the backend's own bound on a request (two fifths of a lease's TTL
//! at most) still applies. The batched refresh runs one script per slot of the leases it
//! refreshes (a script touches keys of one slot only), the scripts of one master sent
//! together in one pipeline (by the slot layout last read with `CLUSTER SLOTS`; a
//! script the layout sent to the wrong master is sent again on its own, routed by its
//! keys), all masters at once; [`describe`](leasehold_core::LockBackend::describe) of
//! many names sends one script per slot, all at once; [`list`](leasehold_core::LockBackend::list) asks `CLUSTER NODES` for
//! the masters serving slots and `SCAN`s each of them. Connecting to nodes none of which
//! answers is [`Unavailable`](leasehold_core::Error::Unavailable) naming the seed nodes;
//! a server without cluster support is
//! [`Misconfigured`](leasehold_core::Error::Misconfigured).
//!
//! **Release notifications** use sharded pub/sub (Redis 7 or later: the release script
//! sends `SPUBLISH`, so **cluster mode needs Redis 7**, checked at connect: an older
//! server is [`Misconfigured`](leasehold_core::Error::Misconfigured)): the channel
//! `routine:released:{<name>}` shares the lock's slot, so a release is announced on the
//! name's shard only. A second cluster connection (RESP3, one connection per node as
//! for commands) subscribes with `SSUBSCRIBE` to the channel of each name someone waits for, and unsubscribes when nobody does. The
//! `redis` crate subscribes again on the slot's new master after a failover or a slot
//! migration; every waiter is woken (spuriously) when a node's connection drops, since a
//! release may be missed meanwhile. A wait subscribes first, then checks that the lock is
//! still held (one `PTTL`), so a release between a failed acquire and the subscription
//! is not missed. A release wakes one registered waiter here too (its id is the
//! `SPUBLISH`ed message).
//!
//! **Fencing tokens** are the name's counter on its slot's master, strictly increasing
//! **as long as no failover loses writes**. Without durable mode, a master that fails
//! before a write reaches its replica loses it when the replica is promoted: a lost lock
//! lets a second process in for up to the rest of the holder's TTL, and a lost increment
//! of the counter hands out a token again (cluster mode has no epoch floor under tokens:
//! a script cannot read the node's configuration epoch). A master cut off from the
//! majority of masters keeps taking writes from the clients that reach it until
//! `cluster-node-timeout` passes (then it refuses them), while its replica may already
//! have been promoted on the other side: two holders for that long. Durable mode works
//! as with one server: the script and its `WAIT` go in one pipeline to the master of the
//! name's slot, and `count` is the number of replicas **of that master** that must
//! confirm; with `count` = every replica of each master, a failover keeps every
//! confirmed lock and counter (Redis Cluster promotes one of the master's replicas).
//!
//! # Durability and what each mode guarantees
//!
//! Redis replicates asynchronously. [`Durability`] (`with_durability`, the URL
//! parameters `durable_replicas` and `durable_timeout`, or `ROUTINE_REDIS_DURABLE_REPLICAS`
//! and `ROUTINE_REDIS_DURABLE_TIMEOUT`) chooses when an acquire or refresh counts:
//!
//! - **[`Durability::Master`]** (the default): when the master acknowledges it. A master
//!   that fails before a write reaches a replica loses it in the failover. A lost
//!   **lock key** lets a second process acquire while the first still holds, for up to the
//!   rest of the first holder's TTL (it learns at its next refresh, which reports
//!   [`Lost`](leasehold_core::Error::Lost)); measured on the test topology with the
//!   replication held back, a master kill let a second holder in 3.4 s after the kill,
//!   6.6 s before the first holder's deadline (TTL 10 s). A lost **fencing increment** does
//!   not make tokens go backwards after a master *kill* as long as the epoch the backend
//!   read is the new master's; a test of five kills saw it lag (epochs 1, 1, 1, 4, 4), so
//!   a token can repeat. A master
//!   *cut off from the sentinels* while clients still reach it keeps taking writes from
//!   the clients connected to it until it is demoted: two holders, and tokens of the old
//!   epoch handed out after tokens of the new one, for that long (Redis's
//!   `min-replicas-to-write` bounds it on the server side). Measured: a process that
//!   connected after the failover held the name 5.1 s after the cut (once the lock,
//!   no longer refreshed there, expired on the new master), while the old holder kept
//!   refreshing on the old master (4 refreshes in the next second) until the cut healed;
//!   Sentinel demotes a returning old master about 8 to 10 s after it is reachable again.
//! - **[`Durability::Replicas`] with `count` = the number of replicas**: an acquire, its
//!   fencing increment and every refresh count only once every replica has them, so the
//!   promoted replica has the lock with an expiry no earlier than the holder's deadline
//!   and the counter of every token handed out. **No second holder gets in before the
//!   first holder's deadline** (the only overlap left is the old holder's stale steps,
//!   if it keeps acting past its deadline), and **no token is ever lower than an earlier
//!   one**. A master cut off from the sentinels confirms nothing once a replica is
//!   promoted away from it, so its holders stop at their deadlines (measured: a newcomer
//!   trying until a second past the holder's deadline found the lock held every time).
//!   The cost is
//!   availability: with a server down, nothing is confirmed until it is back as a replica
//!   (acquires fail with a transient error the runner retries, holders reach their
//!   deadlines); measured, after a master kill and the old master's return 2.3 s later,
//!   the next holder got the lock 3.0 s after the kill, right after the first holder's
//!   deadline (TTL 3 s). Over five master kills in a row (TTL 2 s) the lease changed hands
//!   2.1 to 3.4 s after each kill, once 12.3 s (the sentinels re-pointed the remaining
//!   replica late), never before the holder's deadline, with tokens `(epoch, counter)`
//!   `(1, 1)`, `(2, 1)`, ... `(5, 11)`.
//! - **`count` below the number of replicas**: a confirmed write is on `count` replicas,
//!   but Sentinel may promote one without it (it prefers the replica with the most
//!   replicated data, but its choice also follows `replica-priority` and how long each
//!   was disconnected): a failover usually keeps the lock, but may lose it as in the
//!   default mode, and the epoch floor under tokens (the `config-epoch` last read from
//!   the sentinels) can lag failovers, so a lost counter increment can repeat a token;
//!   with a master cut off from the sentinels, its remaining replicas can keep confirming
//!   its writes until the sentinels re-point them, so two holders and interleaved epochs
//!   are possible for that long.
//!
//! A write that is not confirmed: an acquire is undone (the lock released) and reported
//! as [`Unavailable`](leasehold_core::Error::Unavailable) saying how many replicas
//! confirmed; a refresh is reported the same way and does not extend the lease. Releases
//! (and the undoing of an unconfirmed acquire) are not waited for: one lost in a failover
//! leaves the lock held by nobody until its TTL ends, which delays the next holder but
//! never lets two in. `WAIT`
//! blocks the command connection while it waits: with replicas in sync it answers within
//! a round trip, and with one lagging or gone every request queues behind it for up to
//! its timeout (500 ms by default, at most half a request's bound); a contended acquire
//! sends its `WAIT` too (it is pipelined with the script, on the same connection, which
//! is what makes its count meaningful). Durable mode works on a single server with
//! replicas too, without Sentinel.
//!
//! A master paused (`SIGSTOP`) past the failover is left behind the same way: requests
//! to it time out, the next one asks the sentinels and moves. Measured, with a failover
//! 3.2 s after the pause, the holder refreshed on the new master 3.7 s after it (TTL 6 s:
//! it kept its lease); a holder whose TTL is shorter than the failover loses its lease.
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

/// The backend's name in errors.
pub(crate) const NAME: &str = "redis";

mod abandon;
mod backend;
mod builder;
mod client;
mod cluster;
mod config;
mod conn;
mod connection;
mod durability;
mod error;
mod eval;
mod eviction;
mod handshake;
mod lane;
mod lease;
mod notify;
mod operator;
mod scripts;
mod sentinel;
mod sharded;
mod tls;
mod value;

pub use backend::RedisBackend;
pub use builder::RedisBackendBuilder;
pub use config::Durability;
