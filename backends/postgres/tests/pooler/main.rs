//! Behind a real PgBouncer: transaction and statement pooling are refused, session pooling
//! works. Skipped when `pgbouncer` is not installed (`apt-get install pgbouncer`).

#[path = "../common/mod.rs"]
mod common;
mod pgbouncer;

use std::time::Duration;

use leasehold_core::{Error, LockBackend};

use pgbouncer::PgBouncer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_and_statement_pooling_are_refused_as_misconfigured() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    // PgBouncer before 1.21 mixes up sqlx's named prepared statements between server
    // backends, which is how it shows here; newer ones with max_prepared_statements pass
    // them through, and the probe lock tells.
    for mode in ["transaction", "statement"] {
        let bouncer = leasehold_conformance::require_server!(PgBouncer::start(server, mode));
        let err = common::builder(&bouncer.url(), "pooler")
            .build()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Misconfigured { reason, .. } if reason.contains("pooler")),
            "a pooler in {mode} mode must be refused as Misconfigured, got {err:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_works() {
    let server = leasehold_conformance::require_server!(PostgresServer);
    let bouncer = leasehold_conformance::require_server!(PgBouncer::start(server, "session"));
    let ns = common::unique("session-pool");
    let a = common::backend(&bouncer.url(), &ns).await;
    let b = common::backend(&bouncer.url(), &ns).await;
    let k = common::key("job");
    let ttl = Duration::from_secs(30);
    let mut lease = a.try_acquire(&k, ttl).await.unwrap().expect("free");
    assert!(b.try_acquire(&k, ttl).await.unwrap().is_none(), "held");
    lease.refresh(ttl).await.unwrap();
    lease.release().await.unwrap();
    let mut lease = b.try_acquire(&k, ttl).await.unwrap().expect("released");
    lease.release().await.unwrap();
}
