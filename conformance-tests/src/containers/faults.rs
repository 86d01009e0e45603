//! Server faults a container makes easy, against a runner keeping a routine running: the
//! held routine must stop within one TTL of the fault and run again once it is healed.

use std::sync::Arc;
use std::time::Duration;

use leasehold::{RunOptions, Runner};
use leasehold_core::LockBackend;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Container;
use crate::{unique_key, wait::within};

/// How long each step (the first start, the stop, the start after the heal) may take
/// before the check fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// What the kept-running routine reports: `true` when it starts, `false` with the time
/// when it stops (returns or is dropped).
type Life = (bool, Instant);

struct Stopped(Arc<mpsc::UnboundedSender<Life>>);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.send((false, Instant::now()));
    }
}

/// A runner with lease TTL `ttl` on `backend` keeping a routine running that reports its
/// life.
fn keep_running(
    backend: Arc<dyn LockBackend>,
    ttl: Duration,
) -> (Runner, mpsc::UnboundedReceiver<Life>) {
    let runner = Runner::builder()
        .with_shared_backend(backend)
        .with_lease_ttl(ttl)
        .with_signal_handling(false)
        .build()
        .unwrap_or_else(|err| panic!("the runner must build: {err:?}"));
    let (tx, life) = mpsc::unbounded_channel();
    let tx = Arc::new(tx);
    runner.run_named(
        unique_key("container-fault").as_str(),
        move |ctx| {
            let tx = Arc::clone(&tx);
            async move {
                let _ = tx.send((true, Instant::now()));
                let _stopped = Stopped(tx);
                ctx.cancelled().await;
            }
        },
        RunOptions::keep_running_one_instance(),
    );
    (runner, life)
}

async fn next(life: &mut mpsc::UnboundedReceiver<Life>, started: bool, what: &str) -> Instant {
    let (was_start, at) = within(DEADLINE, what, life.recv())
        .await
        .unwrap_or_else(|| panic!("routine gone: {what}"));
    assert_eq!(
        was_start, started,
        "{what}: the routine must have started={started}"
    );
    at
}

/// Checks that a routine held through `backend` stops within `stop_within` of a fault of
/// its server's `container`, and runs again once the fault is healed.
///
/// A runner with lease TTL `ttl` keeps one routine running on `backend` (whose server
/// runs in `container`). Once it has started, `fault(container)` runs (for example
/// [`Container::pause`], [`Container::restart`] or [`Container::disconnect_network`]);
/// the routine must then stop within `stop_within` of the fault's return: with
/// `stop_within` at most `ttl`, before its lease can have expired on the server, where
/// another runner could take it. The fault is held until one TTL (plus 200 ms) after it,
/// past the lease's expiry on the server, then `heal(container)` runs (for example
/// [`Container::unpause`] or [`Container::connect_network`]; nothing after a restart),
/// and the routine must start again. Each step fails after [`DEADLINE`].
///
/// `fault` and `heal` block (the docker command line): call this on a multi-thread
/// runtime (`#[tokio::test(flavor = "multi_thread")]`) so that the runner goes on
/// meanwhile. Give `backend` request and connect timeouts well under `ttl`, so that a
/// refresh the server does not answer fails in time for the runner to stop the routine.
///
/// Only for faults that end the lease or keep the server from confirming it: a fault
/// the backend's leases survive need not stop the routine (etcd keeps its data and its
/// leases across [`Container::restart`], and a refresh after it succeeds).
///
/// # Panics
///
/// If the routine does not start, does not stop within `stop_within` of the fault, or
/// does not start again after the heal.
///
/// # Examples
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// use leasehold_conformance::containers::{RedisContainer, faults};
/// # async fn backend_on(url: String) -> Arc<dyn leasehold_core::LockBackend> { todo!() }
///
/// # async fn f() {
/// let Some(redis) = RedisContainer::start() else { return }; // skipped outside CI
/// let backend = backend_on(redis.url()).await; // with short timeouts
/// let ttl = Duration::from_secs(1);
/// faults::stops_within_and_runs_again(backend, ttl, ttl, &redis, |r| r.pause(), |r| r.unpause())
///     .await;
/// # }
/// ```
pub async fn stops_within_and_runs_again(
    backend: Arc<dyn LockBackend>,
    ttl: Duration,
    stop_within: Duration,
    container: &Container,
    fault: impl FnOnce(&Container),
    heal: impl FnOnce(&Container),
) {
    let (runner, mut life) = keep_running(backend, ttl);
    next(&mut life, true, "first start").await;
    fault(container);
    let fault_at = Instant::now();
    let stopped_at = next(&mut life, false, "stop after the fault").await;
    assert!(
        stopped_at < fault_at + stop_within,
        "the routine ran {:?} past the fault, longer than {stop_within:?} (TTL {ttl:?})",
        stopped_at - fault_at
    );
    eprintln!(
        "the routine stopped {:?} after the fault (TTL {ttl:?})",
        stopped_at - fault_at
    );
    // The fault outlasts the lease on the server.
    tokio::time::sleep_until(fault_at + ttl + Duration::from_millis(200)).await;
    heal(container);
    next(&mut life, true, "start again once the server answers").await;
    runner.shutdown().await;
}

/// [`stops_within_and_runs_again`] with `stop_within` one TTL: the routine stops
/// before its lease can have expired on the server.
///
/// # Panics
///
/// As [`stops_within_and_runs_again`].
pub async fn stops_within_the_ttl_and_runs_again(
    backend: Arc<dyn LockBackend>,
    ttl: Duration,
    container: &Container,
    fault: impl FnOnce(&Container),
    heal: impl FnOnce(&Container),
) {
    stops_within_and_runs_again(backend, ttl, ttl, container, fault, heal).await;
}
