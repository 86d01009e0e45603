//! Fencing tokens and lease guards across server crashes, on a server with PostgreSQL's
//! default durability. The lease statements commit asynchronously (no WAL flush per
//! acquire), so a crash may lose their last writes: the tokens must still grow past every
//! token handed out before the crash (each lock session takes a new, flushed epoch), and
//! no key may be granted while a holder from before the crash may still run (the restart
//! guard). With a synchronous standby configured, they wait for it as before.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use leasehold_conformance::servers::PostgresServer;
use leasehold_core::{Error, Lease, LockBackend};

use common::{acquire_within, backend, key, unique};

/// The shortest TTL: the restart guard after each crash lasts about this long.
const TTL: Duration = Duration::from_secs(1);
/// A bound for liveness only (the guard must end at all), never for speed.
const WITHIN: Duration = Duration::from_secs(30);
/// Server crashes in one run.
const CRASHES: usize = 3;
/// Acquire + release pairs per key between crashes.
const PAIRS: usize = 100;

/// Checks that the server runs with PostgreSQL's default durability, which the test is
/// about: with `fsync` or `synchronous_commit` off, it would prove nothing.
fn assert_default_durability(server: &PostgresServer) {
    for setting in ["fsync", "synchronous_commit", "full_page_writes"] {
        assert_eq!(
            server.psql(&format!("SHOW {setting}")),
            "on",
            "the server must run with {setting} = on"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_grow_past_every_token_handed_out_before_a_server_crash() {
    let mut server = leasehold_conformance::require_server!(PostgresServer::start_durable());
    assert_default_durability(&server);
    let namespace = unique("crash");
    let keys = [key("alpha"), key("beta"), key("gamma")];
    // The highest token handed out for each key so far.
    let mut highest: HashMap<String, u64> = HashMap::new();
    let mut lost_writes = 0;
    for crash in 0..=CRASHES {
        let backend = backend(&server.url(), &namespace).await;
        // The first acquire after a crash waits out the restart guard.
        for k in &keys {
            let mut lease = acquire_within(&backend, k, TTL, WITHIN).await;
            let token = lease.fencing_token().get();
            if let Some(&before) = highest.get(k.as_str()) {
                assert!(
                    token > before,
                    "after crash {crash}, {k}'s token {token} must exceed every token handed \
                     out before it (up to {before})"
                );
            }
            highest.insert(k.to_string(), token);
            lease.release().await.expect("release");
        }
        for _ in 0..PAIRS {
            for k in &keys {
                let mut lease = backend
                    .try_acquire(k, TTL)
                    .await
                    .expect("acquire")
                    .unwrap_or_else(|| panic!("{k} is free between acquires of this process"));
                let token = lease.fencing_token().get();
                let before = highest[k.as_str()];
                assert!(
                    token > before,
                    "{k}'s token {token} must exceed the previous {before}"
                );
                highest.insert(k.to_string(), token);
                lease.release().await.expect("release");
            }
        }
        if crash == CRASHES {
            break;
        }
        // The last acquires, held when the server dies: SIGKILL, no clean shutdown.
        let mut held: Vec<Box<dyn Lease>> = Vec::new();
        for k in &keys {
            let lease = backend
                .try_acquire(k, TTL)
                .await
                .expect("acquire")
                .unwrap_or_else(|| panic!("{k} is free"));
            highest.insert(k.to_string(), lease.fencing_token().get());
            held.push(lease);
        }
        server.restart();
        // Not asserted (it depends on when the WAL writer last ran), but shows that the
        // crash did lose writes the tokens had to survive.
        for k in &keys {
            let stored: u64 = server
                .psql(&format!(
                    "SELECT token FROM public.routine_fencing WHERE lock_key = {}",
                    backend.lock_key(k)
                ))
                .parse()
                .expect("the key's fencing row survives (it was made before)");
            if stored < highest[k.as_str()] {
                lost_writes += 1;
            }
        }
        for mut lease in held {
            assert!(
                lease.refresh(TTL).await.is_err_and(|err| err.is_lost()),
                "a lease of the crashed server is lost"
            );
            lease.release().await.expect("releasing a lost lease is Ok");
        }
    }
    eprintln!(
        "{lost_writes} of {} keys lost their last counter writes in the crashes",
        CRASHES * keys.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_server_crash_no_key_is_granted_before_the_longest_ttl_has_passed() {
    let mut server = leasehold_conformance::require_server!(PostgresServer::start_durable());
    assert_default_durability(&server);
    let namespace = unique("guard");
    let long_ttl = Duration::from_secs(4);
    let a = backend(&server.url(), &namespace).await;
    let mut lease = a
        .try_acquire(&key("long"), long_ttl)
        .await
        .expect("acquire")
        .expect("free");
    server.restart();
    assert!(
        lease
            .refresh(long_ttl)
            .await
            .is_err_and(|err| err.is_lost())
    );
    lease.release().await.expect("releasing a lost lease is Ok");

    // A key nobody ever held, with a short TTL, on a backend connected after the crash:
    // the holder of "long" may still run, and so might holders whose claims the crash
    // lost, until the longest TTL after the server started.
    let b = backend(&server.url(), &namespace).await;
    let other = key("never-held");
    let started_plus_ttl = format!(
        "SELECT clock_timestamp() >= pg_postmaster_start_time() + interval '{} ms'",
        long_ttl.as_millis()
    );
    assert!(
        b.try_acquire(&other, TTL).await.expect("acquire").is_none(),
        "no key may be granted within the longest TTL after the restart"
    );
    let left = b
        .expires_in(&other)
        .await
        .expect("expires_in")
        .expect("the restart guard reports when it ends");
    // Read after `expires_in` answered, so it can only be smaller than what the guard
    // had left then.
    let server_left_ms: i64 = server
        .psql(&format!(
            "SELECT greatest(0, ceil(extract(epoch FROM pg_postmaster_start_time() \
             + interval '{} ms' - clock_timestamp()) * 1000))::int8",
            long_ttl.as_millis()
        ))
        .parse()
        .expect("milliseconds");
    assert!(
        left <= long_ttl,
        "the guard ({left:?} left) lasts at most the longest TTL {long_ttl:?}"
    );
    assert!(
        left.as_millis() >= u128::try_from(server_left_ms).unwrap_or(0),
        "expires_in ({left:?}) must cover what the guard has left ({server_left_ms} ms)"
    );
    let mut granted = acquire_within(&b, &other, TTL, WITHIN).await;
    assert_eq!(
        server.psql(&started_plus_ttl),
        "t",
        "the key must be granted only once the longest TTL has passed since the restart"
    );
    granted.release().await.expect("release");
    let mut again = b
        .try_acquire(&key("long"), long_ttl)
        .await
        .expect("acquire")
        .expect("the guard is over for every key");
    again.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_synchronous_standby_configured_an_acquire_waits_for_it() {
    let server = leasehold_conformance::require_server!(PostgresServer::start());
    let a = backend(&server.url(), &unique("sync")).await;
    let k = key("job");
    // Stores the TTL, and opens the session with its epoch: the next acquire statement is
    // the only commit left to wait.
    a.try_acquire(&k, TTL)
        .await
        .expect("acquire")
        .expect("free")
        .release()
        .await
        .expect("release");
    // A synchronous standby that never connects: a commit that waits for it never ends.
    server.psql("ALTER SYSTEM SET synchronous_standby_names = 'nobody'");
    server.psql("SELECT pg_reload_conf()");
    common::eventually(WITHIN, "the server has a synchronous standby", || {
        server.psql("SHOW synchronous_standby_names") == "nobody"
    })
    .await;
    let err = a
        .try_acquire(&k, TTL)
        .await
        .expect_err("the acquire's commit must wait for the synchronous standby");
    assert!(
        matches!(err, Error::Timeout { .. }),
        "the acquire waits for the standby until it times out, got {err:?}"
    );
    server.psql("ALTER SYSTEM RESET synchronous_standby_names");
    server.psql("SELECT pg_reload_conf()");
    // The timed-out session's claim guards the key until its heartbeat runs out.
    let mut lease = acquire_within(&a, &k, TTL, WITHIN).await;
    lease.release().await.expect("release");
}
