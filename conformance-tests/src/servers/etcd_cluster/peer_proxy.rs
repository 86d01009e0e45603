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
//! cut off from every member (see [`State::blocked`]).
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
//! The accepting, forwarding and holding are the shared held proxy's
//! (`servers/held_proxy.rs`); this file attributes connections and says which are cut.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use super::super::held_proxy::{Connection, HeldProxies, HeldProxy, is_timeout};

/// The longest a request head may be; a connection that sends more before its blank line
/// is forwarded unattributed.
const MAX_HEAD: usize = 64 * 1024;

/// How often a connection held before it reaches its member looks for its sender giving up.
const HELD_POLL: Duration = Duration::from_millis(100);

/// Who may talk to whom, shared by every proxy and connection of a cluster.
pub(super) type Links = HeldProxies<State>;

/// What [`Links`] know: the cut links, and what attributes a connection to a member.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Cut links, as `(low, high)` member indices.
    cut: BTreeSet<(usize, usize)>,
    /// Member ids (from `X-Server-From`) to member indices.
    ids: HashMap<u64, usize>,
    /// Proxy ports (from `X-PeerURLs`) to member indices.
    proxy_ports: HashMap<u16, usize>,
    /// Member process ids to member indices, for connections without those headers.
    pids: HashMap<u32, usize>,
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
        self.with(|state| state.cut.iter().any(|&(a, b)| a == member || b == member))
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
}

impl State {
    /// Whether a connection from `sender` to member `to` must be held now.
    ///
    /// A connection nothing attributes is held only while `to` is cut off from every
    /// other member: then whoever sent it, its link is cut.
    fn blocked(&self, sender: &Sender, to: usize, members: usize) -> bool {
        let from = match sender {
            Sender::Member(from) => Some(*from),
            Sender::Id(id) => self.ids.get(id).copied(),
            Sender::Unknown => None,
        };
        match from {
            Some(from) => from != to && self.cut.contains(&pair(from, to)),
            None => {
                members > 1
                    && (0..members)
                        .filter(|&other| other != to)
                        .all(|other| self.cut.contains(&pair(other, to)))
            }
        }
    }
}

/// The proxy in front of one member's peer port. Its accept thread ends when the
/// [`Links`] stop.
#[derive(Debug)]
pub(super) struct PeerProxy {
    proxy: HeldProxy,
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
        let proxy = HeldProxy::start(
            links,
            format!("etcd-peer-proxy-{index}"),
            format!("etcd-peer-conn-{index}"),
            move |connection, client| serve(connection, client, index, members, upstream),
        )?;
        links.update(|state| {
            state.proxy_ports.insert(proxy.port(), index);
        });
        Ok(Self { proxy })
    }

    /// The port the member advertises as its peer URL.
    pub(super) fn port(&self) -> u16 {
        self.proxy.port()
    }

    /// Wakes the accept thread so that it sees the proxies stopped.
    pub(super) fn wake(&self) {
        self.proxy.wake();
    }
}

/// One connection: reads the first request head, attributes it, waits while its link is
/// cut, then forwards both ways.
fn serve(
    connection: &Connection<'_, State>,
    mut client: TcpStream,
    to: usize,
    members: usize,
    upstream: u16,
) {
    let links = connection.proxies();
    let mut head = Vec::new();
    if read_head(&mut client, &mut head).is_err() || head.is_empty() {
        return;
    }
    let sender = attribute(links, &head, &client, connection.proxy_port());
    let open = |state: &State| !state.blocked(&sender, to, members);
    // Held before reaching the member while its link is cut; the sender may give up.
    loop {
        match links.is_open(open) {
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
    // A member that is down refuses: the client is closed, as a refused connect would be.
    connection.forward(client, upstream, &head, open, |_| {});
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
    let known = links.with(|state| {
        let by_port = from_port.and_then(|port| state.proxy_ports.get(&port).copied());
        if let (Some(member), Some(id)) = (by_port, from_id) {
            state.ids.insert(id, member);
        }
        if let Some(member) = by_port.or_else(|| from_id.and_then(|id| state.ids.get(&id).copied()))
        {
            return Some(Sender::Member(member));
        }
        from_id.map(Sender::Id)
    });
    if let Some(sender) = known {
        return sender;
    }
    let pids: Vec<(u32, usize)> = links.with(|state| {
        state
            .pids
            .iter()
            .map(|(&pid, &member)| (pid, member))
            .collect()
    });
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
        links.with(|state| {
            assert!(state.blocked(&Sender::Member(1), 0, 3));
            assert!(state.blocked(&Sender::Member(0), 2, 3));
            assert!(!state.blocked(&Sender::Member(1), 2, 3));
            assert!(state.blocked(&Sender::Id(0xabc), 0, 3));
            // An id no member has is no attribution: held only by a member cut off from all.
            assert!(state.blocked(&Sender::Id(0xdef), 0, 3));
            assert!(!state.blocked(&Sender::Id(0xdef), 1, 3));
            assert!(state.blocked(&Sender::Unknown, 0, 3));
            assert!(!state.blocked(&Sender::Unknown, 1, 3));
        });
        links.heal(0);
        assert!(!links.with(|state| state.blocked(&Sender::Member(1), 0, 3)));
    }
}
