//! `Session`: one etcd lease shared by every key a backend holds with the same TTL, and
//! the task that owns its keep-alive stream.
//!
//! # Why one lease for many keys
//!
//! An etcd lease per held key would cost one keep-alive per key per refresh period; a
//! process holding 10,000 routines would send 10,000 keep-alives. Keys attached to one
//! session lease are all kept alive by a single keep-alive, and all deleted by etcd when
//! it expires.
//!
//! # When keep-alives are sent
//!
//! Never on a timer: the runner owns timing. A keep-alive is sent when a refresh (or an
//! acquire on an existing session) asks for one. The lease contract needs the keep-alive
//! that backs a refresh to be sent *after* that refresh was called, so the task answers
//! only the requests that were queued before it sent; a request that arrives while a
//! keep-alive is in flight waits for the next one. Refreshes that arrive together share
//! one keep-alive, and the keys they hold are checked together in the same round (see
//! the `check` module).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use etcd_client::{KvClient, LeaseClient, LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::channel;
use crate::check::{Check, keys_are_ours};
use crate::error::{Failure, timed};
use crate::orphan::Orphan;

/// The answer to one keep-alive request.
#[derive(Debug, Clone)]
pub(crate) enum KeepAlive {
    /// A keep-alive sent after the request was made was answered: the lease lives until
    /// at least the session's TTL after the request.
    Alive,
    /// etcd no longer knows the lease: every key attached to it is gone.
    Gone,
    /// The keep-alive could not be confirmed; the lease may or may not be alive.
    Failed(Failure),
}

/// One session lease. Dropping the last `Arc<Session>` ends its task, which revokes the
/// lease if it may still be alive.
#[derive(Debug)]
pub(crate) struct Session {
    state: Arc<State>,
    requests: mpsc::UnboundedSender<Request>,
}

/// A request to the session task: a keep-alive sent after it was made, and optionally a
/// check, in the same round, that a key held through the session is still ours.
#[derive(Debug)]
struct Request {
    check: Option<Check>,
    reply: oneshot::Sender<Answer>,
}

/// The session task's answer to a [`Request`].
#[derive(Debug)]
pub(crate) struct Answer {
    kept: KeepAlive,
    /// The check's outcome, if one was asked for.
    ours: Option<Result<bool, Failure>>,
}

/// What the session and its task share.
#[derive(Debug)]
struct State {
    id: i64,
    ttl: Duration,
    granted_at: Instant,
    lost: AtomicBool,
    /// When the lease may have expired by our clock: the send time of the last confirmed
    /// grant or keep-alive plus the TTL. etcd counts from when it received the request,
    /// which is later, so the lease lives at least until then.
    deadline: Mutex<Instant>,
    orphans: Mutex<Vec<Orphan>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single assignment or push, so a panic cannot leave the
    // data half-updated and poisoning is ignored.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Session {
    /// Grants a lease of `ttl_secs` seconds and starts its keep-alive task.
    ///
    /// `timeout` bounds every keep-alive the task waits for.
    pub(crate) async fn grant(
        mut lease: LeaseClient,
        kv: KvClient,
        ttl_secs: i64,
        timeout: Duration,
    ) -> Result<Arc<Self>, Failure> {
        let granted_at = Instant::now();
        let response = lease.grant(ttl_secs, None).await?;
        // etcd raises TTLs below its minimum silently; the response says what it granted.
        let ttl = Duration::from_secs(u64::try_from(response.ttl()).unwrap_or(0));
        let state = Arc::new(State {
            id: response.id(),
            ttl,
            granted_at,
            lost: AtomicBool::new(false),
            deadline: Mutex::new(granted_at + ttl),
            orphans: Mutex::new(Vec::new()),
        });
        let (requests, receiver) = mpsc::unbounded_channel();
        let task_timeout = timeout.min(ttl / 2);
        tokio::spawn(drive(Arc::clone(&state), lease, kv, receiver, task_timeout));
        tracing::debug!(lease = state.id, ttl = ?ttl, "etcd session lease granted");
        Ok(Arc::new(Self { state, requests }))
    }

    /// The etcd lease id.
    pub(crate) fn id(&self) -> i64 {
        self.state.id
    }

    /// The TTL etcd granted.
    pub(crate) fn ttl(&self) -> Duration {
        self.state.ttl
    }

    /// Whether the lease was granted by a request sent at or after `instant`, so that it
    /// lives for its whole TTL from then on without a keep-alive.
    pub(crate) fn granted_since(&self, instant: Instant) -> bool {
        self.state.granted_at >= instant
    }

