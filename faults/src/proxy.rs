//! `Proxy`: a TCP proxy between one member and the server whose network can be cut.
//!
//! A cut behaves like a network partition, not like a reset: the proxy stops reading from
//! both sides and keeps every connection open, so neither end learns anything (no FIN, no
//! RST); bytes sent meanwhile wait in kernel buffers (or, if read just before the cut, in
//! the proxy) as a partitioned network's packets would wait for retransmission. New
//! connections are accepted (the kernel completes the handshake anyway) but not connected
//! upstream until the cut ends, so the client's requests go unanswered. Restoring resumes
//! forwarding where it stopped, as when a partition heals before TCP gives up.
//!
//! Without a cut the proxy forwards both ways and passes a close on: when the member
//! dies, the server sees its connections close, as it would without the proxy.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// A TCP proxy on a random loopback port forwarding to `127.0.0.1:<upstream port>`.
///
/// Dropping it closes its listener and every connection through it.
///
/// # Examples
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use leasehold_faults::Proxy;
///
/// let proxy = Proxy::start(6379).await?; // in front of a Redis on port 6379
/// let url = format!("redis://127.0.0.1:{}", proxy.port());
/// proxy.cut(); // the client behind `url` is partitioned from the server
/// proxy.restore();
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Proxy {
    port: u16,
    cut: watch::Sender<bool>,
    /// The upstream port new connections go to.
    upstream: watch::Sender<u16>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `127.0.0.1:upstream_port` on a free loopback port.
    ///
    /// # Errors
    ///
    /// If no loopback port can be bound.
    pub async fn start(upstream_port: u16) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, _) = watch::channel(false);
        let (upstream, _) = watch::channel(upstream_port);
        let accept = tokio::spawn(accept_loop(listener, upstream.subscribe(), cut.subscribe()));
        Ok(Self {
            port,
            cut,
            upstream,
            accept,
        })
    }

    /// The port members connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops forwarding in both directions and holds every connection, old and new.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Resumes forwarding after [`Proxy::cut`].
    pub fn restore(&self) {
        self.cut.send_replace(false);
    }

    /// The upstream port new connections go to.
    pub fn upstream_port(&self) -> u16 {
        *self.upstream.borrow()
    }

    /// Sends new connections to `127.0.0.1:<upstream_port>` from now on (a server that
    /// took over another's role, on another port); open connections stay where they are.
    pub fn retarget(&self, upstream_port: u16) {
        self.upstream.send_replace(upstream_port);
    }

    /// Whether the network is cut.
    pub fn is_cut(&self) -> bool {
        *self.cut.borrow()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a `JoinSet`): aborting it closes all.
        self.accept.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: watch::Receiver<u16>,
    cut: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let upstream = SocketAddr::from(([127, 0, 0, 1], *upstream.borrow()));
                    connections.spawn(connection(client, upstream, cut.clone()));
                }
                // Out of file descriptors and the like: the member sees refused or hung
                // connections, which it must survive anyway.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(client: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<bool>) {
    // A connection opened during a cut is not forwarded until the cut ends.
    if wait_open(&mut cut).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        // Server down: close the client's connection, as a refused connect would.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pump(client_read, server_write, cut.clone()),
        pump(server_read, client_write, cut),
    );
}

/// Copies `from` to `to` while the network is not cut; passes end of file on.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut cut: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if wait_open(&mut cut).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            // Cut while waiting for data: stop reading (`read` is cancel-safe).
            _ = cut.changed() => continue,
        };
        // Bytes read just before a cut are held until it ends.
        if wait_open(&mut cut).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits until the network is not cut; `Err` when the proxy is gone.
async fn wait_open(cut: &mut watch::Receiver<bool>) -> Result<(), watch::error::RecvError> {
    cut.wait_for(|cut| !cut).await.map(|_| ())
}
