//! The faults a [`Cluster`] can inject, each recorded with the time it began and ended.

use anyhow::Context as _;
use rustix::process::{Signal, kill_process};

use super::cluster::Cluster;
use super::log::{EventKind, Fault, FaultKind, now};

/// Identifies a fault in [`Cluster::faults`], to end it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultId(usize);

impl Cluster {
    pub(super) fn record(
        &mut self,
        kind: FaultKind,
        member: Option<usize>,
        token: Option<u64>,
    ) -> FaultId {
        let at = now();
        self.faults.push(Fault {
            kind,
            member,
            token,
            at,
            until: at,
        });
        FaultId(self.faults.len() - 1)
    }

    /// The fault `id`.
    pub fn fault(&self, id: FaultId) -> &Fault {
        &self.faults[id.0]
    }

    pub(super) fn end(&mut self, id: FaultId) {
        self.faults[id.0].until = now();
    }

    fn signal(&self, member: usize, signal: Signal) -> anyhow::Result<()> {
        let pid = self.member(member)?.pid;
        kill_process(pid, signal).with_context(|| format!("cannot signal member {member}"))
    }

    /// `SIGKILL` to `member`, which holds `token`; returns once it has exited.
    ///
    /// # Errors
    ///
    /// If the signal fails or the member is still there after 10 s.
    pub async fn kill(&mut self, member: usize, token: u64) -> anyhow::Result<FaultId> {
        let id = self.record(FaultKind::Kill, Some(member), Some(token));
        self.signal(member, Signal::KILL)?;
        let at = self.fault(id).at;
        self.wait_for_event(
            member,
            at,
            std::time::Duration::from_secs(10),
            "exit",
            |kind| *kind == EventKind::Exited,
        )
        .await?;
        Ok(id)
    }

    /// `SIGTERM` to `member`, which holds `token`: it drains, releases and exits.
    ///
    /// # Errors
    ///
    /// If the signal fails.
    pub fn terminate(&mut self, member: usize, token: u64) -> anyhow::Result<FaultId> {
        let id = self.record(FaultKind::Terminate, Some(member), Some(token));
        self.signal(member, Signal::TERM)?;
        Ok(id)
    }

    /// `SIGSTOP` to `member`, which holds `token`, until [`Cluster::resume`].
    ///
    /// # Errors
    ///
    /// If the signal fails.
    pub fn pause(&mut self, member: usize, token: u64) -> anyhow::Result<FaultId> {
        let id = self.record(FaultKind::Pause, Some(member), Some(token));
        self.signal(member, Signal::STOP)?;
        self.members[member].paused = true;
        Ok(id)
    }

    /// `SIGCONT` to the member paused by fault `id`.
    ///
    /// # Errors
    ///
    /// If `id` is not a pause, or the signal fails.
    pub fn resume(&mut self, id: FaultId) -> anyhow::Result<()> {
        let fault = self.fault(id);
        let member = fault
            .member
            .filter(|_| fault.kind == FaultKind::Pause)
            .context("not a pause of a member")?;
        self.end(id);
        self.signal(member, Signal::CONT)?;
        self.members[member].paused = false;
        Ok(())
    }

    /// Cuts the network between `member`, which holds `token`, and the server, until
    /// [`Cluster::restore`].
    ///
    /// # Errors
    ///
    /// If there is no such member.
    pub fn cut(&mut self, member: usize, token: u64) -> anyhow::Result<FaultId> {
        self.member(member)?;
        let id = self.record(FaultKind::Cut, Some(member), Some(token));
        self.members[member].cut();
        Ok(id)
    }

    /// Restores the network cut by fault `id`.
    ///
    /// # Errors
    ///
    /// If `id` is not a cut.
    pub fn restore(&mut self, id: FaultId) -> anyhow::Result<()> {
        let fault = self.fault(id);
        let member = fault
            .member
            .filter(|_| fault.kind == FaultKind::Cut)
            .context("not a network cut")?;
        self.end(id);
        self.members[member].restore();
        Ok(())
    }

    /// Starves `member`, which holds `token`, of CPU (`SIGUSR1`, see `leasehold_examples::starve`) and
    /// cuts its network, until [`Cluster::restore_and_feed`].
    ///
    /// # Errors
    ///
    /// If there is no such member, or the signal fails.
    pub fn starve_and_cut(&mut self, member: usize, token: u64) -> anyhow::Result<FaultId> {
        self.member(member)?;
        let id = self.record(FaultKind::StarveCut, Some(member), Some(token));
        self.signal(member, Signal::USR1)?;
        self.members[member].starved = true;
        self.members[member].cut();
        Ok(id)
    }

    /// Restores the network of the member starved and cut by fault `id`, then ends its
    /// starvation (`SIGUSR2`).
    ///
    /// # Errors
    ///
    /// If `id` is not a starvation with a cut, or the signal fails.
    pub fn restore_and_feed(&mut self, id: FaultId) -> anyhow::Result<()> {
        let fault = self.fault(id);
        let member = fault
            .member
            .filter(|_| fault.kind == FaultKind::StarveCut)
            .context("not a starvation with a network cut")?;
        self.end(id);
        self.members[member].restore();
        self.signal(member, Signal::USR2)?;
        self.members[member].starved = false;
        Ok(())
    }

    /// Kills the server with `SIGKILL` and starts it again on the same port and data; the
    /// fault ends when it accepts connections again.
    ///
    /// # Errors
    ///
    /// If the server does not come back.
    pub async fn restart_server(&mut self) -> anyhow::Result<FaultId> {
        let mut server = self.server.take().context("the server is gone")?;
        let id = self.record(FaultKind::ServerRestart, None, None);
        let server = tokio::task::spawn_blocking(move || {
            server.restart();
            server
        })
        .await
        .context("the server did not restart")?;
        self.server = Some(server);
        self.end(id);
        Ok(id)
    }

    /// Stops the server with `SIGSTOP` until [`Cluster::resume_server`].
    ///
    /// # Errors
    ///
    /// If the signal fails.
    pub fn pause_server(&mut self) -> anyhow::Result<FaultId> {
        let id = self.record(FaultKind::ServerPause, None, None);
        self.server()?.pause()?;
        Ok(id)
    }

    /// Resumes the server paused by fault `id`.
    ///
    /// # Errors
    ///
    /// If `id` is not a server pause, or the signal fails.
    pub fn resume_server(&mut self, id: FaultId) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.fault(id).kind == FaultKind::ServerPause,
            "not a server pause"
        );
        self.end(id);
        self.server()?.resume()?;
        Ok(())
    }
}
