//! The backend in Redis Cluster mode, on a real local cluster (three masters with one
//! replica each): the conformance suite, the errors of malformed settings and of
//! unreachable nodes, names spread over every master, release notifications on the
//! name's shard, `notifications_active` across a cut subscription connection, and a held
//! name across a kill of its slot's master and an acknowledged lock lost in one without
//! durable mode (each on a cluster of its own, since it harms the cluster).

mod common;

use std::time::{Duration, Instant};

use common::{Deadline, unique_key, within};
use leasehold_conformance::servers::{
    RedisCluster, RedisServer, ServerProcess, TempDir, TestCertificates, find_binary, free_port,
    wait_for_port,
};
use leasehold_core::{Error, Lease, LockBackend, LockKey};
use leasehold_redis::{RedisBackend, RedisBackendBuilder};

mod conformance {
    use leasehold_conformance::servers::RedisCluster;
    use leasehold_redis::RedisBackend;

    leasehold_conformance::conformance_tests!(|| async {
        let Some(cluster) = RedisCluster::shared() else {
            leasehold_conformance::skip("redis-server is not installed");
        };
        RedisBackend::from_url(&cluster.url())
            .await
            .unwrap_or_else(|err| panic!("cluster backend must connect: {}", err.chain()))
    });
}

/// The suite again in durable mode: every acquire and refresh waits for the replica of
/// its slot's master (`WAIT` pipelined behind the script, on the same node).
mod conformance_durable {
    use leasehold_conformance::servers::RedisCluster;
    use leasehold_redis::RedisBackend;

    leasehold_conformance::conformance_tests!(|| async {
        let Some(cluster) = RedisCluster::shared() else {
            leasehold_conformance::skip("redis-server is not installed");
        };
        RedisBackend::from_url(&format!("{}?durable_replicas=1", cluster.url()))
            .await
            .unwrap_or_else(|err| panic!("durable cluster backend must connect: {}", err.chain()))
    });
}

/// Bound for "did not hang", and for a holder again after a failover.
const HANG: Duration = Duration::from_secs(20);

/// A backend on `cluster` with short timeouts, so that a failed node shows quickly.
async fn backend(cluster: &RedisCluster) -> RedisBackend {
    RedisBackend::builder()
        .with_url(cluster.url())
        .with_connect_timeout(Duration::from_millis(500))
        .with_request_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_or_else(|err| panic!("cluster backend must connect: {}", err.chain()))
}

fn shared() -> Option<&'static RedisCluster> {
    let cluster = RedisCluster::shared();
    if cluster.is_none() {
        eprintln!("skipped: redis-server is not installed");
    }
    cluster
}

/// A raw connection to node `i`, to look at what it holds.
async fn node(cluster: &RedisCluster, i: usize) -> redis::aio::MultiplexedConnection {
    let port = cluster.node_ports()[i];
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn blocking<T>(call: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(call)
}

fn assert_config(err: &Error, expected: &str) {
    assert!(
        matches!(err, Error::Config { .. }) && err.chain().contains(expected),
        "expected a config error containing {expected:?}, got {}",
        err.chain()
    );
}

#[tokio::test]
async fn malformed_cluster_settings_are_config_errors_naming_the_problem() {
    for (url, expected) in [
        ("redis+cluster://", "no cluster node address"),
        ("redis+cluster://a:x", "not a number"),
        ("redis+cluster://a:7000/3", "database 0 only"),
        (
            "redis+cluster://a:7000?foo=1",
            "unsupported URL parameter `foo`",
        ),
    ] {
        let err = RedisBackend::from_url(url).await.unwrap_err();
        assert_config(&err, expected);
        assert!(err.chain().contains("url"), "{}", err.chain());
    }
    let err = RedisBackend::builder()
        .with_cluster_nodes(Vec::<String>::new())
        .build()
        .await
        .unwrap_err();
    assert_config(&err, "cluster_nodes");
    let err = RedisBackendBuilder::from_env_with(|name| {
        (name == "ROUTINE_REDIS_CLUSTER_NODES").then(|| " , ".to_owned())
    })
    .unwrap_err();
    assert_config(&err, "ROUTINE_REDIS_CLUSTER_NODES");
    let err = RedisBackend::builder()
        .with_cluster_nodes(["127.0.0.1:7000"])
        .with_namespace("a{b}")
        .build()
        .await
        .unwrap_err();
    assert_config(&err, "namespace");
}

#[tokio::test]
async fn unreachable_cluster_nodes_are_unavailable_naming_them_within_the_connect_timeout() {
    let nodes = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let started = Instant::now();
    let err = within(
        HANG,
        "connect to unreachable nodes",
        RedisBackend::builder()
            .with_cluster_nodes(&nodes)
            .with_connect_timeout(Duration::from_millis(500))
            .build(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. } | Error::Timeout { .. }),
        "{}",
        err.chain()
    );
    assert!(
        err.chain().contains(&nodes[0]) || matches!(err, Error::Timeout { .. }),
        "the error names the nodes tried: {}",
        err.chain()
    );
    assert!(err.is_transient(), "{}", err.chain());
    eprintln!(
        "unreachable cluster reported after {:?}: {}",
        started.elapsed(),
        err.chain()
    );
}

