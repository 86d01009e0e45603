//! `PeerProxies`: one TCP proxy in front of each member's peer port, which knows who sends
//! on each connection, so that a member can be cut off from the others.
//!
//! # Why the proxy must know the sender
//!
//! A proxy in front of a member sees that member's *inbound* connections only, and etcd's
//! peer traffic does not follow the connections' direction: member A receives messages
//! from B both on streams that A dialed to B (`GET /raft/stream/...`, on which B writes)
//! and on pipeline and snapshot `POST`s that B dials to A. Cutting A's inbound
//! connections alone would leave the streams A dialed to B working. So every connection
//! is attributed to the member that opened it, and a cut between A and B holds every
//! connection A opened to B's proxy and every one B opened to A's.
//!
//! etcd's peer transport says who it is on every request: `X-Server-From` (the sender's
//! member id in hex) on the raft streams, pipelines and snapshots, and `X-PeerURLs` (its
//! advertised peer URLs, here its proxy's address) on most of them. Other requests carry
//! neither (a follower forwarding a client's lease keep-alive to the leader, `/version`
//! and `/members` probes): for those the proxy asks the kernel which member process owns
//! the connection's other end (`/proc/net/tcp` and `/proc/<pid>/fd`, on Linux). A
//! connection nothing attributes is forwarded, and held only while its destination is
//! cut off from every member (see [`Links::blocked`]).
//!
//! # What a cut does
//!
//! As the fault harness's client proxy does (`faults/src/proxy.rs`), a cut behaves like a
//! partition, not like a reset: nothing is closed and nothing is refused. Bytes read from a
//! connection of a cut link are held until the link heals (the rest waits in kernel
//! buffers); a new connection of a cut link is accepted (the kernel completes the
//! handshake anyway) but connected to the member only when the link heals, and closed
//! only if its sender gives up first. etcd's own timeouts (5 s without a read on a
//! stream) then close and redial connections, which wait too.
//!
//! The proxies are plain threads: one accepting per member, and per connection one
//! reading its first request and then one per direction.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// The longest a request head may be; a connection that sends more before its blank line
/// is forwarded unattributed.
const MAX_HEAD: usize = 64 * 1024;

/// How often a connection held before it reaches its member looks for its sender giving up.
const HELD_POLL: Duration = Duration::from_millis(100);

/// Who may talk to whom, shared by every proxy and connection of a cluster.
#[derive(Debug, Default)]
pub(super) struct Links {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Cut links, as `(low, high)` member indices.
    cut: BTreeSet<(usize, usize)>,
    /// Member ids (from `X-Server-From`) to member indices.
    ids: HashMap<u64, usize>,
    /// Proxy ports (from `X-PeerURLs`) to member indices.
    proxy_ports: HashMap<u16, usize>,
    /// Member process ids to member indices, for connections without those headers.
    pids: HashMap<u32, usize>,
    /// Every live socket by connection, to close them all when the proxies stop.
    sockets: HashMap<u64, Vec<TcpStream>>,
    stopped: bool,
}

