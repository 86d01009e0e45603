//! The batched-refresh skeleton, run with a tiny backend whose batched call is a list.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::{Capabilities, FencingToken, LockBackend, LockKey, MemoryBackend};

/// A backend whose batched call answers `false` (lost) for keys starting with `gone`, and
/// records what each call and each lone refresh was about.
#[derive(Debug, Default)]
struct Batcher {
    /// Tells two instances apart: a lease belongs to the instance that made it.
    instance: u8,
    /// The batched call never answers.
    hangs: bool,
    /// Answers only this many leases of a batch, if set.
    answers_at_most: Option<usize>,
    log: Arc<Log>,
}

#[derive(Debug, Default)]
struct Log {
    batches: Mutex<Vec<Vec<String>>>,
    alone: Mutex<Vec<String>>,
}

#[derive(Debug)]
struct BatchLease {
    key: LockKey,
    instance: u8,
    released: bool,
    /// Start asks for it to be refreshed on its own.
    alone: bool,
    log: Arc<Log>,
}

impl Batcher {
    fn lease(&self, name: &str) -> Box<dyn Lease> {
        Box::new(BatchLease {
            key: LockKey::new(name).unwrap(),
            instance: self.instance,
            released: false,
            alone: name.starts_with("alone"),
            log: Arc::clone(&self.log),
        })
    }
}

#[async_trait]
impl LockBackend for Batcher {
    fn name(&self) -> &'static str {
        "batcher"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new()
    }

    async fn try_acquire_as(
        &self,
        key: &LockKey,
        _ttl: Duration,
        _holder: &str,
    ) -> Result<Option<Box<dyn Lease>>> {
        Ok(Some(self.lease(key.as_str())))
    }

    async fn released(&self, _key: &LockKey) -> Result<()> {
        std::future::pending().await
    }

    async fn refresh_many(&self, leases: &mut [Box<dyn Lease>], ttl: Duration) -> Vec<Result<()>> {
        self.refresh_batched(leases, ttl).await
    }
}

#[async_trait]
impl Lease for BatchLease {
    fn key(&self) -> &LockKey {
        &self.key
    }

    fn fencing_token(&self) -> FencingToken {
        FencingToken::new(1)
    }

    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }

    async fn refresh(&mut self, _ttl: Duration) -> Result<()> {
        self.log.alone.lock().unwrap().push(self.key.to_string());
        Ok(())
    }

    async fn release(&mut self) -> Result<()> {
        self.released = true;
        Ok(())
    }
}

impl BatchRefresh for Batcher {
    const BACKEND: &'static str = "batcher";
    type Lease = BatchLease;
    type Pending = LockKey;
    type Answer = bool;

    fn owns(&self, lease: &BatchLease) -> bool {
        lease.instance == self.instance
    }

    fn refresh_timeout(&self, ttl: Duration) -> Duration {
        ttl / 2
    }

    fn start_refresh(&self, lease: &mut BatchLease, _ttl: Duration) -> RefreshStart<LockKey> {
        if lease.released {
            RefreshStart::Done(Err(Error::lost(&lease.key)))
        } else if lease.alone {
            RefreshStart::Alone
        } else {
            RefreshStart::Queued(lease.key.clone())
        }
    }

    async fn send_refreshes(&self, pending: Vec<LockKey>, _ttl: Duration) -> Vec<bool> {
        if self.hangs {
            std::future::pending::<()>().await;
        }
        let names: Vec<String> = pending.iter().map(ToString::to_string).collect();
        self.log.batches.lock().unwrap().push(names.clone());
        let answered = self.answers_at_most.unwrap_or(names.len());
        names
            .iter()
            .take(answered)
            .map(|name| !name.starts_with("gone"))
            .collect()
    }

    fn finish_refresh(&self, lease: &mut BatchLease, answer: bool, _ttl: Duration) -> Result<()> {
        if answer {
            Ok(())
        } else {
            Err(Error::lost(&lease.key))
        }
    }
}