    /// Whether the session is known or feared lost: etcd said so, or no keep-alive was
    /// confirmed for a whole TTL. Marks it lost in the second case.
    pub(crate) fn is_lost(&self) -> bool {
        if self.state.lost.load(Ordering::Acquire) {
            return true;
        }
        if Instant::now() >= *lock(&self.state.deadline) {
            self.mark_lost();
            return true;
        }
        false
    }

    /// Marks the session lost: every lease held through it reports `Lost` from now on.
    pub(crate) fn mark_lost(&self) {
        if !self.state.lost.swap(true, Ordering::AcqRel) {
            tracing::debug!(lease = self.state.id, "etcd session lease lost");
        }
    }

    /// Asks the task for a keep-alive sent after this call, and waits for its answer.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a dropped request is still answered into the void.
    pub(crate) async fn keep_alive(&self) -> KeepAlive {
        self.request(None).await.kept
    }

    /// Like [`Session::keep_alive`], and checks in the same round that `key` still has
    /// `create_revision` and this session's lease: `Ok(false)` if it does not (deleted,
    /// expired, taken over), an error if that is unknown.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe, as [`Session::keep_alive`].
    pub(crate) async fn confirm(
        &self,
        key: Vec<u8>,
        create_revision: i64,
    ) -> (KeepAlive, Result<bool, Failure>) {
        let check = Check {
            key,
            create_revision,
        };
        let answer = self.request(Some(check)).await;
        let ours = answer.ours.unwrap_or_else(|| Err(task_gone()));
        (answer.kept, ours)
    }

    /// [`Session::confirm`] in two halves, for a batch: queues the request at once and
    /// returns the receiver of its answer (or the answer, if there is no need to ask);
    /// [`Session::confirmed`] turns the answer into `confirm`'s result.
    pub(crate) fn send_confirm(
        &self,
        key: Vec<u8>,
        create_revision: i64,
    ) -> Result<oneshot::Receiver<Answer>, Answer> {
        self.send(Some(Check {
            key,
            create_revision,
        }))
    }

    /// The second half of [`Session::send_confirm`].
    pub(crate) fn confirmed(
        &self,
        answer: Result<Answer, oneshot::error::RecvError>,
    ) -> (KeepAlive, Result<bool, Failure>) {
        let answer = self.received(answer);
        let ours = answer.ours.unwrap_or_else(|| Err(task_gone()));
        (answer.kept, ours)
    }

    async fn request(&self, check: Option<Check>) -> Answer {
        match self.send(check) {
            Ok(answer) => self.received(answer.await),
            Err(answer) => answer,
        }
    }

    fn send(&self, check: Option<Check>) -> Result<oneshot::Receiver<Answer>, Answer> {
        if self.state.lost.load(Ordering::Acquire) {
            return Err(Answer {
                kept: KeepAlive::Gone,
                ours: Some(Ok(false)),
            });
        }
        let (reply, answer) = oneshot::channel();
        if self.requests.send(Request { check, reply }).is_err() {
            return Err(task_failed());
        }
        Ok(answer)
    }

    fn received(&self, answer: Result<Answer, oneshot::error::RecvError>) -> Answer {
        let answer = answer.unwrap_or_else(|_| task_failed());
        if matches!(answer.kept, KeepAlive::Gone) {
            self.mark_lost();
        }
        answer
    }

    /// Hands a key over for deletion with the next keep-alive, and with every one after
    /// until a delete succeeds (see the `orphan` module).
    pub(crate) fn adopt_orphan(&self, orphan: Orphan) {
        lock(&self.state.orphans).push(orphan);
    }

    /// Deletes `orphan` on a task of its own; if that fails (or there is no runtime, or
    /// the orphan is not settled yet), the session retries with each keep-alive until it
    /// succeeds (see the `orphan` module).
    pub(crate) fn delete_in_background(
        self: &Arc<Self>,
        mut kv: KvClient,
        orphan: Orphan,
        timeout: Duration,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.adopt_orphan(orphan);
            return;
        };
        let session = Arc::clone(self);
        runtime.spawn(async move { session.delete_or_adopt(&mut kv, orphan, timeout).await });
    }

    /// [`Session::delete_in_background`] for a caller already in the background: sends
    /// the delete once, and adopts the orphan if it must be deleted again.
    pub(crate) async fn delete_or_adopt(
        &self,
        kv: &mut KvClient,
        orphan: Orphan,
        timeout: Duration,
    ) {
        if let Err(orphan) = orphan.delete(kv, timeout).await {
            self.adopt_orphan(orphan);
        }
    }
}

fn task_gone() -> Failure {
    etcd_client::Error::LeaseKeepAliveError("session keep-alive task ended".to_owned()).into()
}

fn task_failed() -> Answer {
    Answer {
        kept: KeepAlive::Failed(task_gone()),
        ours: Some(Err(task_gone())),
    }
}

