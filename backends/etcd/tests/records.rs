//! Records on etcd: the key they live in (a sibling of the key prefix, with no etcd
//! lease), and that writing one is not taken for a release by the watch on the prefix.

mod common;

use std::pin::pin;

use common::{TTL, backend, key_info, raw, unique_key, within};
use futures::FutureExt;
use leasehold_core::{LockBackend, RecordWrite};

#[tokio::test]
async fn a_record_lives_beside_the_key_prefix_without_an_etcd_lease() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let backend = backend(server).await;
    let mut raw = raw(server).await;
    let key = unique_key("record");
    let record = backend.record_key(&key);
    assert_eq!(record, format!("routine/record/{key}").into_bytes());
    let mut lease = backend.try_acquire(&key, TTL).await.unwrap().unwrap();
    assert!(
        backend
            .write_record(&key, lease.fencing_token(), None, b"fire 1")
            .await
            .unwrap()
            .is_written()
    );
    let (_, record_lease) = key_info(&mut raw, &record).await.expect("the record key");
    assert_eq!(record_lease, 0, "a record is attached to no etcd lease");
    lease.release().await.unwrap();
    assert_eq!(
        backend
            .write_record(&key, lease.fencing_token(), Some(b"fire 1"), b"late")
            .await
            .unwrap(),
        RecordWrite::Fenced,
        "a released lease writes nothing"
    );
    assert!(
        backend.list(key.as_str()).await.unwrap().is_empty(),
        "list sees no record"
    );
    let _ = raw.delete(record, None).await.unwrap();
}

#[tokio::test]
async fn a_record_write_does_not_wake_a_waiter() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let (holder, waiter) = (backend(server).await, backend(server).await);
    let (key, other) = (unique_key("written"), unique_key("other"));
    let mut lease = holder.try_acquire(&key, TTL).await.unwrap().unwrap();
    let mut other_lease = holder.try_acquire(&other, TTL).await.unwrap().unwrap();
    let mut released = pin!(waiter.released(&key));
    let mut other_released = pin!(waiter.released(&other));
    assert!(
        released.as_mut().now_or_never().is_none(),
        "the key is held"
    );
    assert!(other_released.as_mut().now_or_never().is_none());
    for value in [&b"one"[..], b"two"] {
        let expected = (value == b"two").then_some(&b"one"[..]);
        assert!(
            holder
                .write_record(&key, lease.fencing_token(), expected, value)
                .await
                .unwrap()
                .is_written()
        );
    }
    other_lease.release().await.unwrap();
    within(TTL, "released() of the released key", other_released)
        .await
        .unwrap();
    // Watch events arrive in order and the later release was dispatched, so a wake by
    // the record writes would have happened by now.
    assert!(
        released.as_mut().now_or_never().is_none(),
        "a record write must not look like a release"
    );
    lease.release().await.unwrap();
    within(TTL, "released() after the release", released)
        .await
        .unwrap();
}
