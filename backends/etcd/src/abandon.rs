//! Acquire transactions whose caller stopped waiting: the key is given back.
//!
//! etcd may apply an acquire transaction after its caller gave up on it (our deadline or
//! the runner's passed, or the future was dropped). The key would then be held through
//! our session lease, which the refreshes of every other key keep alive: no lease object
//! owns it, so nobody releases it, and the routine's next attempts find it held by our
//! own process for as long as the process lives. With thousands of routines starting at
//! once, acquires time out and this starved routines for good.
//!
//! So the transaction runs on a task of its own, which hands the reply over if the
//! caller still waits, and otherwise deletes the key if the transaction took it: by the
//! value this attempt wrote (unique per attempt, so no other holder's key, of this
//! process or another, is touched), and only once the reply says it was taken, so the
//! delete cannot overtake the transaction. If the transaction gets no reply at all, the
//! delete is sent anyway, after the request timeout. An [`Attempt`] covers the caller's
//! side: dropped before it handed a lease out (a deadline passed while a keep-alive sent
//! alongside was still on its way), it deletes the key the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp, TxnResponse};
use tokio::sync::oneshot;

use crate::EtcdBackend;
use crate::error::{Failure, timed};

/// The value an acquire attempt writes into its key: the holder's process, and a number
/// no other attempt of this process uses.
fn attempt_value(backend: &EtcdBackend) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{} attempt {}",
        backend.holder(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One acquire attempt of a key. Dropped without [`Attempt::answered`], it gives the
/// key back in the background if it holds the attempt's value.
pub(crate) struct Attempt {
    backend: EtcdBackend,
    key: Vec<u8>,
    value: String,
    answered: bool,
}

impl Attempt {
    pub(crate) fn new(backend: &EtcdBackend, key: &[u8]) -> Self {
        Self {
            backend: backend.clone(),
            key: key.to_vec(),
            value: attempt_value(backend),
            answered: false,
        }
    }

    /// The value this attempt writes into the key.
    pub(crate) fn value(&self) -> &str {
        &self.value
    }

    /// The attempt ended with an answer: the key went to a lease, or was not taken.
    pub(crate) fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // Without a runtime the process is ending, and the session lease with it.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut kv = self.backend.kv();
        let timeout = self.backend.request_timeout();
        let key = std::mem::take(&mut self.key);
        let value = std::mem::take(&mut self.value);
        runtime.spawn(async move { delete_if_value(&mut kv, key, value, timeout).await });
    }
}

/// Sends the acquire `txn`, which writes `value` into `key`, on a task of its own, and
/// waits for its reply. If this future is dropped before the reply, the task gives the
/// key back when the reply says it was taken (see the module docs).
///
/// # Cancel safety
///
/// Cancel-safe in the sense above: a dropped call leaves no key held.
pub(crate) async fn send_acquire(
    backend: &EtcdBackend,
    key: &[u8],
    value: &str,
    txn: Txn,
) -> Result<TxnResponse, Failure> {
    let (reply, answer) = oneshot::channel();
    let mut kv = backend.kv();
    let timeout = backend.request_timeout();
    let key = key.to_vec();
    let value = value.to_owned();
    tokio::spawn(async move {
        let outcome = timed(timeout, async { kv.txn(txn).await.map_err(Failure::from) }).await;
        match reply.send(outcome) {
            Ok(()) => {}
            // Not taken: nothing to give back.
            Err(Ok(response)) if !response.succeeded() => {}
            // Taken, or unknown: the caller is gone, so give it back.
            Err(_) => delete_if_value(&mut kv, key, value, timeout).await,
        }
    });
    answer
        .await
        .unwrap_or_else(|_| Err(Failure::from(task_ended())))
}

async fn delete_if_value(kv: &mut KvClient, key: Vec<u8>, value: String, timeout: Duration) {
    let txn = Txn::new()
        .when([Compare::value(key.clone(), CompareOp::Equal, value)])
        .and_then([TxnOp::delete(key, None)]);
    if let Err(failure) = timed(timeout, async { kv.txn(txn).await.map_err(Failure::from) }).await {
        tracing::debug!(
            ?failure,
            "could not give back the key of an abandoned acquire; it lives as long as the session"
        );
    }
}

fn task_ended() -> etcd_client::Error {
    etcd_client::Error::InvalidArgs("the acquire task ended without a reply".to_owned())
}
