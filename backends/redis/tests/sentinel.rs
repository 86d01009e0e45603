//! The backend behind Redis Sentinel, on a real local topology (one master, two replicas,
//! three sentinels): the conformance suite through the sentinels, the errors of a wrong
//! address or master name, and a held lease across a master kill with and without
//! durable mode. Each failover takes a few seconds; the tests that make one run on their
//! own topology.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Deadline, unique_key, within};
use futures::FutureExt;
use leasehold_conformance::servers::{RedisSentinel, free_port};
use leasehold_core::{Error, Lease, LockBackend, LockKey};
use leasehold_redis::{Durability, RedisBackend};
use tokio::sync::Mutex;

mod conformance {
    use leasehold_conformance::servers::RedisSentinel;
    use leasehold_redis::RedisBackend;

    leasehold_conformance::conformance_tests!(|| async {
        let Some(topology) = RedisSentinel::shared() else {
            leasehold_conformance::skip("redis-server is not installed");
        };
        RedisBackend::from_url(&topology.url())
            .await
            .unwrap_or_else(|err| panic!("sentinel backend must connect: {err:?}"))
    });
}

/// The suite again in durable mode: every acquire and refresh waits for both replicas.
mod conformance_durable {
    use leasehold_conformance::servers::RedisSentinel;
    use leasehold_redis::RedisBackend;

    leasehold_conformance::conformance_tests!(|| async {
        let Some(topology) = RedisSentinel::shared() else {
            leasehold_conformance::skip("redis-server is not installed");
        };
        RedisBackend::from_url(&format!("{}?durable_replicas=2", topology.url()))
            .await
            .unwrap_or_else(|err| panic!("durable sentinel backend must connect: {err:?}"))
    });
}

/// The bits of a fencing token below the epoch (see the crate docs).
const COUNTER_BITS: u32 = 40;
/// Bound for "did not hang", and for a takeover after a failover.
const HANG: Duration = Duration::from_secs(20);

/// A backend on `topology` with short timeouts, so that a failover shows within a second.
async fn backend(topology: &RedisSentinel, durability: Durability) -> RedisBackend {
    RedisBackend::builder()
        .with_url(topology.url())
        .with_connect_timeout(Duration::from_millis(500))
        .with_request_timeout(Duration::from_millis(500))
        .with_durability(durability)
        .build()
        .await
        .unwrap_or_else(|err| panic!("sentinel backend must connect: {}", err.chain()))
}

/// Runs a blocking topology call (a kill, a wait for the failover) without stalling the
/// runtime's other tasks.
fn blocking<T>(call: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(call)
}

fn split(token: u64) -> (u64, u64) {
    (token >> COUNTER_BITS, token & ((1 << COUNTER_BITS) - 1))
}

/// Tries to acquire `key` every 10 ms until it is ours; errors (a failover under way,
/// an unconfirmed durable acquire) count as tries. Returns the lease, when it came, and
/// the errors seen.
async fn acquire_when_free(
    backend: &RedisBackend,
    key: &LockKey,
    ttl: Duration,
) -> (Box<dyn Lease>, Instant, Vec<String>) {
    let deadline = Deadline::new(HANG, format!("acquire {key} after the failover"));
    let mut errors = Vec::new();
    loop {
        match backend.try_acquire(key, ttl).await {
            Ok(Some(lease)) => return (lease, Instant::now(), errors),
            Ok(None) => {}
            Err(err) => errors.push(err.chain()),
        }
        deadline.tick().await;
    }
}

