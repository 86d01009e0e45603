//! Where etcd's crash takeover time goes: how late the server ends an expired lease, and
//! what ending one costs, with the raw client (no library).
//!
//! Each round grants a lease of the crash benchmark's TTL, puts a key under it and
//! watches the key; nothing keeps the lease alive, as after a holder's crash. The
//! server's expiry lies between the grant's request and its reply plus the TTL; the
//! figure is the time from the reply plus the TTL to the key's delete event (a lower
//! bound on how late the server acted; add the grant's round trip for the upper one).
//! Rounds start at random offsets, so expiries land anywhere in the server's revoke
//! loop. Then, for comparison, what an explicit `LeaseRevoke` takes from its request to
//! the delete event: the cost of ending a lease once the server decides to.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use etcd_client::{Client, EventType, PutOptions, WatchOptions};
use serde::Serialize;

use crate::stats::{Samples, Summary};
use crate::targets::{Kind, Target};

/// The expiry figures of etcd.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Expiry {
    /// The lease TTL.
    pub(crate) ttl_ms: u64,
    /// From the grant's reply plus the TTL to the delete event of the lease's key.
    pub(crate) lag: Summary,
    /// The smallest lag, in microseconds.
    pub(crate) lag_min_us: f64,
    /// The grant's round trip: the expiry is at most this much earlier than assumed.
    pub(crate) grant_rtt: Summary,
    /// From a `LeaseRevoke` request to the delete event of the lease's key.
    pub(crate) revoke: Summary,
}

pub(crate) async fn measure(target: &Target, rounds: usize) -> Result<Expiry> {
    if target.kind != Kind::Etcd {
        bail!("the expiry part measures etcd only");
    }
    let endpoint = target.etcd_endpoint().context("no etcd endpoint")?;
    let mut client = Client::connect([endpoint], None).await?;
    let ttl = target.kind.crash_ttl();
    let ttl_s = i64::try_from(ttl.as_secs()).context("TTL")?;
    let mut lag = Samples::default();
    let mut grant_rtt = Samples::default();
    let mut revoke = Samples::default();
    for round in 0..rounds {
        // A random offset, so expiries sample every phase of the server's revoke loop.
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..500))).await;
        let key = format!("bench/expiry/{round}");
        let sent = Instant::now();
        let (_, replied) = key_under_new_lease(&mut client, &key, ttl_s).await?;
        grant_rtt.push(replied - sent);
        let deleted = wait_for_delete(&mut client, &key, ttl * 3).await?;
        lag.push(deleted.saturating_duration_since(replied + ttl));

        let (lease, _) = key_under_new_lease(&mut client, &key, ttl_s).await?;
        let mut stream = client
            .watch(key.as_str(), Some(WatchOptions::new()))
            .await?;
        let sent = Instant::now();
        client.lease_revoke(lease).await?;
        let deleted = next_delete(&mut stream, ttl * 3).await?;
        revoke.push(deleted - sent);
    }
    Ok(Expiry {
        ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        lag: lag.summary(),
        lag_min_us: lag
            .quantile(0.0)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e6),
        grant_rtt: grant_rtt.summary(),
        revoke: revoke.summary(),
    })
}

/// Grants a lease of `ttl_s` seconds and puts `key` under it; returns the lease's id and
/// when the grant's reply arrived.
async fn key_under_new_lease(client: &mut Client, key: &str, ttl_s: i64) -> Result<(i64, Instant)> {
    let lease = client.lease_grant(ttl_s, None).await?;
    let granted = Instant::now();
    client
        .put(key, "x", Some(PutOptions::new().with_lease(lease.id())))
        .await?;
    Ok((lease.id(), granted))
}

/// Watches `key` and returns when its delete event arrives.
async fn wait_for_delete(client: &mut Client, key: &str, patience: Duration) -> Result<Instant> {
    let mut stream = client.watch(key, Some(WatchOptions::new())).await?;
    next_delete(&mut stream, patience).await
}

async fn next_delete(stream: &mut etcd_client::WatchStream, patience: Duration) -> Result<Instant> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let response = tokio::time::timeout_at(deadline, stream.message())
            .await
            .context("no delete event in time")??
            .context("the watch ended")?;
        if response
            .events()
            .iter()
            .any(|e| e.event_type() == EventType::Delete)
        {
            return Ok(Instant::now());
        }
    }
}
