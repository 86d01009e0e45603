//! `HeldProxies` and `HeldProxy`: the mechanics of a TCP proxy whose cuts behave like a
//! partition, shared by the etcd cluster's peer proxies and the Sentinel topology's server
//! proxies.
//!
//! Each user decides what a connection is (from its first bytes) and whether what it is
//! is cut now, over a cut state `S` of its own; this module accepts, forwards and holds.
//!
//! # What a cut does
//!
//! A cut behaves like a partition, not like a reset: nothing is closed and nothing is
//! refused. Bytes read from a connection that is cut are held until the cut heals (the
//! rest waits in kernel buffers), and end of file is held too, as a partition would hold
//! it. Healing wakes every held connection. [`HeldProxies::stop`] ends everything: it
//! closes every connection, and every thread ends.
//!
//! The proxies are plain threads: one accepting per proxy, and per connection one that
//! runs the user's code and then one per direction.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// What the proxies of one topology share: the cut state `S` (what is cut, and what each
/// user learned to attribute connections), the live sockets, and whether they stop.
#[derive(Debug, Default)]
pub(super) struct HeldProxies<S> {
    state: Mutex<Shared<S>>,
    /// Signalled when the cut state changes or the proxies stop.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Shared<S> {
    cuts: S,
    /// Every live socket by connection, to close them all when the proxies stop.
    sockets: HashMap<u64, Vec<TcpStream>>,
    stopped: bool,
}

impl<S> HeldProxies<S> {
    fn lock(&self) -> MutexGuard<'_, Shared<S>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the cut state and wakes every held connection to look at it again.
    pub(super) fn update<R>(&self, change: impl FnOnce(&mut S) -> R) -> R {
        let result = change(&mut self.lock().cuts);
        self.changed.notify_all();
        result
    }

    /// Reads or records something in the cut state without waking held connections: for
    /// what cannot release one.
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut self.lock().cuts)
    }

    /// Waits until `open` holds of the cut state; `false` once the proxies are stopping.
    pub(super) fn wait_open(&self, open: impl Fn(&S) -> bool) -> bool {
        let mut state = self.lock();
        loop {
            if state.stopped {
                return false;
            }
            if open(&state.cuts) {
                return true;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether `open` holds of the cut state now; `None` once the proxies are stopping.
    pub(super) fn is_open(&self, open: impl Fn(&S) -> bool) -> Option<bool> {
        let state = self.lock();
        (!state.stopped).then(|| open(&state.cuts))
    }

    /// Keeps a clone of a connection's socket, to close it when the proxies stop; `false`
    /// if they are stopping already.
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

    /// Stops every proxy: closes every connection and wakes every waiting thread. Each
    /// proxy's accept thread ends at its next connection ([`HeldProxy::wake`]).
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

/// One accepted connection, as the user's code sees it before it forwards.
#[derive(Debug)]
pub(super) struct Connection<'a, S> {
    proxies: &'a HeldProxies<S>,
    id: u64,
    proxy_port: u16,
}

impl<S> Connection<'_, S> {
    /// The proxies' shared state.
    pub(super) fn proxies(&self) -> &HeldProxies<S> {
        self.proxies
    }

    /// The port of the proxy that accepted the connection.
    pub(super) fn proxy_port(&self) -> u16 {
        self.proxy_port
    }

    /// Connects to `upstream` on loopback, sends it `first` (what was read from `client`
    /// already), then copies both ways while `open` holds of the cut state: bytes and end
    /// of file read while it does not are held until it does. `observe` sees every read
    /// from the client, before it is held or sent, and may change what `open` answers.
    ///
    /// Returns when both directions end or the proxies stop. If `upstream` refuses, the
    /// client is closed, as a refused connection would be.
    pub(super) fn forward(
        &self,
        client: TcpStream,
        upstream: u16,
        first: &[u8],
        open: impl Fn(&S) -> bool + Sync,
        observe: impl FnMut(&[u8]) + Send,
    ) where
        S: Send,
    {
        let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
            return;
        };
        if !self.proxies.register(self.id, &server) {
            return;
        }
        let _ = server.set_nodelay(true);
        if server.write_all(first).is_err() {
            return;
        }
        let (Ok(client_read), Ok(server_read)) = (client.try_clone(), server.try_clone()) else {
            return;
        };
        let proxies = self.proxies;
        std::thread::scope(|scope| {
            let open = &open;
            scope.spawn(move || pump(proxies, client_read, server, open, observe));
            pump(proxies, server_read, client, open, |_| {});
        });
    }
}