#[tokio::test]
async fn unknown_master_name_and_unreachable_sentinels_are_named() {
    let topology = leasehold_conformance::require_server!(RedisSentinel);
    let sentinels: Vec<String> = topology
        .sentinel_ports()
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let unknown = RedisBackend::builder()
        .with_sentinels(&sentinels)
        .with_master_name("no-such-master")
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, Error::Misconfigured { .. }) && unknown.is_permanent(),
        "an unknown master name is a configuration error: {unknown:?}"
    );
    assert!(
        unknown.chain().contains("`no-such-master`"),
        "the error names the master: {}",
        unknown.chain()
    );

    let (a, b) = (free_port(), free_port());
    let unreachable = within(
        HANG,
        "connect without a sentinel",
        RedisBackend::builder()
            .with_url(format!(
                "redis+sentinel://127.0.0.1:{a},127.0.0.1:{b}/leasehold"
            ))
            .with_connect_timeout(Duration::from_millis(500))
            .build(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(unreachable, Error::Unavailable { .. }),
        "no sentinel reachable is transient: {unreachable:?}"
    );
    let chain = unreachable.chain();
    assert!(
        chain.contains("no sentinel reachable")
            && chain.contains(&format!("127.0.0.1:{a}"))
            && chain.contains(&format!("127.0.0.1:{b}")),
        "the error says no sentinel answered, and which were tried: {chain}"
    );

    let bad = RedisBackend::from_url(&format!("redis+sentinel://{}", sentinels.join(",")))
        .await
        .unwrap_err();
    assert!(
        matches!(&bad, Error::Config { setting, .. } if setting == "url")
            && bad.chain().contains("no master name"),
        "a URL without a master name is refused: {}",
        bad.chain()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_acquire_not_confirmed_by_enough_replicas_is_undone() {
    let topology = leasehold_conformance::require_server!(RedisSentinel);
    // Two replicas exist: three can never confirm.
    let durable = backend(
        topology,
        Durability::Replicas {
            count: 3,
            timeout: Duration::from_millis(100),
        },
    )
    .await;
    let key = unique_key("unconfirmed");
    let err = durable
        .try_acquire(&key, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. }) && err.chain().contains("2 of the 3 replicas"),
        "an unconfirmed acquire is a transient error saying how many confirmed: {}",
        err.chain()
    );
    let other = backend(topology, Durability::Master).await;
    let (mut lease, _, _) = acquire_when_free(&other, &key, Duration::from_secs(30)).await;
    lease.release().await.unwrap();
}

/// Non-durable: the holder's acquire is acknowledged by the master but never reaches a
/// replica (the replication links are held), the master is killed, and the promoted
/// replica has neither the lock nor the fencing increment. Prints what happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_durability_a_failover_loses_an_acknowledged_lock_and_the_backend_follows() {
    let mut topology = leasehold_conformance::require_server!(RedisSentinel::start());
    let holder = backend(&topology, Durability::Master).await;
    let other = backend(&topology, Durability::Master).await;
    let ttl = Duration::from_secs(10);
    let key = unique_key("lost");

    blocking(|| topology.pause_replication());
    let mut held = holder.try_acquire(&key, ttl).await.unwrap().unwrap();
    let acquired = Instant::now();
    let old = blocking(|| topology.kill_master());
    let killed = Instant::now();
    let new = blocking(|| topology.wait_for_failover(old));
    let failed_over = killed.elapsed();
    topology.heal();

    let (mut taken, at, errors) = acquire_when_free(&other, &key, ttl).await;
    let deadline = acquired + ttl;
    let (old_token, new_token) = (held.fencing_token().get(), taken.fencing_token().get());
    eprintln!(
        "non-durable master kill: failover {old} -> {new} in {failed_over:?}; second holder \
         {:?} after the kill, {:?} before the first holder's deadline ({} errors while \
         failing over); tokens {:?} -> {:?} (epoch, counter): the counter increment was \
         {}",
        at - killed,
        deadline.saturating_duration_since(at),
        errors.len(),
        split(old_token),
        split(new_token),
        if split(new_token).1 <= split(old_token).1 {
            "lost"
        } else {
            "kept"
        }
    );
    assert!(
        at < deadline,
        "the acknowledged lock was lost with the master: a second holder got in while the \
         first still held (that is what durable mode prevents)"
    );
    assert!(
        new_token > old_token,
        "the epoch keeps tokens increasing across a master kill: {old_token} -> {new_token}"
    );

    // The holder's backend follows the master: its refresh reaches the new master and
    // finds the lock taken.
    let lost = within(HANG, "the holder's refresh after the failover", async {
        loop {
            match held.refresh(ttl).await {
                Err(err) if err.is_lost() => return err,
                Err(err) if err.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => panic!("the holder must find its lock gone, got {other:?}"),
            }
        }
    })
    .await;
    assert!(lost.is_lost());

    // Acquire and release notifications work on the new master, on the same backends.
    let next = unique_key("after-failover");
    let mut lease = holder.try_acquire(&next, ttl).await.unwrap();
    assert!(
        lease.is_some(),
        "the backend acquires on the new master without being rebuilt"
    );
    within(HANG, "resubscribe on the new master", async {
        while !other.notifications_active() {
            let _ = tokio::time::timeout(Duration::from_millis(200), other.released(&next)).await;
        }
    })
    .await;
    let mut woken = Box::pin(other.released(&next));
    assert!(
        (&mut woken).now_or_never().is_none(),
        "nothing was released yet"
    );
    lease.as_mut().unwrap().release().await.unwrap();
    within(HANG, "the release notification", woken)
        .await
        .unwrap();
    taken.release().await.unwrap();
}

