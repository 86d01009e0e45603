//! Operator queries: who holds a lease (`describe`, `list`) and freeing a stuck one
//! (`force_release`). Each case is skipped for a backend that answers
//! [`Error::Unsupported`](leasehold::Error::Unsupported).

use std::time::{Duration, SystemTime};

use leasehold::{Error, LockBackend};

use crate::{Harness, wait};

/// Returns `None` (after a notice) when the backend does not support the query.
fn supported<T>(result: Result<T, Error>, what: &str) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(Error::Unsupported { .. }) => {
            eprintln!("skipped: the backend does not support {what}");
            None
        }
        Err(err) => panic!("{what} must not fail: {err:?}"),
    }
}

/// Whether `at` is within a minute of now: the server's clock and ours may differ a
/// little, not by more.
fn near_now(at: SystemTime) -> bool {
    let now = SystemTime::now();
    let skew = match now.duration_since(at) {
        Ok(ago) => ago,
        Err(ahead) => ahead.duration(),
    };
    skew < Duration::from_secs(60)
}

/// Another client's `describe` names the holder given to `try_acquire_as`, the lease's
/// fencing token, when it was acquired and how long it has left; a free key is `None`,
/// also once the holder released it. An invalid identity is a configuration error.
pub async fn describe_names_the_holder_and_its_token(h: &Harness) {
    let (a, b) = (h.backend().await, h.backend().await);
    let key = h.key("k");
    let ttl = h.ttl(Duration::from_secs(10));
    let Some(free) = supported(b.describe(&key).await, "describe") else {
        return;
    };
    assert_eq!(free, None, "a free key has no holder");
    assert!(
        matches!(
            a.try_acquire_as(&key, ttl, "").await,
            Err(Error::Config { .. })
        ),
        "an empty holder identity must be a configuration error"
    );
    let mut lease = a
        .try_acquire_as(&key, ttl, "replica-a:17")
        .await
        .expect("acquire")
        .expect("a free key must be acquired");
    let info = b
        .describe(&key)
        .await
        .expect("describe")
        .expect("a held key must be described");
    assert_eq!(info.key, key, "the description names its key");
    assert_eq!(
        info.holder.as_deref(),
        Some("replica-a:17"),
        "the holder identity given at acquire"
    );
    assert_eq!(
        info.fencing_token,
        Some(lease.fencing_token()),
        "the holder's fencing token"
    );
    if let Some(at) = info.acquired_at {
        assert!(near_now(at), "acquired_at {at:?} must be about now");
    }
    let left = info
        .expires_in
        .expect("a held key's remaining TTL is known");
    assert!(
        left > Duration::ZERO && left <= ttl,
        "remaining TTL {left:?} must be within (0, {ttl:?}]"
    );
    lease.release().await.expect("release");
    assert_eq!(
        b.describe(&key).await.expect("describe"),
        None,
        "a released key has no holder"
    );
}

/// `list(prefix)` returns every held key under `prefix`, in name order, with its holder,
/// and nothing outside it or already released.
pub async fn list_returns_the_held_keys_under_a_prefix(h: &Harness) {
    let (a, b) = (h.backend().await, h.backend().await);
    let ttl = h.ttl(Duration::from_secs(10));
    let prefix = h.key("list-").as_str().to_owned();
    let Some(none) = supported(b.list(&prefix).await, "list") else {
        return;
    };
    assert!(
        none.is_empty(),
        "nothing is held under a fresh prefix: {none:?}"
    );
    let mut leases = Vec::new();
    for (name, holder) in [
        ("list-b", "replica-b"),
        ("list-a", "replica-a"),
        ("other", "x"),
    ] {
        leases.push(
            a.try_acquire_as(&h.key(name), ttl, holder)
                .await
                .expect("acquire")
                .expect("a free key must be acquired"),
        );
    }
    let mut released = a
        .try_acquire_as(&h.key("list-c"), ttl, "replica-c")
        .await
        .expect("acquire")
        .expect("a free key must be acquired");
    released.release().await.expect("release");
    let listed = b.list(&prefix).await.expect("list");
    let names: Vec<(&str, Option<&str>)> = listed
        .iter()
        .map(|info| (info.key.as_str(), info.holder.as_deref()))
        .collect();
    assert_eq!(
        names,
        vec![
            (h.key("list-a").as_str(), Some("replica-a")),
            (h.key("list-b").as_str(), Some("replica-b")),
        ],
        "the held keys under the prefix, in name order, with their holders"
    );
    for lease in &mut leases {
        lease.release().await.expect("release");
    }
}

/// `force_release` frees a held key for another client at once and says it was held;
/// the old holder's next refresh fails (it learns it lost the lease); freeing a free
/// key says it was not held.
pub async fn force_release_frees_the_key_and_the_holder_learns_it(h: &Harness) {
    let (a, b, operator) = (h.backend().await, h.backend().await, h.backend().await);
    let key = h.key("k");
    let ttl = h.ttl(Duration::from_secs(30));
    let mut lease = a
        .try_acquire(&key, ttl)
        .await
        .expect("acquire")
        .expect("a free key must be acquired");
    let Some(was_held) = supported(operator.force_release(&key).await, "force_release") else {
        lease.release().await.expect("release");
        return;
    };
    assert!(was_held, "force_release must report that the key was held");
    let b: &dyn LockBackend = &*b;
    let key_ref = &key;
    let mut next = wait::until(
        h.scaled(Duration::from_secs(10)),
        "acquire after force_release",
        || async move {
            b.try_acquire(key_ref, ttl)
                .await
                .expect("acquire must not fail")
        },
    )
    .await;
    assert!(
        next.fencing_token() > lease.fencing_token(),
        "the next holder's fencing token must be greater"
    );
    assert!(
        lease.refresh(ttl).await.is_err(),
        "the forced-out holder's refresh must fail"
    );
    next.release().await.expect("release");
    assert!(
        !operator.force_release(&key).await.expect("force_release"),
        "force_release of a free key must report that it was not held"
    );
}
