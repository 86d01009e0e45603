//! Keys a backend took but no lease object holds: dropped leases, and acquires whose
//! caller stopped waiting. They are deleted in the background until that succeeds.
//!
//! Such a key stays attached to its session lease, which the refreshes of every other
//! key of the session keep alive: unless it is deleted, nobody runs its routine for as
//! long as the process lives. One delete is tried at once; if it fails (etcd down or
//! slow), the session deletes the key with each keep-alive it sends from then on, until
//! a delete gets an answer. That needs no timer of its own: keep-alives are sent as long
//! as anything of the session is refreshed or acquired, which is exactly as long as the
//! key can stay alive; once they stop, the session lease expires and takes the key
//! along.
//!
//! An answered delete settles an orphan whose key we know we took, or whose acquire
//! transaction was answered: etcd applied that transaction before it answered, so the
//! delete, sent after the answer, comes after it. An acquire that got no answer is
//! different: etcd may apply it later than a delete sent after we stopped waiting (a
//! member that received it pauses, another member answers the delete, and the paused one
//! hands the transaction on when it resumes), and the key would then stay on our
//! session. Its orphan is therefore deleted again with every keep-alive until etcd has
//! answered a delete sent at least one session TTL after the transaction was sent. A
//! transaction held up for longer than that can still take the key after the last
//! delete; the key then stays until the session ends. Waiting longer would narrow that
//! gap, not close it: nobody can tell whether a transaction etcd has not applied yet
//! ever will be.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, KvClient, Txn, TxnOp};
use tokio::time::Instant;

use crate::error::{Failure, timed};

/// A key to delete, and how to tell that it is still the one we took.
#[derive(Debug)]
pub(crate) struct Orphan {
    key: Vec<u8>,
    owner: Owner,
    /// For an acquire that got no answer: it is deleted again until a delete sent at or
    /// after this instant is answered (see the module docs).
    unsettled_until: Option<Instant>,
}

/// What makes a key ours.
#[derive(Debug)]
enum Owner {
    /// The create revision of a key we know we took: unique in the cluster.
    Revision(i64),
    /// An acquire attempt that may or may not have taken the key: the value it wrote
    /// (unique per attempt, see the `holder` module) and the session lease it wrote it
    /// with. Both are compared, so that not even two backends writing equal values could
    /// delete each other's key.
    Attempt { value: String, lease: i64 },
}

impl Orphan {
    /// The key we took with `create_revision`.
    pub(crate) fn revision(key: Vec<u8>, create_revision: i64) -> Self {
        Self {
            key,
            owner: Owner::Revision(create_revision),
            unsettled_until: None,
        }
    }

    /// The key an acquire attempt wrote `value` into, attached to the session `lease`,
    /// if it did.
    pub(crate) fn attempt(key: Vec<u8>, value: String, lease: i64) -> Self {
        Self {
            key,
            owner: Owner::Attempt { value, lease },
            unsettled_until: None,
        }
    }

    /// The same orphan, for an acquire transaction sent at `sent` through a session of
    /// `ttl` that got no answer: etcd may still apply it after any delete sent so far,
    /// so it is deleted again until a delete sent `ttl` after `sent` is answered.
    pub(crate) fn unanswered(mut self, sent: Instant, ttl: Duration) -> Self {
        self.unsettled_until = Some(sent + ttl);
        self
    }

    /// Whether an answered delete sent at `sent` settles this orphan for good.
    fn settled_by(&self, sent: Instant) -> bool {
        self.unsettled_until.is_none_or(|until| sent >= until)
    }

    /// Deletes the key if it is still ours; succeeds whether or not it was.
    fn delete_txn(&self) -> Txn {
        let key = self.key.clone();
        let when = match &self.owner {
            Owner::Revision(revision) => {
                vec![Compare::create_revision(key, CompareOp::Equal, *revision)]
            }
            Owner::Attempt { value, lease } => vec![
                Compare::value(key.clone(), CompareOp::Equal, value.as_str()),
                Compare::lease(key, CompareOp::Equal, *lease),
            ],
        };
        Txn::new()
            .when(when)
            .and_then([TxnOp::delete(self.key.clone(), None)])
    }

    /// Sends the delete once; `Err` gives the orphan back if it must be deleted again:
    /// etcd did not answer, or the key may still be written (see the module docs).
    pub(crate) async fn delete(self, kv: &mut KvClient, timeout: Duration) -> Result<(), Self> {
        let txn = self.delete_txn();
        let sent = Instant::now();
        match timed(timeout, async { kv.txn(txn).await.map_err(Failure::from) }).await {
            Ok(_) if self.settled_by(sent) => Ok(()),
            Ok(_) => Err(self),
            Err(failure) => {
                tracing::debug!(
                    ?failure,
                    "could not delete a key no lease holds; the session retries with its next keep-alive"
                );
                Err(self)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_attempt_is_settled_only_by_a_delete_sent_a_ttl_after_it() {
        let sent = Instant::now();
        let ttl = Duration::from_secs(10);
        let answered = Orphan::attempt(b"k".to_vec(), "v".to_owned(), 7);
        assert!(
            answered.settled_by(sent),
            "an answered attempt settles at once"
        );
        let unanswered = Orphan::attempt(b"k".to_vec(), "v".to_owned(), 7).unanswered(sent, ttl);
        assert!(!unanswered.settled_by(sent + ttl - Duration::from_millis(1)));
        assert!(unanswered.settled_by(sent + ttl));
        assert!(Orphan::revision(b"k".to_vec(), 3).settled_by(sent));
    }
}
