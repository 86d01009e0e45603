//! Records kept beside a lease: one key per name under the record prefix (see
//! [`key::record_prefix`](crate::key::record_prefix)), with no etcd lease, so it outlives
//! every holder.
//!
//! A write is one transaction: if the lock key's create revision is the writer's fencing
//! token (the key is held by that very acquisition: a later one has a later create
//! revision, and a released or expired key has none) and the record holds the expected
//! value (or, for none, does not exist), put the new value; otherwise read the lock key
//! and the record, at the same revision, to tell a fenced writer from a conflict.

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use leasehold_core::{FencingToken, RecordWrite};

use crate::error::Failure;

/// The record in `record_key`, `None` if there is none.
pub(crate) async fn read(client: &Client, record_key: Vec<u8>) -> Result<Option<Vec<u8>>, Failure> {
    let mut found = client.kv_client().get(record_key, None).await?;
    Ok(found
        .take_kvs()
        .into_iter()
        .next()
        .map(|kv| kv.value().to_vec()))
}

/// Compare-and-set of `record_key` by the holder of the lease on `lock_key` with fencing
/// token `token`, in one transaction.
pub(crate) async fn write(
    client: &Client,
    lock_key: Vec<u8>,
    record_key: Vec<u8>,
    token: FencingToken,
    expected: Option<&[u8]>,
    value: &[u8],
) -> Result<RecordWrite, Failure> {
    // A token beyond any revision etcd can have names no lease.
    let Ok(revision) = i64::try_from(token.get()) else {
        return Ok(RecordWrite::Fenced);
    };
    let held = Compare::create_revision(lock_key.clone(), CompareOp::Equal, revision);
    let unchanged = match expected {
        // A value comparison on a missing key fails in etcd, so a missing record never
        // matches an expected value, not even an empty one.
        Some(expected) => Compare::value(record_key.clone(), CompareOp::Equal, expected),
        None => Compare::create_revision(record_key.clone(), CompareOp::Equal, 0),
    };
    let txn = Txn::new()
        .when([held, unchanged])
        .and_then([TxnOp::put(record_key.clone(), value, None)])
        .or_else([
            TxnOp::get(lock_key, Some(GetOptions::new().with_keys_only())),
            TxnOp::get(record_key, None),
        ]);
    let response = client.kv_client().txn(txn).await?;
    if response.succeeded() {
        return Ok(RecordWrite::Written);
    }
    let mut reads = response.op_responses().into_iter().map(|op| match op {
        TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
        _ => None,
    });
    let (lock, record) = (reads.next().flatten(), reads.next().flatten());
    if lock.is_none_or(|lock| lock.create_revision() != revision) {
        return Ok(RecordWrite::Fenced);
    }
    Ok(RecordWrite::Conflict {
        current: record.map(|record| record.value().to_vec()),
    })
}
