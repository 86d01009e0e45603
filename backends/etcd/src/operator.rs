//! Operator queries on etcd: who holds a key (`describe`, `list`) and freeing a stuck
//! one (`force_release`).
//!
//! A key's holder identity and acquire time come from its value (see the `value`
//! module), its fencing token is its create revision, and its remaining time is its etcd
//! lease's (see the `expiry` module). Keys held by one process share one session lease,
//! so `list` asks etcd about each distinct lease once, however many keys it holds.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use etcd_client::{Client, GetOptions, KeyValue, LeaseClient};
use futures::{StreamExt as _, TryStreamExt as _};
use leasehold_core::{FencingToken, LeaseInfo, LockKey};

use crate::error::Failure;
use crate::{expiry, key, value};

/// How many `LeaseTimeToLive` requests `list` keeps in flight at once.
const LEASE_QUERIES_IN_FLIGHT: usize = 16;

/// The most keys one range read of `list` returns. A key with the longest name and
/// holder identity takes about 600 bytes in the answer, so a page stays far below the
/// 4 MiB a gRPC client accepts in one message, however many keys there are.
const KEYS_PER_PAGE: i64 = 1000;

/// What etcd holds in `etcd_key` (the key of `key`): `None` if it is free.
pub(crate) async fn describe(
    client: &Client,
    key: &LockKey,
    etcd_key: Vec<u8>,
) -> Result<Option<LeaseInfo>, Failure> {
    let found = client.kv_client().get(etcd_key, None).await?;
    let Some(kv) = found.kvs().first() else {
        return Ok(None);
    };
    let left = time_left(client.lease_client(), kv.lease()).await?;
    Ok(Some(info(key.clone(), kv, left)))
}

/// Every held key whose etcd key starts with `range` (the key prefix followed by a name
/// prefix), in name order. Keys under the prefix that are no routine's (a nested
/// prefix's, or not a valid name) are left out.
pub(crate) async fn list(
    client: &Client,
    key_prefix: &str,
    range: Vec<u8>,
) -> Result<Vec<LeaseInfo>, Failure> {
    let found = keys_under(client, range).await?;
    let held: Vec<(LockKey, &KeyValue)> = found
        .iter()
        .filter_map(|kv| Some((key::name_of(key_prefix, kv.key())?, kv)))
        .collect();
    let leases: BTreeSet<i64> = held.iter().map(|(_, kv)| kv.lease()).collect();
    let lease_client = client.lease_client();
    let left: HashMap<i64, Duration> = futures::stream::iter(leases)
        .map(|lease| {
            let lease_client = lease_client.clone();
            async move { Ok::<_, Failure>((lease, time_left(lease_client, lease).await?)) }
        })
        .buffer_unordered(LEASE_QUERIES_IN_FLIGHT)
        .try_collect()
        .await?;
    let mut infos: Vec<LeaseInfo> = held
        .into_iter()
        .map(|(key, kv)| {
            let left = left
                .get(&kv.lease())
                .copied()
                .unwrap_or(expiry::REVOKE_INTERVAL);
            info(key, kv, left)
        })
        .collect();
    infos.sort_by(|a, b| a.key.as_str().cmp(b.key.as_str()));
    Ok(infos)
}

/// Every key that starts with `prefix`, in key order: one range read, or one per
/// [`KEYS_PER_PAGE`] keys, every page read at the revision of the first so that together
/// they show one moment.
async fn keys_under(client: &Client, prefix: Vec<u8>) -> Result<Vec<KeyValue>, Failure> {
    let end = prefix_end(&prefix);
    let mut kv = client.kv_client();
    let (mut from, mut revision) = (prefix, 0);
    let mut keys = Vec::new();
    loop {
        let options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(KEYS_PER_PAGE)
            .with_revision(revision);
        let mut page = kv.get(from, Some(options)).await?;
        if revision == 0 {
            revision = page.header().map_or(0, |header| header.revision());
        }
        let more = page.more();
        let found = page.take_kvs();
        let Some(last) = found.last() else {
            break;
        };
        // The smallest key after the last one read.
        from = [last.key(), &[0]].concat();
        keys.extend(found);
        if !more {
            break;
        }
    }
    Ok(keys)
}

/// The end of the range of keys that start with `prefix`: the prefix with its last byte
/// below 0xff raised by one and the rest cut off, or `\0` (no end) if there is none.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&byte| byte < 0xff) {
        Some(at) => {
            let mut end = prefix[..=at].to_vec();
            end[at] += 1;
            end
        }
        None => vec![0],
    }
}

/// Deletes `etcd_key` whoever holds it; whether it was there.
pub(crate) async fn force_release(client: &Client, etcd_key: Vec<u8>) -> Result<bool, Failure> {
    let deleted = client.kv_client().delete(etcd_key, None).await?;
    Ok(deleted.deleted() > 0)
}

/// How long a key attached to `lease` (0 for none) has left: never zero for a key that
/// is there (see the `expiry` module).
pub(crate) async fn time_left(mut leases: LeaseClient, lease: i64) -> Result<Duration, Failure> {
    if lease == 0 {
        return Ok(expiry::no_lease_time_left());
    }
    let ttl = leases.time_to_live(lease, None).await?;
    Ok(expiry::lease_time_left(ttl.ttl(), ttl.granted_ttl()))
}

/// The description of `key`, held in `kv` with `left` to go.
fn info(key: LockKey, kv: &KeyValue, left: Duration) -> LeaseInfo {
    let decoded = value::decode(kv.value());
    let mut info = LeaseInfo::new(key).with_expires_in(left);
    if let Ok(revision) = u64::try_from(kv.create_revision()) {
        info = info.with_fencing_token(FencingToken::new(revision));
    }
    if let Some(identity) = decoded.identity {
        info = info.with_holder(identity);
    }
    if let Some(at) = decoded.acquired_at {
        info = info.with_acquired_at(at);
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_range_ends_after_every_key_that_starts_with_it() {
        assert_eq!(prefix_end(b"routine/lock/a"), b"routine/lock/b");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0", "no end");
    }
}
