//! `Proxy`: a TCP proxy in front of etcd that can hold the server's replies back and cut
//! its client off, so that a test decides which of a client's requests arrive and which
//! answers it gets.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the proxy does with the traffic through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Forwards both ways.
    Open,
    /// Forwards requests; holds the server's bytes (replies) until the mode changes.
    HoldReplies,
    /// Closes every connection, and closes new ones as soon as they are accepted: the
    /// client's requests fail, and nothing it sends meanwhile reaches the server, then
    /// or later.
    Cut,
}

/// A proxy on a random loopback port forwarding to `127.0.0.1:<upstream port>`.
/// Dropping it closes its listener and every connection through it.
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    mode: watch::Sender<Mode>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts an open proxy to `127.0.0.1:upstream_port`.
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|err| panic!("the proxy must bind a loopback port: {err}"));
        let port = listener.local_addr().unwrap().port();
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream_port));
        let (mode, _) = watch::channel(Mode::Open);
        let accept = tokio::spawn(accept_loop(listener, upstream, mode.subscribe()));
        Self { port, mode, accept }
    }

    /// `127.0.0.1:<proxy port>`, for the client behind the proxy.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Switches to `mode`; see [`Mode`].
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a `JoinSet`): aborting it closes all.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                if *mode.borrow() == Mode::Cut {
                    // Dropped: closed at once.
                    continue;
                }
                connections.spawn(connection(client, upstream, mode.clone()));
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(client: TcpStream, upstream: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let forward = futures::future::join(
        pump(client_read, server_write, mode.clone(), false),
        pump(server_read, client_write, mode.clone(), true),
    );
    tokio::select! {
        biased;
        _ = mode.wait_for(|mode| *mode == Mode::Cut) => {}
        _ = forward => {}
    }
}

/// Copies `from` to `to` until the proxy is cut; replies (`replies` true) wait while
/// they are held.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    replies: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Held replies wait; once cut, nothing more goes through, held or not.
        let now = match mode
            .wait_for(|mode| !(replies && *mode == Mode::HoldReplies))
            .await
        {
            Ok(now) => *now,
            Err(_) => return,
        };
        if now == Mode::Cut || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
