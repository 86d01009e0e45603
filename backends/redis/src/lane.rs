//! The direct lane: a second plain connection to the same server, on which the task that
//! makes a request writes it and reads its answer itself.
//!
//! The `redis` crate's multiplexed connection (inside the `ConnectionManager`) hands
//! every request to a driver task over a channel and the answer back over another: two
//! wake-ups of other tasks, often on the other worker thread, per round trip. For one
//! acquire or release that was about half of the library's gap to a hand-written
//! `SET NX PX` + `EVALSHA` on one tokio socket: ×1.6 to ×1.9 that floor through the
//! manager, ×1.33 with the lane, on this project's benchmark machine (BENCHMARKS.md).
//!
//! So a single command (not a pipeline) first tries the lane: if its connection is idle,
//! the caller takes it, writes the packed command, reads one reply and puts it back. A
//! caller that finds it busy (another request is on it), connecting or down uses the
//! manager as before, so concurrent requests never queue behind one another and the lane
//! only ever speeds a request up. The lane is an optimisation and never an error of its
//! own:
//!
//! - A request whose lane connection fails (closed, reset, an answer that does not parse)
//!   is sent again on the manager: every request this backend makes may be repeated (see
//!   [`crate::connection::Connection::request`]). The lane is down until a new connection,
//!   opened in a task of its own, is ready; failed openings back off from one second to a
//!   minute, and only requests start them (the lane keeps no timers).
//! - A request dropped while on the lane (its time ran out) leaves its answer on the way.
//!   A task reads and discards it, then the connection is idle again; other requests use
//!   the manager meanwhile. An acquire that was dropped there is undone by a script that
//!   must run after it (see [`crate::abandon`]): that script is queued behind the answer
//!   on the same connection ([`Lane::send_behind`]), as it would be on the manager's one
//!   connection. A request dropped half written closes the connection.
//! - Server errors (`NOSCRIPT`, `READONLY`, ...) are answers: they are returned as the
//!   manager would return them, and the request path treats them the same way.
//!
//! The lane is used for plain TCP and Unix socket connections. Over TLS, and in cluster
//! mode, every request goes through the manager (or the cluster connection).

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::{Cmd, ConnectionAddr, ConnectionInfo, ProtocolVersion, RedisError, RedisFuture, Value};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

/// The name of the lane's connections in `CLIENT LIST`.
const NAME: &str = "leasehold-lane";
/// The first wait after a failed opening; it doubles up to [`MOST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MOST_BACKOFF: Duration = Duration::from_secs(60);
/// TCP keepalive on the lane's connection: a peer gone without a word (a dropped network
/// path) is noticed within about 25 s, so a connection waiting for a dropped request's
/// answer is not left waiting for ever; a server that is only slow or paused still
/// answers the probes, and is waited for.
const KEEPALIVE_TIME: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;
/// The largest answer the lane reads, as a bound on a confused stream; the backend's
/// answers are a few hundred bytes (a `list` page is larger, and goes through the lane
/// only if it fits).
const MOST_REPLY: usize = 64 << 20;

/// A byte stream to the server.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One server's direct lane (see the module docs).
pub(crate) struct Lane {
    info: ConnectionInfo,
    connect_timeout: Duration,
    state: Mutex<State>,
    /// Woken whenever a request leaves the connection (see [`Lane::settled`]).
    left: Notify,
}

enum State {
    /// Connected, and no request is on it.
    Idle(Box<Stream>),
    /// A request is on it.
    Busy,
    /// A request was dropped with its answer outstanding: a task reads that answer, then
    /// sends the requests queued here meanwhile (by [`Lane::send_behind`]: an acquire's
    /// undo), in order, on the same connection. Other requests use the manager.
    Draining(mpsc::UnboundedSender<Queued>),
    /// A connection is being opened.
    Connecting,
    /// No connection; the next request after `retry_at` opens one.
    Down {
        retry_at: Instant,
        backoff: Duration,
    },
}

/// A request queued behind a dropped one: the packed command and where its answer goes.
type Queued = (Vec<u8>, oneshot::Sender<Result<Value, RedisError>>);

struct Stream {
    io: Box<dyn Io>,
    /// Bytes read past the last answer (none, unless the server sent a push).
    buf: Vec<u8>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane")
            .field("addr", self.info.addr())
            .finish_non_exhaustive()
    }
}