#[tokio::test]
async fn a_server_without_cluster_mode_is_misconfigured() {
    let Some(server) = RedisServer::shared() else {
        eprintln!("skipped: redis-server is not installed");
        return;
    };
    let err = within(
        HANG,
        "connect in cluster mode to a plain server",
        RedisBackend::builder()
            .with_cluster_nodes([format!("127.0.0.1:{}", server.port())])
            .with_connect_timeout(Duration::from_millis(500))
            .build(),
    )
    .await
    .unwrap_err();
    eprintln!("{}", err.chain());
    assert!(
        matches!(err, Error::Misconfigured { .. }) && err.chain().contains("cluster support"),
        "{}",
        err.chain()
    );
}

/// A name starting with `}` would make an empty hash tag, its keys in different slots:
/// refused by the calls whose script touches several keys, before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_starting_with_a_closing_brace_is_refused_in_cluster_mode() {
    let Some(cluster) = shared() else { return };
    let backend = backend(cluster).await;
    let key = LockKey::new(format!("}}{}", unique_key("brace"))).unwrap();
    let err = backend
        .try_acquire(&key, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidName { .. }) && err.chain().contains("hash tag"),
        "{}",
        err.chain()
    );
    let err = backend.forget_fencing(&key).await.unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }), "{}", err.chain());
    // A `}` later in the name is a hash tag like any other.
    let key = LockKey::new(format!("{}}}x", unique_key("brace"))).unwrap();
    let mut lease = backend
        .try_acquire(&key, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    lease.release().await.unwrap();
}

