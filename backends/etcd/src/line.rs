//! The waiting line of a name (etcd's election recipe): the requests behind `released()`.
//!
//! Each backend that waits for a name puts a key of its own under the name's waiter
//! prefix (see [`waiter_prefix`](crate::key::waiter_prefix)), under the backend's waiter
//! lease, and looks for its predecessor: the waiter key of the name with the next-lower
//! create revision. Only the first in line (no predecessor) is woken by the deletion of
//! the lock key; the others wait for their predecessor's key to go (it acquired the name
//! and left the line, stopped waiting, or its lease expired) and then look again. So a
//! release wakes one backend, not every waiting one, and a crashed waiter's key goes
//! with its lease.
//!
//! This module sends the requests; the `watch` module keeps the state and the watch.

use std::time::Duration;

use etcd_client::{
    Client, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse,
};

use crate::error::{Failure, timed};

/// The TTL asked for the waiter lease: how long a crashed waiter can stay in the line.
/// etcd may raise it to its minimum; keep-alives go every third of what it granted.
pub(crate) const WAITER_TTL_SECS: i64 = 10;

/// Where a waiter stands, as read in one transaction.
#[derive(Debug)]
pub(crate) struct Place {
    /// The create revision of the waiter's own key.
    pub(crate) revision: i64,
    /// The waiter key just before it, if it is not first.
    pub(crate) behind: Option<Vec<u8>>,
    /// Whether the lock key was absent when the line was read.
    pub(crate) lock_free: bool,
}

/// The waiter keys of the name whose waiter prefix is `prefix`, up to `limit`, newest
/// first, created at `max_revision` or before (0 for any).
fn line_read(prefix: &[u8], max_revision: i64, limit: i64) -> TxnOp {
    let mut options = GetOptions::new()
        .with_prefix()
        .with_keys_only()
        .with_sort(SortTarget::Create, SortOrder::Descend)
        .with_limit(limit);
    if max_revision > 0 {
        options = options.with_max_create_revision(max_revision);
    }
    TxnOp::get(prefix.to_vec(), Some(options))
}

fn lock_read(lock_key: &[u8]) -> TxnOp {
    TxnOp::get(lock_key.to_vec(), Some(GetOptions::new().with_count_only()))
}

/// Puts `own` (a key never used before) under `lease` and reads, in the same
/// transaction, its predecessor and whether the lock key is there.
pub(crate) async fn join(
    client: &Client,
    (prefix, own, lock_key): (&[u8], &[u8], &[u8]),
    lease: i64,
    timeout: Duration,
) -> Result<Place, Failure> {
    let txn = Txn::new().and_then([
        TxnOp::put(own.to_vec(), "", Some(PutOptions::new().with_lease(lease))),
        line_read(prefix, 0, 2),
        lock_read(lock_key),
    ]);
    let answer = timed(timeout, async { Ok(client.kv_client().txn(txn).await?) }).await?;
    let responses = answer.op_responses();
    let (keys, lock_free) = read(&responses);
    // Our key was created by this transaction, so it is the newest of the name's.
    let revision = keys
        .iter()
        .find(|(key, _)| key.as_slice() == own)
        .map_or(0, |(_, revision)| *revision);
    let behind = keys
        .into_iter()
        .find(|(key, created)| key.as_slice() != own && *created < revision)
        .map(|(key, _)| key);
    Ok(Place {
        revision,
        behind,
        lock_free,
    })
}

/// Reads the predecessor of the waiter key created at `revision` again, and whether the
/// lock key is there.
pub(crate) async fn look_again(
    client: &Client,
    (prefix, lock_key): (&[u8], &[u8]),
    revision: i64,
    timeout: Duration,
) -> Result<Place, Failure> {
    let txn = Txn::new().and_then([line_read(prefix, revision - 1, 1), lock_read(lock_key)]);
    let answer = timed(timeout, async { Ok(client.kv_client().txn(txn).await?) }).await?;
    let (keys, lock_free) = read(&answer.op_responses());
    Ok(Place {
        revision,
        behind: keys.into_iter().next().map(|(key, _)| key),
        lock_free,
    })
}

/// The (key, create revision) pairs of the line read and whether the lock key is absent.
fn read(responses: &[TxnOpResponse]) -> (Vec<(Vec<u8>, i64)>, bool) {
    let mut keys = Vec::new();
    let mut lock_free = true;
    let mut gets = responses.iter().filter_map(|response| match response {
        TxnOpResponse::Get(get) => Some(get),
        _ => None,
    });
    if let Some(line) = gets.next() {
        keys = line
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.create_revision()))
            .collect();
    }
    if let Some(lock) = gets.next() {
        lock_free = lock.count() == 0;
    }
    (keys, lock_free)
}

/// Deletes a waiter key: the waiter left the line.
pub(crate) async fn leave(client: Client, own: Vec<u8>, timeout: Duration) {
    let deleted = timed(timeout, async {
        Ok(client.kv_client().delete(own, None).await?)
    })
    .await;
    if let Err(failure) = deleted {
        // The key goes with the waiter lease at the latest.
        tracing::debug!(?failure, "cannot delete an etcd waiter key");
    }
}

/// Grants the waiter lease: its id and the TTL etcd granted, in seconds.
pub(crate) async fn grant(client: &Client, timeout: Duration) -> Result<(i64, i64), Failure> {
    let granted = timed(timeout, async {
        Ok(client.lease_client().grant(WAITER_TTL_SECS, None).await?)
    })
    .await?;
    Ok((granted.id(), granted.ttl().max(1)))
}

/// Revokes the waiter lease, deleting the waiter keys left under it.
pub(crate) async fn revoke(client: &Client, lease: i64, timeout: Duration) {
    let revoked = timed(timeout, async {
        Ok(client.lease_client().revoke(lease).await?)
    })
    .await;
    if let Err(failure) = revoked {
        tracing::debug!(?failure, "cannot revoke the etcd waiter lease; it expires");
    }
}

/// The keep-alive stream of the waiter lease.
pub(crate) struct Keeper {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

impl Keeper {
    pub(crate) async fn open(
        client: &Client,
        lease: i64,
        timeout: Duration,
    ) -> Result<Self, Failure> {
        let (keeper, stream) = timed(timeout, async {
            Ok(client.lease_client().keep_alive(lease).await?)
        })
        .await?;
        Ok(Self { keeper, stream })
    }

    /// Sends one keep-alive; `false` if etcd no longer knows the lease.
    pub(crate) async fn keep(&mut self, timeout: Duration) -> Result<bool, Failure> {
        timed(timeout, async {
            self.keeper.keep_alive().await?;
            match self.stream.message().await? {
                Some(answer) => Ok(answer.ttl() > 0),
                None => Err(Failure::from(etcd_client::Error::WatchError(
                    "the keep-alive stream of the waiter lease ended".to_owned(),
                ))),
            }
        })
        .await
    }
}
