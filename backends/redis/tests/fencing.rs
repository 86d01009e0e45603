//! What a name leaves on the server: its fencing counter, kept after every lease is gone
//! so that tokens keep increasing, and removed on request with
//! `RedisBackend::forget_fencing`.

mod common;

use std::time::Duration;

use common::{backend, raw, unique_key};
use leasehold_core::LockBackend;

const TTL: Duration = Duration::from_secs(10);

async fn exists(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_released_name_keeps_only_its_fence_counter_until_forgotten() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let backend = backend(server).await;
    let mut conn = raw(server).await;
    let key = unique_key("forget");
    let fence = backend.fence_key(&key);
    assert_eq!(
        fence,
        format!("routine:fence:{key}"),
        "the documented layout"
    );

    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    assert!(
        !backend.forget_fencing(&key).await.unwrap(),
        "a held name's counter is kept"
    );
    assert!(exists(&mut conn, &fence).await, "kept while held");
    let first = lease.fencing_token();
    lease.release().await.unwrap();

    assert!(
        !exists(&mut conn, &backend.lock_key(&key)).await,
        "the lock key is gone after release"
    );
    assert!(exists(&mut conn, &fence).await, "the counter stays");
    assert!(
        backend.forget_fencing(&key).await.unwrap(),
        "a free name's counter is deleted"
    );
    assert!(
        !exists(&mut conn, &fence).await,
        "nothing of the name is left"
    );
    assert!(
        !backend.forget_fencing(&key).await.unwrap(),
        "forgetting twice finds nothing"
    );

    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    assert_eq!(
        lease.fencing_token(),
        first,
        "tokens start over after the counter was forgotten, as documented"
    );
    lease.release().await.unwrap();
}
