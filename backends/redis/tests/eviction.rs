//! The server's eviction policy, checked at connect: a Redis that may evict keys under
//! memory pressure can delete a held lock (two holders) or a fencing counter (tokens
//! start over). The backend warns unless `maxmemory-policy` is `noeviction`, refuses to
//! connect if told to, and skips the check where the server does not let it look.

mod common;

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use common::raw;
use leasehold_conformance::servers::RedisServer;
use leasehold_core::Error;
use leasehold_redis::RedisBackend;
use tracing::field::Field;
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// A server with `maxmemory-policy` set to `policy`.
async fn server_with_policy(policy: &str) -> Option<RedisServer> {
    let server = RedisServer::start()?;
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory-policy", policy])
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    Some(server)
}

/// Keeps the warnings logged on this thread, rendered.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Subscriber for Warnings {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::WARN
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut rendered = String::new();
        event.record(&mut |field: &Field, value: &dyn Debug| {
            rendered.push_str(&format!("{}={value:?} ", field.name()));
        });
        self.0.lock().unwrap().push(rendered);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[tokio::test]
async fn an_evicting_server_is_reported_with_a_warning_by_default() {
    let server = leasehold_conformance::require_server!(server_with_policy("allkeys-lru").await);
    let warnings = Warnings::default();
    let backend = {
        let _logged = tracing::subscriber::set_default(warnings.clone());
        RedisBackend::from_url(&server.url()).await
    };
    backend.expect("an evicting server is only warned about by default");
    let all = warnings.all();
    assert!(
        all.iter()
            .any(|w| w.contains("maxmemory-policy") && w.contains("allkeys-lru")),
        "a warning names the setting and the policy: {all:?}"
    );
}

#[tokio::test]
async fn an_evicting_server_is_refused_when_noeviction_is_required() {
    let server = leasehold_conformance::require_server!(server_with_policy("volatile-lru").await);
    let err = RedisBackend::builder()
        .with_url(server.url())
        .with_require_noeviction(true)
        .build()
        .await
        .unwrap_err();
    match &err {
        Error::Misconfigured { reason, .. } => assert!(
            reason.contains("volatile-lru") && reason.contains("noeviction"),
            "the reason names the policy and the fix: {reason}"
        ),
        other => panic!("expected Misconfigured, got {other:?}"),
    }
}

#[tokio::test]
async fn a_noeviction_server_is_accepted_when_required() {
    let server = leasehold_conformance::require_server!(server_with_policy("noeviction").await);
    RedisBackend::builder()
        .with_url(server.url())
        .with_require_noeviction(true)
        .build()
        .await
        .expect("noeviction is what is required");
}

#[tokio::test]
async fn a_server_that_hides_its_policy_is_accepted_without_the_check() {
    let server = leasehold_conformance::require_server!(server_with_policy("allkeys-lru").await);
    // A user without `CONFIG`, as on managed Redis services.
    let _: () = redis::cmd("ACL")
        .arg(&[
            "SETUSER", "noconfig", "on", ">pw", "~*", "&*", "+@all", "-config",
        ])
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    let url = format!("redis://noconfig:pw@127.0.0.1:{}", server.port());
    RedisBackend::builder()
        .with_url(url)
        .with_require_noeviction(true)
        .build()
        .await
        .expect("a policy the server does not show cannot be checked, and is not held against it");
}
