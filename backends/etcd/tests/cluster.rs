//! The etcd backend on a real three-member cluster that the tests start themselves
//! (`EtcdCluster`): the conformance suite on one shared cluster, and each fault on a
//! cluster of its own: a member killed, paused or cut off from the others while a lease
//! is held, a dead endpoint at connect time, fencing tokens across a leader change.
//!
//! A backend's requests go to one member at a time, the first of its endpoints at first,
//! and move to the next when that member fails (see `src/channel.rs`). The faults below
//! hit the member a client is using, which is the case a client must survive.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Deadline, unique_key, within};
use etcd_client::{Client, ConnectOptions};
use leasehold_conformance::servers::EtcdCluster;
use leasehold_core::{Error, Lease, LockBackend, LockKey};
use leasehold_etcd::EtcdBackend;

/// etcd's minimum lease TTL with the cluster's default timing, as the runner would use.
const TTL: Duration = Duration::from_secs(2);

/// The TTL of a lease held through a leader election: an election takes one to two
/// election timeouts (1 s each) after the leader is gone, during which no member renews a
/// lease, and the holder's session is lost when no keep-alive was confirmed for a TTL.
/// With etcd's minimum of 2 s, a lease may be lost to an election; 5 s is enough.
const ELECTION_TTL: Duration = Duration::from_secs(5);

/// The cluster the conformance suite shares; never harmed.
fn shared() -> Option<&'static EtcdCluster> {
    static CLUSTER: OnceLock<Option<EtcdCluster>> = OnceLock::new();
    CLUSTER.get_or_init(|| EtcdCluster::start(3)).as_ref()
}

mod conformance {
    use super::*;

    // Every client lists all three members; etcd's minimum TTL is twice the suite's base
    // TTL, so its timing is scaled by 2, as for the single server.
    leasehold_conformance::conformance_tests!(
        || async {
            let Some(cluster) = shared() else {
                leasehold_conformance::skip("etcd is not installed");
            };
            EtcdBackend::from_url(&cluster.url())
                .await
                .unwrap_or_else(|err| panic!("etcd backend must connect: {err:?}"))
        },
        time_scale = 2.0
    );
}

/// The cluster's endpoints, member `first`'s first and then the others in order.
fn endpoints_from(cluster: &EtcdCluster, first: usize) -> Vec<String> {
    let endpoints = cluster.endpoints();
    let mut ordered = vec![endpoints[first].clone()];
    ordered.extend(
        endpoints
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != first)
            .map(|(_, e)| e.clone()),
    );
    ordered
}

/// A backend on the URL `etcd://<endpoints>` with the fault tests' short timeouts.
async fn backend_on(endpoints: &[String]) -> EtcdBackend {
    let url = format!("etcd://{}", endpoints.join(","));
    EtcdBackend::builder()
        .with_url(&url)
        .with_request_timeout(Duration::from_millis(800))
        .with_connect_timeout(Duration::from_millis(800))
        .build()
        .await
        .unwrap_or_else(|err| panic!("backend must connect to {url}: {err:?}"))
}

/// A plain client of member `i` alone.
async fn member_client(cluster: &EtcdCluster, i: usize) -> Client {
    let options = ConnectOptions::new()
        .with_timeout(Duration::from_secs(2))
        .with_connect_timeout(Duration::from_secs(1));
    Client::connect([cluster.endpoints()[i].clone()], Some(options))
        .await
        .unwrap_or_else(|err| panic!("client of member {i} must connect: {err:?}"))
}

/// The cluster's Raft leader, waited for.
fn leader(cluster: &EtcdCluster) -> usize {
    cluster
        .wait_for_leader(None, Duration::from_secs(10))
        .expect("the cluster must have a leader")
}

/// What [`hold`] saw.
#[derive(Debug, Default)]
struct Held {
    refreshed: usize,
    /// Transient refresh errors, in order.
    errors: Vec<Error>,
    /// The most refreshes in a row that failed.
    failed_in_a_row: usize,
}