/// Durable with every replica (count 2): the master is killed under a refreshed lease; no
/// second holder gets in before the first holder's deadline, and its token is greater.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_durability_a_master_kill_lets_nobody_in_before_the_holders_deadline() {
    let mut topology = leasehold_conformance::require_server!(RedisSentinel::start());
    let durability = Durability::Replicas {
        count: 2,
        timeout: Duration::from_millis(200),
    };
    let holder = backend(&topology, durability).await;
    let other = backend(&topology, durability).await;
    let ttl = Duration::from_secs(3);
    let key = unique_key("durable");

    let mut lease = holder.try_acquire(&key, ttl).await.unwrap().unwrap();
    let old_token = lease.fencing_token().get();
    let started = Instant::now();
    lease
        .refresh(ttl)
        .await
        .expect("with both replicas in sync, a durable refresh is confirmed");
    // The holder's deadline as a runner keeps it: the start of its last confirmed
    // acquire or refresh, plus the TTL.
    let deadline = Arc::new(Mutex::new(started + ttl));
    let stop = Arc::new(AtomicBool::new(false));
    let refresher = tokio::spawn({
        let (deadline, stop) = (Arc::clone(&deadline), Arc::clone(&stop));
        async move {
            let mut lease = lease;
            let (mut confirmed, mut failed) = (0, 0);
            while !stop.load(Ordering::SeqCst) && Instant::now() < *deadline.lock().await {
                let sent = Instant::now();
                match lease.refresh(ttl).await {
                    Ok(()) => {
                        confirmed += 1;
                        *deadline.lock().await = sent + ttl;
                    }
                    Err(err) if err.is_lost() => break,
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            (confirmed, failed)
        }
    });

    let old = blocking(|| topology.kill_master());
    let killed = Instant::now();
    let new = blocking(|| topology.wait_for_failover(old));
    let failed_over = killed.elapsed();
    // With one replica left, nothing is confirmed until the old master is back.
    blocking(|| topology.restart(old));
    let restarted = killed.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (confirmed, failed) = refresher.await.unwrap();

    let (mut taken, at, errors) = acquire_when_free(&other, &key, ttl).await;
    let holder_deadline = *deadline.lock().await;
    let new_token = taken.fencing_token().get();
    eprintln!(
        "durable (2 replicas) master kill: failover {old} -> {new} in {failed_over:?}, old \
         master back as a replica after {restarted:?}; holder refreshes confirmed {confirmed}, \
         failed {failed}; second holder {:?} after the kill, {:?} after the holder's \
         deadline ({} errors first: {:?}); tokens {:?} -> {:?} (epoch, counter)",
        at - killed,
        at.saturating_duration_since(holder_deadline),
        errors.len(),
        errors.iter().take(3).collect::<Vec<_>>(),
        split(old_token),
        split(new_token),
    );
    assert!(
        at >= holder_deadline,
        "no second holder before the first holder's deadline ({:?} early)",
        holder_deadline - at
    );
    assert!(
        new_token > old_token,
        "the fencing token grows across the failover: {old_token} -> {new_token}"
    );
    taken.release().await.unwrap();
}

/// Refreshes `lease` every 300 ms until `stop`, keeping its deadline as a runner does
/// (the start of the last successful acquire or refresh plus the TTL) and stopping at
/// it; records when each successful refresh started.
fn keep_refreshing(
    mut lease: Box<dyn Lease>,
    ttl: Duration,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(Box<dyn Lease>, Vec<Instant>, Instant)> {
    tokio::spawn(async move {
        let mut refreshed = Vec::new();
        let mut deadline = Instant::now() + ttl;
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            let sent = Instant::now();
            match lease.refresh(ttl).await {
                Ok(()) => {
                    refreshed.push(sent);
                    deadline = sent + ttl;
                }
                Err(err) if err.is_lost() => break,
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        (lease, refreshed, deadline)
    })
}

/// The master is cut off from the sentinels (clients and replicas still reach it) while
/// two holders refresh on it, one durable (2 replicas) and one not. The sentinels fail
/// over; processes that connect afterwards find the new master. Without durability the
/// old holder keeps refreshing on the old master while a newcomer holds the same name on
/// the new one (measured); with it, the old master confirms nothing once a replica is
/// promoted away, and no newcomer gets in before the old holder's deadline. (The
/// newcomer gets in only once the old master is demoted, which Sentinel does about 10 s
/// after the cut heals; the test does not wait for that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_cut_off_from_the_sentinels_splits_only_without_durability() {
    let topology = leasehold_conformance::require_server!(RedisSentinel::start());
    let durable = Durability::Replicas {
        count: 2,
        timeout: Duration::from_millis(200),
    };
    let ttl = Duration::from_secs(3);
    let (plain_key, durable_key) = (unique_key("split"), unique_key("no-split"));
    let plain_holder = backend(&topology, Durability::Master).await;
    let durable_holder = backend(&topology, durable).await;
    let plain_lease = plain_holder
        .try_acquire(&plain_key, ttl)
        .await
        .unwrap()
        .unwrap();
    let durable_lease = durable_holder
        .try_acquire(&durable_key, ttl)
        .await
        .unwrap()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let plain = keep_refreshing(plain_lease, ttl, Arc::clone(&stop));
    let durable_refresher = keep_refreshing(durable_lease, ttl, Arc::clone(&stop));

    let old = blocking(|| topology.isolate_master_from_sentinels());
    let cut = Instant::now();
    let new = blocking(|| topology.wait_for_failover(old));
    let failed_over = cut.elapsed();
    let plain_newcomer = backend(&topology, Durability::Master).await;
    let durable_newcomer = backend(&topology, durable).await;

    // The durable newcomer tries until a second past the durable holder's deadline (its
    // refresher stops there: it cannot be confirmed any more).
    let durable_tries = tokio::spawn(async move {
        let mut outcomes = (0, 0, 0); // contention, errors, acquired
        let mut acquired_at = None;
        let deadline = Deadline::new(HANG, "the durable holder's deadline");
        while !durable_refresher.is_finished() || acquired_at.is_none() {
            match durable_newcomer.try_acquire(&durable_key, ttl).await {
                Ok(Some(_)) => {
                    outcomes.2 += 1;
                    acquired_at.get_or_insert_with(Instant::now);
                }
                Ok(None) => outcomes.0 += 1,
                Err(_) => outcomes.1 += 1,
            }
            if durable_refresher.is_finished() && acquired_at.is_none() {
                let (_, _, holder_deadline) = durable_refresher.await.unwrap();
                let until = holder_deadline + Duration::from_secs(1);
                while Instant::now() < until {
                    match durable_newcomer.try_acquire(&durable_key, ttl).await {
                        Ok(Some(_)) => {
                            outcomes.2 += 1;
                            acquired_at.get_or_insert_with(Instant::now);
                        }
                        Ok(None) => outcomes.0 += 1,
                        Err(_) => outcomes.1 += 1,
                    }
                    deadline.tick().await;
                }
                return (outcomes, acquired_at, holder_deadline);
            }
            deadline.tick().await;
        }
        unreachable!("the loop returns once the holder's refresher ends")
    });

    let (mut plain_taken, plain_at, _) = acquire_when_free(&plain_newcomer, &plain_key, ttl).await;
    // Both plain holders hold the name now, on two masters: watch for a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let watched = Instant::now();
    let ((contended, failed, acquired), durable_at, durable_deadline) =
        durable_tries.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    topology.heal();
    let (_, plain_refreshed, _) = plain.await.unwrap();
    let plain_overlap = plain_refreshed
        .iter()
        .filter(|&&at| at > plain_at && at < watched)
        .count();
    eprintln!(
        "master cut off from the sentinels: failover {old} -> {new} in {failed_over:?}; \
         without durability a newcomer held the name {:?} after the cut, and the old holder \
         refreshed {plain_overlap} more times on the old master in the next {:?}; durable: \
         holder's deadline {:?} after the cut, newcomer tries until a second later: \
         {contended} contended, {failed} failed, {acquired} acquired{}",
        plain_at - cut,
        watched - plain_at,
        durable_deadline - cut,
        durable_at
            .map(|at| format!(" ({:?} after the cut)", at - cut))
            .unwrap_or_default(),
    );
    assert!(
        plain_overlap > 0,
        "without durability the cut-off master keeps extending the old holder's lease while \
         the newcomer holds the name (the split this mode allows)"
    );
    assert!(
        durable_at.is_none_or(|at| at >= durable_deadline),
        "durable: no newcomer before the old holder's deadline"
    );
    plain_taken.release().await.unwrap();
}

/// The master is paused (`SIGSTOP`) past the failover: the holder's requests time out
/// on it, and the holder moves to the new master and keeps its lease there (the lock
/// was replicated before the pause) without a new backend. Its refreshes are batched
/// (`refresh_many`), as the runner sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_follows_the_master_away_from_a_paused_one() {
    let topology = leasehold_conformance::require_server!(RedisSentinel::start());
    let holder = backend(&topology, Durability::Master).await;
    let ttl = Duration::from_secs(6);
    let key = unique_key("paused");
    let mut leases = vec![holder.try_acquire(&key, ttl).await.unwrap().unwrap()];
    let mut last_refresh = Instant::now();

    let old = blocking(|| topology.pause_master());
    let paused = Instant::now();
    let new = blocking(|| topology.wait_for_failover(old));
    let failed_over = paused.elapsed();
    let deadline = Deadline::new(HANG, "a refresh on the new master");
    let mut failures = 0;
    loop {
        let sent = Instant::now();
        let mut outcomes = holder.refresh_many(&mut leases, ttl).await;
        match outcomes.pop().expect("one outcome per lease") {
            Ok(()) if sent > paused + failed_over => break,
            Ok(()) => last_refresh = sent,
            Err(err) => {
                assert!(err.is_transient(), "a paused master times out: {err:?}");
                failures += 1;
            }
        }
        assert!(
            Instant::now() < last_refresh + ttl,
            "the holder reached its deadline before it moved to the new master"
        );
        deadline.tick().await;
    }
    let moved = paused.elapsed();
    topology.resume_master();
    eprintln!(
        "paused master: failover {old} -> {new} in {failed_over:?}; the holder refreshed on \
         the new master {moved:?} after the pause ({failures} refreshes failed before)"
    );
    leases[0].release().await.unwrap();
}

/// Five master kills in a row in durable mode (2 replicas), the lease handed back and
/// forth between two processes: no overlap and no token regression in any round. About
/// 20 s: run with `--ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "five failovers take about 20 s; run with --ignored"]
async fn repeated_master_kills_in_durable_mode_never_overlap_nor_go_backwards() {
    let mut topology = leasehold_conformance::require_server!(RedisSentinel::start());
    let durability = Durability::Replicas {
        count: 2,
        timeout: Duration::from_millis(200),
    };
    let (a, b) = (
        backend(&topology, durability).await,
        backend(&topology, durability).await,
    );
    let ttl = Duration::from_secs(2);
    let key = unique_key("repeated");
    let (mut lease, _, _) = acquire_when_free(&a, &key, ttl).await;
    let mut token = lease.fencing_token().get();
    let (mut holder, mut other) = (&a, &b);
    for round in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let refresher = keep_refreshing(lease, ttl, Arc::clone(&stop));
        let old = blocking(|| topology.kill_master());
        let killed = Instant::now();
        let new = blocking(|| topology.wait_for_failover(old));
        blocking(|| topology.restart(old));
        stop.store(true, Ordering::SeqCst);
        let (_, _, deadline) = refresher.await.unwrap();
        let (next, at, _) = acquire_when_free(other, &key, ttl).await;
        let next_token = next.fencing_token().get();
        eprintln!(
            "round {round}: failover {old} -> {new}, takeover {:?} after the kill, token {:?}",
            at - killed,
            split(next_token)
        );
        assert!(
            at >= deadline,
            "round {round}: a second holder {:?} before the first one's deadline",
            deadline - at
        );
        assert!(
            next_token > token,
            "round {round}: token {next_token} after {token}"
        );
        (lease, token) = (next, next_token);
        std::mem::swap(&mut holder, &mut other);
    }
}
