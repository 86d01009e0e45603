//! Backend-level cases: the lease contract of `LockBackend` and `Lease`.

use std::time::Duration;

use futures::future::join_all;
use leasehold::{Error, Lease};
use tokio::time::Instant;

use crate::{Harness, wait};

async fn must_acquire(
    h: &Harness,
    backend: &dyn leasehold::LockBackend,
    name: &str,
    ttl: Duration,
) -> Box<dyn Lease> {
    backend
        .try_acquire(&h.key(name), ttl)
        .await
        .unwrap_or_else(|err| panic!("acquire of free key `{name}` must not fail: {err:?}"))
        .unwrap_or_else(|| panic!("a free key `{name}` must be acquired"))
}

/// Tries to acquire `key` until it succeeds, failing after `within`.
async fn acquire_within(
    backend: &dyn leasehold::LockBackend,
    key: &leasehold::LockKey,
    ttl: Duration,
    within: Duration,
) -> Box<dyn Lease> {
    wait::until(within, "acquire", || async move {
        backend
            .try_acquire(key, ttl)
            .await
            .expect("acquire must not fail")
    })
    .await
}

/// While one client holds a key, neither another client nor the holder's own client
/// can acquire it. The lease names the key it holds.
pub async fn exclusivity(h: &Harness) {
    let (a, b) = (h.backend().await, h.backend().await);
    let ttl = h.ttl(Duration::from_secs(10));
    let mut lease = must_acquire(h, &*a, "k", ttl).await;
    assert_eq!(lease.key(), &h.key("k"), "the lease must name its key");
    assert!(
        b.try_acquire(&h.key("k"), ttl)
            .await
            .expect("contention is not an error")
            .is_none(),
        "another client must not acquire a held key"
    );
    assert!(
        a.try_acquire(&h.key("k"), ttl)
            .await
            .expect("contention is not an error")
            .is_none(),
        "the holder's own client must not acquire the key a second time"
    );
    lease.release().await.expect("release");
}

/// Many clients racing for one key, many rounds: exactly one wins each round.
pub async fn contended_acquire_has_exactly_one_winner(h: &Harness) {
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 20;
    let clients = join_all((0..CLIENTS).map(|_| h.backend())).await;
    let ttl = h.ttl(Duration::from_secs(10));
    for round in 0..ROUNDS {
        let key = h.key(&format!("round-{round}"));
        let attempts = join_all(clients.iter().map(|c| c.try_acquire(&key, ttl))).await;
        let mut winners = Vec::new();
        for attempt in attempts {
            if let Some(lease) = attempt.expect("contention is not an error") {
                winners.push(lease);
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one of {CLIENTS} clients must win"
        );
        for mut lease in winners {
            lease.release().await.expect("release");
        }
    }
}

/// A released key can be acquired again at once, by another client.
pub async fn release_then_immediate_reacquire(h: &Harness) {
    let (a, b) = (h.backend().await, h.backend().await);
    let ttl = h.ttl(Duration::from_secs(10));
    for _ in 0..5 {
        let mut lease = must_acquire(h, &*a, "k", ttl).await;
        lease.release().await.expect("release");
        let mut other = must_acquire(h, &*b, "k", ttl).await;
        other.release().await.expect("release");
    }
}

/// Releasing twice is fine, a released lease's refresh reports `Error::Lost`, and
/// releasing a lease that expired and was taken over leaves the new holder alone.
pub async fn release_is_idempotent(h: &Harness) {
    let (a, b, c) = (h.backend().await, h.backend().await, h.backend().await);
    let long = h.ttl(Duration::from_secs(10));
    let mut lease = must_acquire(h, &*a, "twice", long).await;
    lease.release().await.expect("first release");
    lease
        .release()
        .await
        .expect("a second release must succeed too");
    let err = lease
        .refresh(long)
        .await
        .expect_err("refresh of a released lease must fail");
    assert!(
        matches!(err, Error::Lost { .. }),
        "refresh of a released lease must be Lost, got {err:?}"
    );

    let short = h.ttl(Duration::from_millis(300));
    let mut stale = must_acquire(h, &*a, "stale", short).await;
    let key = h.key("stale");
    let mut fresh = acquire_within(&*b, &key, long, short * 10).await;
    stale
        .release()
        .await
        .expect("releasing a taken-over lease must be Ok");
    assert!(
        c.try_acquire(&key, long).await.expect("acquire").is_none(),
        "releasing a stale lease must not free the new holder's key"
    );
    fresh
        .refresh(long)
        .await
        .expect("the new holder's lease must be intact");
    fresh.release().await.expect("release");
}

/// Refreshing before expiry keeps the key held past its original TTL.
pub async fn refresh_extends_the_lease(h: &Harness) {
    let (a, b) = (h.backend().await, h.backend().await);
    let ttl = h.ttl(Duration::from_millis(600));
    let mut lease = must_acquire(h, &*a, "k", ttl).await;
    let until = Instant::now() + ttl * 2;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 4).await;
        lease
            .refresh(ttl)
            .await
            .expect("refresh of a live lease must succeed");
    }
    assert!(
        b.try_acquire(&h.key("k"), ttl)
            .await
            .expect("acquire")
            .is_none(),
        "a refreshed lease must still be held after twice its TTL"
    );
    lease.release().await.expect("release");
}