fn describe(results: &[Result<()>]) -> Vec<String> {
    results
        .iter()
        .map(|result| match result {
            Ok(()) => "ok".to_owned(),
            Err(Error::Lost { key }) => format!("lost {key}"),
            Err(other) => format!("{other}"),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn own_leases_go_in_one_call_and_every_lease_gets_its_result_in_order() {
    let ttl = Duration::from_secs(10);
    let backend = Batcher::default();
    let other_instance = Batcher {
        instance: 1,
        log: Arc::clone(&backend.log),
        ..Batcher::default()
    };
    let memory = MemoryBackend::new();
    let foreign = memory
        .try_acquire(&LockKey::new("memory").unwrap(), ttl)
        .await
        .unwrap()
        .unwrap();
    let mut released = backend.lease("released");
    released.release().await.unwrap();
    let mut leases = vec![
        backend.lease("a"),
        foreign,
        backend.lease("gone-b"),
        released,
        backend.lease("alone-c"),
        other_instance.lease("d"),
        backend.lease("e"),
    ];
    let results = backend.refresh_many(&mut leases, ttl).await;
    assert_eq!(
        describe(&results),
        ["ok", "ok", "lost gone-b", "lost released", "ok", "ok", "ok"],
        "one result per lease, in the order of the leases"
    );
    assert_eq!(
        *backend.log.batches.lock().unwrap(),
        [["a", "gone-b", "e"]],
        "the backend's own queued leases must go in one batched call, in order"
    );
    assert_eq!(
        *backend.log.alone.lock().unwrap(),
        ["alone-c", "d"],
        "leases left alone and leases of another instance must be refreshed on their own"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_that_runs_out_of_time_fails_each_of_its_leases_with_a_timeout() {
    let ttl = Duration::from_secs(10);
    let backend = Batcher {
        hangs: true,
        ..Batcher::default()
    };
    let memory = MemoryBackend::new();
    let foreign = memory
        .try_acquire(&LockKey::new("memory").unwrap(), ttl)
        .await
        .unwrap()
        .unwrap();
    let mut leases = vec![backend.lease("a"), foreign, backend.lease("b")];
    let results = backend.refresh_many(&mut leases, ttl).await;
    assert_eq!(results.len(), 3, "one result per lease");
    for index in [0, 2] {
        assert!(
            matches!(
                &results[index],
                Err(Error::Timeout {
                    backend: "batcher",
                    operation: "refresh",
                    timeout,
                }) if *timeout == ttl / 2
            ),
            "lease {index} waited on the batch and must time out with the batch's bound, got {:?}",
            results[index]
        );
    }
    assert!(
        results[1].is_ok(),
        "another backend's lease does not wait on the batch, got {:?}",
        results[1]
    );
}

#[tokio::test(start_paused = true)]
async fn leases_left_without_an_answer_are_refreshed_on_their_own() {
    let backend = Batcher {
        answers_at_most: Some(1),
        ..Batcher::default()
    };
    let mut leases = vec![backend.lease("gone-a"), backend.lease("b")];
    let results = backend
        .refresh_many(&mut leases, Duration::from_secs(4))
        .await;
    assert_eq!(describe(&results), ["lost gone-a", "ok"]);
    assert_eq!(*backend.log.alone.lock().unwrap(), ["b"]);
}

#[tokio::test]
async fn refresh_rest_fills_only_the_empty_slots() {
    let backend = Batcher::default();
    let mut leases = vec![backend.lease("a"), backend.lease("b"), backend.lease("c")];
    let key = LockKey::new("b").unwrap();
    let results = refresh_rest(
        &mut leases,
        vec![None, Some(Err(Error::lost(&key)))],
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(describe(&results), ["ok", "lost b", "ok"]);
    assert_eq!(*backend.log.alone.lock().unwrap(), ["a", "c"]);
}