impl Lane {
    /// A lane to the server `client` connects to, opening in the background; `None` where
    /// the lane is not used (TLS).
    pub(crate) fn open(client: &redis::Client, connect_timeout: Duration) -> Option<Arc<Self>> {
        let info = client.get_connection_info().clone();
        match info.addr() {
            ConnectionAddr::Tcp(..) | ConnectionAddr::Unix(_) => {}
            _ => return None,
        }
        let lane = Arc::new(Self {
            info,
            connect_timeout,
            state: Mutex::new(State::Connecting),
            left: Notify::new(),
        });
        lane.spawn_connect(FIRST_BACKOFF);
        Some(lane)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section is one read or replacement of the state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sends `cmd` on the lane if it is idle: `None` if it is not (the caller uses the
    /// manager), else the answer, or the error that took the lane down.
    pub(crate) fn try_send<'a>(
        self: &'a Arc<Self>,
        cmd: &'a Cmd,
    ) -> Option<RedisFuture<'a, Value>> {
        let mut state = self.state();
        let stream = match std::mem::replace(&mut *state, State::Busy) {
            State::Idle(stream) => stream,
            State::Down { retry_at, backoff } if Instant::now() >= retry_at => {
                *state = State::Connecting;
                drop(state);
                self.spawn_connect(backoff);
                return None;
            }
            other => {
                *state = other;
                return None;
            }
        };
        drop(state);
        let mut taken = Taken {
            lane: self,
            stream: Some(stream),
            written: false,
        };
        Some(Box::pin(async move {
            let answer = taken.call(&cmd.get_packed_command()).await;
            match answer {
                Ok(_) => taken.put_back(),
                Err(_) => taken.close(),
            }
            answer
        }))
    }

    /// Sends `cmd` after every request sent on the lane so far, on the same connection:
    /// once the request on it now (perhaps one being dropped on another thread) has left
    /// it, queued behind the answer of a dropped request if there is one (see
    /// [`State::Draining`]), else on the idle connection. `None` if the lane has no
    /// connection (the caller uses the manager).
    ///
    /// A command queued here is sent even if this future is dropped first: an acquire's
    /// undo still runs after the acquire when the server answers late.
    pub(crate) async fn send_behind(
        self: &Arc<Self>,
        cmd: &Cmd,
    ) -> Option<Result<Value, RedisError>> {
        self.settled().await;
        let queued = match &*self.state() {
            State::Draining(queue) => {
                let (reply, answer) = oneshot::channel();
                queue
                    .send((cmd.get_packed_command(), reply))
                    .ok()
                    .map(|()| answer)
            }
            _ => None,
        };
        match queued {
            Some(answer) => Some(
                answer
                    .await
                    .unwrap_or_else(|_| Err(lane_error("the lane's connection failed"))),
            ),
            None => Some(self.try_send(cmd)?.await),
        }
    }

    /// Waits until no request is on the connection.
    async fn settled(&self) {
        loop {
            let left = self.left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            if !matches!(*self.state(), State::Busy) {
                return;
            }
            left.await;
        }
    }

    /// Leaves the connection in `state` and wakes [`settled`](Lane::settled).
    fn leave(&self, state: State) {
        *self.state() = state;
        self.left.notify_waiters();
    }

    /// Opens a connection in a task of its own; the lane is `Connecting` meanwhile.
    fn spawn_connect(self: &Arc<Self>, backoff: Duration) {
        let lane: Weak<Self> = Arc::downgrade(self);
        let (info, timeout) = (self.info.clone(), self.connect_timeout);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            *self.state() = State::Down {
                retry_at: Instant::now(),
                backoff,
            };
            return;
        };
        runtime.spawn(async move {
            let opened = tokio::time::timeout(timeout, Stream::open(&info)).await;
            let Some(lane) = lane.upgrade() else { return };
            *lane.state() = match opened {
                Ok(Ok(stream)) => State::Idle(Box::new(stream)),
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "the redis direct lane could not connect");
                    down(backoff)
                }
                Err(_) => {
                    tracing::debug!(?timeout, "the redis direct lane timed out connecting");
                    down(backoff)
                }
            };
        });
    }
}

/// Down after a failed opening, for `backoff`; the next failure waits twice as long.
fn down(backoff: Duration) -> State {
    State::Down {
        retry_at: Instant::now() + backoff,
        backoff: (backoff * 2).min(MOST_BACKOFF),
    }
}

/// The lane's connection while a request is on it. Dropped with its request (a request
/// whose time ran out), the connection is kept if the request was written whole: a task
/// reads its answer and then sends what was queued meanwhile (see [`State::Draining`]).
/// Otherwise, or after an error, the connection is closed and the lane is down until a
/// request opens a new one.
struct Taken<'a> {
    lane: &'a Arc<Lane>,
    stream: Option<Box<Stream>>,
    /// The request was written whole: its answer is outstanding.
    written: bool,
}