/// Refreshes `lease` to `ttl` every `ttl / 5` (a quarter of that after a failure: the
/// runner's default timing) for `period`, while `rival` tries to take its key after each
/// refresh.
///
/// # Panics
///
/// If the lease is reported lost, a refresh fails with anything but a transient error,
/// or the rival gets the key.
async fn hold(
    lease: &mut Box<dyn Lease>,
    ttl: Duration,
    rival: &EtcdBackend,
    period: Duration,
    during: &str,
) -> Held {
    let every = ttl / 5;
    let mut held = Held::default();
    let mut in_a_row = 0;
    let end = Instant::now() + period;
    while Instant::now() < end {
        let pause = match within(ttl * 2, "one refresh", lease.refresh(ttl)).await {
            Ok(()) => {
                held.refreshed += 1;
                in_a_row = 0;
                every
            }
            Err(err) => {
                assert!(
                    !err.is_lost(),
                    "the lease must not be lost {during}: {err:?} after {held:?}"
                );
                assert!(err.is_transient(), "{during}: {err:?}");
                held.errors.push(err);
                in_a_row += 1;
                held.failed_in_a_row = held.failed_in_a_row.max(in_a_row);
                every / 4
            }
        };
        match within(
            ttl * 2,
            "rival acquire",
            rival.try_acquire(lease.key(), ttl),
        )
        .await
        {
            Ok(None) => {}
            Ok(Some(taken)) => panic!(
                "a rival acquired {} (token {}) {during} while it was held with token {}",
                lease.key(),
                taken.fencing_token(),
                lease.fencing_token()
            ),
            Err(err) => assert!(err.is_transient(), "rival {during}: {err:?}"),
        }
        tokio::time::sleep(pause).await;
    }
    held
}

/// Acquires `key` until it succeeds, tolerating transient errors (an election).
async fn acquire_until_held(backend: &EtcdBackend, key: &LockKey) -> Box<dyn Lease> {
    let deadline = Deadline::new(Duration::from_secs(15), format!("{key} must be acquired"));
    loop {
        match within(TTL * 2, "one acquire", backend.try_acquire(key, TTL)).await {
            Ok(Some(lease)) => return lease,
            Ok(None) => {}
            Err(err) => assert!(err.is_transient(), "{err:?}"),
        }
        deadline.tick().await;
    }
}

/// Releases `lease` after checking that its key still has its fencing token.
async fn release_checked(backend: &EtcdBackend, mut lease: Box<dyn Lease>) {
    let info = within(TTL * 2, "describe", backend.describe(lease.key()))
        .await
        .unwrap()
        .expect("the key is still held");
    assert_eq!(
        info.fencing_token,
        Some(lease.fencing_token()),
        "the key is still this acquisition's"
    );
    within(TTL * 2, "release", lease.release()).await.unwrap();
}

/// A fault of the member a client uses (its first endpoint, a follower), and the undoing.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Pause,
    CutOff,
}

