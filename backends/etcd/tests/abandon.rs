//! Acquires whose caller stopped waiting: their clean-up deletes only the key the attempt
//! itself wrote, and a clean-up that fails is retried until the key is free.
//!
//! The backend whose attempt is abandoned talks to etcd through a [`Proxy`], which holds
//! etcd's replies back (so the caller gives up while its requests still arrive) and cuts
//! the backend off (so its clean-up fails).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::proxy::{Mode, Proxy};
use common::{Deadline, key_info, raw, unique_key, within};
use etcd_client::PutOptions;
use leasehold_conformance::servers::EtcdServer;
use leasehold_core::LockBackend;
use leasehold_etcd::EtcdBackend;

/// Long enough that no lease expires during a test: a key that goes away went because
/// something deleted it.
const TTL: Duration = Duration::from_secs(10);

/// The request timeout of the backends here; the transaction task of an abandoned
/// acquire sends its clean-up after it.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(800);

/// How long a caller waits for an acquire whose reply is held back before it gives up.
const CALLER_GIVES_UP: Duration = Duration::from_millis(300);

/// The acquire time the backends here write into their keys, in milliseconds since the
/// Unix epoch: fixed, so that two backends can write equal values.
const ACQUIRED_MS: u64 = 1_764_618_145_123;

/// A backend on `endpoint` that writes the values of a process with PID 1, with the
/// given nonce (random if `None`), numbering its attempts from `first_attempt`, with the
/// acquire time [`ACQUIRED_MS`].
async fn replica(endpoint: String, nonce: Option<u64>, first_attempt: u64) -> EtcdBackend {
    EtcdBackend::builder()
        .with_endpoints([endpoint])
        .with_request_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_holder_values_for_tests(1, nonce, first_attempt)
        .with_holder_clock_for_tests(acquired_at())
        .build()
        .await
        .unwrap_or_else(|err| panic!("backend must connect: {err:?}"))
}

fn acquired_at() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ACQUIRED_MS)
}

/// Backend `b` holds a key; backend `a`, behind a proxy, writing the same process id and
/// attempt number (and the same nonce if `nonce` is given), tries the key too and its
/// caller gives up while etcd's replies are held back. Both clean-ups of `a`'s attempt
/// (the caller's, and the transaction task's once its request times out) reach etcd and
/// must leave `b`'s key alone.
async fn abandoned_attempt_next_to_an_equal_value(server: &EtcdServer, nonce: Option<u64>) {
    let proxy = Proxy::start(server.port()).await;
    // `a`'s keeper acquire takes attempt 1, so both backends write attempt 2 into `key`.
    let a = replica(proxy.endpoint(), nonce, 1).await;
    let b = replica(server.endpoint(), nonce, 2).await;
    // Holding a key gives `a` a session, so its acquire of `key` is sent at once.
    let mut keeper = a
        .try_acquire(&unique_key("keeper"), TTL)
        .await
        .unwrap()
        .expect("the keeper key is free");
    let key = unique_key("same-value");
    let mut held = b
        .try_acquire(&key, TTL)
        .await
        .unwrap()
        .expect("the key is free");
    let mut raw = raw(server).await;
    let etcd_key = b.etcd_key(&key);
    let before = key_info(&mut raw, &etcd_key).await;

    proxy.set(Mode::HoldReplies);
    let gave_up = tokio::time::timeout(CALLER_GIVES_UP, a.try_acquire(&key, TTL)).await;
    assert!(
        gave_up.is_err(),
        "an acquire cannot finish while its reply is held back"
    );
    // This waits for time to pass, not for an event: the transaction task sends its
    // clean-up once its request timed out, and replies stay held until then.
    tokio::time::sleep(REQUEST_TIMEOUT * 2).await;
    proxy.set(Mode::Open);
    // Clean-ups that got no answer are retried with `a`'s keep-alives: let them run.
    for _ in 0..3 {
        keeper
            .refresh(TTL)
            .await
            .expect("a's session must be kept alive");
    }

    assert_eq!(
        key_info(&mut raw, &etcd_key).await,
        before,
        "the clean-up of a's abandoned attempt must leave b's key alone"
    );
    held.refresh(TTL)
        .await
        .expect("b still holds the key, so its refresh must succeed");
    assert!(
        a.try_acquire(&key, TTL).await.unwrap().is_none(),
        "b holds the key, so a must not get it"
    );
    held.release().await.unwrap();
    keeper.release().await.unwrap();
}

#[tokio::test]
async fn cleanup_of_an_abandoned_acquire_leaves_another_replicas_key_alone() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    // Two replicas running as PID 1 and starting the same routines in the same order.
    abandoned_attempt_next_to_an_equal_value(server, None).await;
}

#[tokio::test]
async fn cleanup_of_an_abandoned_acquire_leaves_an_equal_value_on_another_lease_alone() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    // Even with equal nonces, so that the values are equal, the key's lease tells them
    // apart.
    abandoned_attempt_next_to_an_equal_value(server, Some(0x5eed)).await;
}