/// Without refresh, the key stays held for at least the TTL, then becomes free.
pub async fn lease_expires_without_refresh(h: &Harness) {
    let (a, b) = (h.backend().await, h.backend().await);
    let ttl = h.ttl(Duration::from_millis(500));
    let key = h.key("k");
    let sent = Instant::now();
    let _lease = must_acquire(h, &*a, "k", ttl).await;
    let _taken = acquire_within(&*b, &key, ttl, ttl * 10).await;
    let taken = Instant::now();
    assert!(
        taken - sent >= ttl.mul_f64(0.9),
        "the key must stay held for its TTL ({ttl:?}), was free after {:?}",
        taken - sent
    );
}

/// After a lease expired and another client took the key, the first holder's refresh
/// reports `Error::Lost`.
pub async fn refresh_after_takeover_reports_lost(h: &Harness) {
    let (a, b) = (h.backend().await, h.backend().await);
    let ttl = h.ttl(Duration::from_millis(300));
    let key = h.key("k");
    let mut first = must_acquire(h, &*a, "k", ttl).await;
    let mut second = acquire_within(&*b, &key, ttl, ttl * 10).await;
    let err = first
        .refresh(ttl)
        .await
        .expect_err("refresh after takeover must fail");
    assert!(
        matches!(err, Error::Lost { .. }),
        "refresh after takeover must be Lost, got {err:?}"
    );
    second.release().await.expect("release");
}

/// `refresh_many` answers for each lease, in order: live leases are extended (still held
/// after twice their TTL), a released one reports `Error::Lost`, and refreshing it does not
/// touch the key's new holder.
pub async fn refresh_many_answers_for_each_lease(h: &Harness) {
    let (a, b) = (h.backend().await, h.backend().await);
    let ttl = h.ttl(Duration::from_millis(600));
    let mut leases = vec![
        must_acquire(h, &*a, "first", ttl).await,
        must_acquire(h, &*a, "released", ttl).await,
        must_acquire(h, &*a, "third", ttl).await,
    ];
    leases[1].release().await.expect("release");
    let mut taken = must_acquire(h, &*b, "released", ttl).await;
    let until = Instant::now() + ttl * 2;
    while Instant::now() < until {
        tokio::time::sleep(ttl / 4).await;
        let results = a.refresh_many(&mut leases, ttl).await;
        assert_eq!(results.len(), 3, "refresh_many must answer once per lease");
        for (index, name) in [(0, "first"), (2, "third")] {
            if let Err(err) = &results[index] {
                panic!("refresh_many of the live lease `{name}` must succeed, got {err:?}");
            }
        }
        assert!(
            matches!(&results[1], Err(Error::Lost { .. })),
            "refresh_many of a released lease must be Lost, got {:?}",
            results[1]
        );
        taken
            .refresh(ttl)
            .await
            .expect("the new holder's lease must be untouched by the old lease's refresh");
    }
    for name in ["first", "third"] {
        assert!(
            b.try_acquire(&h.key(name), ttl)
                .await
                .expect("acquire")
                .is_none(),
            "`{name}`, refreshed by refresh_many, must still be held after twice its TTL"
        );
    }
    for lease in &mut leases {
        lease.release().await.expect("release");
    }
    taken.release().await.expect("release");
}