/// The session task: serves keep-alive requests in batches until every `Session` handle
/// is dropped, then revokes the lease.
async fn drive(
    state: Arc<State>,
    mut lease: LeaseClient,
    kv: KvClient,
    mut requests: mpsc::UnboundedReceiver<Request>,
    timeout: Duration,
) {
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    while let Some(first) = requests.recv().await {
        // Everything queued now was asked before the keep-alive and the checks below are
        // sent.
        let mut batch = vec![first];
        while let Ok(more) = requests.try_recv() {
            batch.push(more);
        }
        let mut checks = Vec::new();
        let replies: Vec<(oneshot::Sender<Answer>, Option<usize>)> = batch
            .into_iter()
            .map(|request| {
                let index = request.check.map(|check| {
                    checks.push(check);
                    checks.len() - 1
                });
                (request.reply, index)
            })
            .collect();
        delete_orphans(&state, &kv, timeout);
        let sent = Instant::now();
        let (kept, mut checked) = tokio::join!(
            timed(timeout, keep_alive_once(&mut lease, &mut stream, state.id)),
            keys_are_ours(&kv, state.id, &checks, timeout),
        );
        let outcome = match kept {
            Ok(outcome) => outcome,
            Err(failure) => {
                // A late answer to this keep-alive would be taken for the next one's.
                stream = None;
                KeepAlive::Failed(failure)
            }
        };
        match &outcome {
            KeepAlive::Alive => {
                let mut deadline = lock(&state.deadline);
                *deadline = (*deadline).max(sent + state.ttl);
            }
            KeepAlive::Gone => state.lost.store(true, Ordering::Release),
            KeepAlive::Failed(_) => {}
        }
        for (reply, index) in replies {
            // One answer per check, in order (`keys_are_ours`); each is taken once.
            let ours = index.map(|index| {
                checked.get_mut(index).map_or_else(
                    || Err(task_gone()),
                    |slot| std::mem::replace(slot, Err(Failure::Timeout(timeout))),
                )
            });
            let _ = reply.send(Answer {
                kept: outcome.clone(),
                ours,
            });
        }
    }
    let alive = !state.lost.load(Ordering::Acquire) && Instant::now() < *lock(&state.deadline);
    if alive {
        // Deletes any key still attached (leases dropped without release) at once.
        if let Err(failure) = timed(timeout, async {
            lease.revoke(state.id).await.map_err(Failure::from)
        })
        .await
        {
            tracing::debug!(
                lease = state.id,
                ?failure,
                "revoking an unused etcd session failed; it expires by its TTL"
            );
        }
    }
}

/// Sends one keep-alive on the stream (opening it if needed) and reads the answer.
///
/// A stream that broke since the last keep-alive (etcd restarted, the connection dropped)
/// fails at once; it is then reopened once, since opening sends a keep-alive too.
async fn keep_alive_once(
    lease: &mut LeaseClient,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    id: i64,
) -> Result<KeepAlive, Failure> {
    if let Some((mut keeper, mut responses)) = stream.take() {
        let answer = match keeper.keep_alive().await {
            Ok(()) => responses.message().await,
            Err(err) => Err(err),
        };
        match answer {
            Ok(Some(response)) if response.ttl() > 0 => {
                *stream = Some((keeper, responses));
                return Ok(KeepAlive::Alive);
            }
            Ok(Some(_)) => return Ok(KeepAlive::Gone),
            Ok(None) | Err(_) => {}
        }
    }
    // Opening the stream sends a keep-alive and waits for its answer. A stream is not
    // sent again by the channel when its member refuses the connection (see the
    // `channel` module), but the channel moved on to the next member: it is opened once
    // more, there.
    let mut opened = lease.keep_alive(id).await;
    if let Err(err) = &opened
        && channel::client_error_never_sent(err)
    {
        opened = lease.keep_alive(id).await;
    }
    match opened {
        Ok(opened) => {
            *stream = Some(opened);
            Ok(KeepAlive::Alive)
        }
        Err(err) => {
            let failure = Failure::from(err);
            if failure.is_lease_not_found() {
                Ok(KeepAlive::Gone)
            } else {
                Err(failure)
            }
        }
    }
}

/// Deletes the session's orphans in the background (each only if it is still ours);
/// those whose delete fails are kept for the next keep-alive.
fn delete_orphans(state: &Arc<State>, kv: &KvClient, timeout: Duration) {
    let orphans = std::mem::take(&mut *lock(&state.orphans));
    if orphans.is_empty() {
        return;
    }
    let state = Arc::clone(state);
    let mut kv = kv.clone();
    tokio::spawn(async move {
        for orphan in orphans {
            if let Err(orphan) = orphan.delete(&mut kv, timeout).await {
                lock(&state.orphans).push(orphan);
            }
        }
    });
}