/// Who opened a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sender {
    Member(usize),
    /// An `X-Server-From` id not known (yet) to be a member's.
    Id(u64),
    Unknown,
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Links {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    /// Cuts every link between `member` and the others of `members`.
    pub(super) fn isolate(&self, member: usize, members: usize) {
        self.update(|state| {
            for other in (0..members).filter(|&other| other != member) {
                state.cut.insert(pair(member, other));
            }
        });
    }

    /// Restores every link of `member`.
    pub(super) fn heal(&self, member: usize) {
        self.update(|state| state.cut.retain(|&(a, b)| a != member && b != member));
    }

    /// Whether some link of `member` is cut.
    pub(super) fn is_isolated(&self, member: usize) -> bool {
        self.lock()
            .cut
            .iter()
            .any(|&(a, b)| a == member || b == member)
    }

    /// Records that `member` has the etcd member id `id`.
    pub(super) fn learn_id(&self, member: usize, id: u64) {
        self.update(|state| {
            state.ids.insert(id, member);
        });
    }

    /// Records that `member` runs as process `pid` (its previous pid is forgotten).
    pub(super) fn learn_pid(&self, member: usize, pid: u32) {
        self.update(|state| {
            state.pids.retain(|_, m| *m != member);
            state.pids.insert(pid, member);
        });
    }

    /// Whether a connection from `sender` to member `to` must be held now.
    ///
    /// A connection nothing attributes is held only while `to` is cut off from every
    /// other member: then whoever sent it, its link is cut.
    fn blocked(state: &State, sender: &Sender, to: usize, members: usize) -> bool {
        let from = match sender {
            Sender::Member(from) => Some(*from),
            Sender::Id(id) => state.ids.get(id).copied(),
            Sender::Unknown => None,
        };
        match from {
            Some(from) => from != to && state.cut.contains(&pair(from, to)),
            None => {
                members > 1
                    && (0..members)
                        .filter(|&other| other != to)
                        .all(|other| state.cut.contains(&pair(other, to)))
            }
        }
    }

    /// Waits until a connection from `sender` to `to` may forward; `false` once the
    /// proxies are stopping.
    fn wait_open(&self, sender: &Sender, to: usize, members: usize) -> bool {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return false;
            }
            if !Self::blocked(&state, sender, to, members) {
                return true;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn is_open(&self, sender: &Sender, to: usize, members: usize) -> Option<bool> {
        let state = self.lock();
        (!state.stopped).then(|| !Self::blocked(&state, sender, to, members))
    }

    /// Keeps clones of a connection's sockets, to close them when the proxies stop;
    /// `false` if they are stopping already.
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

    fn stopped(&self) -> bool {
        self.lock().stopped
    }
}

/// The proxy in front of one member's peer port. Its accept thread ends when the
/// [`Links`] stop.
#[derive(Debug)]
pub(super) struct PeerProxy {
    port: u16,
}

impl PeerProxy {
    /// Binds a free loopback port for member `index` (of `members`) whose peer port is
    /// `upstream`, and starts accepting.
    pub(super) fn start(
        links: &Arc<Links>,
        index: usize,
        members: usize,
        upstream: u16,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        links.update(|state| {
            state.proxy_ports.insert(port, index);
        });
        let links = Arc::clone(links);
        std::thread::Builder::new()
            .name(format!("etcd-peer-proxy-{index}"))
            .spawn(move || accept_loop(listener, links, index, members, upstream))?;
        Ok(Self { port })
    }

    /// The port the member advertises as its peer URL.
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

fn accept_loop(listener: TcpListener, links: Arc<Links>, to: usize, members: usize, upstream: u16) {
    static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
    let proxy_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    for accepted in listener.incoming() {
        if links.stopped() {
            return;
        }
        let Ok(client) = accepted else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let id = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        if !links.register(id, &client) {
            return;
        }
        let links = Arc::clone(&links);
        let spawned = std::thread::Builder::new()
            .name(format!("etcd-peer-conn-{to}"))
            .spawn(move || {
                connection(&links, id, client, to, members, upstream, proxy_port);
                links.forget(id);
            });
        if spawned.is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One connection: reads the first request head, attributes it, waits while its link is
/// cut, then forwards both ways.
fn connection(
    links: &Links,
    id: u64,
    mut client: TcpStream,
    to: usize,
    members: usize,
    upstream: u16,
    proxy_port: u16,
) {
    let _ = client.set_nodelay(true);
    let mut head = Vec::new();
    if read_head(&mut client, &mut head).is_err() || head.is_empty() {
        return;
    }
    let sender = attribute(links, &head, &client, proxy_port);
    // Held before reaching the member while its link is cut; the sender may give up.
    loop {
        match links.is_open(&sender, to, members) {
            None => return,
            Some(true) => break,
            Some(false) => {}
        }
        let _ = client.set_read_timeout(Some(HELD_POLL));
        let mut buf = [0u8; 16 * 1024];
        match client.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(err) if is_timeout(&err) => {}
            Err(_) => return,
        }
    }
    let _ = client.set_read_timeout(None);
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        // The member is down: close, as a refused connect would.
        return;
    };
    if !links.register(id, &server) {
        return;
    }
    let _ = server.set_nodelay(true);
    if server.write_all(&head).is_err() {
        return;
    }
    let (Ok(client_read), Ok(server_read)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    std::thread::scope(|scope| {
        let sender = &sender;
        scope.spawn(move || pump(links, client_read, server, sender, to, members));
        pump(links, server_read, client, sender, to, members);
    });
}

/// Copies `from` to `to_socket` while the link is not cut; passes end of file on (after
/// the cut, as a partition would hold it too).
fn pump(
    links: &Links,
    mut from: TcpStream,
    mut to_socket: TcpStream,
    sender: &Sender,
    to: usize,
    members: usize,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        if !links.wait_open(sender, to, members) {
            return;
        }
        if n == 0 {
            let _ = to_socket.shutdown(Shutdown::Write);
            return;
        }
        if to_socket.write_all(&buf[..n]).is_err() {
            let _ = from.shutdown(Shutdown::Read);
            return;
        }
    }
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads until the end of the first request head (`\r\n\r\n`), end of file or
/// [`MAX_HEAD`] bytes.
fn read_head(client: &mut TcpStream, head: &mut Vec<u8>) -> io::Result<()> {
    // A sender that connects and says nothing is not waited for forever.
    client.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) if is_timeout(&err) && !head.is_empty() => break,
            Err(err) => return Err(err),
        }
    }
    client.set_read_timeout(None)
}