impl Taken<'_> {
    async fn call(&mut self, packed: &[u8]) -> Result<Value, RedisError> {
        let Some(stream) = self.stream.as_mut() else {
            return Err(lane_error("the lane's connection is gone"));
        };
        stream.io.write_all(packed).await?;
        self.written = true;
        stream.read_answer().await
    }

    fn put_back(&mut self) {
        if let Some(stream) = self.stream.take() {
            self.lane.leave(State::Idle(stream));
        }
    }

    fn close(&mut self) {
        if self.stream.take().is_some() {
            // Opened again by the next request, at once: the server was reachable.
            self.lane.leave(State::Down {
                retry_at: Instant::now(),
                backoff: FIRST_BACKOFF,
            });
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let runtime = tokio::runtime::Handle::try_current();
        let (true, Ok(runtime)) = (self.written, runtime) else {
            self.stream = Some(stream);
            self.close();
            return;
        };
        let (queue, queued) = mpsc::unbounded_channel();
        self.lane.leave(State::Draining(queue));
        runtime.spawn(drain(Arc::downgrade(self.lane), stream, queued));
    }
}

/// Reads the answer of a dropped request, then sends the requests queued behind it one by
/// one, and puts the connection back once none is left; closes it on an error. There is
/// no time limit: a paused server runs what was written once it resumes, so giving up
/// could let a later request on the manager run first; a vanished peer is noticed by
/// TCP keepalive.
async fn drain(
    lane: Weak<Lane>,
    mut stream: Box<Stream>,
    mut queued: mpsc::UnboundedReceiver<Queued>,
) {
    let mut pending: Option<Queued> = None;
    loop {
        let answer = match pending.take() {
            None => stream.read_answer().await,
            Some((packed, reply)) => match stream.call(&packed).await {
                Ok(value) => {
                    // Its caller may have given up meanwhile.
                    let _ = reply.send(Ok(value));
                    Ok(Value::Nil)
                }
                Err(err) => Err(err),
            },
        };
        if answer.is_err() {
            break;
        }
        let Some(lane) = lane.upgrade() else { return };
        let mut state = lane.state();
        match queued.try_recv() {
            Ok(next) => pending = Some(next),
            // Under the state's lock: a request either queued before, and is read here,
            // or finds the lane idle.
            Err(_) => {
                *state = State::Idle(stream);
                return;
            }
        }
    }
    tracing::debug!("the redis direct lane closed its connection after a dropped request");
    if let Some(lane) = lane.upgrade() {
        *lane.state() = State::Down {
            retry_at: Instant::now(),
            backoff: FIRST_BACKOFF,
        };
    }
    // Dropping `queued` fails the requests still queued: they go to the manager.
}

impl Stream {
    /// Connects and does what the `redis` crate's handshake does that matters to the
    /// commands sent here (the protocol, the credentials and the database), and names
    /// the connection [`NAME`].
    async fn open(info: &ConnectionInfo) -> Result<Self, RedisError> {
        let io: Box<dyn Io> = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let socket = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                socket.set_nodelay(true)?;
                let keepalive = socket2::TcpKeepalive::new()
                    .with_time(KEEPALIVE_TIME)
                    .with_interval(KEEPALIVE_INTERVAL)
                    .with_retries(KEEPALIVE_RETRIES);
                socket2::SockRef::from(&socket).set_tcp_keepalive(&keepalive)?;
                Box::new(socket)
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
            _ => return Err(lane_error("the lane takes plain TCP or Unix sockets only")),
        };
        let mut stream = Self {
            io,
            buf: Vec::with_capacity(512),
        };
        let settings = info.redis_settings();
        let mut hello = Vec::new();
        match settings.protocol() {
            ProtocolVersion::RESP2 => {
                if let Some(password) = settings.password() {
                    let mut auth = redis::cmd("AUTH");
                    if let Some(username) = settings.username() {
                        auth.arg(username);
                    }
                    hello.push(auth.arg(password).clone());
                }
            }
            ProtocolVersion::RESP3 => {
                let mut cmd = redis::cmd("HELLO");
                cmd.arg(3);
                if let Some(password) = settings.password() {
                    cmd.arg("AUTH")
                        .arg(settings.username().unwrap_or("default"))
                        .arg(password);
                }
                hello.push(cmd);
            }
            _ => return Err(lane_error("a protocol the lane does not speak")),
        }
        if settings.db() != 0 {
            hello.push(redis::cmd("SELECT").arg(settings.db()).clone());
        }
        // So that operators (and the tests) can tell it in `CLIENT LIST`.
        hello.push(redis::cmd("CLIENT").arg("SETNAME").arg(NAME).clone());
        for cmd in &hello {
            stream
                .call(&cmd.get_packed_command())
                .await?
                .extract_error()?;
        }
        Ok(stream)
    }

    /// Writes one packed command and reads its answer.
    async fn call(&mut self, packed: &[u8]) -> Result<Value, RedisError> {
        self.io.write_all(packed).await?;
        self.read_answer().await
    }

    /// Reads the next answer, skipping pushes.
    async fn read_answer(&mut self) -> Result<Value, RedisError> {
        loop {
            let value = self.read_value().await?;
            if !matches!(value, Value::Push { .. }) {
                return Ok(value);
            }
        }
    }

    async fn read_value(&mut self) -> Result<Value, RedisError> {
        loop {
            if let Some(len) = frame_len(&self.buf)? {
                let value = redis::parse_redis_value(&self.buf[..len]);
                self.buf.drain(..len);
                return value;
            }
            if self.buf.len() > MOST_REPLY {
                return Err(lane_error("an answer larger than the lane reads"));
            }
            let mut chunk = [0_u8; 4096];
            let read = self.io.read(&mut chunk).await?;
            if read == 0 {
                return Err(RedisError::from(std::io::Error::from(
                    std::io::ErrorKind::UnexpectedEof,
                )));
            }
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }
}

