//! Keys: a key prefix and a routine name map to one etcd key, and two different pairs
//! never to the same key, so that applications sharing a cluster under different
//! prefixes cannot lock each other's routines.

mod common;

use std::time::Duration;

use common::{TTL, unique_key};
use leasehold_conformance::servers::EtcdServer;
use leasehold_core::{Error, LockBackend, LockKey};
use leasehold_etcd::EtcdBackend;

async fn with_prefix(server: &EtcdServer, prefix: &str) -> leasehold_core::Result<EtcdBackend> {
    EtcdBackend::builder()
        .with_endpoints([server.endpoint()])
        .with_request_timeout(Duration::from_millis(800))
        .with_key_prefix(prefix)
        .build()
        .await
}

#[tokio::test]
async fn a_name_with_a_slash_is_refused_so_nested_prefixes_cannot_share_a_key() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    let outer = unique_key("outer");
    let outer_prefix = format!("{outer}/");
    let inner_prefix = format!("{outer}/billing/");
    let (a, b) = (
        with_prefix(server, &outer_prefix).await.unwrap(),
        with_prefix(server, &inner_prefix).await.unwrap(),
    );
    // `<outer>/` + `billing/report` and `<outer>/billing/` + `report` spell one key.
    let slashed = LockKey::new("billing/report").unwrap();
    let plain = LockKey::new("report").unwrap();
    let mut held = b.try_acquire(&plain, TTL).await.unwrap().expect("free");
    match a.try_acquire(&slashed, TTL).await {
        Err(Error::InvalidName { name, reason }) => {
            assert_eq!(name, "billing/report");
            assert!(reason.contains('/'), "the reason names the `/`: {reason}");
        }
        other => panic!(
            "a name with `/` must be InvalidName, not contended or taken: {:?}",
            other.map(|lease| lease.is_some())
        ),
    }
    for (what, result) in [
        ("released", a.released(&slashed).await.map(|()| None)),
        ("expires_in", a.expires_in(&slashed).await),
    ] {
        assert!(
            matches!(result, Err(Error::InvalidName { .. })),
            "{what} of a name with `/` must be InvalidName: {result:?}"
        );
    }
    held.release().await.unwrap();
}

#[tokio::test]
async fn a_key_prefix_must_end_with_a_slash() {
    let server = leasehold_conformance::require_server!(EtcdServer);
    // `<p>` + `/report` would be `<p>/` + `report`; a prefix `<p>x` would take `<p>` +
    // `xreport` too.
    let prefix = unique_key("unterminated").as_str().to_owned();
    match with_prefix(server, &prefix).await {
        Err(Error::Config {
            setting, reason, ..
        }) => {
            assert_eq!(setting, "key_prefix");
            assert!(reason.contains('/'), "the reason names the `/`: {reason}");
        }
        other => panic!("a prefix without a final `/` must be a Config error: {other:?}"),
    }
    let url = format!("etcd://{}/{prefix}", server.endpoint());
    let err = EtcdBackend::from_url(&url).await.unwrap_err();
    assert!(
        matches!(err, Error::Config { .. }),
        "a URL path without a final `/` must be a Config error: {err:?}"
    );
    let ok = with_prefix(server, &format!("{prefix}/")).await;
    assert!(ok.is_ok(), "a prefix ending in `/` is fine: {ok:?}");
}
