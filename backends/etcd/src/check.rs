//! Checking that held keys are still ours, many keys per request.
//!
//! A refresh must find out whether its key was deleted or taken over, which the session's
//! keep-alive alone cannot tell. One read per refresh would have a process holding 10,000
//! routines send 10,000 reads per refresh period (and keep as many requests in flight).
//! The session task instead checks every key of a keep-alive batch at once: a transaction
//! with no operations whose compares say "create revision and lease are still these" for
//! up to [`KEYS_PER_TXN`] keys. If it succeeds, every key in it is ours. If it fails, or
//! the cluster refuses that many compares, each key of the chunk is read on its own.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, KvClient, Txn};
use futures::future::join_all;

use crate::error::Failure;

/// Two compares per key, within etcd's default limit of 128 (`--max-txn-ops`).
const KEYS_PER_TXN: usize = 64;

/// A held key to check: it must still exist with this create revision, attached to the
/// session's lease.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub(crate) key: Vec<u8>,
    pub(crate) create_revision: i64,
}

/// Whether each key of `checks` is still ours under `lease`, in order; all within
/// `timeout`. An error means the answer is unknown.
pub(crate) async fn keys_are_ours(
    kv: &KvClient,
    lease: i64,
    checks: &[Check],
    timeout: Duration,
) -> Vec<Result<bool, Failure>> {
    if checks.is_empty() {
        return Vec::new();
    }
    let chunks = checks
        .chunks(KEYS_PER_TXN)
        .map(|chunk| chunk_is_ours(kv.clone(), lease, chunk));
    match tokio::time::timeout(timeout, join_all(chunks)).await {
        Ok(answers) => answers.into_iter().flatten().collect(),
        Err(_elapsed) => vec![Err(Failure::Timeout(timeout)); checks.len()],
    }
}

async fn chunk_is_ours(
    mut kv: KvClient,
    lease: i64,
    chunk: &[Check],
) -> Vec<Result<bool, Failure>> {
    let compares: Vec<Compare> = chunk
        .iter()
        .flat_map(|check| {
            [
                Compare::create_revision(
                    check.key.clone(),
                    CompareOp::Equal,
                    check.create_revision,
                ),
                Compare::lease(check.key.clone(), CompareOp::Equal, lease),
            ]
        })
        .collect();
    match kv.txn(Txn::new().when(compares)).await {
        Ok(response) if response.succeeded() => vec![Ok(true); chunk.len()],
        // Some key is not ours, or the cluster allows fewer compares: ask key by key.
        _ => {
            join_all(
                chunk
                    .iter()
                    .map(|check| one_is_ours(kv.clone(), lease, check)),
            )
            .await
        }
    }
}

async fn one_is_ours(mut kv: KvClient, lease: i64, check: &Check) -> Result<bool, Failure> {
    let found = kv
        .get(check.key.clone(), Some(GetOptions::new().with_keys_only()))
        .await?;
    Ok(found
        .kvs()
        .first()
        .is_some_and(|kv| kv.create_revision() == check.create_revision && kv.lease() == lease))
}
