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
//! The accepting, forwarding and holding are the shared held proxy's
//! (`servers/held_proxy.rs`); this file attributes connections and says which are cut.

use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use super::super::held_proxy::{HeldProxies, HeldProxy};

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
pub(super) type Cuts = HeldProxies<Cut>;

/// What [`Cuts`] know: the `(server index, kind)` pairs whose connections are held.
#[derive(Debug, Default)]
pub(super) struct Cut(BTreeSet<(usize, Kind)>);

impl Cuts {
    /// Holds (`cut`) or releases the connections of `kind` to server `server`.
    pub(super) fn set(&self, server: usize, kind: Kind, cut: bool) {
        self.update(|Cut(cuts)| {
            if cut {
                cuts.insert((server, kind));
            } else {
                cuts.remove(&(server, kind));
            }
        });
    }

    /// Releases every cut of server `server`.
    pub(super) fn heal(&self, server: usize) {
        self.update(|Cut(cuts)| cuts.retain(|&(s, _)| s != server));
    }
}

/// The proxy in front of one server. Its accept thread ends when the [`Cuts`] stop.
#[derive(Debug)]
pub(super) struct ServerProxy {
    proxy: HeldProxy,
}

impl ServerProxy {
    /// Binds a free loopback port for server `index`, whose own port is `upstream`, and
    /// starts accepting.
    pub(super) fn start(cuts: &Arc<Cuts>, index: usize, upstream: u16) -> io::Result<Self> {
        let proxy = HeldProxy::start(
            cuts,
            format!("redis-proxy-{index}"),
            format!("redis-proxy-conn-{index}"),
            move |connection, client| {
                // Sticky, and read under the lock each time a direction looks at the cuts.
                let kind = AtomicU8::new(Kind::Client as u8);
                let open = |Cut(cuts): &Cut| {
                    let kind = Kind::from_u8(kind.load(Ordering::SeqCst));
                    kind == Kind::Client || !cuts.contains(&(index, kind))
                };
                let mut seen = 0u64;
                let sniff = |bytes: &[u8]| {
                    if seen < SNIFF_LIMIT {
                        seen += bytes.len() as u64;
                        if let Some(sniffed) = attribute(bytes) {
                            kind.store(sniffed as u8, Ordering::SeqCst);
                        }
                    }
                };
                // A server that is down refuses: the client is closed, as a refused
                // connection would be.
                connection.forward(client, upstream, &[], open, sniff);
            },
        )?;
        Ok(Self { proxy })
    }

    /// The port the server announces, and sentinels, replicas and clients connect to.
    pub(super) fn port(&self) -> u16 {
        self.proxy.port()
    }

    /// Wakes the accept thread so that it sees the proxies stopped.
    pub(super) fn wake(&self) {
        self.proxy.wake();
    }
}

/// What a read from the client's side of a connection says the connection is, if it
/// says: a sentinel names its connections `sentinel-...`, a replica sends `REPLCONF`.
fn attribute(bytes: &[u8]) -> Option<Kind> {
    let text = String::from_utf8_lossy(bytes);
    if text.contains("sentinel-") {
        Some(Kind::Sentinel)
    } else if text.contains("REPLCONF") || text.contains("replconf") {
        Some(Kind::Replica)
    } else {
        None
    }
}
