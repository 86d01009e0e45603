//! etcd helpers of the integration tests: a proxy to hold or cut a client's traffic,
//! backends and raw clients. Servers, unique names and deadlines come from
//! `leasehold-conformance`, shared with the other backends.
#![allow(dead_code, unreachable_pub)]

pub mod proxy;

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use leasehold_conformance::servers::EtcdServer;
use leasehold_etcd::EtcdBackend;

/// etcd's default minimum lease TTL, which the throwaway servers run with.
pub const TTL: Duration = Duration::from_secs(2);

/// A backend on `server`, with a short request timeout so fault tests end quickly.
pub async fn backend(server: &EtcdServer) -> EtcdBackend {
    EtcdBackend::builder()
        .with_endpoints([server.endpoint()])
        .with_request_timeout(Duration::from_millis(800))
        .with_connect_timeout(Duration::from_millis(800))
        .build()
        .await
        .unwrap_or_else(|err| panic!("backend must connect to {}: {err:?}", server.endpoint()))
}

/// A plain etcd client for looking at and tampering with etcd directly.
pub async fn raw(server: &EtcdServer) -> Client {
    Client::connect([server.endpoint()], None)
        .await
        .unwrap_or_else(|err| panic!("raw client must connect: {err:?}"))
}

/// The etcd key's `(create revision, lease id)`, if it exists.
pub async fn key_info(raw: &mut Client, key: &[u8]) -> Option<(i64, i64)> {
    let found = raw
        .get(key, Some(GetOptions::new().with_keys_only()))
        .await
        .unwrap();
    found
        .kvs()
        .first()
        .map(|kv| (kv.create_revision(), kv.lease()))
}

// Not every test binary that includes this module uses all of them.
#[allow(unused_imports)]
pub use leasehold_conformance::unique_key;
#[allow(unused_imports)]
pub use leasehold_conformance::wait::{Deadline, within};
