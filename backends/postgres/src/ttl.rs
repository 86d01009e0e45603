//! Server-side lease TTLs: the session settings that make the server end a silent lock
//! session, and with it release its advisory locks.
//!
//! An advisory lock lives as long as the session that took it. To give locks a TTL, the
//! lock session carries settings derived from the longest TTL `X` among the leases it
//! holds, sent with every statement (so they change in the same round trip as the leases):
//!
//! - `idle_session_timeout = X` (PostgreSQL 14+): the server ends the session once it has
//!   been idle for `X`: a paused holder, a cut network, a dead host.
//! - `tcp_keepalives_idle = X/2`, `tcp_keepalives_interval = X/8`, `tcp_keepalives_count =
//!   4` (rounded up to whole seconds): the kernel drops the connection once the peer has not
//!   answered for about `X`: a dead host or a cut network, but not a paused process, whose
//!   kernel still answers.
//! - `tcp_user_timeout = X`: the kernel drops the connection once data the server sent
//!   stays unacknowledged for `X`.
//!
//! None of them can end the session before `X` after its last statement, and every
//! statement is sent after the refresh or acquire it serves was called, so the lease
//! contract holds. A session whose last lease was released keeps that lease's settings
//! (setting them costs the server more than the rest of a release, and the next acquire
//! most likely wants them again); if the server ends it for idleness, it held nothing,
//! and the next acquire opens a new session. Since the session also listens for
//! releases, a waiter's first `expires_in` on a session that holds nothing puts the
//! server's defaults back, so that it is not ended between the waiter's questions. A new session starts with the server's
//! defaults.

use std::time::Duration;

use leasehold_core::{Capabilities, Result};

/// The shortest lease TTL accepted. Every lease on a session shares its liveness, and
/// a session idle for the TTL is ended by the server: below a second, a scheduling hiccup
/// in the holder would cost every lease of the process.
pub(crate) const MIN_TTL: Duration = Duration::from_secs(1);

/// The longest lease TTL: the session settings that end a silent session (see the `ttl`
/// module) are `int4` milliseconds.
pub(crate) const MAX_TTL: Duration = Duration::from_millis(i32::MAX as u64);

/// What the backend declares about itself.
pub(crate) const CAPABILITIES: Capabilities = Capabilities::new()
    .with_release_notifications(true)
    .with_reports_expiry(true)
    .with_min_ttl(MIN_TTL)
    .with_max_ttl(MAX_TTL)
    .with_ttl_granularity(Duration::from_millis(1))
    .with_detects_takeover(true)
    .with_records(true);

/// Rejects TTLs the backend cannot honour.
pub(crate) fn check_ttl(ttl: Duration) -> Result<()> {
    CAPABILITIES.check_ttl(crate::error::NAME, ttl)
}

/// `server_version_num` of PostgreSQL 14, which added `idle_session_timeout`.
const IDLE_SESSION_TIMEOUT_SINCE: i32 = 140_000;
/// Probes sent before the kernel gives up on a silent peer.
const KEEPALIVE_COUNT: u32 = 4;

/// Which of the TTL settings the connected server supports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerTtl {
    idle_session_timeout: bool,
}

impl ServerTtl {
    /// For the server with `server_version_num` `version`.
    pub(crate) fn for_version(version: i32) -> Self {
        Self {
            idle_session_timeout: version >= IDLE_SESSION_TIMEOUT_SINCE,
        }
    }

    /// Whether a paused holder loses its locks on the server (`idle_session_timeout`).
    pub(crate) fn enforces_idle_timeout(self) -> bool {
        self.idle_session_timeout
    }

    /// Setting names and values (two arrays, for `set_config` over `unnest`) for a
    /// session whose longest lease TTL is `longest` (zero when it holds none).
    pub(crate) fn settings(self, longest: Duration) -> (Vec<&'static str>, Vec<String>) {
        let millis = longest.as_nanos().div_ceil(1_000_000);
        let seconds = |fraction: u128| {
            if millis == 0 {
                0
            } else {
                millis.div_ceil(fraction * 1000).max(1)
            }
        };
        let mut names = vec![
            "tcp_user_timeout",
            "tcp_keepalives_idle",
            "tcp_keepalives_interval",
            "tcp_keepalives_count",
        ];
        let count = if millis == 0 { 0 } else { KEEPALIVE_COUNT };
        let mut values = vec![
            millis.to_string(),
            seconds(2).to_string(),
            seconds(8).to_string(),
            count.to_string(),
        ];
        if self.idle_session_timeout {
            names.push("idle_session_timeout");
            values.push(millis.to_string());
        }
        (names, values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_cover_the_longest_ttl() {
        let (names, values) = ServerTtl::for_version(150_004).settings(Duration::from_millis(2500));
        let pairs: Vec<(&str, &str)> = names
            .iter()
            .copied()
            .zip(values.iter().map(String::as_str))
            .collect();
        assert_eq!(
            pairs,
            [
                ("tcp_user_timeout", "2500"),
                ("tcp_keepalives_idle", "2"),
                ("tcp_keepalives_interval", "1"),
                ("tcp_keepalives_count", "4"),
                ("idle_session_timeout", "2500"),
            ]
        );
    }

    #[test]
    fn keepalives_never_give_up_before_the_ttl() {
        for ttl_ms in [1, 999, 1000, 1001, 2500, 7999, 30_000, 86_400_000] {
            let (_, values) =
                ServerTtl::for_version(130_000).settings(Duration::from_millis(ttl_ms));
            let n = |i: usize| values[i].parse::<u128>().unwrap();
            let keepalive_ms = (n(1) + n(2) * n(3)) * 1000;
            assert!(
                keepalive_ms >= u128::from(ttl_ms),
                "keepalives give up after {keepalive_ms} ms, before the {ttl_ms} ms TTL"
            );
        }
    }

    #[test]
    fn no_lease_means_server_defaults_and_old_servers_skip_idle_timeout() {
        let (names, values) = ServerTtl::for_version(130_000).settings(Duration::ZERO);
        assert!(!names.contains(&"idle_session_timeout"));
        assert!(values.iter().all(|v| v == "0"), "got {values:?}");
    }
}