/// Who sent a connection whose first bytes are `head`: its `X-Server-From` or
/// `X-PeerURLs` header, or else the member process owning its other end.
fn attribute(links: &Links, head: &[u8], client: &TcpStream, proxy_port: u16) -> Sender {
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(head.len());
    let text = String::from_utf8_lossy(&head[..end]);
    let mut from_id = None;
    let mut from_port = None;
    for line in text.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("x-server-from") {
            from_id = u64::from_str_radix(value, 16).ok();
        } else if name.eq_ignore_ascii_case("x-peerurls") {
            from_port = value
                .split(',')
                .filter_map(|url| url.trim().rsplit_once(':'))
                .find_map(|(_, port)| port.trim_end_matches('/').parse::<u16>().ok());
        }
    }
    {
        let mut state = links.lock();
        let by_port = from_port.and_then(|port| state.proxy_ports.get(&port).copied());
        if let (Some(member), Some(id)) = (by_port, from_id) {
            state.ids.insert(id, member);
        }
        if let Some(member) = by_port.or_else(|| from_id.and_then(|id| state.ids.get(&id).copied()))
        {
            return Sender::Member(member);
        }
        if let Some(id) = from_id {
            return Sender::Id(id);
        }
    }
    let pids: Vec<(u32, usize)> = links
        .lock()
        .pids
        .iter()
        .map(|(&pid, &member)| (pid, member))
        .collect();
    match owner_of_peer(client, proxy_port, &pids) {
        Some(member) => Sender::Member(member),
        None => Sender::Unknown,
    }
}

/// The member among `pids` whose process owns the other end of `client` (a loopback
/// connection to the proxy on `proxy_port`), found through `/proc` on Linux.
fn owner_of_peer(client: &TcpStream, proxy_port: u16, pids: &[(u32, usize)]) -> Option<usize> {
    let peer = client.peer_addr().ok()?;
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    // The sender's socket: local address = the connection's peer, remote = the proxy.
    let local = format!("0100007F:{:04X}", peer.port());
    let remote = format!("0100007F:{proxy_port:04X}");
    let inode = tcp.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| fields.get(9).map(|s| (*s).to_owned()))
            .flatten()
    })?;
    let target = format!("socket:[{inode}]");
    pids.iter().find_map(|&(pid, member)| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target.as_str())
            })
            .then_some(member)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_link_holds_its_connections_and_an_unattributed_one_only_when_all_are_cut() {
        let links = Links::default();
        links.learn_id(1, 0xabc);
        links.isolate(0, 3);
        let state = links.lock();
        assert!(Links::blocked(&state, &Sender::Member(1), 0, 3));
        assert!(Links::blocked(&state, &Sender::Member(0), 2, 3));
        assert!(!Links::blocked(&state, &Sender::Member(1), 2, 3));
        assert!(Links::blocked(&state, &Sender::Id(0xabc), 0, 3));
        // An id no member has is no attribution: held only by a member cut off from all.
        assert!(Links::blocked(&state, &Sender::Id(0xdef), 0, 3));
        assert!(!Links::blocked(&state, &Sender::Id(0xdef), 1, 3));
        assert!(Links::blocked(&state, &Sender::Unknown, 0, 3));
        assert!(!Links::blocked(&state, &Sender::Unknown, 1, 3));
        drop(state);
        links.heal(0);
        assert!(!Links::blocked(&links.lock(), &Sender::Member(1), 0, 3));
    }
}
