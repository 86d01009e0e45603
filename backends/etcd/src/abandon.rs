//! Acquire transactions whose caller stopped waiting: the key is given back.
//!
//! etcd may apply an acquire transaction after its caller gave up on it (our deadline or
//! the runner's passed, or the future was dropped). The key would then be held through
//! our session lease, which the refreshes of every other key keep alive: no lease object
//! owns it, so nobody releases it, and the routine's next attempts find it held by our
//! own process for as long as the process lives. With thousands of routines starting at
//! once, acquires do time out, and each key taken that way would starve its routine for
//! good.
//!
//! So the transaction runs on a task of its own, which hands the reply over if the
//! caller still waits, and otherwise deletes the key if the transaction took it, and
//! only once the reply says it was taken, so the delete cannot overtake the transaction.
//! If the transaction gets no reply at all, the delete is sent anyway, after the request
//! timeout; since etcd may still apply the transaction after that delete, the delete is
//! repeated with the session's keep-alives for a TTL (see the `orphan` module). An
//! [`Attempt`] covers the caller's side: dropped before it handed a lease out (a
//! deadline passed while a keep-alive sent alongside was still on its way, or the
//! transaction failed without an answer), it deletes the key the same way.
//!
//! The delete compares the key's value with the one this attempt wrote, which no other
//! attempt of any process writes (see the `holder` module), and the key's lease with the
//! session lease the attempt wrote it with: a key held by anyone else, even another
//! backend that happened to write the same value, is left alone. A delete that fails is
//! retried with the session's keep-alives until it succeeds (see the `orphan` module):
//! given up, it would leave the key on our session for as long as the process lives.

use std::sync::Arc;

use etcd_client::{Txn, TxnResponse};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::EtcdBackend;
use crate::error::{Failure, timed};
use crate::orphan::Orphan;
use crate::session::Session;
use crate::value::Stamp;

/// One acquire attempt of a key. Dropped without [`Attempt::answered`] after its
/// transaction was sent, it gives the key back in the background if the transaction
/// took it.
pub(crate) struct Attempt {
    backend: EtcdBackend,
    key: Vec<u8>,
    value: String,
    /// The transaction last sent; `None` until one is.
    sent: Option<Sent>,
    answered: bool,
}

/// An acquire transaction that was sent.
struct Sent {
    session: Arc<Session>,
    at: Instant,
    /// Whether etcd's answer came back (the key taken, or not).
    answered: bool,
}

impl Attempt {
    /// An attempt to take `key` for the acquisition `stamp`.
    pub(crate) fn new(backend: &EtcdBackend, key: &[u8], stamp: &Stamp) -> Self {
        Self {
            backend: backend.clone(),
            key: key.to_vec(),
            value: backend.attempt_value(stamp),
            sent: None,
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

    /// Sends the acquire `txn`, which writes [`Attempt::value`] into the key attached to
    /// `session`'s lease, on a task of its own, and waits for its reply. If this future
    /// is dropped before the reply, the task gives the key back when the reply says it
    /// was taken, or when there is no reply (see the module docs).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe in the sense above: a dropped call leaves no key held.
    pub(crate) async fn send(
        &mut self,
        session: &Arc<Session>,
        txn: Txn,
    ) -> Result<TxnResponse, Failure> {
        let at = Instant::now();
        self.sent = Some(Sent {
            session: Arc::clone(session),
            at,
            answered: false,
        });
        let (reply, answer) = oneshot::channel();
        let mut kv = self.backend.kv();
        let timeout = self.backend.request_timeout();
        let orphan = self.orphan(session);
        let session = Arc::clone(session);
        tokio::spawn(async move {
            let outcome = timed(timeout, async { kv.txn(txn).await.map_err(Failure::from) }).await;
            let orphan = match reply.send(outcome) {
                Ok(()) => return,
                // Not taken: nothing to give back.
                Err(Ok(response)) if !response.succeeded() => return,
                Err(Err(failure)) if failure.is_lease_not_found() => return,
                // Taken: the caller is gone, so give it back.
                Err(Ok(_)) => orphan,
                // Unknown, and etcd may still apply it later.
                Err(Err(_)) => orphan.unanswered(at, session.ttl()),
            };
            session.delete_or_adopt(&mut kv, orphan, timeout).await;
        });
        let outcome = answer
            .await
            .unwrap_or_else(|_| Err(Failure::from(task_ended())));
        if let Some(sent) = &mut self.sent {
            sent.answered = match &outcome {
                Ok(_) => true,
                Err(failure) => failure.is_lease_not_found(),
            };
        }
        outcome
    }

    /// The key as this attempt would have written it with `session`.
    fn orphan(&self, session: &Session) -> Orphan {
        Orphan::attempt(self.key.clone(), self.value.clone(), session.id())
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        // Never sent: nothing was written.
        let Some(sent) = self.sent.take() else {
            return;
        };
        let orphan = self.orphan(&sent.session);
        let orphan = if sent.answered {
            orphan
        } else {
            orphan.unanswered(sent.at, sent.session.ttl())
        };
        sent.session.delete_in_background(
            self.backend.kv(),
            orphan,
            self.backend.request_timeout(),
        );
    }
}

fn task_ended() -> etcd_client::Error {
    etcd_client::Error::InvalidArgs("the acquire task ended without a reply".to_owned())
}
