//! Operator queries on the server: who holds which lock (`describe`, `list`) and freeing
//! a stuck one (`force_release`). None of them is on the path of acquire, refresh or
//! release.

use std::time::Duration;

use leasehold_core::{LeaseInfo, LockKey, Result};

use crate::client::Client;
use crate::error;
use crate::scripts;
use crate::value;

/// How many keys one `SCAN` call asks the server to look at: enough to list thousands of
/// locks in a few round trips, few enough that each call is short for the server.
const SCAN_COUNT: usize = 1000;

/// Describes each of `keys` as it is now, in order: `None` for a key nobody holds. One
/// [`DESCRIBE`](scripts::DESCRIBE) call per
/// [`DESCRIBE_CHUNK`](scripts::DESCRIBE_CHUNK) keys (of one slot in cluster mode), all
/// pipelined.
pub(crate) async fn describe(inner: &Client, keys: &[LockKey]) -> Result<Vec<Option<LeaseInfo>>> {
    let locks: Vec<String> = keys.iter().map(|key| inner.keys.lock(key)).collect();
    let batches = crate::cluster::batches(
        &locks,
        String::as_str,
        inner.keys.tagged(),
        scripts::DESCRIBE_CHUNK,
    );
    let invocations: Vec<_> = batches
        .iter()
        .map(|batch| {
            let mut invocation = scripts::DESCRIBE.prepare_invoke();
            for &index in batch {
                invocation.key(&locks[index]);
            }
            invocation
        })
        .collect();
    let limit = inner.settings.request_timeout;
    let replies = futures::future::try_join_all(invocations.iter().map(|invocation| {
        inner.request("describe", limit, move |mut conn| async move {
            invocation
                .invoke_async::<Vec<Option<(Vec<u8>, i64)>>>(&mut conn)
                .await
        })
    }))
    .await?;
    let mut described: Vec<Option<LeaseInfo>> = keys.iter().map(|_| None).collect();
    for (batch, reply) in batches.iter().zip(replies) {
        if reply.len() != batch.len() {
            return Err(error::unexpected_reply(
                "describe",
                format_args!("{} entries for {} keys", reply.len(), batch.len()),
            ));
        }
        for (&index, held) in batch.iter().zip(reply) {
            described[index] = held.map(|(value, pttl)| info(&keys[index], &value, pttl));
        }
    }
    Ok(described)
}

/// What a lock's value and `PTTL` say. A value this backend did not write (a Go holder's)
/// gives only the remaining TTL.
fn info(key: &LockKey, value: &[u8], pttl: i64) -> LeaseInfo {
    let mut info = LeaseInfo::new(key.clone());
    if let Some(stored) = value::parse(value) {
        info = info
            .with_holder(stored.holder)
            .with_fencing_token(stored.fence)
            .with_acquired_at(stored.acquired_at);
    }
    // -1, a key without expiry, is no lock of ours or of bsm/redislock: its end is unknown.
    if let Ok(left) = u64::try_from(pttl) {
        info = info.with_expires_in(Duration::from_millis(left));
    }
    info
}

/// The held locks whose name starts with `prefix`, in name order: the names found by
/// `SCAN` (never `KEYS`, which blocks the server for as long as it takes), then described
/// in batches. A lock released between the two is left out. In cluster mode every master
/// that serves slots (`CLUSTER NODES`) is scanned.
pub(crate) async fn list(inner: &Client, prefix: &str) -> Result<Vec<LeaseInfo>> {
    let pattern = &inner.keys.lock_pattern(prefix);
    let limit = inner.settings.request_timeout;
    // In cluster mode each master holds its slots' keys: scan every one of them.
    let nodes: Vec<Option<u16>> = if inner.keys.tagged() {
        let masters = inner
            .request("list", limit, |mut conn| async move {
                crate::cluster::masters(&mut conn).await
            })
            .await?;
        masters.into_iter().map(Some).collect()
    } else {
        vec![None]
    };
    let mut names = Vec::new();
    for node in &nodes {
        let mut cursor = 0_u64;
        loop {
            let (next, found): (u64, Vec<Vec<u8>>) = inner
                .request("list", limit, |mut conn| async move {
                    let mut scan = redis::cmd("SCAN");
                    scan.arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT);
                    match (node, conn.cluster()) {
                        (Some(node), Some(cluster)) => {
                            let reply = cluster.route_command(scan, crate::cluster::at(*node));
                            Ok(redis::from_redis_value(reply.await?)?)
                        }
                        _ => scan.query_async(&mut conn).await,
                    }
                })
                .await?;
            names.extend(found.iter().filter_map(|lock| {
                let name = inner.keys.name_of_lock(std::str::from_utf8(lock).ok()?)?;
                // A key under the namespace that no name could have made is not a lock.
                LockKey::new(name).ok()
            }));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    // `SCAN` may return a key more than once.
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    Ok(describe(inner, &names)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// Deletes `key`'s lock whoever holds it and wakes all its waiters (not one, as a release
/// does); whether it was held.
///
/// It reads the lock's value, then deletes the lock only if it still holds that value
/// (with the release script), rather than deleting blindly in one step. A request is sent
/// once more if its connection broke (see [`Client::request`]): a blind `DEL` repeated
/// after a waiter took the freed key would delete the new holder's lock. A lock that
/// changed hands in between, or was released, is left alone: the lock asked about is gone
/// either way.
pub(crate) async fn force_release(inner: &Client, key: &LockKey) -> Result<bool> {
    let lock = &inner.keys.lock(key);
    let limit = inner.settings.request_timeout;
    let held: Option<Vec<u8>> = inner
        .request("force_release", limit, |mut conn| async move {
            redis::cmd("GET").arg(lock).query_async(&mut conn).await
        })
        .await?;
    let Some(held) = held else {
        return Ok(false);
    };
    let mut invocation = scripts::RELEASE.key(lock);
    invocation
        .key(inner.keys.waiters(key))
        .arg(held)
        .arg(inner.keys.channel(key))
        .arg(inner.keys.publish())
        .arg(&inner.waiter_id)
        // Wake every waiter: an operator's action is rare, and a picked waiter that died
        // would hold up the takeover the operator asked for.
        .arg("0")
        .arg(inner.keys.wake_prefix());
    let invocation = &invocation;
    let deleted: i64 = inner
        .request("force_release", limit, |mut conn| async move {
            invocation.invoke_async(&mut conn).await
        })
        .await?;
    match deleted {
        0 | 1 => Ok(true),
        other => Err(error::unexpected_reply("force_release", other)),
    }
}