#[tokio::test]
async fn failed_cleanup_of_an_abandoned_acquire_is_retried_until_the_key_is_free() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let proxy = Proxy::start(server.port()).await;
    let a = replica(proxy.endpoint(), None, 1).await;
    // Refreshing this lease keeps a's session alive, and with it any key left attached.
    let mut keeper = a
        .try_acquire(&unique_key("keeper"), TTL)
        .await
        .unwrap()
        .expect("the keeper key is free");
    let mut raw = raw(server).await;
    let (_, session) = key_info(&mut raw, &a.etcd_key(keeper.key()))
        .await
        .expect("the keeper key exists");
    let key = unique_key("retried");
    let etcd_key = a.etcd_key(&key);

    // The acquire's transaction is applied, but its reply is held back; then a is cut
    // off, so the acquire fails and the delete its attempt sends fails too.
    proxy.set(Mode::HoldReplies);
    let acquiring = tokio::spawn({
        let (a, key) = (a.clone(), key.clone());
        async move { a.try_acquire(&key, TTL).await.map(|lease| lease.is_some()) }
    });
    let deadline = Deadline::new(TTL / 2, "the acquire must take the key in etcd");
    while key_info(&mut raw, &etcd_key).await.map(|(_, lease)| lease) != Some(session) {
        deadline.tick().await;
    }
    proxy.set(Mode::Cut);
    let outcome = within(TTL / 2, "the acquire cut off", acquiring)
        .await
        .expect("the acquire task must not panic");
    assert!(
        outcome.is_err(),
        "an acquire whose reply never came must fail: {outcome:?}"
    );
    // This waits for time to pass, not for an event: the attempt's delete, sent when the
    // acquire failed, must have failed before a can reach etcd again.
    tokio::time::sleep(REQUEST_TIMEOUT * 2).await;
    proxy.set(Mode::Open);

    let deadline = Deadline::new(
        TTL / 2,
        "the key of the abandoned acquire must be deleted once etcd is reachable",
    );
    while key_info(&mut raw, &etcd_key).await.is_some() {
        // Errors while a reconnects are expected; the session must survive them.
        let _ = keeper.refresh(TTL).await;
        deadline.tick().await;
    }
    keeper
        .refresh(TTL)
        .await
        .expect("a's session lived throughout, so the key was deleted, not expired");
    let mut again = a
        .try_acquire(&key, TTL)
        .await
        .unwrap()
        .expect("the key is free again");
    again.release().await.unwrap();
    keeper.release().await.unwrap();
}

#[tokio::test]
async fn an_unanswered_acquire_that_etcd_applies_after_its_cleanup_is_deleted_too() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let proxy = Proxy::start(server.port()).await;
    let nonce = 0x1a7e;
    // The keeper takes attempt 1, so the acquire below writes attempt 2.
    let a = replica(proxy.endpoint(), Some(nonce), 1).await;
    let mut keeper = a
        .try_acquire(&unique_key("keeper"), TTL)
        .await
        .unwrap()
        .expect("the keeper key is free");
    let mut raw = raw(server).await;
    let (_, session) = key_info(&mut raw, &a.etcd_key(keeper.key()))
        .await
        .expect("the keeper key exists");
    let key = unique_key("late");
    let etcd_key = a.etcd_key(&key);

    // The acquire gets no answer.
    proxy.set(Mode::Cut);
    let outcome = a.try_acquire(&key, TTL).await.map(|lease| lease.is_some());
    assert!(
        outcome.is_err(),
        "an acquire cut off must fail: {outcome:?}"
    );
    proxy.set(Mode::Open);
    // Its clean-up goes with a's next keep-alives, and is answered: the key is not there.
    let deadline = Deadline::new(TTL / 2, "a must reach etcd again");
    while keeper.refresh(TTL).await.is_err() {
        deadline.tick().await;
    }
    keeper.refresh(TTL).await.expect("a reaches etcd");
    // This waits for time to pass, not for an event: the deletes sent with those
    // keep-alives are answered within the request timeout.
    tokio::time::sleep(REQUEST_TIMEOUT).await;
    // Now etcd applies the acquire's transaction, as a member that received it and then
    // paused would once it resumes: the key holds the attempt's value on a's session.
    let value = format!(
        "leasehold-etcd v2 pid 1 backend {nonce:016x} attempt 2 acquired_ms {ACQUIRED_MS} holder {}",
        leasehold_core::process_identity()
    );
    raw.put(
        etcd_key.clone(),
        value,
        Some(PutOptions::new().with_lease(session)),
    )
    .await
    .unwrap();

    let deadline = Deadline::new(
        TTL / 2,
        "a key written by an unanswered acquire after its clean-up must be deleted too",
    );
    while key_info(&mut raw, &etcd_key).await.is_some() {
        keeper.refresh(TTL).await.expect("a reaches etcd");
        deadline.tick().await;
    }
    let mut again = a
        .try_acquire(&key, TTL)
        .await
        .unwrap()
        .expect("the key is free again");
    again.release().await.unwrap();
    keeper.release().await.unwrap();
}
