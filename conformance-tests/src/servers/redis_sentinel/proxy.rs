//! `ServerProxy`: one TCP proxy in front of each redis-server of a Sentinel topology, which
//! tells sentinel and replication connections from client ones, so that a server can be
//! cut off from the sentinels, or from its replicas, while its clients still reach it.
//!
//! # How a connection is attributed
//!
//! Redis's protocol is client-first, and both kinds of connection a test cuts say what
//! they are early: a sentinel names each of its connections `sentinel-<id>-cmd` or
//! `sentinel-<id>-pubsub` with `CLIENT SETNAME` before anything else, and a replica
//! follows its first `PING` with `REPLCONF`. So the client-to-server direction looks for
//! those words in the first bytes of each connection (a few kilobytes) and marks the
//! connection; every other connection is a client's. The mark is sticky and shared by
//! both directions.
//!
//! # What a cut does
//!
//! As the etcd cluster's peer proxy does, a cut behaves like a partition, not like a
//! reset: nothing is closed and nothing is refused. Bytes read from a connection of a cut
//! kind are held until the cut heals (the rest waits in kernel buffers), in both
//! directions; a new connection of that kind is accepted and held the same way.
//!
//! The proxies are plain threads: one accepting per server, and per connection one per
//! direction.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How many bytes from the start of a connection are looked at to attribute it.
const SNIFF_LIMIT: u64 = 4096;

/// What a connection is, as far as a cut is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    /// Not attributed (yet): a client's, never cut.
    Client = 0,
    /// A sentinel's command or pub/sub connection.
    Sentinel = 1,
    /// A replica's replication link to its master.
    Replica = 2,
}

impl Kind {
    fn from_u8(value: u8) -> Self {
        match value {
            1 => Kind::Sentinel,
            2 => Kind::Replica,
            _ => Kind::Client,
        }
    }
}

/// Which kinds of connection to which server are cut, shared by every proxy of a
/// topology.
#[derive(Debug, Default)]
pub(super) struct Cuts {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// `(server index, kind)` pairs whose connections are held.
    cut: BTreeSet<(usize, Kind)>,
    /// Every live socket by connection, to close them all when the proxies stop.
    sockets: HashMap<u64, Vec<TcpStream>>,
    stopped: bool,
}

impl Cuts {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds (`cut`) or releases the connections of `kind` to server `server`.
    pub(super) fn set(&self, server: usize, kind: Kind, cut: bool) {
        {
            let mut state = self.lock();
            if cut {
                state.cut.insert((server, kind));
            } else {
                state.cut.remove(&(server, kind));
            }
        }
        self.changed.notify_all();
    }

    /// Releases every cut of server `server`.
    pub(super) fn heal(&self, server: usize) {
        self.lock().cut.retain(|&(s, _)| s != server);
        self.changed.notify_all();
    }

    /// Waits until a connection of `kind` to `server` may forward; `false` once the
    /// proxies are stopping.
    fn wait_open(&self, server: usize, kind: &AtomicU8) -> bool {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return false;
            }
            let kind = Kind::from_u8(kind.load(Ordering::SeqCst));
            if kind == Kind::Client || !state.cut.contains(&(server, kind)) {
                return true;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn register(&self, connection: u64, socket: &TcpStream) -> bool {
        let Ok(clone) = socket.try_clone() else {
            return true;
        };
        let mut state = self.lock();
        if state.stopped {
            return false;
        }
        state.sockets.entry(connection).or_default().push(clone);
        true
    }

    fn forget(&self, connection: u64) {
        self.lock().sockets.remove(&connection);
    }

    fn stopped(&self) -> bool {
        self.lock().stopped
    }

    /// Stops every proxy: closes every connection and wakes every waiting thread.
    pub(super) fn stop(&self) {
        let sockets = {
            let mut state = self.lock();
            state.stopped = true;
            std::mem::take(&mut state.sockets)
        };
        self.changed.notify_all();
        for socket in sockets.into_values().flatten() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// The proxy in front of one server. Its accept thread ends when the [`Cuts`] stop.
#[derive(Debug)]
pub(super) struct ServerProxy {
    port: u16,
}

impl ServerProxy {
    /// Binds a free loopback port for server `index`, whose own port is `upstream`, and
    /// starts accepting.
    pub(super) fn start(cuts: &Arc<Cuts>, index: usize, upstream: u16) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let cuts = Arc::clone(cuts);
        std::thread::Builder::new()
            .name(format!("redis-proxy-{index}"))
            .spawn(move || accept_loop(listener, cuts, index, upstream))?;
        Ok(Self { port })
    }

    /// The port the server announces, and sentinels, replicas and clients connect to.
    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// Wakes the accept thread so that it sees the proxies stopped.
    pub(super) fn wake(&self) {
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        );
    }
}

fn accept_loop(listener: TcpListener, cuts: Arc<Cuts>, server: usize, upstream: u16) {
    static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
    for accepted in listener.incoming() {
        if cuts.stopped() {
            return;
        }
        let Ok(client) = accepted else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let id = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        if !cuts.register(id, &client) {
            return;
        }
        let cuts = Arc::clone(&cuts);
        let spawned = std::thread::Builder::new()
            .name(format!("redis-proxy-conn-{server}"))
            .spawn(move || {
                connection(&cuts, id, client, server, upstream);
                cuts.forget(id);
            });
        if spawned.is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn connection(cuts: &Cuts, id: u64, client: TcpStream, server: usize, upstream: u16) {
    let _ = client.set_nodelay(true);
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream)) else {
        // The server is down: close, as a refused connection would.
        return;
    };
    if !cuts.register(id, &upstream) {
        return;
    }
    let _ = upstream.set_nodelay(true);
    let (Ok(client_read), Ok(upstream_read)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let kind = AtomicU8::new(Kind::Client as u8);
    std::thread::scope(|scope| {
        let kind = &kind;
        scope.spawn(move || pump(cuts, client_read, upstream, server, kind, true));
        pump(cuts, upstream_read, client, server, kind, false);
    });
}

/// Copies `from` to `to` while the connection's kind is not cut at `server`; passes end
/// of file on. The client-to-server direction (`sniff`) attributes the connection.
fn pump(
    cuts: &Cuts,
    mut from: TcpStream,
    mut to: TcpStream,
    server: usize,
    kind: &AtomicU8,
    sniff: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut seen = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        if sniff && seen < SNIFF_LIMIT {
            seen += n as u64;
            let text = String::from_utf8_lossy(&buf[..n]);
            if text.contains("sentinel-") {
                kind.store(Kind::Sentinel as u8, Ordering::SeqCst);
            } else if text.contains("REPLCONF") || text.contains("replconf") {
                kind.store(Kind::Replica as u8, Ordering::SeqCst);
            }
        }
        if !cuts.wait_open(server, kind) {
            return;
        }
        if n == 0 {
            let _ = to.shutdown(Shutdown::Write);
            return;
        }
        if to.write_all(&buf[..n]).is_err() {
            let _ = from.shutdown(Shutdown::Read);
            return;
        }
    }
}