/// Holding one key does not affect another.
pub async fn independent_keys(h: &Harness) {
    let (a, b) = (h.backend().await, h.backend().await);
    let ttl = h.ttl(Duration::from_secs(10));
    let mut one = must_acquire(h, &*a, "one", ttl).await;
    let mut two = must_acquire(h, &*b, "two", ttl).await;
    one.release().await.expect("release");
    assert!(
        a.try_acquire(&h.key("two"), ttl)
            .await
            .expect("acquire")
            .is_none(),
        "releasing `one` must not free `two`"
    );
    two.release().await.expect("release");
}

/// Fencing tokens strictly increase across clients, releases and takeovers after expiry.
pub async fn fencing_tokens_strictly_increase(h: &Harness) {
    let clients = join_all((0..3).map(|_| h.backend())).await;
    let long = h.ttl(Duration::from_secs(10));
    let short = h.ttl(Duration::from_millis(300));
    let key = h.key("k");
    let mut last = None;
    for round in 0..9 {
        let client = &clients[round % clients.len()];
        let expire = round % 3 == 2;
        let ttl = if expire { short } else { long };
        let mut lease = acquire_within(&**client, &key, ttl, short * 10).await;
        let token = lease.fencing_token();
        if let Some(previous) = last {
            assert!(
                token > previous,
                "round {round}: token {token} must exceed {previous}"
            );
        }
        last = Some(token);
        if !expire {
            lease.release().await.expect("release");
        }
    }
}

/// A zero TTL is a clear `Error::InvalidTtl`, not a lease that never expires, for an
/// acquire and for a refresh; the refused refresh leaves the lease held.
pub async fn zero_ttl_is_rejected(h: &Harness) {
    let (a, b) = (h.backend().await, h.backend().await);
    let err = a
        .try_acquire(&h.key("k"), Duration::ZERO)
        .await
        .err()
        .unwrap_or_else(|| panic!("a zero TTL must be rejected"));
    assert!(
        matches!(err, Error::InvalidTtl { .. }),
        "zero TTL must give InvalidTtl, got {err:?}"
    );
    let ttl = h.ttl(Duration::from_secs(10));
    let mut lease = must_acquire(h, &*a, "k", ttl).await;
    let err = lease
        .refresh(Duration::ZERO)
        .await
        .expect_err("a refresh with a zero TTL must be rejected");
    assert!(
        matches!(err, Error::InvalidTtl { .. }),
        "refresh with a zero TTL must give InvalidTtl, got {err:?}"
    );
    assert!(
        b.try_acquire(&h.key("k"), ttl)
            .await
            .expect("acquire")
            .is_none(),
        "a refused refresh must leave the key held"
    );
    lease
        .refresh(ttl)
        .await
        .expect("the lease must be intact after the refused refresh");
    lease.release().await.expect("release");
}

/// TTLs outside the declared `Capabilities::min_ttl..=max_ttl` are an
/// `Error::InvalidTtl` naming the TTL, for an acquire and for a refresh, and the refused
/// refresh leaves the lease held.
pub async fn ttls_outside_the_declared_bounds_are_rejected(h: &Harness) {
    let caps = h.capabilities();
    let backend = h.backend().await;
    let key = h.key("k");
    let ttl = h.ttl(Duration::from_secs(10));
    let mut lease = must_acquire(h, &*backend, "k", ttl).await;
    let mut outside = vec![caps.min_ttl.saturating_sub(Duration::from_nanos(1))];
    if let Some(longer) = caps.max_ttl.checked_add(Duration::from_millis(1)) {
        outside.push(longer);
    }
    for bad in outside {
        let acquired = backend.try_acquire(&key, bad).await.map(drop);
        let refreshed = lease.refresh(bad).await;
        for (operation, outcome) in [("acquire", acquired), ("refresh", refreshed)] {
            match outcome {
                Err(Error::InvalidTtl { ttl: named, .. }) => {
                    assert_eq!(named, bad, "the {operation}'s InvalidTtl must name the TTL")
                }
                other => panic!(
                    "{operation} with {bad:?}, outside {:?}..={:?}, must be InvalidTtl, got {other:?}",
                    caps.min_ttl, caps.max_ttl
                ),
            }
        }
    }
    lease
        .refresh(ttl)
        .await
        .expect("the lease must be intact after the refused refreshes");
    lease.release().await.expect("release");
}
