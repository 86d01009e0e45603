//! Readiness probes for [`ContainerBuilder::ready_when`](super::ContainerBuilder::ready_when):
//! each takes the host port and says whether the server answers its protocol. Docker's
//! port proxy accepts connections before the server in the container listens, so an open
//! port alone means nothing.

use super::container::exchange;

/// Whether a Redis-protocol server answers `PING` with `+PONG`.
pub fn redis_ping(port: u16) -> bool {
    exchange(port, b"PING\r\n", 7).is_ok_and(|reply| reply.starts_with(b"+PONG"))
}

/// Whether etcd's `/health` on its client port says it is healthy (it has a leader and
/// serves requests).
pub fn etcd_health(port: u16) -> bool {
    let request = b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    exchange(port, request, 4096)
        .is_ok_and(|reply| String::from_utf8_lossy(&reply).contains("\"health\":\"true\""))
}

/// Whether PostgreSQL accepts a session of user `postgres` on database `postgres`: the
/// first reply to a startup message is an authentication request (`R`), where a server
/// still starting up, recovering or shutting down answers an error (`E`).
pub fn postgres_ready(port: u16) -> bool {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608_u32.to_be_bytes()); // protocol 3.0
    for part in ["user", "postgres", "database", "postgres"] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut message = u32::try_from(body.len() + 4)
        .unwrap_or(u32::MAX)
        .to_be_bytes()
        .to_vec();
    message.extend_from_slice(&body);
    exchange(port, &message, 1).is_ok_and(|reply| reply.first() == Some(&b'R'))
}