/// Holds a lease through `fault` of the member its backend uses, and checks what the
/// refreshes saw.
async fn lease_survives_a_fault_of_its_member(fault: Fault) {
    let Some(mut cluster) = EtcdCluster::start(3) else {
        return;
    };
    let leader = leader(&cluster);
    let member = (0..3).find(|&i| i != leader).unwrap();
    let a = backend_on(&endpoints_from(&cluster, member)).await;
    let rival = backend_on(&endpoints_from(&cluster, leader)).await;
    let key = unique_key("member-fault");
    let mut lease = a.try_acquire(&key, TTL).await.unwrap().expect("free");
    let before = hold(
        &mut lease,
        TTL,
        &rival,
        Duration::from_secs(1),
        "before the fault",
    )
    .await;
    assert!(before.errors.is_empty(), "{before:?}");

    match fault {
        Fault::Kill => cluster.kill(member),
        Fault::Pause => cluster.pause(member),
        Fault::CutOff => cluster.isolate(member),
    }
    let during = format!("while its member is {fault:?}");
    let held = hold(&mut lease, TTL, &rival, Duration::from_secs(3), &during).await;
    match fault {
        // Connections to a dead member are refused: the requests go on to the next
        // member at once, and no refresh fails.
        Fault::Kill => assert!(
            held.errors.is_empty(),
            "no refresh may fail {during}: {held:?}"
        ),
        // A member that does not answer costs the refresh waiting for it; the next one
        // goes to another member.
        Fault::Pause | Fault::CutOff => assert!(
            held.failed_in_a_row <= 1 && held.refreshed >= 3,
            "refreshes must go on at the next member {during}: {held:?}"
        ),
    }

    match fault {
        Fault::Kill => cluster.start_member(member),
        Fault::Pause => cluster.resume(member),
        Fault::CutOff => cluster.heal(member),
    }
    let after = hold(
        &mut lease,
        TTL,
        &rival,
        Duration::from_secs(2),
        "after the fault",
    )
    .await;
    assert!(after.refreshed >= 1, "{after:?}");
    release_checked(&a, lease).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_lease_survives_its_member_being_killed() {
    lease_survives_a_fault_of_its_member(Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_lease_survives_its_member_being_paused() {
    lease_survives_a_fault_of_its_member(Fault::Pause).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_lease_survives_its_member_being_cut_off_from_the_others() {
    lease_survives_a_fault_of_its_member(Fault::CutOff).await;
}

/// The leader killed while a lease is held by a client whose member is the leader: the
/// refreshes during the election may fail (no member renews a lease without a leader),
/// but the lease is never lost, nobody else gets the key, and the refreshes succeed again
/// once the others elected a new leader.
#[tokio::test(flavor = "multi_thread")]
async fn a_held_lease_survives_the_leader_being_killed() {
    let Some(mut cluster) = EtcdCluster::start(3) else {
        return;
    };
    let old = leader(&cluster);
    let a = backend_on(&endpoints_from(&cluster, old)).await;
    let rival = backend_on(&endpoints_from(&cluster, (old + 1) % 3)).await;
    let key = unique_key("leader-kill");
    let ttl = ELECTION_TTL;
    let mut lease = a.try_acquire(&key, ttl).await.unwrap().expect("free");
    let before = hold(&mut lease, ttl, &rival, Duration::from_secs(1), "before").await;
    assert!(before.errors.is_empty(), "{before:?}");

    cluster.kill(old);
    let held = hold(
        &mut lease,
        ttl,
        &rival,
        Duration::from_secs(4),
        "after the kill",
    )
    .await;
    let new = cluster
        .wait_for_leader(Some(old), Duration::from_secs(10))
        .expect("the others elect a new leader");
    assert_ne!(new, old);
    assert!(
        held.refreshed >= 2,
        "refreshes must succeed again: {held:?}"
    );
    eprintln!("leader {old} killed, {new} elected; refreshes meanwhile: {held:?}");

    cluster.start_member(old);
    let after = hold(
        &mut lease,
        ttl,
        &rival,
        Duration::from_secs(1),
        "after the restart",
    )
    .await;
    assert!(after.refreshed >= 1, "{after:?}");
    release_checked(&a, lease).await;
}

/// A backend whose URL lists a dead member first connects, and every request succeeds:
/// none is lost to the dead member.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_whose_first_endpoint_is_dead_at_connect_time_works() {
    let Some(mut cluster) = EtcdCluster::start(3) else {
        return;
    };
    let dead = (0..3).find(|&i| i != leader(&cluster)).unwrap();
    cluster.kill(dead);
    let endpoints = endpoints_from(&cluster, dead);
    let started = Instant::now();
    let backend = backend_on(&endpoints).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "connecting must not wait for the dead member: {:?}",
        started.elapsed()
    );
    for round in 0..10 {
        let key = unique_key("dead-first");
        let started = Instant::now();
        let mut lease = backend
            .try_acquire(&key, TTL)
            .await
            .unwrap_or_else(|err| panic!("acquire {round}: {err:?}"))
            .expect("free");
        lease
            .refresh(TTL)
            .await
            .unwrap_or_else(|err| panic!("refresh {round}: {err:?}"));
        backend
            .describe(&key)
            .await
            .unwrap_or_else(|err| panic!("describe {round}: {err:?}"))
            .expect("held");
        lease
            .release()
            .await
            .unwrap_or_else(|err| panic!("release {round}: {err:?}"));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "round {round} took {:?}: a request waited for the dead member",
            started.elapsed()
        );
    }
}

/// The variable the child process of the environment test finds its cluster by.
const CHILD: &str = "LEASEHOLD_ETCD_CLUSTER_TEST_CHILD";

/// `ROUTINE_ETCD_ENDPOINTS` with three endpoints, the first dead, reaches the cluster. The
/// environment is read in a child process (this test binary, running
/// `endpoints_from_the_environment_child`), since tests cannot change their own.
#[tokio::test(flavor = "multi_thread")]
async fn endpoints_from_the_environment_reach_the_cluster() {
    let Some(mut cluster) = EtcdCluster::start(3) else {
        return;
    };
    let dead = (0..3).find(|&i| i != leader(&cluster)).unwrap();
    cluster.kill(dead);
    let endpoints = endpoints_from(&cluster, dead).join(", ");
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "endpoints_from_the_environment_child",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .env("ROUTINE_ETCD_ENDPOINTS", &endpoints)
        .env("ROUTINE_ETCD_REQUEST_TIMEOUT", "800ms")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "the child must pass with ROUTINE_ETCD_ENDPOINTS={endpoints}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The child of [`endpoints_from_the_environment_reach_the_cluster`]; does nothing in a
/// test run of its own.
#[tokio::test(flavor = "multi_thread")]
async fn endpoints_from_the_environment_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let backend = EtcdBackend::from_env()
        .await
        .unwrap_or_else(|err| panic!("from_env must connect: {err:?}"));
    for _ in 0..5 {
        let mut lease = backend
            .try_acquire(&unique_key("from-env"), TTL)
            .await
            .unwrap()
            .expect("free");
        lease.refresh(TTL).await.unwrap();
        lease.release().await.unwrap();
    }
}

/// Create revisions as fencing tokens keep growing across a leader kill and the old
/// leader's restart: the new leader's log has every revision the old one committed.
#[tokio::test(flavor = "multi_thread")]
async fn fencing_tokens_never_go_backwards_across_a_leader_kill() {
    let Some(mut cluster) = EtcdCluster::start(3) else {
        return;
    };
    let old = leader(&cluster);
    let a = backend_on(&endpoints_from(&cluster, old)).await;
    let key = unique_key("fencing");
    let mut first = a.try_acquire(&key, TTL).await.unwrap().expect("free");
    let t1 = first.fencing_token();
    first.release().await.unwrap();

    cluster.kill(old);
    cluster
        .wait_for_leader(Some(old), Duration::from_secs(10))
        .expect("a new leader");
    let mut second = acquire_until_held(&a, &key).await;
    let t2 = second.fencing_token();
    assert!(t2 > t1, "token after the leader kill {t2} must exceed {t1}");
    second.release().await.unwrap();

    cluster.start_member(old);
    // A client of the restarted member alone: what it serves is what the cluster has.
    let b = EtcdBackend::builder()
        .with_endpoints([cluster.endpoints()[old].clone()])
        .build()
        .await
        .unwrap();
    let mut third = acquire_until_held(&b, &key).await;
    let t3 = third.fencing_token();
    assert!(
        t3 > t2,
        "token from the restarted member {t3} must exceed {t2}"
    );
    third.release().await.unwrap();
}

/// `isolate` really cuts a member off, both ways: the isolated leader loses its
/// leadership, the others elect a new one and take writes, the isolated member serves no
/// linearizable read meanwhile, and once healed it has the writes it missed.
#[tokio::test(flavor = "multi_thread")]
async fn isolating_the_leader_cuts_it_off_until_healed() {
    let Some(cluster) = EtcdCluster::start(3) else {
        return;
    };
    let old = leader(&cluster);
    let mut isolated = member_client(&cluster, old).await;
    cluster.isolate(old);
    let new = cluster
        .wait_for_leader(Some(old), Duration::from_secs(10))
        .expect("the majority elects a new leader");
    assert_ne!(new, old);
    let mut majority = member_client(&cluster, new).await;
    within(Duration::from_secs(5), "a write to the majority", async {
        majority.put("isolation", "written", None).await.unwrap()
    })
    .await;
    let read = tokio::time::timeout(Duration::from_secs(3), isolated.get("isolation", None)).await;
    assert!(
        !matches!(read, Ok(Ok(_))),
        "the isolated member must not serve a linearizable read: {read:?}"
    );
    common::within(
        Duration::from_secs(5),
        "the isolated member's health",
        async {
            while cluster.is_healthy(old) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;
    assert_ne!(
        cluster.leader(),
        Some(old),
        "the isolated member must not lead"
    );

    cluster.heal(old);
    cluster
        .wait_healthy(old, Duration::from_secs(10))
        .expect("healed, the member rejoins");
    let found = within(
        Duration::from_secs(5),
        "a read from the healed member",
        async { isolated.get("isolation", None).await.unwrap() },
    )
    .await;
    assert_eq!(
        found.kvs().first().map(|kv| kv.value()),
        Some(&b"written"[..]),
        "the healed member has the write it missed"
    );
}
