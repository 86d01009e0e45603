//! Records on Redis: the key they live in, that they have no TTL and outlive leases, that
//! `forget_fencing` takes them with the counter, and that a write is fenced unless the
//! lock is held by the writer's own acquisition, even when a Go instance (which counts
//! nothing on the fence key) holds it.

mod common;

use std::time::Duration;

use common::{backend, raw, unique_key};
use leasehold_core::{LockBackend, RecordWrite};

const TTL: Duration = Duration::from_secs(10);

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

async fn get_bytes(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test]
async fn a_record_is_a_plain_key_without_ttl_forgotten_with_the_counter() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let backend = backend(server).await;
    let mut conn = raw(server).await;
    let key = unique_key("record");
    let record = backend.record_key(&key);
    assert_eq!(
        record,
        format!("routine:record:{key}"),
        "the documented layout"
    );

    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    let value = b"\x00fire\xff 1";
    assert_eq!(
        backend
            .write_record(&key, lease.fencing_token(), None, value)
            .await
            .unwrap(),
        RecordWrite::Written
    );
    assert_eq!(
        get_bytes(&mut conn, &record).await.as_deref(),
        Some(&value[..])
    );
    assert_eq!(pttl(&mut conn, &record).await, -1, "a record never expires");
    lease.release().await.unwrap();
    assert_eq!(
        get_bytes(&mut conn, &record).await.as_deref(),
        Some(&value[..]),
        "the record outlives the lease"
    );
    assert_eq!(
        backend
            .write_record(&key, lease.fencing_token(), Some(value), b"late")
            .await
            .unwrap(),
        RecordWrite::Fenced,
        "a released lease writes nothing"
    );

    assert!(backend.forget_fencing(&key).await.unwrap());
    assert_eq!(
        get_bytes(&mut conn, &record).await,
        None,
        "forget_fencing deletes the record with the counter"
    );
    assert_eq!(backend.read_record(&key).await.unwrap(), None);
}

#[tokio::test]
async fn a_lock_held_by_a_go_instance_fences_record_writes() {
    let server = leasehold_conformance::require_server!(RedisServer);
    let backend = backend(server).await;
    let mut conn = raw(server).await;
    let key = unique_key("go-held");
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    let token = lease.fencing_token();
    lease.release().await.unwrap();
    // A Go instance takes the lock as bsm/redislock does: its own token, no fence counter,
    // so the counter still equals our old token.
    let _: () = redis::cmd("SET")
        .arg(backend.lock_key(&key))
        .arg("YWJjZGVmZ2hpamtsbW5vcA")
        .arg("PX")
        .arg(10_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        backend.write_record(&key, token, None, b"x").await.unwrap(),
        RecordWrite::Fenced,
        "the lock is not held by the acquisition with this token"
    );
    assert_eq!(backend.read_record(&key).await.unwrap(), None);
    let _: () = redis::cmd("DEL")
        .arg(backend.lock_key(&key))
        .query_async(&mut conn)
        .await
        .unwrap();
}