/// The proxy on one loopback port. Its accept thread ends when its [`HeldProxies`] stop.
#[derive(Debug)]
pub(super) struct HeldProxy {
    port: u16,
}

impl HeldProxy {
    /// Binds a free loopback port and starts accepting on a thread named `name`. Each
    /// connection runs `serve` on a thread named `connection_name`, with `TCP_NODELAY` on;
    /// `serve` decides what the connection is and calls [`Connection::forward`].
    pub(super) fn start<S, F>(
        proxies: &Arc<HeldProxies<S>>,
        name: String,
        connection_name: String,
        serve: F,
    ) -> io::Result<Self>
    where
        S: Send + 'static,
        F: Fn(&Connection<'_, S>, TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let proxies = Arc::clone(proxies);
        std::thread::Builder::new().name(name).spawn(move || {
            accept_loop(listener, port, proxies, connection_name, Arc::new(serve))
        })?;
        Ok(Self { port })
    }

    /// The proxy's port.
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

fn accept_loop<S, F>(
    listener: TcpListener,
    proxy_port: u16,
    proxies: Arc<HeldProxies<S>>,
    connection_name: String,
    serve: Arc<F>,
) where
    S: Send + 'static,
    F: Fn(&Connection<'_, S>, TcpStream) + Send + Sync + 'static,
{
    static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
    for accepted in listener.incoming() {
        if proxies.stopped() {
            return;
        }
        let Ok(client) = accepted else {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let id = CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        if !proxies.register(id, &client) {
            return;
        }
        let proxies = Arc::clone(&proxies);
        let serve = Arc::clone(&serve);
        let spawned = std::thread::Builder::new()
            .name(connection_name.clone())
            .spawn(move || {
                let _ = client.set_nodelay(true);
                let connection = Connection {
                    proxies: &proxies,
                    id,
                    proxy_port,
                };
                serve(&connection, client);
                proxies.forget(id);
            });
        if spawned.is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Copies `from` to `to` while `open` holds; passes end of file on (once open, as a
/// partition would hold it too).
fn pump<S>(
    proxies: &HeldProxies<S>,
    mut from: TcpStream,
    mut to: TcpStream,
    open: &impl Fn(&S) -> bool,
    mut observe: impl FnMut(&[u8]),
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        observe(&buf[..n]);
        if !proxies.wait_open(open) {
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

/// Whether `err` is a read timing out (a socket with a read timeout).
pub(super) fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream on loopback that echoes every byte back; its port.
    fn echo_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo server");
        let port = listener.local_addr().expect("echo server address").port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || {
                    let Ok(mut reader) = stream.try_clone() else {
                        return;
                    };
                    let mut writer = stream;
                    let _ = io::copy(&mut reader, &mut writer);
                });
            }
        });
        port
    }

    fn read_byte(client: &mut TcpStream) -> io::Result<u8> {
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte)?;
        Ok(byte[0])
    }

    #[test]
    fn a_cut_holds_bytes_without_closing_healing_delivers_them_and_stop_closes() {
        let upstream = echo_server();
        let proxies = Arc::new(HeldProxies::<bool>::default());
        let proxy = HeldProxy::start(
            &proxies,
            "test-proxy".to_owned(),
            "test-proxy-conn".to_owned(),
            move |connection, client| {
                connection.forward(client, upstream, &[], |cut: &bool| !*cut, |_| {});
            },
        )
        .expect("start the proxy");
        let mut client = TcpStream::connect(("127.0.0.1", proxy.port())).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        client.write_all(b"a").expect("write before the cut");
        assert_eq!(read_byte(&mut client).expect("echo before the cut"), b'a');

        proxies.update(|cut| *cut = true);
        client
            .write_all(b"b")
            .expect("a cut connection still takes writes");
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("read timeout");
        let held = read_byte(&mut client).expect_err("a cut must hold the bytes");
        assert!(is_timeout(&held), "a cut must not close: {held}");

        proxies.update(|cut| *cut = false);
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        assert_eq!(read_byte(&mut client).expect("echo after healing"), b'b');

        proxies.stop();
        proxy.wake();
        let mut rest = Vec::new();
        assert!(
            !matches!(client.read_to_end(&mut rest), Err(err) if is_timeout(&err)),
            "stop must close the connection"
        );
    }
}