/// The length of the first complete RESP2/RESP3 value in `buf`, `None` if more bytes are
/// needed, an error if it is not RESP.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, RedisError> {
    let mut at = 0;
    // How many values are still to be read, per open aggregate; the outermost is one.
    let mut pending: Vec<u64> = vec![1];
    while let Some(left) = pending.last_mut() {
        if *left == 0 {
            pending.pop();
            continue;
        }
        *left -= 1;
        let Some(end) = line_end(buf, at) else {
            return Ok(None);
        };
        let (Some(&kind), Some(line)) = (buf.get(at), buf.get(at + 1..end)) else {
            return Err(not_resp());
        };
        at = end + 2;
        match kind {
            b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => {}
            b'$' | b'=' | b'!' => {
                let len = number(line)?;
                if len >= 0 {
                    let len = usize::try_from(len).map_err(|_| not_resp())?;
                    at = at.checked_add(len + 2).ok_or_else(not_resp)?;
                    if buf.len() < at {
                        return Ok(None);
                    }
                }
            }
            b'*' | b'~' | b'>' => {
                let count = number(line)?;
                if count > 0 {
                    pending.push(count.unsigned_abs());
                }
            }
            b'%' => {
                let count = number(line)?;
                if count > 0 {
                    pending.push(count.unsigned_abs() * 2);
                }
            }
            // Attributes come before the value they describe.
            b'|' => {
                let count = number(line)?;
                if let Some(left) = pending.last_mut() {
                    *left += 1;
                }
                pending.push(count.unsigned_abs() * 2);
            }
            _ => return Err(not_resp()),
        }
    }
    Ok(Some(at))
}

/// Where the line starting at `from` ends (the index of its `\r\n`).
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|pair| pair == b"\r\n")
        .map(|at| from + at)
}

fn number(line: &[u8]) -> Result<i64, RedisError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(not_resp)
}

fn not_resp() -> RedisError {
    lane_error("the server's answer is not RESP")
}

fn lane_error(detail: &'static str) -> RedisError {
    RedisError::from(std::io::Error::other(detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_measured_whole_or_not_at_all() {
        let cases: &[&[u8]] = &[
            b"+OK\r\n",
            b":1\r\n",
            b"$-1\r\n",
            b"_\r\n",
            b"$5\r\nhello\r\n",
            b"$0\r\n\r\n",
            b"*2\r\n:1\r\n$3\r\nabc\r\n",
            b"*0\r\n",
            b"*-1\r\n",
            b"*2\r\n*1\r\n:1\r\n$-1\r\n",
            b"%1\r\n+key\r\n:2\r\n",
            b"|1\r\n+ttl\r\n:3\r\n:4\r\n",
            b"-NOSCRIPT No matching script\r\n",
            b"$4\r\na\r\nb\r\n",
        ];
        for &frame in cases {
            let mut buf = frame.to_vec();
            assert_eq!(frame_len(&buf).ok(), Some(Some(frame.len())), "{frame:?}");
            for cut in 0..frame.len() {
                assert_eq!(
                    frame_len(&frame[..cut]).ok(),
                    Some(None),
                    "{frame:?} cut at {cut}"
                );
            }
            buf.extend_from_slice(b":9\r\n");
            assert_eq!(
                frame_len(&buf).ok(),
                Some(Some(frame.len())),
                "{frame:?} + more"
            );
        }
    }

    #[test]
    fn garbage_is_not_resp() {
        assert!(frame_len(b"hello\r\n").is_err());
        assert!(frame_len(b"$x\r\n").is_err());
        assert!(frame_len(b"\r\n").is_err());
        assert!(frame_len(b"*1\r\n\r\n").is_err());
    }
}