/// Every master's `maxmemory-policy` is checked, not just one node's: one master that
/// may evict is refused when `noeviction` is required.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_master_that_may_evict_is_refused_when_noeviction_is_required() {
    let Some(cluster) = shared() else { return };
    let build = || {
        RedisBackend::builder()
            .with_url(cluster.url())
            .with_require_noeviction(true)
            .build()
    };
    build()
        .await
        .unwrap_or_else(|err| panic!("every master is noeviction: {}", err.chain()));
    let master = blocking(|| cluster.masters())[2];
    let conn = node(cluster, master).await;
    let set = |policy: &'static str| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg(policy)
                .query_async::<()>(&mut conn)
                .await
                .unwrap();
        }
    };
    set("allkeys-lru").await;
    let refused = build().await;
    set("noeviction").await;
    let err = refused.unwrap_err();
    assert!(
        matches!(err, Error::Misconfigured { .. }) && err.chain().contains("allkeys-lru"),
        "{}",
        err.chain()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_on_every_master_acquire_refresh_list_and_release() {
    let Some(cluster) = shared() else { return };
    let backend = backend(cluster).await;
    let prefix = unique_key("spread").as_str().to_owned();
    let keys: Vec<LockKey> = (0..60)
        .map(|i| LockKey::new(format!("{prefix}-{i}")).unwrap())
        .collect();
    let ttl = Duration::from_secs(10);
    let mut leases: Vec<Box<dyn Lease>> = Vec::new();
    for key in &keys {
        let lease = backend.try_acquire(key, ttl).await.unwrap();
        leases.push(lease.unwrap_or_else(|| panic!("{key} must be free")));
    }
    // Every master holds some of the locks, under the cluster key layout.
    for master in blocking(|| cluster.masters()) {
        let mut conn = node(cluster, master).await;
        let (_, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(format!("routine:lock:{{{prefix}-*"))
            .arg("COUNT")
            .arg(100_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            !found.is_empty(),
            "master node {master} holds none of the 60 locks"
        );
        for lock in &found {
            let slot = RedisCluster::slot_of(lock);
            assert_eq!(blocking(|| cluster.master_of_slot(slot)), master, "{lock}");
        }
    }
    assert_eq!(
        backend.lock_key(&keys[0]),
        format!("routine:lock:{{{}}}", keys[0])
    );
    let refreshed = backend.refresh_many(&mut leases, ttl).await;
    assert_eq!(refreshed.len(), keys.len());
    for (key, outcome) in keys.iter().zip(&refreshed) {
        assert!(outcome.is_ok(), "{key}: {outcome:?}");
    }
    let listed = backend.list(&prefix).await.unwrap();
    let mut names: Vec<&str> = listed.iter().map(|info| info.key.as_str()).collect();
    names.sort_unstable();
    let mut expected: Vec<&str> = keys.iter().map(LockKey::as_str).collect();
    expected.sort_unstable();
    assert_eq!(names, expected, "list finds the locks of every master");
    for lease in &mut leases {
        lease.release().await.unwrap();
    }
    assert!(backend.list(&prefix).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_a_waiter_through_the_shards_pub_sub_which_it_then_leaves() {
    let Some(cluster) = shared() else { return };
    let holder = backend(cluster).await;
    let waiter = backend(cluster).await;
    assert!(waiter.notifications_active());
    let key = unique_key("notify");
    let mut lease = holder
        .try_acquire(&key, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        let key = key.clone();
        async move { waiter.released(&key).await }
    });
    // The wait is subscribed on the master of the name's slot before the release.
    let channel = format!("routine:released:{{{key}}}");
    let master = blocking(|| cluster.master_of_slot(RedisCluster::slot_of(&channel)));
    let mut conn = node(cluster, master).await;
    let deadline = Deadline::new(HANG, "the waiter subscribed on the name's shard");
    while subscribers(&mut conn, &channel).await == 0 {
        deadline.tick().await;
    }
    assert!(
        !waiting.is_finished(),
        "the lock is held: nothing wakes the waiter"
    );
    lease.release().await.unwrap();
    within(HANG, "the waiter wakes on the release", waiting)
        .await
        .unwrap()
        .unwrap();
    // Nobody waits for the name any more: its channel is left.
    let deadline = Deadline::new(HANG, "the waiter unsubscribed");
    while subscribers(&mut conn, &channel).await > 0 {
        deadline.tick().await;
    }
}

/// In cluster mode too a release wakes one of the registered waiters: the picked
/// backend's id goes out on the name's sharded channel, and the others ignore it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_one_of_three_registered_waiters_through_the_shards_pub_sub() {
    let Some(cluster) = shared() else { return };
    let holder = backend(cluster).await;
    let key = unique_key("wake-one");
    let channel = format!("routine:released:{{{key}}}");
    let slot = RedisCluster::slot_of(&channel);
    // A marker name on the same slot, so its messages come after the name's on each
    // waiter's connection to that master.
    let marker = (0..)
        .map(|i| LockKey::new(format!("{key}-marker-{i}")).unwrap())
        .find(|marker| RedisCluster::slot_of(&format!("{{{marker}}}")) == slot)
        .unwrap();
    let marker_channel = format!("routine:released:{{{marker}}}");
    let ttl = Duration::from_secs(10);
    let mut lease = holder.try_acquire(&key, ttl).await.unwrap().unwrap();
    let mut marker_lease = holder.try_acquire(&marker, ttl).await.unwrap().unwrap();
    let master = blocking(|| cluster.master_of_slot(slot));
    let mut conn = node(cluster, master).await;
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let waiter = backend(cluster).await;
        // Whether the name's release woke this waiter before the marker's release did.
        let waiting = tokio::spawn({
            let (waiter, key, marker) = (waiter.clone(), key.clone(), marker.clone());
            async move {
                let (woken, marked) = (waiter.released(&key), waiter.released(&marker));
                tokio::pin!(woken, marked);
                tokio::select! {
                    biased;
                    woken = &mut woken => woken.map(|()| true),
                    marked = &mut marked => marked.map(|()| false),
                }
            }
        });
        waiters.push((waiter, waiting));
    }
    let deadline = Deadline::new(HANG, "the waiters subscribed on the name's shard");
    while subscribers(&mut conn, &channel).await < 3
        || subscribers(&mut conn, &marker_channel).await < 3
    {
        deadline.tick().await;
    }
    for (waiter, _) in &waiters {
        waiter.expires_in(&key).await.unwrap().expect("held");
    }
    let registered: u64 = redis::cmd("ZCARD")
        .arg(holder.waiters_key(&key))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(registered, 3);
    lease.release().await.unwrap();
    // Nobody registered for the marker: its release wakes everyone.
    marker_lease.release().await.unwrap();
    let mut woken = 0;
    for (_, waiting) in waiters {
        if within(HANG, "the waiter wakes", waiting)
            .await
            .unwrap()
            .unwrap()
        {
            woken += 1;
        }
    }
    assert_eq!(woken, 1, "one release, one waiter woken");
}

/// How many clients of `conn`'s node are subscribed to the sharded `channel`.
async fn subscribers(conn: &mut redis::aio::MultiplexedConnection, channel: &str) -> u64 {
    let (_, subscribers): (String, u64) = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(channel)
        .query_async(conn)
        .await
        .unwrap();
    subscribers
}

/// `notifications_active` follows the sharded pub/sub connection: cutting its connection
/// to the master of the name's shard wakes the waiter and turns it off (the node refuses
/// the backend's user meanwhile, so it stays cut); once the node lets it in again, a wait
/// subscribes again, which turns it on, and a release reaches the new waiter. The
/// backend logs in as a user of its own, so that `ACL SETUSER` and `CLIENT KILL USER`
/// touch its connections only, not those of the tests sharing the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_active_goes_off_when_the_subscription_connection_is_cut_and_on_again() {
    const USER: &str = "notify-cut";
    let Some(cluster) = shared() else { return };
    async fn user(conn: &mut redis::aio::MultiplexedConnection, state: &str) {
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", USER, state, ">notify-pw", "~*", "&*", "+@all"])
            .query_async(conn)
            .await
            .unwrap();
    }
    for i in 0..cluster.len() {
        user(&mut node(cluster, i).await, "on").await;
    }
    let holder = backend(cluster).await;
    let waiter = RedisBackend::builder()
        .with_url(cluster.url())
        .with_username(USER)
        .with_password("notify-pw")
        .with_connect_timeout(Duration::from_millis(500))
        .with_request_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap_or_else(|err| panic!("cluster backend must connect: {}", err.chain()));
    assert!(waiter.notifications_active(), "connected at build");
    let key = unique_key("notify-cut");
    let mut lease = holder
        .try_acquire(&key, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    let channel = format!("routine:released:{{{key}}}");
    let master = blocking(|| cluster.master_of_slot(RedisCluster::slot_of(&channel)));
    let mut conn = node(cluster, master).await;
    let wait = |waiter: &RedisBackend| {
        let waiter = waiter.clone();
        let key = key.clone();
        tokio::spawn(async move {
            let woken = waiter.released(&key).await;
            (woken, waiter.notifications_active())
        })
    };
    let waiting = wait(&waiter);
    let deadline = Deadline::new(HANG, "the waiter subscribed on the name's shard");
    while subscribers(&mut conn, &channel).await == 0 {
        deadline.tick().await;
    }

    user(&mut conn, "off").await;
    let killed: u64 = redis::cmd("CLIENT")
        .arg(&["KILL", "USER", USER])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        killed >= 1,
        "the backend's connections to the master were cut"
    );
    let (woken, active) = within(HANG, "the cut wakes the waiter", waiting)
        .await
        .unwrap();
    woken.unwrap();
    assert!(
        !active,
        "notifications are off once the subscription connection is cut"
    );

    assert!(
        !waiter.notifications_active(),
        "still off while the node refuses the backend"
    );

    user(&mut conn, "on").await;
    let mut waiting = wait(&waiter);
    let deadline = Deadline::new(HANG, "notifications active again");
    while !waiter.notifications_active() || subscribers(&mut conn, &channel).await == 0 {
        if waiting.is_finished() {
            // A wait whose subscription the node refused fails, one woken by the node's
            // reconnection returns (spuriously): the runner waits anew, and so do we.
            waiting = wait(&waiter);
        }
        deadline.tick().await;
    }
    assert!(!waiting.is_finished(), "the lock is still held");
    lease.release().await.unwrap();
    let (woken, active) = within(HANG, "the release wakes the new waiter", waiting)
        .await
        .unwrap();
    woken.unwrap();
    assert!(active, "a release, not a cut, woke it");
}

