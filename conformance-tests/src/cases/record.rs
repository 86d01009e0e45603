//! Records kept beside a lease: written by the key's holder with compare-and-set,
//! refused once the key was acquired again, read by anyone, kept after the lease. Each
//! case is skipped for a backend that does not declare
//! [`Capabilities::records`](leasehold::Capabilities::records).

use std::time::Duration;

use leasehold::{Error, MAX_RECORD_LEN, RecordWrite};

use crate::Harness;

/// Whether the backend stores records; prints a notice when it does not.
fn stores_records(h: &Harness) -> bool {
    if h.capabilities().records {
        return true;
    }
    eprintln!("skipped: the backend does not store records");
    false
}

/// The holder writes a record with compare-and-set; another client reads it; a write
/// expecting another value is refused with the record's value; the record outlives the
/// lease.
pub async fn records_are_compare_and_set_by_the_holder(h: &Harness) {
    if !stores_records(h) {
        return;
    }
    let (a, b) = (h.backend().await, h.backend().await);
    let key = h.key("k");
    let ttl = h.ttl(Duration::from_secs(10));
    assert_eq!(
        b.read_record(&key).await.expect("read_record"),
        None,
        "a key never written has no record"
    );
    let mut lease = a
        .try_acquire(&key, ttl)
        .await
        .expect("acquire")
        .expect("a free key must be acquired");
    let token = lease.fencing_token();
    let first = a
        .write_record(&key, token, None, b"fire 1")
        .await
        .expect("write_record");
    assert_eq!(first, RecordWrite::Written, "the holder creates the record");
    assert_eq!(
        b.read_record(&key).await.expect("read_record").as_deref(),
        Some(&b"fire 1"[..]),
        "another client reads what the holder wrote"
    );
    let stale = a
        .write_record(&key, token, None, b"fire 2")
        .await
        .expect("write_record");
    assert_eq!(
        stale,
        RecordWrite::Conflict {
            current: Some(b"fire 1".to_vec())
        },
        "a write expecting no record must be refused once there is one"
    );
    let wrong = a
        .write_record(&key, token, Some(b"fire 0"), b"fire 2")
        .await
        .expect("write_record");
    assert_eq!(
        wrong,
        RecordWrite::Conflict {
            current: Some(b"fire 1".to_vec())
        },
        "a write expecting another value must be refused with the record's value"
    );
    let second = a
        .write_record(&key, token, Some(b"fire 1"), b"fire 2")
        .await
        .expect("write_record");
    assert_eq!(
        second,
        RecordWrite::Written,
        "a matching write replaces the value"
    );
    lease.release().await.expect("release");
    assert_eq!(
        b.read_record(&key).await.expect("read_record").as_deref(),
        Some(&b"fire 2"[..]),
        "the record outlives the lease"
    );
    let other = h.key("other");
    assert_eq!(
        b.read_record(&other).await.expect("read_record"),
        None,
        "records are per key"
    );
}

/// A write with the token of a lease after which the key was acquired again is refused
/// as fenced, so a holder that lost its lease cannot overwrite the next holder's record.
pub async fn record_writes_of_an_earlier_holder_are_fenced(h: &Harness) {
    if !stores_records(h) {
        return;
    }
    let (a, b) = (h.backend().await, h.backend().await);
    let key = h.key("k");
    let ttl = h.ttl(Duration::from_secs(10));
    let mut first = a
        .try_acquire(&key, ttl)
        .await
        .expect("acquire")
        .expect("a free key must be acquired");
    let old = first.fencing_token();
    assert!(
        a.write_record(&key, old, None, b"a")
            .await
            .expect("write_record")
            .is_written(),
        "the first holder writes"
    );
    first.release().await.expect("release");
    let second = b
        .try_acquire(&key, ttl)
        .await
        .expect("acquire")
        .expect("a released key must be acquired");
    assert_eq!(
        a.write_record(&key, old, Some(b"a"), b"stale")
            .await
            .expect("write_record"),
        RecordWrite::Fenced,
        "the earlier holder's write must be fenced once the key was acquired again"
    );
    assert!(
        b.write_record(&key, second.fencing_token(), Some(b"a"), b"b")
            .await
            .expect("write_record")
            .is_written(),
        "the new holder writes"
    );
    assert_eq!(
        a.write_record(&key, old, Some(b"b"), b"stale")
            .await
            .expect("write_record"),
        RecordWrite::Fenced,
        "still fenced after the new holder wrote"
    );
    assert_eq!(
        a.read_record(&key).await.expect("read_record").as_deref(),
        Some(&b"b"[..]),
        "the new holder's record stands"
    );
}

/// Values up to [`MAX_RECORD_LEN`] bytes, any bytes, are stored as given; longer ones
/// are a configuration error and nothing is written.
pub async fn record_values_up_to_the_limit_are_kept_exactly(h: &Harness) {
    if !stores_records(h) {
        return;
    }
    let a = h.backend().await;
    let key = h.key("k");
    let lease = a
        .try_acquire(&key, h.ttl(Duration::from_secs(10)))
        .await
        .expect("acquire")
        .expect("a free key must be acquired");
    let token = lease.fencing_token();
    let too_long = vec![b'x'; MAX_RECORD_LEN + 1];
    assert!(
        matches!(
            a.write_record(&key, token, None, &too_long).await,
            Err(Error::Config { .. })
        ),
        "a value over MAX_RECORD_LEN must be a configuration error"
    );
    assert_eq!(
        a.read_record(&key).await.expect("read_record"),
        None,
        "a refused value is not written"
    );
    let full: Vec<u8> = (0..MAX_RECORD_LEN).map(|i| (i % 256) as u8).collect();
    assert!(
        a.write_record(&key, token, None, &full)
            .await
            .expect("write_record")
            .is_written(),
        "a value of MAX_RECORD_LEN bytes is written"
    );
    assert_eq!(
        a.read_record(&key).await.expect("read_record"),
        Some(full),
        "every byte is kept, zero bytes included"
    );
}
