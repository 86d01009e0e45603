//! Waiting on a [`Cluster`]'s events: every wait checks again on each new event and
//! gives up at a deadline, naming what it waited for and showing the latest events.

use std::sync::PoisonError;
use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use super::cluster::Cluster;
use super::log::{Event, EventKind, Mono};

impl Cluster {
    /// Waits until `check` finds what it looks for in the events from `since` on
    /// (time-ordered), checking again on every new event.
    ///
    /// # Errors
    ///
    /// After `timeout`, naming `what` and showing the latest events.
    pub async fn wait_for<T>(
        &self,
        since: Mono,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&[Event]) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        let mut changed = self.shared.changed.subscribe();
        loop {
            changed.borrow_and_update();
            {
                let events = self
                    .shared
                    .events
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let from = events.partition_point(|e| e.at < since);
                if let Some(found) = check(&events[from..]) {
                    return Ok(found);
                }
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!("event log closed while waiting for {what}"),
                Err(_) => bail!("no {what} within {timeout:?}\n{}", self.describe()),
            }
        }
    }

    /// Waits for the current holder: a member that has done `steps` steps with one token
    /// since `since` and has not given that lease up. Returns `(member, token)`.
    ///
    /// # Errors
    ///
    /// If none shows up within `timeout`.
    pub async fn wait_for_holder(
        &self,
        since: Mono,
        steps: usize,
        timeout: Duration,
    ) -> anyhow::Result<(usize, u64)> {
        let what = format!("holder doing {steps} steps");
        self.wait_for(since, timeout, &what, |events| holder(events, 0, steps))
            .await
    }

    /// Waits for a holder with a token newer than `older` that has done `steps` steps
    /// since `since`. Returns `(member, token)`.
    ///
    /// # Errors
    ///
    /// If none shows up within `timeout`.
    pub async fn wait_for_newer_holder(
        &self,
        older: u64,
        since: Mono,
        steps: usize,
        timeout: Duration,
    ) -> anyhow::Result<(usize, u64)> {
        let what = format!("holder with a token above {older} doing {steps} steps");
        self.wait_for(since, timeout, &what, |events| holder(events, older, steps))
            .await
    }

    /// Waits until `member` prints an event that `matches`, from `since` on; returns its
    /// time.
    ///
    /// # Errors
    ///
    /// If none comes within `timeout`.
    pub async fn wait_for_event(
        &self,
        member: usize,
        since: Mono,
        timeout: Duration,
        what: &str,
        matches: impl Fn(&EventKind) -> bool,
    ) -> anyhow::Result<Mono> {
        let what = format!("{what} from member {member}");
        self.wait_for(since, timeout, &what, |events| {
            events
                .iter()
                .find(|e| e.member == member && matches(&e.kind))
                .map(|e| e.at)
        })
        .await
    }
}

/// The holder with a token above `older` that did `steps` steps in `events` and has not
/// given the lease up: the author of the latest such step.
fn holder(events: &[Event], older: u64, steps: usize) -> Option<(usize, u64)> {
    let (member, token) = events.iter().rev().find_map(|e| match e.kind {
        EventKind::Work { token, .. } if token > older => Some((e.member, token)),
        _ => None,
    })?;
    let mut done = 0;
    for e in events.iter().filter(|e| e.member == member) {
        match e.kind {
            EventKind::Work { token: t, .. } if t == token => done += 1,
            EventKind::Lost { token: t } | EventKind::Released { token: t } if t == token => {
                return None;
            }
            EventKind::Stopped | EventKind::Exited => return None,
            _ => {}
        }
    }
    (done >= steps).then_some((member, token))
}