/// Kills the master of a held name's slot while a waiter waits for the name: once its
/// replica took over, the backend follows (the holder keeps its lease, or, if the
/// failover lost the lock, takes it again), the batched refresh of names on every
/// master answers again (its cached slot map is stale), the waiter's subscription is on
/// the new master, and the release there wakes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_follows_a_failover_of_the_names_master() {
    let Some(mut cluster) = RedisCluster::start() else {
        eprintln!("skipped: redis-server is not installed");
        return;
    };
    let holder = backend(&cluster).await;
    let waiter = backend(&cluster).await;
    let key = unique_key("failover");
    let ttl = Duration::from_secs(10);
    let mut lease = holder.try_acquire(&key, ttl).await.unwrap().unwrap();
    let token = lease.fencing_token();
    let mut others: Vec<Box<dyn Lease>> = Vec::new();
    for i in 0..30 {
        let other = LockKey::new(format!("{key}-{i}")).unwrap();
        others.push(holder.try_acquire(&other, ttl).await.unwrap().unwrap());
    }
    assert!(
        holder
            .refresh_many(&mut others, ttl)
            .await
            .iter()
            .all(Result::is_ok)
    );
    // As the runner does: wait, and on a wake (a release, or a spurious one when a node
    // drops) look whether the name is free, else wait again.
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        let key = key.clone();
        async move {
            loop {
                if waiter.released(&key).await.is_ok()
                    && matches!(waiter.expires_in(&key).await, Ok(None))
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let lock = holder.lock_key(&key);
    let old = blocking(|| cluster.kill_master_of(&lock));
    let new = blocking(|| cluster.wait_for_failover(old));
    assert_ne!(old, new);
    let deadline = Deadline::new(HANG, "a holder again after the failover");
    let mut lease = loop {
        match lease.refresh(ttl).await {
            Ok(()) => break lease,
            Err(Error::Lost { .. }) => {
                // The failover lost the lock: it is free on the new master.
                if let Ok(Some(again)) = holder.try_acquire(&key, ttl).await {
                    break again;
                }
            }
            Err(_) => {}
        }
        deadline.tick().await;
    };
    let deadline = Deadline::new(HANG, "a batched refresh answers after the failover");
    loop {
        let outcomes = holder.refresh_many(&mut others, ttl).await;
        // A lock the failover lost is lost; nothing else may fail any more.
        if outcomes
            .iter()
            .all(|outcome| matches!(outcome, Ok(()) | Err(Error::Lost { .. })))
        {
            break;
        }
        deadline.tick().await;
    }
    assert!(
        lease.fencing_token() >= token,
        "the token kept or moved on: {} after {token}",
        lease.fencing_token()
    );
    assert!(waiter.try_acquire(&key, ttl).await.unwrap().is_none());
    let channel = format!("routine:released:{{{key}}}");
    let mut conn = node(&cluster, new).await;
    let subscribed = Deadline::new(HANG, "the waiter subscribed on the new master");
    while subscribers(&mut conn, &channel).await == 0 {
        subscribed.tick().await;
    }
    assert!(
        !waiting.is_finished(),
        "the name is held: the waiter still waits"
    );
    lease.release().await.unwrap();
    within(HANG, "the waiter wakes after the failover", waiting)
        .await
        .unwrap();
    assert!(waiter.try_acquire(&key, ttl).await.unwrap().is_some());
}

/// `rediss+cluster://` with a private CA and a client certificate, on a one-node cluster
/// that serves TLS (and plaintext on a second port, to assign it the slots).
/// What a failover of a name's master does to an acknowledged lock, in both modes, on a
/// cluster of its own (the test kills a master): the replica of the name's master is
/// paused and the replication link filled (32 MB written to keys of the name's slot, more
/// than the loopback socket buffers hold), so that what the master acknowledges next sits
/// in its own output buffer and dies with it. Durable mode refuses the acquire then (no
/// replica confirms it); without durable mode the acquire succeeds, the master is
/// killed, the replica resumed takes over without the lock and its fencing increment:
/// a second holder gets in before the first one's deadline and its token does not
/// increase. The holder's backend then follows the new master and finds its lock lost.
/// About 10 s, mostly the cluster's start and failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_durability_a_failover_loses_an_acknowledged_lock_and_durable_mode_refuses_it() {
    let Some(mut cluster) = RedisCluster::start() else {
        eprintln!("skipped: redis-server is not installed");
        return;
    };
    let holder = backend(&cluster).await;
    let other = backend(&cluster).await;
    let durable = RedisBackend::builder()
        .with_url(format!(
            "{}?durable_replicas=1&durable_timeout=500ms",
            cluster.url()
        ))
        .with_connect_timeout(Duration::from_millis(500))
        // Room for the whole `WAIT` (cut to half the request's bound).
        .with_request_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap_or_else(|err| panic!("durable cluster backend must connect: {}", err.chain()));
    let ttl = Duration::from_secs(10);
    let key = unique_key("lost");
    let lock = holder.lock_key(&key);
    let master = blocking(|| cluster.master_of_slot(RedisCluster::slot_of(&lock)));
    let replica = blocking(|| cluster.replicas_of(master))
        .first()
        .copied()
        .unwrap_or_else(|| panic!("master {master} has a replica in sync"));

    blocking(|| cluster.pause(replica));
    let mut conn = node(&cluster, master).await;
    let chunk = "x".repeat(1 << 20);
    for i in 0..32 {
        let _: () = redis::cmd("SET")
            .arg(format!("fill:{{{key}}}:{i}"))
            .arg(&chunk)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    let refused = durable.try_acquire(&key, ttl).await.unwrap_err();
    assert!(
        matches!(refused, Error::Unavailable { .. }) && refused.chain().contains("replica"),
        "durable mode: the acquire no replica confirms is refused as unconfirmed: {}",
        refused.chain()
    );
    // The refused acquire is undone: its lock is given back in the background.
    let deadline = Deadline::new(HANG, "the refused acquire undone");
    while other.expires_in(&key).await.unwrap().is_some() {
        deadline.tick().await;
    }

    let mut held = holder.try_acquire(&key, ttl).await.unwrap().unwrap();
    let acquired = Instant::now();
    blocking(|| cluster.kill(master));
    let killed = Instant::now();
    blocking(|| cluster.resume(replica));
    let new = blocking(|| cluster.wait_for_failover(master));
    let failed_over = killed.elapsed();
    assert_eq!(new, replica, "the only replica of the master took over");

    let deadline = Deadline::new(HANG, "a second holder after the failover");
    let mut errors = 0;
    let (mut taken, at) = loop {
        match other.try_acquire(&key, ttl).await {
            Ok(Some(lease)) => break (lease, Instant::now()),
            Ok(None) => {}
            Err(_) => errors += 1,
        }
        deadline.tick().await;
    };
    let first_deadline = acquired + ttl;
    let (old_token, new_token) = (held.fencing_token(), taken.fencing_token());
    eprintln!(
        "non-durable cluster master kill: failover {master} -> {new} in {failed_over:?}; \
         second holder {:?} after the acquire, {:?} before the first holder's deadline \
         ({errors} errors while failing over); tokens {old_token} -> {new_token}",
        at - acquired,
        first_deadline.saturating_duration_since(at),
    );
    assert!(
        at < first_deadline,
        "the acknowledged lock was lost with the master: a second holder got in while the \
         first still held (durable mode refuses such an acquire)"
    );
    assert!(
        new_token <= old_token,
        "the fencing increment was lost with the lock (no epoch floor in cluster mode): \
         {old_token} -> {new_token}"
    );

    // The holder's backend follows the new master and finds its lock taken.
    let deadline = Deadline::new(HANG, "the holder's refresh after the failover");
    loop {
        match held.refresh(ttl).await {
            Err(err) if err.is_lost() => break,
            Err(err) if err.is_transient() => deadline.tick().await,
            other => panic!("the holder must find its lock gone, got {other:?}"),
        }
    }
    taken.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_reached_with_a_private_ca_and_a_client_certificate() {
    if shared().is_none() {
        return;
    }
    let binary = find_binary("redis-server", &[]).expect("redis-server, found for the cluster");
    let certs = TestCertificates::generate();
    let dir = TempDir::new("redis-tls-cluster").unwrap();
    let (plain, tls, bus) = (free_port(), free_port(), free_port());
    let path = |path: std::path::PathBuf| path.display().to_string();
    let args: Vec<String> = [
        "--port".to_owned(),
        plain.to_string(),
        "--tls-port".to_owned(),
        tls.to_string(),
        "--bind".to_owned(),
        "127.0.0.1".to_owned(),
        "--save".to_owned(),
        String::new(),
        "--appendonly".to_owned(),
        "no".to_owned(),
        "--dir".to_owned(),
        dir.path().display().to_string(),
        "--cluster-enabled".to_owned(),
        "yes".to_owned(),
        "--cluster-port".to_owned(),
        bus.to_string(),
        "--tls-cluster".to_owned(),
        "yes".to_owned(),
        "--tls-cert-file".to_owned(),
        path(certs.server_cert_file()),
        "--tls-key-file".to_owned(),
        path(certs.server_key_file()),
        "--tls-ca-cert-file".to_owned(),
        path(certs.ca_file()),
        "--tls-auth-clients".to_owned(),
        "yes".to_owned(),
    ]
    .into();
    let _server = ServerProcess::spawn(
        "redis-tls-cluster",
        &binary,
        &args,
        &dir.path().join("redis.log"),
    )
    .unwrap();
    wait_for_port(plain, HANG).unwrap();
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{plain}"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("CLUSTER")
        .arg("ADDSLOTSRANGE")
        .arg(0)
        .arg(16383)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let deadline = Deadline::new(HANG, "the one-node cluster is ok");
    loop {
        let info: String = redis::cmd("CLUSTER")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .unwrap();
        if info.contains("cluster_state:ok") {
            break;
        }
        deadline.tick().await;
    }
    let url = format!(
        "rediss+cluster://127.0.0.1:{tls}/?ca_file={}&cert_file={}&key_file={}",
        path(certs.ca_file()),
        path(certs.client_cert_file()),
        path(certs.client_key_file()),
    );
    let backend = within(HANG, "connect over TLS", RedisBackend::from_url(&url))
        .await
        .unwrap_or_else(|err| panic!("TLS cluster backend must connect: {}", err.chain()));
    let key = unique_key("tls");
    let mut lease = backend
        .try_acquire(&key, Duration::from_secs(10))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(backend.list(key.as_str()).await.unwrap().len(), 1);
    lease.release().await.unwrap();
    assert!(backend.expires_in(&key).await.unwrap().is_none());
}
