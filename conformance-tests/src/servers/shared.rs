//! One server per test binary, started on first use and shared by the tests that do not
//! kill, pause or restart it; and [`require_server!`](crate::require_server), the opener
//! of a test that needs a server.

use std::sync::OnceLock;

use super::{EtcdServer, PostgresServer, RedisServer};

impl RedisServer {
    /// The `redis-server` shared by the tests of this test binary, started by the first
    /// call; `None` if the binary is missing outside CI (see [`RedisServer::start`]).
    ///
    /// A test that harms its server (kills, pauses, restarts it, changes its settings)
    /// starts its own with [`RedisServer::start`] instead.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`]: if the binary is missing under CI, or the server does
    /// not come up.
    pub fn shared() -> Option<&'static RedisServer> {
        static SERVER: OnceLock<Option<RedisServer>> = OnceLock::new();
        SERVER.get_or_init(RedisServer::start).as_ref()
    }
}

impl EtcdServer {
    /// The `etcd` shared by the tests of this test binary, started by the first call;
    /// `None` if the binary is missing outside CI (see [`EtcdServer::start`]).
    ///
    /// A test that harms its server starts its own with [`EtcdServer::start`] instead.
    ///
    /// # Panics
    ///
    /// As [`EtcdServer::start`].
    pub fn shared() -> Option<&'static EtcdServer> {
        static SERVER: OnceLock<Option<EtcdServer>> = OnceLock::new();
        SERVER.get_or_init(EtcdServer::start).as_ref()
    }
}

impl PostgresServer {
    /// The PostgreSQL server shared by the tests of this test binary, started by the
    /// first call; `None` if the binaries are missing outside CI (see
    /// [`PostgresServer::start`]).
    ///
    /// A test that harms its server starts its own with [`PostgresServer::start`] instead.
    ///
    /// # Panics
    ///
    /// As [`PostgresServer::start`].
    pub fn shared() -> Option<&'static PostgresServer> {
        static SERVER: OnceLock<Option<PostgresServer>> = OnceLock::new();
        SERVER.get_or_init(PostgresServer::start).as_ref()
    }
}

/// Opens a test that needs a throwaway server: evaluates to the server, or returns from
/// the test (which then passes, with a notice on stderr) when the server's binary is
/// missing outside CI. Under CI (`CI=true`) or with `ROUTINE_TEST_REQUIRE_SERVICES=1` a
/// missing binary fails the test instead (see [`require_services`]).
///
/// With a server type, the server shared by the tests of the binary (its `shared()`,
/// a `&'static` reference); with an expression of type `Option<Server>`, such as
/// `RedisServer::start()`, a server of the test's own, to kill or pause.
///
/// The enclosing function must return `()`.
///
/// # Examples
///
/// ```no_run
/// use leasehold_conformance::require_server;
/// use leasehold_conformance::servers::RedisServer;
///
/// #[tokio::test]
/// async fn uses_the_shared_server() {
///     let server = require_server!(RedisServer);
///     println!("{}", server.url());
/// }
///
/// #[tokio::test]
/// async fn kills_its_own_server() {
///     let mut server = require_server!(RedisServer::start());
///     server.kill();
/// }
/// ```
///
/// [`require_services`]: crate::servers::require_services
#[macro_export]
macro_rules! require_server {
    ($server:ident $(,)?) => {
        match $crate::servers::$server::shared() {
            ::std::option::Option::Some(server) => server,
            ::std::option::Option::None => return,
        }
    };
    ($start:expr $(,)?) => {
        match $start {
            ::std::option::Option::Some(server) => server,
            ::std::option::Option::None => return,
        }
    };
}
