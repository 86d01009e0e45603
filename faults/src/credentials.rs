//! Redis credentials rotated under the members, as an operator does it from `redis-cli`:
//! the members' user gets a new password, every connection of that user is killed, and
//! a while later the old password is restored; and the server's per-command counts
//! (`INFO commandstats`), to tell a waiter that polls from one that spins.
//!
//! The harness talks to the server directly (not through a member's proxy) as its own
//! admin user, whose password the fault leaves alone, over a minimal RESP client: the
//! replies it needs are simple strings, integers, errors and bulk strings.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use super::cluster::Cluster;
use super::inject::FaultId;
use super::log::FaultKind;
use super::server::{BackendKind, REDIS_ADMIN};

/// The password of the members' user while the fault is on.
const ROTATED: &str = "faults-rotated-password";

/// One command's counts from `INFO commandstats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommandCount {
    /// Calls the server ran (failed ones included).
    pub calls: u64,
    /// Calls refused before running: unknown user permissions (`NOPERM`), no auth, ...
    pub rejected: u64,
}

impl Cluster {
    /// Changes the password of the members' Redis user (`ACL SETUSER … resetpass`) and
    /// kills every connection of that user (`CLIENT KILL USER`, normal and pub/sub
    /// alike), so every member is refused until [`Cluster::restore_credentials`]. `member`,
    /// holding `token`, is the holder when it begins.
    ///
    /// # Errors
    ///
    /// If the server is not Redis or a command fails.
    pub async fn rotate_credentials(
        &mut self,
        member: usize,
        token: u64,
    ) -> anyhow::Result<FaultId> {
        self.member(member)?;
        let user = self.config.redis_user.name();
        let port = self.redis_port()?;
        let id = self.record(FaultKind::CredentialsRotated, Some(member), Some(token));
        let rotated = format!(">{ROTATED}");
        redis_command(port, &["ACL", "SETUSER", user, "resetpass", &rotated]).await?;
        let killed =
            redis_command(port, &["CLIENT", "KILL", "USER", user, "SKIPME", "yes"]).await?;
        anyhow::ensure!(killed != "0", "no connection of user {user} to kill");
        Ok(id)
    }

    /// Restores the password the members' Redis user had before fault `id`, which ends
    /// it. Their connections are not touched: they reconnect with the old password.
    ///
    /// # Errors
    ///
    /// If `id` is not a credentials rotation, or the command fails.
    pub async fn restore_credentials(&mut self, id: FaultId) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.fault(id).kind == FaultKind::CredentialsRotated,
            "not a credentials rotation"
        );
        let user = self.config.redis_user;
        let original = format!(">{}", user.password());
        let port = self.redis_port()?;
        redis_command(
            port,
            &["ACL", "SETUSER", user.name(), "resetpass", &original],
        )
        .await?;
        self.end(id);
        Ok(())
    }

    /// The Redis server's counts per command since it started (`INFO commandstats`;
    /// subcommands are named like `client|kill`), the harness's own commands included.
    ///
    /// # Errors
    ///
    /// If the server is not Redis or the command fails.
    pub async fn redis_command_counts(&self) -> anyhow::Result<BTreeMap<String, CommandCount>> {
        let info = redis_command(self.redis_port()?, &["INFO", "commandstats"]).await?;
        let mut counts = BTreeMap::new();
        // Lines like `cmdstat_psubscribe:calls=0,usec=0,...,rejected_calls=3,...`.
        for line in info.lines() {
            let Some((name, stats)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let mut count = CommandCount::default();
            for field in stats.split(',') {
                match field.split_once('=') {
                    Some(("calls", n)) => count.calls = n.parse().unwrap_or(0),
                    Some(("rejected_calls", n)) => count.rejected = n.parse().unwrap_or(0),
                    _ => {}
                }
            }
            counts.insert(name.to_owned(), count);
        }
        Ok(counts)
    }

    fn redis_port(&self) -> anyhow::Result<u16> {
        anyhow::ensure!(
            self.config.backend == BackendKind::Redis,
            "not a Redis server"
        );
        Ok(self.server()?.port())
    }
}

/// Runs one command on the Redis server on `port` as the harness's admin user and
/// returns its reply as text.
async fn redis_command(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let exchange = async {
        let mut stream = BufReader::new(TcpStream::connect(("127.0.0.1", port)).await?);
        let (admin, password) = REDIS_ADMIN;
        request(&mut stream, &["AUTH", admin, password]).await?;
        request(&mut stream, args).await
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("redis {args:?} got no answer within 10 s"))?
}

/// Sends `command` and reads its reply.
async fn request(stream: &mut BufReader<TcpStream>, command: &[&str]) -> anyhow::Result<String> {
    let mut request = format!("*{}\r\n", command.len());
    for arg in command {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.get_mut().write_all(request.as_bytes()).await?;
    read_reply(stream)
        .await
        .with_context(|| format!("redis {}", command.first().unwrap_or(&"")))
}

async fn read_reply(stream: &mut BufReader<TcpStream>) -> anyhow::Result<String> {
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    let line = line.trim_end_matches("\r\n");
    let kind = line.get(..1).context("the connection closed")?;
    let rest = &line[1..];
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => bail!("{rest}"),
        "$" => {
            let Ok(len) = rest.parse::<usize>() else {
                return Ok(String::new()); // `$-1`: nil
            };
            let mut bulk = vec![0; len + 2];
            stream.read_exact(&mut bulk).await?;
            bulk.truncate(len);
            Ok(String::from_utf8_lossy(&bulk).into_owned())
        }
        _ => bail!("unexpected reply {line:?}"),
    }
}
